"""Every data source on tiny generated fixtures in the publisher's layout, and the bad input each must name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medxp.config import load_project
from medxp.data.datamodule import create_datamodule
from medxp.errors import MedxpError


def write_image(path: Path, value: int, mode: str = "L", size: int = 12, suffix_format: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = value if mode == "L" else (value, 255 - value, 7)
    Image.new(mode, (size, size), colour).save(path, format=suffix_format)
    return path


def config_for(project: str, root: Path, **overrides):
    """The real project file, pointed at `root`, with tiny images and the cache off unless asked."""
    return load_project(project, {"data.data_dir": str(root), "dataset.image_size": 8, "data.cache": False,
                                  **overrides})


# ----------------------------------------------------------------------------- chest_xray_pneumonia


def make_kermany(root: Path, patients: int = 12, val_per_class: int = 2) -> Path:
    """Kermany's layout: several images per patient, pneumonia patients with bacteria and virus files."""
    for split, count in (("train", patients), ("test", 4)):
        for patient in range(count):
            offset = 0 if split == "train" else 500
            for image in range(3):
                write_image(root / split / "NORMAL" / f"IM-{offset + patient:04d}-{image + 1:04d}.jpeg", 40,
                            suffix_format="JPEG")
                kind = "bacteria" if image % 2 else "virus"
                write_image(root / split / "PNEUMONIA" / f"person{offset + patient}_{kind}_{image}.jpeg", 200,
                            mode="RGB", suffix_format="JPEG")
    for index in range(val_per_class):
        write_image(root / "val" / "NORMAL" / f"NORMAL2-IM-{900 + index:04d}-0001.jpeg", 40, suffix_format="JPEG")
        write_image(root / "val" / "PNEUMONIA" / f"person{900 + index}_bacteria_1.jpeg", 200, suffix_format="JPEG")
    return root


def test_chest_xray_revalidates_from_train_grouped_by_patient(tmp_path):
    config = config_for("chest_xray_pneumonia", make_kermany(tmp_path / "chest_xray"), **{"data.val_fraction": 0.25})
    data = create_datamodule(config)
    patients = {split: {patient(p) for p, _ in files} for split, files in data.files.items()}
    assert not patients["train"] & patients["valid"]
    assert len(data.files["test"]) == 4 * 3 * 2  # the given test split is kept as it is
    assert len(data.files["train"]) + len(data.files["valid"]) == 12 * 3 * 2 + 2 * 2
    assert set(data.class_counts("valid").values()) != {0}
    assert data.datasets["train"].images.shape[1:] == (1, 8, 8)


def patient(path: Path) -> str:
    import re

    return re.match(r"(person\d+|(?:NORMAL\d*-)?IM-\d+)[_-]", path.name).group(1)


def test_chest_xray_keeps_the_given_val_when_val_fraction_is_zero(tmp_path):
    config = config_for("chest_xray_pneumonia", make_kermany(tmp_path / "cx"), **{"data.val_fraction": 0})
    data = create_datamodule(config)
    assert len(data.files["valid"]) == 4
    assert all("NORMAL2" in p.name or "person9" in p.name for p, _ in data.files["valid"])


def test_chest_xray_without_test_split_is_an_error(tmp_path):
    root = make_kermany(tmp_path / "cx")
    for path in (root / "test").rglob("*"):
        if path.is_file():
            path.unlink()
    for folder in sorted((root / "test").rglob("*"), reverse=True):
        folder.rmdir()
    (root / "test").rmdir()
    with pytest.raises(MedxpError, match=r"cx: split folder 'test or testing' not found"):
        create_datamodule(config_for("chest_xray_pneumonia", root))


# ----------------------------------------------------------------------------- covid_radiography

COVID_FOLDERS = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")


def make_covid(root: Path, per_class: int = 20, with_images_folder: bool = True) -> Path:
    for index, name in enumerate(COVID_FOLDERS):
        folder = root / name / "images" if with_images_folder else root / name
        for i in range(per_class):
            write_image(folder / f"{name}-{i + 1}.png", 30 * index + i)
            if with_images_folder:
                write_image(root / name / "masks" / f"{name}-{i + 1}.png", 255)
    return root


@pytest.mark.parametrize("with_images_folder", [True, False])
def test_covid_splits_70_20_10_stratified_and_ignores_masks(tmp_path, with_images_folder):
    root = make_covid(tmp_path / "covid", with_images_folder=with_images_folder)
    data = create_datamodule(config_for("covid_radiography", root))
    assert {split: len(files) for split, files in data.files.items()} == {"train": 56, "valid": 16, "test": 8}
    assert data.class_counts("train") == {name: 14 for name in data.class_names}
    assert data.class_counts("test") == {name: 2 for name in data.class_names}
    assert not any("masks" in p.parts for files in data.files.values() for p, _ in files)


def test_covid_split_repeats_with_the_seed_and_changes_with_another(tmp_path):
    root = make_covid(tmp_path / "covid")
    first = create_datamodule(config_for("covid_radiography", root))
    again = create_datamodule(config_for("covid_radiography", root))
    other = create_datamodule(config_for("covid_radiography", root, **{"data.split_seed": 7}))
    assert first.split_hash == again.split_hash != other.split_hash
    assert first.files["test"] == again.files["test"]


def test_an_image_module_carries_its_modality(tmp_path):
    config = config_for("covid_radiography", make_covid(tmp_path / "covid"))
    data = create_datamodule(config)
    assert data.explainable and data.input_statistics(config.dataset) == (config.dataset.mean, config.dataset.std)
    rows = data.datasets["train"].images.numpy()
    assert data.fold_transforms(rows) == (data.datasets["train"].transform, data.datasets["valid"].transform, {})


def test_folder_not_in_the_spec_is_named(tmp_path):
    root = make_covid(tmp_path / "covid")
    write_image(root / "Tuberculosis" / "images" / "t.png", 1)
    with pytest.raises(MedxpError, match=r"Tuberculosis: folder 'Tuberculosis' is not a class of the spec"):
        create_datamodule(config_for("covid_radiography", root))


def test_missing_class_folder_is_named(tmp_path):
    root = make_covid(tmp_path / "covid")
    for path in sorted((root / "Normal").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / "Normal").rmdir()
    with pytest.raises(MedxpError, match=r"covid: class folder\(s\) \['normal'\] not found"):
        create_datamodule(config_for("covid_radiography", root))


def test_empty_class_folder_is_named(tmp_path):
    root = make_covid(tmp_path / "covid")
    for path in (root / "COVID" / "images").iterdir():
        path.unlink()
    with pytest.raises(MedxpError, match=r"COVID/images: class folder has no images"):
        create_datamodule(config_for("covid_radiography", root))


def test_truncated_image_is_named(tmp_path):
    root = make_covid(tmp_path / "covid")
    broken = root / "Normal" / "images" / "Normal-3.png"
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(MedxpError, match=r"Normal-3.png: unreadable image"):
        create_datamodule(config_for("covid_radiography", root))


# ----------------------------------------------------------------------------- brain_tumor_mri


@pytest.mark.parametrize("folders", [("glioma", "meningioma", "notumor", "pituitary"),
                                     ("Glioma_Tumor", "MENINGIOMA_tumor", "no_tumor", "pituitary_tumor")])
def test_brain_tumor_reads_training_testing_with_aliases(tmp_path, folders):
    root = tmp_path / "brain"
    for split, count in (("Training", 20), ("Testing", 3)):
        for index, name in enumerate(folders):
            for i in range(count):
                write_image(root / split / name / f"Tr-{index}-{i}.jpg", 20 * index, mode="RGB", suffix_format="JPEG")
    data = create_datamodule(config_for("brain_tumor_mri", root, **{"data.val_fraction": 0.25}))
    assert data.class_counts("test") == {"glioma": 3, "meningioma": 3, "notumor": 3, "pituitary": 3}
    assert data.class_counts("valid") == {name: 5 for name in data.class_names}
    assert data.datasets["test"].images.shape[1:] == (1, 8, 8)
    assert {p.parent.name for p, label in data.files["test"] if label == 2} == {folders[2]}


def test_class_alias_to_an_unknown_class_is_named(tmp_path):
    with pytest.raises(MedxpError, match=r"'dataset.class_aliases' = \{'x': 'tumour'\}: expected aliases mapping"):
        config_for("brain_tumor_mri", tmp_path, **{"dataset.class_aliases": "{x: tumour}"})


# ----------------------------------------------------------------------------- medmnist


def write_npz(path: Path, counts=(30, 6, 9), size: int = 28, rgb: bool = False, classes: int = 2,
              label_shape: str = "column", drop: str = "", **extra) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, count in zip(("train", "val", "test"), counts):
        shape = (count, size, size, 3) if rgb else (count, size, size)
        arrays[f"{prefix}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        labels = (np.arange(count) % classes).astype(np.uint8)
        arrays[f"{prefix}_labels"] = labels[:, None] if label_shape == "column" else labels
    arrays.pop(drop, None)
    arrays.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


@pytest.mark.parametrize("label_shape", ["column", "flat"])
def test_medmnist_reads_given_splits_from_arrays(tmp_path, label_shape):
    write_npz(tmp_path / "pneumoniamnist.npz", label_shape=label_shape)
    config = config_for("pneumoniamnist", tmp_path, **{"dataset.image_size": 28})
    data = create_datamodule(config)
    assert [len(data.datasets[s]) for s in ("train", "valid", "test")] == [30, 6, 9]
    assert data.class_counts("train") == {"normal": 15, "pneumonia": 15}
    raw = np.load(tmp_path / "pneumoniamnist.npz")["train_images"]
    assert np.array_equal(data.datasets["train"].images[:, 0].numpy(), raw)  # 28 px grey: untouched
    assert data.files["train"] == [] and len(data.fingerprint) == 16


def test_medmnist_converts_rgb_to_grey_and_resizes_like_files(tmp_path):
    path = write_npz(tmp_path / "retina.npz", rgb=True, classes=5)
    data = create_datamodule(config_for("retinamnist", path, **{"dataset.channels": 1, "dataset.mean": [0.5],
                                                                "dataset.std": [0.25], "dataset.image_size": 14}))
    first = np.load(path)["train_images"][0]
    expected = np.asarray(Image.fromarray(first).convert("L").resize((14, 14), Image.Resampling.BILINEAR))
    assert np.array_equal(data.datasets["train"].images[0, 0].numpy(), expected)


def test_medmnist_grey_becomes_rgb(tmp_path):
    path = write_npz(tmp_path / "organsmnist.npz", classes=11, counts=(22, 11, 11))
    data = create_datamodule(config_for("organsmnist", path, **{"dataset.channels": 3, "dataset.image_size": 28,
                                                                "dataset.mean": [0.5] * 3, "dataset.std": [0.2] * 3}))
    images = data.datasets["valid"].images
    assert images.shape == (11, 3, 28, 28) and bool((images[:, 0] == images[:, 2]).all())


def test_medmnist_folder_prefers_the_file_of_the_image_size(tmp_path):
    write_npz(tmp_path / "breastmnist.npz", counts=(10, 4, 4))
    write_npz(tmp_path / "breastmnist_64.npz", counts=(12, 4, 4), size=64)
    assert len(create_datamodule(config_for("breastmnist", tmp_path, **{"dataset.image_size": 64}))
               .datasets["train"]) == 12
    assert len(create_datamodule(config_for("breastmnist", tmp_path, **{"dataset.image_size": 28}))
               .datasets["train"]) == 10


@pytest.mark.parametrize("kwargs, words", [
    ({"drop": "val_labels"}, ["missing arrays ['val_labels']", "expected keys"]),
    ({"test_labels": np.zeros(8, np.uint8)}, ["'test_images' has 9 images but 'test_labels' has 8 labels"]),
    ({"train_labels": np.full((30, 1), 7, np.uint8)}, ["'train_labels' holds labels 7..7", "expected 0..1"]),
    ({"train_labels": np.zeros((30, 3), np.uint8)}, ["shape (30, 3)", "(N,) or (N, 1)"]),
    ({"train_images": np.zeros((30, 28, 28, 28), np.uint8)}, ["shape (30, 28, 28, 28)", "2D images"]),
])
def test_bad_npz_is_named(tmp_path, kwargs, words):
    write_npz(tmp_path / "pneumoniamnist.npz", **kwargs)
    with pytest.raises(MedxpError) as error:
        create_datamodule(config_for("pneumoniamnist", tmp_path))
    assert "pneumoniamnist.npz" in str(error.value)
    for word in words:
        assert word in str(error.value)


def test_medmnist_folder_without_the_flag_is_named(tmp_path):
    write_npz(tmp_path / "bloodmnist.npz")
    with pytest.raises(MedxpError, match=r"no MedMNIST file for 'pneumoniamnist'; expected one of pneumoniamnist.npz"):
        create_datamodule(config_for("pneumoniamnist", tmp_path))


def test_not_an_npz_is_named(tmp_path):
    (tmp_path / "pneumoniamnist.npz").write_bytes(b"not a zip")
    with pytest.raises(MedxpError, match=r"pneumoniamnist.npz: unreadable npz"):
        create_datamodule(config_for("pneumoniamnist", tmp_path))


def test_the_split_is_recorded_on_the_run(tmp_path):
    from medxp.tracking.null import NullTracker
    from medxp.recording import record_context

    config = config_for("covid_radiography", make_covid(tmp_path / "covid", per_class=10))
    data, tracker = create_datamodule(config), NullTracker()
    record_context(tracker, config, data)
    assert tracker.tags["data.split_hash"] == data.split_hash and len(data.split_hash) == 16
    assert tracker.artifacts["config/environment.json"]["data"]["split_hash"] == data.split_hash
