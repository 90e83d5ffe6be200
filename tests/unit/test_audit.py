"""The dataset audit: planted leaks are found (exact and near), distinct images are not, and the policy acts."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from skimage import data

from medxp.config import load_project
from medxp.data.audit import audit_arrays, audit_files, leak_policy, log_audit
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
