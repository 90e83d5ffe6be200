"""bench/quality.py's figures for a data set without an official split (fetal health): the anchor refitted on
each split, and the mean over split seeds. On the project's GENERATED CTG demo CSV, never on real files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from medxp.config import load_project
from medxp.data.synthetic_tabular import generate_ctg_demo
from medxp.data.tabular import create_tabular_datamodule

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality_bench", ROOT / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ctg_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ctg")
    generate_ctg_demo(root, rows=400, seed=3)
    return root


def test_the_anchor_is_refitted_on_each_split_seeds_own_test_rows(quality, ctg_dir):
    first, second = (quality.gradient_boosting_anchor("fetal_health", str(ctg_dir), seed) for seed in (42, 43))
    for figures in (first, second):
        assert set(figures) == {"accuracy", "f1_macro"}
        assert 0.0 <= figures["f1_macro"] <= 1.0 and 0.0 <= figures["accuracy"] <= 1.0
    # The rows differ between the seeds: the split itself is what the seed changes.
    splits = [create_tabular_datamodule(load_project("fetal_health", {"data_dir": str(ctg_dir), "data.split_seed": seed}))
              for seed in (42, 43)]
    assert len(splits[0].datasets["test"]) == len(splits[1].datasets["test"])
    assert splits[0].split_hash != splits[1].split_hash


def test_across_splits_averages_the_runs_and_keeps_each_one(quality):
    def run(seed, accuracy, f1, anchor):
        return {"dataset": "fetal_health", "split_seed": seed, "wall_s": 60.0, "trials": 20,
                "test": {"accuracy": accuracy, "roc_auc": 0.9, "f1_macro": f1}, "ci95": {"accuracy": (0.8, 0.9)},
                "anchor_same_split": {"accuracy": anchor, "f1_macro": anchor - 0.05}}

    runs = [run(42, 0.94, 0.90, 0.95), run(43, 0.96, 0.92, 0.97),
            {"dataset": "fetal_health", "split_seed": 44, "error": "medxp main exited 1", "wall_s": 5.0}]
    merged = quality.across_splits("fetal_health", runs)
    assert merged["split_seeds"] == [42, 43]  # the failed seed is listed among the runs, not averaged
    assert merged["test"]["accuracy"] == pytest.approx(0.95) and merged["test"]["f1_macro"] == pytest.approx(0.91)
    assert merged["anchor_same_split"] == {"accuracy": pytest.approx(0.96), "f1_macro": pytest.approx(0.91)}
    assert merged["ci95"] == {} and merged["per_split"] == runs
    assert merged["wall_s"] == pytest.approx(125.0) and merged["trials"] == 40
    merged["goals"] = quality.goal_check("fetal_health", merged)
    assert merged["goals"] == {"accuracy": True, "f1_macro": True}
    quality.print_table([merged])  # a mean has no bootstrap interval: printed without one
