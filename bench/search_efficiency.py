"""ASHA search vs the full grid of the glaucoma study: epochs spent and best validation metric.

The grid is the study's: 4 optimizers x 2 learning rates x 2 batch sizes, every run to the
full epoch budget. The search samples the same 16 points (a categorical space) with TPE and
lets ASHA stop the weak ones. Goal: within 0.5 point of the grid's best with <= 1/3 of its epochs.

    python bench/search_efficiency.py            # demo data as `make run` uses it
    python bench/search_efficiency.py --quick    # smaller data and budget (a few minutes)
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

OPTIMIZERS = ("adam", "sgd", "adadelta", "adagrad")
LEARNING_RATES = (0.001, 0.01)
BATCH_SIZES = (32, 64)
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 images per class, 32 px, 8 epochs, 6 trials")
    parser.add_argument("--images-per-class", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=25, help="the full budget (grid epochs, ASHA max_t)")
    parser.add_argument("--trials", type=int, default=8, help="search trials")
    parser.add_argument("--grace-period", type=int, default=3)
    parser.add_argument("--reduction-factor", type=float, default=3)
    parser.add_argument("--workers", type=int, default=2, help="grid runs / search trials at a time")
    parser.add_argument("--workdir", default="", help="data, MLflow and Optuna stores (default: a temp folder)")
    args = parser.parse_args()
    if args.quick:
        args.images_per_class, args.image_size, args.epochs, args.trials, args.grace_period = 100, 32, 8, 6, 2
    return args


def base_overrides(args: argparse.Namespace, workdir: Path) -> dict:
    return {"data_dir": str(workdir / "data"), "data.demo_images_per_class": args.images_per_class,
            "data.demo_image_size": max(args.image_size, 48), "dataset.image_size": args.image_size,
            "epochs": args.epochs, "patience": 0, "train.threads": 1, "eval.bootstrap_resamples": 50}


def grid_point(job: tuple[dict, str, float, int]) -> dict:
    """One grid run without tracking: its validation objective and epochs."""
    from medxp.config import load_project
    from medxp.pipeline import run_experiment
    from medxp.tracking import NullTracker

    overrides, optimizer, lr, batch_size = job
    config = load_project("glaucoma", {**overrides, "optimizer": optimizer, "lr": lr, "batch_size": batch_size})
    result = run_experiment(config, NullTracker(), log_model=False, progress=False)
    return {"optimizer": optimizer, "lr": lr, "batch_size": batch_size, "objective": result.objective,
            "epochs": len(result.fit.history)}


def run_grid(args: argparse.Namespace, workdir: Path) -> dict:
    overrides = base_overrides(args, workdir)
    jobs = [(overrides, *point) for point in itertools.product(OPTIMIZERS, LEARNING_RATES, BATCH_SIZES)]
    started = time.monotonic()
    with ProcessPoolExecutor(args.workers) as pool:
        points = list(pool.map(grid_point, jobs))
    best = max(points, key=lambda p: p["objective"])
    return {"best_value": best["objective"], "best": best, "epochs": sum(p["epochs"] for p in points),
            "runs": len(points), "wall_s": time.monotonic() - started, "points": points}


def run_asha_search(args: argparse.Namespace, workdir: Path) -> dict:
    import mlflow

    from medxp.config import load_project
    from medxp.search import run_search

    space = workdir / "grid_space.yaml"
    space.write_text(f"optimizer: {{type: categorical, choices: {list(OPTIMIZERS)}}}\n"
                     f"lr: {{type: categorical, choices: {list(LEARNING_RATES)}}}\n"
                     f"batch_size: {{type: categorical, choices: {list(BATCH_SIZES)}}}\n")
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    config = load_project("glaucoma", {**base_overrides(args, workdir), "search.space": str(space),
                                       "search.n_trials": args.trials, "search.max_concurrent": args.workers,
                                       "search.grace_period": args.grace_period,
                                       "search.reduction_factor": args.reduction_factor})
    started = time.monotonic()
    result = run_search(config, search_name=f"efficiency-{int(time.time())}")
    return {"best_value": result.best_value, "best": result.best_params, "epochs": result.epochs_total,
            "runs": sum(result.state_counts.values()), "states": result.state_counts,
            "wall_s": time.monotonic() - started}


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="medxp-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    from medxp.config import load_project
    from medxp.data.datamodule import ensure_data

    ensure_data(load_project("glaucoma", base_overrides(args, workdir)))
    grid = run_grid(args, workdir)
    search = run_asha_search(args, workdir)
    gap = (grid["best_value"] - search["best_value"]) * 100
    ratio = search["epochs"] / grid["epochs"]
    print(f"\n{'method':<10} {'runs':>5} {'epochs':>7} {'best val':>9} {'wall s':>8}")
    for name, row in (("grid", grid), ("asha", search)):
        print(f"{name:<10} {row['runs']:>5} {row['epochs']:>7} {row['best_value']:>9.4f} {row['wall_s']:>8.0f}")
    print(f"\ngap to grid best: {gap:+.2f} points (goal <= 0.5); epochs ratio: {ratio:.2f} (goal <= 0.33)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"search_efficiency{'_quick' if args.quick else ''}.json"
    out.write_text(json.dumps({"args": vars(args), "grid": grid, "search": search, "gap_points": gap,
                               "epochs_ratio": ratio, "goal_met": gap <= 0.5 and ratio <= 1 / 3}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
