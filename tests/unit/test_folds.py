"""The folds-layout reader and image decoding: the same code reads real and generated data."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medxp.data.datamodule import create_datamodule
from medxp.data.folds import read_folds_layout
from medxp.data.images import decode_image, fingerprint_files
from medxp.errors import MedxpError

CLASSES = ("normal", "abnormal")


def make_layout(root, folds=1, per_class=2, class_folders=("Normal", "ABNORMAL"), splits=("train", "valid", "test")):
    for fold in range(folds):
        for split in splits:
            for index, name in enumerate(class_folders):
                folder = root / f"Fold{fold}" / split / name
                folder.mkdir(parents=True)
                for i in range(per_class):
                    Image.new("RGB", (20, 20), (40 * index + i, 10, 10)).save(folder / f"img{i}.png")
    return root


def test_reads_each_split_with_labels_from_the_spec_order(tmp_path):
    files = read_folds_layout(make_layout(tmp_path), 0, CLASSES)
    assert set(files) == {"train", "valid", "test"}
    labels = [label for _, label in files["train"]]
    assert labels == [0, 0, 1, 1]
    assert all(path.parent.name.lower() == CLASSES[label] for path, label in files["train"])


def test_val_folder_is_accepted_for_valid(tmp_path):
    files = read_folds_layout(make_layout(tmp_path, splits=("train", "val", "test")), 0, CLASSES)
    assert len(files["valid"]) == 4


@pytest.mark.parametrize("kwargs, fold, words", [
    ({}, 3, ["Fold3", "Fold0"]),
    ({"splits": ("train", "test")}, 0, ["Fold0", "valid"]),
    ({"class_folders": ("normal", "glaucoma")}, 0, ["class folders", "glaucoma", "abnormal"]),
    ({"per_class": 0}, 0, ["no images"]),
])
def test_layout_errors_name_the_path_and_what_was_expected(tmp_path, kwargs, fold, words):
    make_layout(tmp_path, **kwargs)
    with pytest.raises(MedxpError) as error:
        read_folds_layout(tmp_path, fold, CLASSES)
    for word in words:
        assert word in str(error.value)


def test_grey_images_become_rgb_and_are_resized(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("L", (50, 30), 128).save(path)
    pixels = decode_image(path, 16, 3)
    assert pixels.shape == (3, 16, 16) and pixels.dtype == np.uint8 and int(pixels.mean()) == 128


def test_unreadable_image_is_named(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(MedxpError, match="broken.jpg.*unreadable"):
        decode_image(path, 16, 3)


def test_fingerprint_changes_when_a_file_changes(tmp_path):
    root = make_layout(tmp_path)
    paths = sorted(root.rglob("*.png"))
    before = fingerprint_files(paths, root)
    assert before == fingerprint_files(list(reversed(paths)), root)
    paths[0].write_bytes(paths[0].read_bytes() + b"extra")
    assert fingerprint_files(paths, root) != before


def test_datamodule_reads_demo_fold_into_uint8_arrays(tiny_config):
    data = create_datamodule(tiny_config)
    assert data.synthetic
    train = data.datasets["train"]
    assert train.images.dtype.is_floating_point is False and train.images.shape[1:] == (3, 32, 32)
    assert set(data.class_counts("test").values()) != {0}
    image, label = train[0]
    assert image.dtype.is_floating_point and image.shape == (3, 32, 32) and int(label) in (0, 1)


def test_missing_folder_without_demo_fallback_is_an_error(tiny_config, tmp_path):
    config = tiny_config.replace({"data.data_dir": str(tmp_path / "absent"), "data.demo": "never"})
    with pytest.raises(MedxpError, match="absent.*not found"):
        create_datamodule(config)


def test_empty_folder_is_an_error(tiny_config, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedxpError, match="empty"):
        create_datamodule(tiny_config.replace({"data.data_dir": str(tmp_path / "empty")}))
