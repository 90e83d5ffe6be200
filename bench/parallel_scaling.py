"""Search throughput: trials per hour with 1 and with 2 concurrent trials (goal: >= 1.6x).

Both runs sample the same configurations (seeded random sampler) and prune nothing
(grace period = max epochs), so the only difference is concurrency. Beside the whole search's
figure it prints where the time went, from the trial runs' own start and end times: the start-up
(search start to the first trial run: Tune, the trial actors' process start and imports, the first
data load, paid once by both runs), the trial phase (first trial run opened to last closed) and
the wind-down, and the speed-up over the trial phase alone; inside the trial phase, the trial runs'
durations summed (what sharing the cores costs each trial) and the share of the lanes they fill
(what waiting for the last trials costs).

    python bench/parallel_scaling.py           # 6 trials x 15 epochs, 400 images per class: the glaucoma
                                               # small CNN's search workload (experiment small_cnn)
    python bench/parallel_scaling.py --quick   # 4 trials x 4 epochs, 64 images per class
    python bench/parallel_scaling.py --epochs 8 --images-per-class 200 --repeats 3   # short trials, medians of 3
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
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
    parser.add_argument("--repeats", type=int, default=1, help="run every concurrency this many times; medians printed")
    parser.add_argument("--workdir", default="")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.epochs, args.images_per_class, args.image_size = 4, 4, 64, 32
    return args


def measure(args: argparse.Namespace, workdir: Path, concurrent: int) -> dict:
    import mlflow
    import optuna
    from mlflow.tracking import MlflowClient

    from medxp.config import load_project
    from medxp.data import create_datamodule
    from medxp.search.study import default_storage
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
    # Outside the timing, as Ray's start: the demo images generated and their decoded cache filled, the
    # MLflow and Optuna stores created, once, so that neither run pays what only the first would.
    create_datamodule(config)
    MlflowClient().search_experiments()
    optuna.storages.RDBStorage(default_storage(mlflow.get_tracking_uri()))
    start_ray()  # started outside the timing: both runs pay the same start-up once
    started, started_at = time.monotonic(), time.time()
    try:
        result = run_search(config, search_name=f"scaling-{concurrent}-{int(time.time())}")
    finally:
        wall = time.monotonic() - started
        ray.shutdown()
    trained = result.trials_trained
    return {"concurrent": concurrent, "trials": trained, "states": result.state_counts,
            "wall_s": wall, "trials_per_hour": 3600 * trained / wall,
            **phases(result.parent_run_id, started_at, wall, concurrent)}


def phases(parent_run_id: str, started_at: float, wall: float, concurrent: int) -> dict[str, float]:
    """Where the wall time went, from the trial runs' own start and end times: `startup_s` (search start to the
    first trial run: Tune, the trial actors' start and imports, the first data load), `trials_s` (first trial
    run opened to last closed) and `wind_down_s` (the rest: the driver's closing of the search).

    Inside the trial phase: `run_s`, the trial runs' durations summed (more than with 1 concurrent trial: the
    trials share the cores with each other, the driver and Ray), and `lanes_busy`, the share of the phase's
    `concurrent` x `trials_s` lane-seconds that trial runs fill (below 1: a lane waits, e.g. the last trial
    runs alone)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=1000)
    times = [(run.info.start_time / 1000, run.info.end_time / 1000) for run in runs if run.info.end_time]
    if not times:
        return {}
    first, last = min(start for start, _ in times), max(end for _, end in times)
    run_s = sum(end - start for start, end in times)
    return {"startup_s": first - started_at, "trials_s": last - first, "wind_down_s": started_at + wall - last,
            "run_s": run_s, "lanes_busy": run_s / (concurrent * (last - first))}


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="medxp-bench-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    import mlflow

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    # Each repeat runs every concurrency in turn; a 2-core machine's figures vary from run to run.
    repeats = [[measure(args, workdir, n) for n in args.concurrency] for _ in range(args.repeats)]
    print(f"\n{'repeat':>6} {'concurrent':>10} {'trials':>7} {'wall s':>8} {'trials/h':>9} {'speed-up':>9}   "
          f"{'start-up s':>10} {'trials s':>9} {'wind-down s':>11} {'trial-phase speed-up':>21} {'trial runs s':>12} "
          f"{'lanes busy':>10}")
    for number, rows in enumerate(repeats, 1):
        for row in rows:
            row["speedup"] = row["trials_per_hour"] / rows[0]["trials_per_hour"]
            if row.get("trials_s") and rows[0].get("trials_s"):  # the same trials: the phase's speed-up
                row["trial_phase_speedup"] = ((rows[0]["trials_s"] / rows[0]["trials"])
                                              / (row["trials_s"] / row["trials"]))
            nan = float("nan")
            print(f"{number:>6} {row['concurrent']:>10} {row['trials']:>7} {row['wall_s']:>8.0f} "
                  f"{row['trials_per_hour']:>9.1f} {row['speedup']:>8.2f}x   {row.get('startup_s', nan):>10.1f} "
                  f"{row.get('trials_s', nan):>9.1f} {row.get('wind_down_s', nan):>11.1f} "
                  f"{row.get('trial_phase_speedup', nan):>20.2f}x {row.get('run_s', nan):>12.1f} "
                  f"{row.get('lanes_busy', nan):>10.2f}")
    medians = {}
    for index, concurrent in enumerate(args.concurrency):
        medians[concurrent] = {key: statistics.median(rows[index].get(key, float("nan")) for rows in repeats)
                               for key in ("speedup", "trial_phase_speedup")}
        median = medians[concurrent]
        print(f"median over {args.repeats} repeat(s), {concurrent} concurrent: speed-up {median['speedup']:.2f}x, "
              f"trial-phase speed-up {median['trial_phase_speedup']:.2f}x")
    print("speed-up: trials per hour over the whole search (the goal's figure); trial-phase speed-up: over the span "
          "from the first trial run opened to the last closed, without the start-up both runs pay once; trial runs s: "
          "the trial runs' durations summed (the same trials: above the 1-trial figure, the share the cores cost); "
          "lanes busy: trial runs s / (concurrent x trials s)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"parallel_scaling{'_quick' if args.quick else ''}.json"
    out.write_text(json.dumps({"args": vars(args), "repeats": repeats, "medians": medians}, indent=2))
    print(f"wrote {out} (goal: >= 1.6x with 2 concurrent trials)")


if __name__ == "__main__":
    main()
