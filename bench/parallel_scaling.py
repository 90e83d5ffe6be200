"""Search throughput: trials per hour with 1 and with 2 concurrent trials (goal: >= 1.6x).

Both runs sample the same configurations (seeded random sampler) and prune nothing
(grace period = max epochs), so the only difference is concurrency.

    python bench/parallel_scaling.py           # 6 trials x 15 epochs, 400 images per class: the glaucoma
                                               # small CNN's search workload (experiment small_cnn)
    python bench/parallel_scaling.py --quick   # 4 trials x 4 epochs, 64 images per class
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--images-per-class", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workdir", default="")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.epochs, args.images_per_class, args.image_size = 4, 4, 64, 32
    return args


def measure(args: argparse.Namespace, workdir: Path, concurrent: int) -> dict:
    from medxp.config import load_project
    from medxp.search import run_search
    from medxp.search.runner import start_ray

    import ray

    config = load_project("glaucoma", {
        "data_dir": str(workdir / "data"), "data.demo_images_per_class": args.images_per_class,
        "data.demo_image_size": max(args.image_size, 48), "dataset.image_size": args.image_size,
        "epochs": args.epochs, "search.max_epochs": args.epochs, "patience": 0, "eval.bootstrap_resamples": 50,
        "search.n_trials": args.trials,
        "search.max_concurrent": concurrent, "search.grace_period": args.epochs, "search.sampler": "random",
        "search.cpus_per_trial": 1}, experiment="small_cnn")  # short small-CNN trials, as before the ImageNet default
    start_ray()  # started outside the timing: both runs pay the same start-up once
    started = time.monotonic()
    try:
        result = run_search(config, search_name=f"scaling-{concurrent}-{int(time.time())}")
    finally:
        wall = time.monotonic() - started
        ray.shutdown()
    trained = result.trials_trained
    return {"concurrent": concurrent, "trials": trained, "states": result.state_counts,
            "wall_s": wall, "trials_per_hour": 3600 * trained / wall}


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="medxp-bench-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    import mlflow

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    rows = [measure(args, workdir, n) for n in args.concurrency]
    print(f"\n{'concurrent':>10} {'trials':>7} {'wall s':>8} {'trials/h':>9} {'speed-up':>9}")
    for row in rows:
        row["speedup"] = row["trials_per_hour"] / rows[0]["trials_per_hour"]
        print(f"{row['concurrent']:>10} {row['trials']:>7} {row['wall_s']:>8.0f} {row['trials_per_hour']:>9.1f} "
              f"{row['speedup']:>8.2f}x")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"parallel_scaling{'_quick' if args.quick else ''}.json"
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print(f"wrote {out} (goal: >= 1.6x with 2 concurrent trials)")


if __name__ == "__main__":
    main()
