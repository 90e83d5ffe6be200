"""bench/search_efficiency.py --replay: both searches played over a grid's recorded curves, through real Ray Tune.

The grid here is made up (16 points, 4 epochs each; no training): what is checked is that the replay
reports what each method's real trial would, vanilla each epoch's own value, medxp the value of the
epoch its early stopping would hand back, and that epochs and best values are counted from those reports.
"""

from __future__ import annotations

import itertools

import pytest

from tests.conftest import bench_script

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench():
    return bench_script("search_efficiency")


def made_up_grid(bench) -> dict:
    """Every point's loss is lowest at epoch 1 or 4; its own accuracy peaks at epoch 2 or 3, where the loss is worse."""
    points = []
    for index, (optimizer, lr, batch_size) in enumerate(itertools.product(bench.OPTIMIZERS, bench.LEARNING_RATES,
                                                                          bench.BATCH_SIZES)):
        base = 0.6 + index / 100
        losses = [0.5, 0.6, 0.7, 0.4] if index % 2 else [0.3, 0.5, 0.4, 0.6]
        accuracies = [base, base + 0.2, base + 0.1, base + 0.05]
        curve = [{"epoch": float(epoch), "val_loss": loss, "val_accuracy": accuracy}
                 for epoch, (loss, accuracy) in enumerate(zip(losses, accuracies), start=1)]
        best = min(range(4), key=lambda i: losses[i])
        points.append({"optimizer": optimizer, "lr": lr, "batch_size": batch_size, "objective": accuracies[best],
                       "epochs": 4, "monitor": "val_loss", "curve": curve})
    best = max(points, key=lambda p: p["objective"])
    return {"points": points, "best_value": best["objective"], "epochs": 64, "runs": 16}


def handed_back(curve: list[dict], epoch: int) -> float:
    seen = curve[:epoch]
    return min(seen, key=lambda row: (row["val_loss"], row["epoch"]))["val_accuracy"]


def test_the_replay_reports_what_each_methods_trial_would(bench, tmp_path):
    args = bench.parse_args(["--data", "demo", "--trials", "5", "--epochs", "4", "--grace-period", "1",
                             "--reduction-factor", "2", "--replay", "1", "--replay-tick", "0",
                             "--workdir", str(tmp_path)])
    grid = made_up_grid(bench)
    curves = {bench.point_key(point): point for point in grid["points"]}
    replays = bench.replay_all(args, tmp_path, grid)
    assert [(r["method"], r["trials"]) for r in replays] == [("vanilla", 5), ("medxp", 5)]
    for replay in replays:
        reports = replay["reports"]
        assert reports and replay["runs"] <= 5
        for report in reports:
            point = curves[report["point"]]
            if report["finished"]:
                assert report["epoch"] == 4 and report["value"] == point["objective"]
            elif replay["method"] == "vanilla":
                assert report["value"] == point["curve"][report["epoch"] - 1]["val_accuracy"]
            else:
                assert report["value"] == handed_back(point["curve"], report["epoch"])
        per_trial = {}
        for report in reports:
            per_trial[report["trial"]] = max(per_trial.get(report["trial"], 0), report["epoch"])
        assert replay["epochs"] == sum(per_trial.values()) == len(reports)
        finished = [report["value"] for report in reports if report["finished"]]
        assert replay["best_value"] == (max(finished) if finished else None)
    # medxp's reports past epoch 1 are not the epochs' own values (its trial reports the handed-back epoch's).
    medxp = next(r for r in replays if r["method"] == "medxp")
    assert any(report["value"] != curves[report["point"]]["curve"][report["epoch"] - 1]["val_accuracy"]
               for report in medxp["reports"] if not report["finished"] and report["epoch"] >= 2)
    summary = bench.replay_report(args, grid, replays)
    assert summary["medxp_5"]["searches"] == summary["vanilla_5"]["searches"] == 1
    assert sum(summary["medxp_vs_vanilla_5"][k] for k in ("higher", "equal", "lower")) == 1
