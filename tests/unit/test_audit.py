"""The dataset audit: planted leaks are found (exact and near), distinct images are not, and the policy acts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from skimage import data

from medxp.config import load_project
from medxp.data.audit import apply_leak_policy, audit_arrays, audit_files, leak_policy, log_audit
from medxp.data.folds import read_folds_layout
from medxp.data.datamodule import create_datamodule
from medxp.errors import MedxpError
from medxp.tracking import NullTracker

CLASSES = ("normal", "abnormal")


SOURCES = (data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), np.stack([data.camera()] * 3, -1))


def picture(index: int, size: int = 128) -> Image.Image:
    """A distinct textured picture: a crop of one of scikit-image's bundled photographs.

    Real photographs, not smooth random patterns: a perceptual hash of a featureless
    image is unstable, which is not what medical images are.
    """
    image = SOURCES[index % len(SOURCES)]
    step = index // len(SOURCES)
    y, x = step * 60 % (image.shape[0] - size), step * 90 % (image.shape[1] - size)
    return Image.fromarray(image[y:y + size, x:x + size]).resize((size, size))


@pytest.fixture
def layout(tmp_path):
    """{split: [(path, label)]} with 6 distinct images per split."""
    files = {}
    for offset, split in enumerate(("train", "valid", "test")):
        files[split] = []
        for i in range(6):
            path = tmp_path / split / f"{split}{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            picture(6 * offset + i).save(path)
            files[split].append((path, i % 2))
    return files


def test_distinct_images_are_not_flagged(layout):
    report = audit_files(layout, CLASSES, dataset="toy")
    assert report.pairs == [] and report.leaking_pairs == []
    assert report.class_counts()["train"] == {"normal": 3, "abnormal": 3}
    assert report.imbalance()["test"] == 1.0
    assert report.sizes() == {(128, 128): 18}


def test_exact_and_near_duplicates_across_splits_are_leaks(layout):
    shutil.copy(layout["train"][0][0], layout["test"][0][0])  # the same file
    source = Image.open(layout["train"][1][0]).convert("RGB")
    ImageEnhance.Brightness(source).enhance(1.08).save(layout["valid"][2][0].with_suffix(".jpg"), quality=70)
    layout["valid"][2] = (layout["valid"][2][0].with_suffix(".jpg"), layout["valid"][2][1])
    report = audit_files(layout, CLASSES, dataset="toy")
    leaks = {(p.first.source, p.second.source): p for p in report.leaking_pairs}
    exact = leaks[(str(layout["train"][0][0]), str(layout["test"][0][0]))]
    near = leaks[(str(layout["train"][1][0]), str(layout["valid"][2][0]))]
    assert exact.exact and not near.exact and near.distance > 0
    assert len(report.leaking_pairs) == 2
    text = report.summary_text()
    assert text.splitlines()[1].startswith("LEAKAGE: 2 pair(s)")
    assert 'class="bad">Data leakage: 2' in report.to_html()


def test_unreadable_and_truncated_files_are_listed(layout):
    broken = layout["train"][0][0]
    broken.write_bytes(b"not an image")
    truncated = layout["test"][1][0].with_suffix(".jpg")
    picture(7, 256).save(truncated, quality=95)  # a JPEG cut short below
    truncated.write_bytes(truncated.read_bytes()[:1500])
    layout["test"][1] = (truncated, 1)
    report = audit_files(layout, CLASSES, dataset="toy")
    problems = {r.source: r.problem for r in report.unreadable}
    assert problems[str(broken)] == "unreadable" and problems[str(truncated)] == "truncated"
    with pytest.raises(MedxpError, match="unreadable"):
        leak_policy(report, "warn", fail_on_unreadable=True)


def test_policy_warns_fails_or_drops_the_held_out_copy(layout):
    shutil.copy(layout["train"][3][0], layout["test"][4][0])
    report = audit_files(layout, CLASSES, dataset="toy")
    assert leak_policy(report, "warn") == {}
    with pytest.raises(MedxpError, match=r"1 image\(s\) appear in two splits.*train3.png.*test4.png"):
        leak_policy(report, "fail")
    assert leak_policy(report, "drop") == {"test": [4]}


def test_duplicate_rows_of_arrays_are_found():
    rng = np.random.default_rng(0)
    train = np.stack([np.asarray(picture(i, 64).convert("L"))[None] for i in range(8)])
    test = np.stack([np.asarray(picture(8 + i, 64).convert("L"))[None] for i in range(4)])
    test[2] = train[5]
    report = audit_arrays({"train": (train, rng.integers(0, 2, 8)), "test": (test, rng.integers(0, 2, 4))},
                          CLASSES, dataset="arrays")
    [leak] = report.leaking_pairs
    assert (leak.first.source, leak.second.source, leak.exact) == ("train[5]", "test[2]", True)


def test_log_audit_records_metrics_and_artifacts(layout):
    tracker = NullTracker()
    log_audit(audit_files(layout, CLASSES, dataset="toy"), tracker)
    assert tracker.latest("audit_leaking_pairs") == 0
    assert {"audit/report.json", "audit/report.html", "audit/class_counts.png"} <= set(tracker.artifacts)


def test_drop_policy_removes_the_leaking_test_copy_before_training(tmp_path, demo_root):
    root = tmp_path / "glaucoma"
    shutil.copytree(demo_root, root, symlinks=False)
    fold = root / "Fold0"
    train_image = sorted((fold / "train" / "normal").iterdir())[0]
    shutil.copy(train_image, fold / "test" / "normal" / "leaked_copy.jpg")
    config = load_project("glaucoma", {"data.data_dir": str(root), "dataset.image_size": 32, "data.cache": False,
                                       "audit.on_leak": "drop"})
    clean = create_datamodule(config.replace({"audit.on_leak": "off"}))
    dropped = create_datamodule(config)
    assert len(dropped.datasets["test"]) == len(clean.datasets["test"]) - 1
    assert all(path.name != "leaked_copy.jpg" for path, _ in dropped.files["test"])
    assert len(dropped.audit.leaking_pairs) >= 1
    with pytest.raises(MedxpError, match="leaked_copy.jpg"):
        create_datamodule(config.replace({"audit.on_leak": "fail"}))


@pytest.mark.parametrize("variant", ["jpeg_quality_50", "resized_half", "large_resized"])
def test_re_encoded_or_resized_copy_in_test_is_a_near_duplicate_leak(layout, tmp_path, variant):
    original = picture(1, 128).convert("RGB")
    if variant == "large_resized":  # big pictures are shrunk before hashing: the path real scans take
        original = original.resize((768, 768), Image.Resampling.BICUBIC)
        original.save(layout["train"][1][0])
    copy = tmp_path / "test" / f"copy_{variant}.jpg"
    if variant == "jpeg_quality_50":
        original.save(copy, quality=50)
    else:
        original.resize((original.width // 2, original.height // 2), Image.Resampling.BILINEAR).save(copy, quality=90)
    layout["test"][3] = (copy, layout["test"][3][1])
    [leak] = audit_files(layout, CLASSES, dataset="toy").leaking_pairs
    assert (leak.first.source, leak.second.source, leak.exact) == (str(layout["train"][1][0]), str(copy), False)


def test_imbalance_and_an_empty_class_give_strict_json(layout):
    layout["train"] = [(path, 0) for path, _ in layout["train"][:5]] + [(layout["train"][5][0], 1)]
    layout["test"] = [(path, 0) for path, _ in layout["test"]]
    report = audit_files(layout, CLASSES, dataset="toy")
    assert report.class_counts()["train"] == {"normal": 5, "abnormal": 1}
    assert report.imbalance()["train"] == 5.0
    as_json = report.to_json()
    assert as_json["imbalance"] == {"train": 5.0, "valid": 1.0, "test": None}
    json.dumps(as_json, allow_nan=False)  # MLflow artifacts must stay strict JSON


def test_a_label_outside_the_classes_is_an_error_naming_the_split(layout):
    layout["valid"][0] = (layout["valid"][0][0], 2)
    with pytest.raises(MedxpError, match=r"split 'valid': label 2 .* expected 0 to 1"):
        audit_files(layout, CLASSES)


def test_apply_leak_policy_drops_the_test_copy_from_file_lists_and_arrays(layout):
    shutil.copy(layout["train"][2][0], layout["test"][5][0])
    report = audit_files(layout, CLASSES, dataset="toy")
    kept = apply_leak_policy(report, layout, "drop")
    assert [len(kept[split]) for split in ("train", "valid", "test")] == [6, 6, 5]
    assert layout["test"][5] not in kept["test"] and layout["train"][2] in kept["train"]
    assert apply_leak_policy(report, layout, "warn") == layout
    with pytest.raises(MedxpError, match="train2.png.*test5.png"):
        apply_leak_policy(report, layout, "fail")
    with pytest.raises(MedxpError, match="on_leak = 'ignore'"):
        apply_leak_policy(report, layout, "ignore")
    with pytest.raises(MedxpError, match="audit these files again"):
        apply_leak_policy(report, {**layout, "test": layout["test"][:4]}, "drop")


def test_arrays_leak_is_dropped_and_shown_with_thumbnails():
    train = np.stack([np.asarray(picture(i, 32))[None][:, :, :, 0] for i in range(6)])
    test = np.stack([np.asarray(picture(6 + i, 32))[None][:, :, :, 0] for i in range(3)])
    test[1] = train[4]
    arrays = {"train": (train, np.zeros(6, int)), "test": (test, np.ones((3, 1), int))}
    report = audit_arrays(arrays, CLASSES, dataset="arrays")
    assert report.to_html().count("data:image/png;base64,") == 2
    kept = apply_leak_policy(report, arrays, "drop")
    assert kept["test"][0].shape == (2, 1, 32, 32) and not (kept["test"][0] == train[4]).all(axis=(1, 2, 3)).any()


def test_one_fold_of_the_demo_data_has_no_leakage(demo_root):
    files = read_folds_layout(demo_root, 0, CLASSES)
    names = {split: {path.name for path, _ in labelled} for split, labelled in files.items()}
    assert not (names["train"] & names["valid"] or names["train"] & names["test"] or names["valid"] & names["test"])
    report = audit_files(files, CLASSES, dataset="demo")
    assert report.leaking_pairs == [] and report.unreadable == []


def leaking_copy_of(demo_root, tmp_path):
    """The demo data with one train image of Fold0 copied into its test split."""
    root = tmp_path / "glaucoma"
    shutil.copytree(demo_root, root, symlinks=False)
    fold = root / "Fold0"
    shutil.copy(sorted((fold / "train" / "normal").iterdir())[0], fold / "test" / "normal" / "leaked_copy.jpg")
    return root


def test_a_prior_audit_is_applied_without_scanning_the_data_again(tmp_path, demo_root, monkeypatch):
    import medxp.data.datamodule as datamodule

    config = load_project("glaucoma", {"data.data_dir": str(leaking_copy_of(demo_root, tmp_path)),
                                       "dataset.image_size": 32, "data.cache": False, "audit.on_leak": "drop"})
    assert datamodule.prior_audit(config.replace({"audit.on_leak": "off"})) is None
    prior = datamodule.prior_audit(config)
    scans = []
    real_audit_source = datamodule.audit_source
    monkeypatch.setattr(datamodule, "audit_source", lambda *args: scans.append(args) or real_audit_source(*args))
    dropped = create_datamodule(config, prior)
    assert not scans and dropped.audit is prior.report
    assert all(path.name != "leaked_copy.jpg" for path, _ in dropped.files["test"])
    other_fold = config.replace({"data.fold": 1})
    create_datamodule(other_fold, prior)  # another fold's splits: the prior audit does not cover them
    assert len(scans) == 1


def test_the_audit_run_of_generated_data_is_tagged_synthetic(tmp_path, demo_root, mlflow_store, capsys):
    import mlflow

    from medxp.cli import main

    code = main(["audit", "--dataset", "glaucoma", "--set", f"data_dir={demo_root}", "--set", "dataset.image_size=32",
                 "--output", str(tmp_path / "report")])
    assert code == 0
    [run] = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`medxp.kind` = 'audit'",
                               output_format="list")
    assert run.data.tags["data.synthetic"] == "true"
