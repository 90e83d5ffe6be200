"""Tests of the synthetic glaucoma fundus generator: determinism, layout, labels, signal, safety."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medxp.data.synthetic import (
    ABNORMAL_CDR_RANGE,
    CLASS_NAMES,
    GEOMETRY_FILE,
    MARKER_FILE,
    NORMAL_CDR_RANGE,
    POOL_DIR,
    SPLIT_NAMES,
    generate_fundus_demo,
    is_generated,
    read_geometry,
)
from medxp.errors import MedxpError

SMALL = {"images_per_class": 20, "folds": 3, "image_size": 64, "seed": 7}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated data set shared by the read-only tests."""
    return generate_fundus_demo(tmp_path_factory.mktemp("synthetic") / "demo", **SMALL)


def split_members(root: Path, fold: int) -> dict[str, set[str]]:
    """Returns the image ids of each split of one fold."""
    return {
        split: {path.stem for path in (root / f"Fold{fold}" / split).glob("*/*.jpg")} for split in SPLIT_NAMES
    }


def all_files(root: Path) -> dict[str, bytes]:
    """Returns every file under root by relative path."""
    return {str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*") if path.is_file()}


def test_same_seed_and_arguments_give_identical_files(demo_root: Path, tmp_path: Path) -> None:
    again = generate_fundus_demo(tmp_path / "again", **SMALL)
    assert all_files(again) == all_files(demo_root)


def test_another_seed_gives_other_images(demo_root: Path, tmp_path: Path) -> None:
    other = generate_fundus_demo(tmp_path / "other", **{**SMALL, "seed": SMALL["seed"] + 1})
    first = sorted((demo_root / POOL_DIR).glob("*.jpg"))[0]
    assert (other / POOL_DIR / first.name).read_bytes() != first.read_bytes()


def test_every_fold_has_three_splits_of_both_classes(demo_root: Path) -> None:
    for fold in range(SMALL["folds"]):
        for split in SPLIT_NAMES:
            for class_name in CLASS_NAMES:
                folder = demo_root / f"Fold{fold}" / split / class_name
                assert any(folder.glob("*.jpg")), folder
    assert not (demo_root / f"Fold{SMALL['folds']}").exists()


def test_no_image_is_in_two_splits_of_one_fold(demo_root: Path) -> None:
    pool = {path.stem for path in (demo_root / POOL_DIR).glob("*.jpg")}
    for fold in range(SMALL["folds"]):
        members = split_members(demo_root, fold)
        assert sum(len(ids) for ids in members.values()) == len(pool)
        assert set().union(*members.values()) == pool


def test_every_image_is_tested_in_exactly_one_fold(demo_root: Path) -> None:
    test_counts: dict[str, int] = {}
    for fold in range(SMALL["folds"]):
        for image_id in split_members(demo_root, fold)["test"]:
            test_counts[image_id] = test_counts.get(image_id, 0) + 1
    pool = {path.stem for path in (demo_root / POOL_DIR).glob("*.jpg")}
    assert set(test_counts) == pool
    assert set(test_counts.values()) == {1}


def test_fold_valid_split_is_the_next_folds_test_split(demo_root: Path) -> None:
    folds = SMALL["folds"]
    for fold in range(folds):
        assert split_members(demo_root, fold)["valid"] == split_members(demo_root, (fold + 1) % folds)["test"]


def test_fold_files_are_the_pool_files(demo_root: Path) -> None:
    for path in (demo_root / "Fold0").rglob("*.jpg"):
        assert path.read_bytes() == (demo_root / POOL_DIR / path.name).read_bytes()
        assert path.name.startswith("fundus_")


def test_images_have_the_asked_size_and_are_rgb(demo_root: Path) -> None:
    with Image.open(next((demo_root / POOL_DIR).glob("*.jpg"))) as image:
        assert image.format == "JPEG"
        assert image.mode == "RGB"
        assert image.size == (SMALL["image_size"], SMALL["image_size"])


def test_sidecar_labels_follow_the_cup_to_disc_ratio(demo_root: Path) -> None:
    geometry = read_geometry(demo_root)
    assert len(geometry) == 2 * SMALL["images_per_class"]
    assert geometry.image_id.is_unique
    assert (geometry.label.value_counts() == SMALL["images_per_class"]).all()
    for label, (low, high) in enumerate((NORMAL_CDR_RANGE, ABNORMAL_CDR_RANGE)):
        rows = geometry[geometry.label == label]
        assert (rows.class_name == CLASS_NAMES[label]).all()
        assert rows.cdr.between(low, high).all()
    assert np.allclose(geometry.cup_radius, geometry.cdr * geometry.disc_radius, atol=1e-3)
    assert (geometry.image_size == SMALL["image_size"]).all()


def test_sidecar_class_matches_the_folder_of_each_image(demo_root: Path) -> None:
    class_by_id = dict(zip(read_geometry(demo_root).image_id, read_geometry(demo_root).class_name))
    for path in (demo_root / "Fold1").rglob("*.jpg"):
        assert class_by_id[path.stem] == path.parent.name


def mean_gray(image: np.ndarray, distance: np.ndarray, inner: float, outer: float) -> float:
    """Returns the mean gray level of the pixels whose distance lies in [inner, outer)."""
    return float(image[(distance >= inner) & (distance < outer)].mean())


def test_cup_is_brighter_than_the_disc_rim_in_the_pixels(demo_root: Path) -> None:
    size = SMALL["image_size"]
    rows_y, columns_x = np.mgrid[0:size, 0:size]
    differences = []
    for row in read_geometry(demo_root).itertuples():
        gray = np.asarray(Image.open(demo_root / POOL_DIR / f"{row.image_id}.jpg").convert("L"), np.float32)
        distance = np.hypot(columns_x - row.disc_x, rows_y - row.disc_y)
        rim_inner = max(row.cup_radius + 1.0, (row.cup_radius + row.disc_radius) / 2)
        if not ((distance >= rim_inner) & (distance < row.disc_radius - 0.5)).any():
            continue  # a cup that fills the disc leaves no rim pixel at this size
        cup = mean_gray(gray, distance, 0.0, max(0.7 * row.cup_radius, 1.0))
        rim = mean_gray(gray, distance, rim_inner, row.disc_radius - 0.5)
        differences.append(cup - rim)
    assert len(differences) >= SMALL["images_per_class"]
    assert np.mean(np.array(differences) > 0) >= 0.9
    assert np.median(differences) > 10


def test_large_cups_make_the_disc_brighter_than_small_cups(demo_root: Path) -> None:
    size = SMALL["image_size"]
    rows_y, columns_x = np.mgrid[0:size, 0:size]
    disc_brightness = {0: [], 1: []}
    for row in read_geometry(demo_root).itertuples():
        gray = np.asarray(Image.open(demo_root / POOL_DIR / f"{row.image_id}.jpg").convert("L"), np.float32)
        distance = np.hypot(columns_x - row.disc_x, rows_y - row.disc_y)
        background = mean_gray(gray, distance, 1.5 * row.disc_radius, 2.5 * row.disc_radius)
        disc_brightness[row.label].append(mean_gray(gray, distance, 0.0, row.disc_radius) - background)
    assert np.mean(disc_brightness[1]) > np.mean(disc_brightness[0]) + 5


def test_marker_says_generated_and_records_the_arguments(demo_root: Path) -> None:
    assert is_generated(demo_root)
    text = (demo_root / MARKER_FILE).read_text(encoding="utf-8")
    assert "NOT REAL PATIENTS" in text
    assert '"seed": 7' in text
    assert (demo_root / GEOMETRY_FILE).is_file()


def test_is_generated_is_false_for_other_folders(tmp_path: Path) -> None:
    assert not is_generated(tmp_path)
    assert not is_generated(tmp_path / "absent")


def test_same_arguments_reuse_the_folder_without_regenerating(demo_root: Path) -> None:
    pool_image = next((demo_root / POOL_DIR).glob("*.jpg"))
    modified_before = pool_image.stat().st_mtime_ns
    assert generate_fundus_demo(demo_root, **SMALL) == demo_root
    assert pool_image.stat().st_mtime_ns == modified_before


def test_other_arguments_on_a_generated_folder_raise(demo_root: Path) -> None:
    with pytest.raises(MedxpError, match="delete|another data_dir") as error:
        generate_fundus_demo(demo_root, **{**SMALL, "image_size": 96})
    assert str(demo_root) in str(error.value)


def test_a_folder_without_marker_is_never_overwritten(tmp_path: Path) -> None:
    real = tmp_path / "real_data"
    (real / "Fold0").mkdir(parents=True)
    (real / "Fold0" / "patient.jpg").write_bytes(b"not ours")
    with pytest.raises(MedxpError, match="real_data"):
        generate_fundus_demo(real, **SMALL)
    assert sorted(path.name for path in real.rglob("*")) == ["Fold0", "patient.jpg"]


def test_an_empty_folder_is_filled(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    generate_fundus_demo(empty, **SMALL)
    assert is_generated(empty)
    assert [path.name for path in tmp_path.iterdir()] == ["empty"]  # no staging folder left behind


def test_generation_logs_a_loud_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="medxp.data.synthetic"):
        generate_fundus_demo(tmp_path / "logged", **SMALL)
    messages = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert any("SYNTHETIC" in message and "not real patients" in message for message in messages)


@pytest.mark.parametrize(
    "arguments",
    [{"folds": 2}, {"images_per_class": 2}, {"image_size": 16}],
    ids=["too_few_folds", "fewer_images_than_folds", "too_small_images"],
)
def test_bad_arguments_raise(tmp_path: Path, arguments: dict[str, int]) -> None:
    with pytest.raises(MedxpError):
        generate_fundus_demo(tmp_path / "bad", **{**SMALL, **arguments})
    assert not (tmp_path / "bad").exists()


def test_read_geometry_names_a_folder_without_sidecar(tmp_path: Path) -> None:
    with pytest.raises(MedxpError, match=GEOMETRY_FILE):
        read_geometry(tmp_path)


def test_folds_get_copies_where_hard_links_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse_link(source: object, target: object) -> None:
        raise OSError("this file system cannot link")

    monkeypatch.setattr("medxp.data.synthetic.os.link", refuse_link)
    root = generate_fundus_demo(tmp_path / "copied", **SMALL)
    fold_image = next((root / "Fold0" / "test").glob("*/*.jpg"))
    assert fold_image.stat().st_nlink == 1
    assert fold_image.read_bytes() == (root / POOL_DIR / fold_image.name).read_bytes()
