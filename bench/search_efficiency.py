"""ASHA search vs the full grid of the glaucoma study: epochs spent and best validation metric.

The grid is the study's: 4 optimizers x 2 learning rates x 2 batch sizes, every run to the
full epoch budget. The search samples the same 16 points (a categorical space) with TPE and
lets ASHA stop the weak ones. Goal: within 0.5 point of the grid's best with <= 1/3 of its epochs.

A 0.5-point goal needs a validation split that can resolve it: by default the demo data has
1000 images per class in 5 folds, so each fold's validation split holds 400 images (a step of
0.25 point; `make run`'s 10-fold, 400-per-class data has 80, a step of 1.25 points). The search
is random (TPE's draws, which trials run side by side), so for each trial count it runs
`--repeats` times with seeds seed, seed+1, ... and every search's figures are reported.

    python bench/search_efficiency.py                  # about 30 minutes on 2 cores, 9 of them the grid
    python bench/search_efficiency.py --reuse-grid     # grid from the last results file with the same data/budget
    python bench/search_efficiency.py --quick          # smaller data and budget (a few minutes)
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
    parser.add_argument("--images-per-class", type=int, default=1000)
    parser.add_argument("--folds", type=int, default=5, help="demo folds: each split holds 1/folds of the images")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=25, help="the full budget (grid epochs, ASHA max_t)")
    parser.add_argument("--trials", type=int, nargs="+", default=[12, 16],
                        help="trials per search; each count runs --repeats searches")
    parser.add_argument("--repeats", type=int, default=3, help="searches, with seeds seed, seed+1, ...")
    parser.add_argument("--seed", type=int, default=42, help="the first search's sampler seed")
    parser.add_argument("--grace-period", type=int, default=3)
    parser.add_argument("--reduction-factor", type=float, default=3)
    parser.add_argument("--workers", type=int, default=2, help="grid runs / search trials at a time")
    parser.add_argument("--workdir", default="", help="data, MLflow and Optuna stores (default: a temp folder)")
    parser.add_argument("--reuse-grid", action="store_true",
                        help="take the grid from the results file when it was run on the same data and budget")
    args = parser.parse_args()
    if args.quick:
        args.images_per_class, args.folds, args.image_size, args.epochs = 100, 5, 32, 8
        args.trials, args.grace_period, args.repeats = [8], 2, 2
    return args


GRID_KEYS = ("images_per_class", "folds", "image_size", "epochs")


def base_overrides(args: argparse.Namespace, workdir: Path) -> dict:
    return {"data_dir": str(workdir / "data"), "data.demo_images_per_class": args.images_per_class,
            "data.demo_folds": args.folds,
            "data.demo_image_size": max(args.image_size, 48), "dataset.image_size": args.image_size,
            "epochs": args.epochs, "search.max_epochs": args.epochs, "patience": 0, "train.threads": 1, "eval.bootstrap_resamples": 50}


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


def saved_grid(args: argparse.Namespace, out: Path) -> dict | None:
    """The grid of an earlier run of this bench on the same data and budget, if asked for and there."""
    if not args.reuse_grid or not out.exists():
        return None
    saved = json.loads(out.read_text())
    if any(saved.get("args", {}).get(key) != getattr(args, key) for key in GRID_KEYS):
        print(f"{out}: grid was run on other data or budget; running it again")
        return None
    return saved["grid"]


def run_asha_search(args: argparse.Namespace, workdir: Path, trials: int, seed: int) -> dict:
    import mlflow

    from medxp.config import load_project
    from medxp.search import run_search

    space = workdir / "grid_space.yaml"
    space.write_text(f"optimizer: {{type: categorical, choices: {list(OPTIMIZERS)}}}\n"
                     f"lr: {{type: categorical, choices: {list(LEARNING_RATES)}}}\n"
                     f"batch_size: {{type: categorical, choices: {list(BATCH_SIZES)}}}\n")
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    config = load_project("glaucoma", {**base_overrides(args, workdir), "search.space": str(space),
                                       "search.n_trials": trials, "search.max_concurrent": args.workers,
                                       "search.grace_period": args.grace_period,
                                       "search.reduction_factor": args.reduction_factor, "search.seed": seed})
    started = time.monotonic()
    result = run_search(config, search_name=f"efficiency-{trials}trials-seed{seed}-{int(time.time())}")
    return {"trials": trials, "seed": seed, "best_value": result.best_value, "best": result.best_params, "epochs": result.epochs_total,
            "runs": result.trials_trained,
            "states": result.state_counts,
            "wall_s": time.monotonic() - started}


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="medxp-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    from medxp.config import load_project
    from medxp.data.datamodule import ensure_data

    out = RESULTS / f"search_efficiency{'_quick' if args.quick else ''}.json"
    ensure_data(load_project("glaucoma", base_overrides(args, workdir)))
    val_images = validation_images(workdir)
    grid = saved_grid(args, out)
    if grid is None:
        grid = run_grid(args, workdir)
        RESULTS.mkdir(exist_ok=True)  # saved at once: --reuse-grid can pick it up even if a search fails
        out.write_text(json.dumps({"args": vars(args), "validation_images": val_images, "grid": grid}, indent=2))
    searches = [run_asha_search(args, workdir, trials, args.seed + i) for trials in args.trials
                for i in range(args.repeats)]
    for search in searches:
        search["gap_points"] = (grid["best_value"] - search["best_value"]) * 100
        search["epochs_ratio"] = search["epochs"] / grid["epochs"]
        search["goal_met"] = round(search["gap_points"], 6) <= 0.5 and search["epochs_ratio"] <= 1 / 3
    print(f"\n{'method':<24} {'runs':>5} {'epochs':>7} {'ratio':>6} {'best val':>9} {'gap pt':>7} {'wall s':>7}  best")
    rows = [("grid", grid)] + [(f"asha {s['trials']} trials seed {s['seed']}", s) for s in searches]
    for name, row in rows:
        gap, ratio = row.get("gap_points", 0.0), row["epochs"] / grid["epochs"]
        print(f"{name:<24} {row['runs']:>5} {row['epochs']:>7} {ratio:>6.2f} {row['best_value']:>9.4f} {gap:>7.2f} "
              f"{row['wall_s']:>7.0f}  {row['best']}")
    print(f"\nvalidation split: {val_images} images (one image = {100 / max(val_images, 1):.2f} points)")
    summary = {}
    for trials in args.trials:
        runs = [s for s in searches if s["trials"] == trials]
        summary[trials] = {"goal_met": sum(s["goal_met"] for s in runs), "searches": len(runs),
                           "mean_gap_points": sum(s["gap_points"] for s in runs) / len(runs),
                           "mean_epochs_ratio": sum(s["epochs_ratio"] for s in runs) / len(runs)}
        print(f"{trials} trials: goal (gap <= 0.5 point with epochs ratio <= 0.33) met in "
              f"{summary[trials]['goal_met']} of {len(runs)} searches; mean gap "
              f"{summary[trials]['mean_gap_points']:.2f} points, mean ratio {summary[trials]['mean_epochs_ratio']:.2f}")
    out.write_text(json.dumps({"args": vars(args), "validation_images": val_images, "grid": grid,
                               "searches": searches, "summary": summary}, indent=2))
    print(f"wrote {out}")


def validation_images(workdir: Path) -> int:
    """Images in the validation split both methods score on (fold 0's `valid` folder)."""
    return sum(1 for path in (workdir / "data").rglob("Fold0/valid/*/*") if path.is_file())


if __name__ == "__main__":
    main()
