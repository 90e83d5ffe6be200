"""bench/quality.py's figures for a data set without an official split (fetal health): the anchor refitted on
each split, and the mean over split seeds. On the project's GENERATED CTG demo CSV, never on real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from medxp.config import load_project
from medxp.data.synthetic_tabular import generate_ctg_demo
from medxp.data.tabular import create_tabular_datamodule
from tests.conftest import bench_script


@pytest.fixture(scope="module")
def quality():
    return bench_script("quality")


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


def test_across_seeds_averages_the_searches_keeps_their_range_and_checks_the_goal_on_the_mean(quality, capsys):
    def run(seed, accuracy, auc, best_trial, sensitivity, threshold):
        return {"dataset": "breastmnist", "seed": seed, "wall_s": 300.0, "trials": 48, "best_trial": best_trial,
                "test": {"accuracy": accuracy, "roc_auc": auc, "f1_macro": 0.8, "op_sensitivity": sensitivity,
                         "op_specificity": 0.7},
                "ci95": {"accuracy": (0.8, 0.9)}, "positive_class": "malignant", "threshold": threshold,
                "threshold_split": "valid"}

    runs = [run(42, 0.885, 0.910, "7", 0.88, 0.45), run(43, 0.879, 0.934, "12", 0.92, 0.27),
            {"dataset": "breastmnist", "seed": 44, "error": "medxp main exited 1", "wall_s": 5.0}]
    merged = quality.across_seeds(runs)
    assert merged["seeds"] == [42, 43]  # the failed search is listed, not averaged
    assert merged["test"]["accuracy"] == pytest.approx(0.882) and merged["test"]["roc_auc"] == pytest.approx(0.922)
    assert merged["range"]["roc_auc"] == (pytest.approx(0.910), pytest.approx(0.934))
    assert merged["ci95"] == {} and merged["per_seed"] == runs
    # Sensitivity is averaged too, each at its own run's validation threshold; the mean row shows their range.
    assert merged["test"]["op_sensitivity"] == pytest.approx(0.90) and merged["thresholds"] == [0.45, 0.27]
    assert quality.decision_rule(merged) == "malignant / 0.270-0.450 (valid)"
    assert merged["wall_s"] == pytest.approx(605.0) and merged["trials"] == 96
    # The goal is judged on the mean: accuracy 0.882 >= 0.88 and AUC 0.922 >= 0.92, although one run missed each.
    assert quality.goal_check("breastmnist", merged) == {"accuracy": True, "roc_auc": True}
    merged["goals"] = quality.goal_check("breastmnist", merged)
    quality.print_table([merged])
    printed = capsys.readouterr().out
    assert "seeds [42, 43]" in printed and "roc_auc 0.910-0.934" in printed
    assert "seed 44: medxp main exited 1" in printed
    assert "accuracy met (0.8820 vs 0.88), roc_auc met (0.9220 vs 0.92)" in printed


def test_a_seeded_search_passes_its_seed_to_training_and_the_sampler(quality, tmp_path, monkeypatch):
    seen = {}

    def fake_run(command, **kwargs):
        seen["command"] = command
        return type("Done", (), {"returncode": 3})()

    monkeypatch.setattr(quality.subprocess, "run", fake_run)
    args = type("Args", (), {"budget": 1.0, "data_dir": str(tmp_path), "set": []})()
    failed = quality.run_main("retinamnist", args, tmp_path, seed=43)
    command = seen["command"]
    assert "seed=43" in command and "search.seed=43" in command
    assert failed["seed"] == 43 and "exited 3" in failed["error"]
    assert (tmp_path / "retinamnist-seed43").is_dir()  # a store of its own
