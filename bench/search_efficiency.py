"""The glaucoma study's grid vs vanilla Ray Tune + Optuna + ASHA vs medxp's search: epochs and best accuracy.

Three ways to tune the same 16 points (4 optimizers x 2 learning rates x 2 batch sizes, a
categorical space), with the same training code (`medxp.pipeline.run_experiment`, seeded):

  grid     the glaucoma study's hand-written grid: every point trained to the full epoch budget
           (`patience=0`: no early stopping), 2 at a time;
  vanilla  what a user would write instead of medxp: `ray.tune.Tuner` with `OptunaSearch` (TPE,
           seeded, the same startup trials as medxp's) and `ASHAScheduler`, a function trainable
           calling `run_experiment` with a `NullTracker` and a trainer callback that calls
           `tune.report` every epoch (the last epoch is reported with the final evaluation, as
           medxp's trials do, so ASHA cannot stop a trial that has trained its whole budget);
  medxp    `medxp.search.run_search`: the same sampler and ASHA settings, plus medxp's search
           machinery (pruned trials recorded as PRUNED, repeated proposals not trained again,
           rungs revisited).

Vanilla and medxp get the same trial budget (trials trained), epoch cap (ASHA's max_t), grace
period, reduction factor, 2 concurrent trials of 1 CPU each and `train.threads=1`; each runs
`--repeats` times with seeds seed, seed+1, ... (TPE's draws and which trials run side by side
make a search random). Epochs are counted as trained: a trial ASHA stopped at a rung counts the
epochs it ran.

The metric, for all three, is validation accuracy (`eval.primary_metric=accuracy`: the search
objective and the best value; accuracy at the arg-max, no threshold, so the positive class does not
enter it), of the weights training hands back (the best `val_loss` epoch's), on the data's
validation split. A point's value is that of its finished run; a trial ASHA stopped has none.

Data (`--data`):
  pneumoniamnist  PneumoniaMNIST (`pneumoniamnist.npz` in `--data-dir`, default ../shared/data
                  beside the checkout), project `pneumoniamnist`: 524 validation images (one image
                  = 0.19 point), 10 epochs; goal: medxp within 0.3 point of the grid's best with
                  <= 25% of its epochs. Without the file the bench says so and exits (status 0).
  demo            generated glaucoma fundus images (GENERATED DEMO DATA, project `glaucoma`):
                  1000 per class in 5 folds (400 validation images), 25 epochs; goal: within 0.5
                  point with <= 1/3 of the grid's epochs.
The default is pneumoniamnist when its file is there, else demo. On both, the goal against
vanilla is a higher best at the same epochs spent: for each trial count and seed, both searches'
best finished value once they have spent E = min(medxp's epochs, vanilla's epochs) epochs in all
(epochs and completions taken in time order).

    python bench/search_efficiency.py               # pneumoniamnist: about 30 min on 2 quiet cores (grid about 5 min,
                                                    # a search of 8 trials 1-2.5 min, of 12 trials 1.5-3 min)
    python bench/search_efficiency.py --data demo   # generated data: about 50 minutes
    python bench/search_efficiency.py --reuse-grid  # the grid from the last results file of the same data, budget
                                                    # and project defaults
    python bench/search_efficiency.py --quick       # a tiny budget, a smoke check: 5 to 15 minutes
    python bench/search_efficiency.py --reuse-grid --replay 20 --replay-only   # 20 seeds of both searches
                                                    # replayed over the grid's curves: about 15 minutes

Replay (`--replay N`): a grid point trains the same way every time (same seed, one thread), so its
recorded per-epoch curve is what a search's trial of that point would see. The replay runs N more
searches per method and trial count, seeds seed, seed+1, ..., through the same Tune samplers,
schedulers and per-epoch reports as the real searches, with each trial's training replaced by its
point's curve (`--replay-tick` seconds an epoch; medxp's trial runs the trainer's early stopping and
its `TuneReporter` on the recorded epochs). Only which trials run side by side differs from real
searches. Three real searches per method are a handful of draws of a lottery over 16 points; the
replay gives the odds.

Writes bench/results/search_efficiency_<data>.json (`_quick` appended with --quick).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

OPTIMIZERS = ("adam", "sgd", "adadelta", "adagrad")
LEARNING_RATES = (0.001, 0.01)
BATCH_SIZES = (32, 64)
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PRIMARY_METRIC = "accuracy"
EPOCH_METRIC = "val_accuracy"  # what the trainer reports every epoch for `accuracy`

# Per data: the project, its file (None: generated), the full and --quick budgets, the goal against the grid.
DATA = {
    "pneumoniamnist": {
        "project": "pneumoniamnist", "file": "pneumoniamnist.npz",
        "full": {"epochs": 10, "trials": [8, 12], "grace_period": 1, "reduction_factor": 3, "repeats": 3},
        "quick": {"epochs": 3, "trials": [4], "grace_period": 1, "reduction_factor": 3, "repeats": 2},
        "goal": {"gap_points": 0.3, "epochs_ratio": 0.25},
    },
    "demo": {
        "project": "glaucoma", "file": None,
        "full": {"epochs": 25, "trials": [12, 16], "grace_period": 3, "reduction_factor": 3, "repeats": 3,
                 "images_per_class": 1000, "folds": 5, "image_size": 64},
        "quick": {"epochs": 8, "trials": [8], "grace_period": 2, "reduction_factor": 3, "repeats": 2,
                  "images_per_class": 100, "folds": 5, "image_size": 32},
        "goal": {"gap_points": 0.5, "epochs_ratio": 1 / 3},
    },
}
# The glaucoma study's grid trained a small CNN from scratch: its project's small_cnn experiment, not
# the project's default ImageNet fine-tune.
EXPERIMENT = {"glaucoma": "small_cnn"}
BUDGET_KEYS = ("epochs", "trials", "grace_period", "reduction_factor", "repeats", "images_per_class", "folds",
               "image_size")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=sorted(DATA), default=None,
                        help="pneumoniamnist (real; the default when its file is in --data-dir) or demo (generated)")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"),
                        help="folder holding pneumoniamnist.npz (default: ../shared/data)")
    parser.add_argument("--quick", action="store_true", help="a tiny budget: a smoke check of the bench")
    parser.add_argument("--epochs", type=int, help="the full budget (grid epochs, ASHA max_t)")
    parser.add_argument("--trials", type=int, nargs="+", help="trials per search; each count runs --repeats searches")
    parser.add_argument("--repeats", type=int, help="searches per trial count and method, seeds seed, seed+1, ...")
    parser.add_argument("--seed", type=int, default=42, help="the first search's sampler seed")
    parser.add_argument("--grace-period", type=int)
    parser.add_argument("--reduction-factor", type=float)
    parser.add_argument("--images-per-class", type=int, help="demo only")
    parser.add_argument("--folds", type=int, help="demo only: each split holds 1/folds of the images")
    parser.add_argument("--image-size", type=int, help="demo only")
    parser.add_argument("--workers", type=int, default=2, help="grid runs / search trials at a time (1 CPU each)")
    parser.add_argument("--workdir", default="", help="demo data, MLflow and Optuna stores (default: a temp folder)")
    parser.add_argument("--reuse-grid", action="store_true",
                        help="take the grid from the results file when it was run on the same data and budget")
    parser.add_argument("--replay", type=int, default=0, metavar="N",
                        help="also replay N searches per method and trial count over the grid's recorded curves "
                             "(seeds seed, seed+1, ...): the same samplers, schedulers and reports, no training")
    parser.add_argument("--replay-tick", type=float, default=0.2, help="seconds a replayed epoch takes")
    parser.add_argument("--replay-only", action="store_true", help="the grid and the replay, no real searches")
    args = parser.parse_args(argv)
    real_file = Path(args.data_dir) / DATA["pneumoniamnist"]["file"]
    if args.data is None:
        args.data = "pneumoniamnist" if real_file.is_file() else "demo"
    budget = DATA[args.data]["quick" if args.quick else "full"]
    for key in BUDGET_KEYS:
        if getattr(args, key, None) is None:
            setattr(args, key, budget.get(key))
    return args


def data_file(args: argparse.Namespace) -> Path | None:
    name = DATA[args.data]["file"]
    return Path(args.data_dir).resolve() / name if name else None


def base_overrides(args: argparse.Namespace, workdir: Path) -> dict:
    """The settings every run of all three methods shares (the sampled three are added to them)."""
    shared = {"epochs": args.epochs, "search.max_epochs": args.epochs, "search.grace_period": args.grace_period,
              "search.reduction_factor": args.reduction_factor, "patience": 0, "train.threads": 1,
              "eval.primary_metric": PRIMARY_METRIC, "eval.bootstrap_resamples": 50}
    if args.data == "demo":
        return {**shared, "data_dir": str(workdir / "data"), "data.demo_images_per_class": args.images_per_class,
                "data.demo_folds": args.folds, "data.demo_image_size": max(args.image_size, 48),
                "dataset.image_size": args.image_size}
    return {**shared, "data_dir": str(data_file(args).parent)}


def grid_key(args: argparse.Namespace) -> dict:
    """What the grid's figures depend on: a saved grid with another key is run again."""
    from medxp.config import load_project
    from medxp.flows.series import config_hash

    # The project's resolved defaults (class weights, schedule, model...) the grid trained with.
    defaults = load_project(project(args), experiment=EXPERIMENT.get(project(args)))
    key = {"data": args.data, "epochs": args.epochs, "project_sha256": config_hash(defaults)[:16]}
    if args.data == "demo":
        key.update(images_per_class=args.images_per_class, folds=args.folds, image_size=args.image_size)
    else:
        key["file"] = str(data_file(args))
    return key


def project(args: argparse.Namespace) -> str:
    return DATA[args.data]["project"]


# --- 1. the grid ---------------------------------------------------------------------------------------------

def grid_point(job: tuple[str, dict, str, float, int]) -> dict:
    """One grid run without tracking: its validation accuracy and epochs."""
    from medxp.config import load_project
    from medxp.pipeline import run_experiment
    from medxp.tracking import NullTracker

    name, overrides, optimizer, lr, batch_size = job
    started = time.monotonic()
    config = load_project(name, {**overrides, "optimizer": optimizer, "lr": lr, "batch_size": batch_size},
                          experiment=EXPERIMENT.get(name))
    result = run_experiment(config, NullTracker(), log_model=False, progress=False)
    # Each epoch's validation values (the monitor among them): what --replay plays back.
    curve = [{key: float(value) for key, value in row.items() if key == "epoch" or key.startswith("val_")}
             for row in result.fit.history]
    return {"optimizer": optimizer, "lr": lr, "batch_size": batch_size, "objective": result.objective,
            "epochs": len(result.fit.history), "validation_images": len(result.data.datasets["valid"]),
            "wall_s": time.monotonic() - started, "monitor": config.train.monitor, "curve": curve}


def run_grid(args: argparse.Namespace, workdir: Path) -> dict:
    overrides = base_overrides(args, workdir)
    jobs = [(project(args), overrides, *point) for point in itertools.product(OPTIMIZERS, LEARNING_RATES, BATCH_SIZES)]
    started = time.monotonic()
    with ProcessPoolExecutor(args.workers) as pool:
        points = list(pool.map(grid_point, jobs))
    best = max(points, key=lambda p: p["objective"])
    return {"best_value": best["objective"], "best": {k: best[k] for k in ("optimizer", "lr", "batch_size")},
            "epochs": sum(p["epochs"] for p in points), "runs": len(points), "wall_s": time.monotonic() - started,
            "validation_images": points[0]["validation_images"], "key": grid_key(args), "points": points}


def saved_grid(args: argparse.Namespace, out: Path) -> dict | None:
    """The grid of an earlier run of this bench on the same data, budget and project defaults, if asked for and there."""
    if not args.reuse_grid or not out.exists():
        return None
    grid = json.loads(out.read_text()).get("grid", {})
    if grid.get("key") != grid_key(args):
        print(f"{out}: grid was run on other data or budget; running it again")
        return None
    if args.replay and not all("curve" in point for point in grid.get("points", [])):
        print(f"{out}: the saved grid has no per-epoch curves to replay; running it again")
        return None
    return grid


# --- 2. vanilla Ray Tune + OptunaSearch + ASHAScheduler --------------------------------------------------------

def vanilla_trial(params: dict, *, name: str, overrides: dict) -> None:
    """The function trainable a user would write: `run_experiment` with a callback reporting every epoch."""
    from ray import tune

    from medxp.config import load_project
    from medxp.pipeline import run_experiment
    from medxp.tracking import NullTracker

    class EpochReporter:
        def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
            if trainer.should_stop or epoch >= trainer.config.epochs:
                return  # the last epoch goes with the final evaluation below
            tune.report({EPOCH_METRIC: float(metrics[EPOCH_METRIC]), "epoch": epoch, "reported_at": time.time()})

    config = load_project(name, {**overrides, **params}, experiment=EXPERIMENT.get(name))
    result = run_experiment(config, NullTracker(), callbacks=[EpochReporter()], log_model=False, progress=False)
    tune.report({EPOCH_METRIC: float(result.objective), "epoch": len(result.fit.history), "finished": True,
                 "reported_at": time.time()})


def vanilla_search_setup(args: argparse.Namespace, seed: int, startup_trials: int) -> tuple[Any, Any, dict]:
    """What a user writes for Tune: OptunaSearch (TPE, seeded, medxp's startup trials), ASHA on `epoch`, and the
    grid's three keys as `tune.choice`; the real and the replayed vanilla searches both run it."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials))
    scheduler = ASHAScheduler(time_attr="epoch", max_t=args.epochs, grace_period=args.grace_period,
                              reduction_factor=args.reduction_factor)
    space = {"optimizer": tune.choice(list(OPTIMIZERS)), "lr": tune.choice(list(LEARNING_RATES)),
             "batch_size": tune.choice(list(BATCH_SIZES))}
    return searcher, scheduler, space


def run_vanilla_search(args: argparse.Namespace, workdir: Path, trials: int, seed: int) -> dict:
    import ray
    from ray import tune

    from medxp.config import load_project

    overrides = base_overrides(args, workdir)
    name = project(args)
    startup_trials = load_project(name, overrides, experiment=EXPERIMENT.get(name)).search.startup_trials

    class Recorder(tune.Callback):
        """Driver side: every result each trial reported (the bench's measurement, not part of the search)."""

        def __init__(self) -> None:
            self.rows: list[dict] = []

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            self.rows.append({"trial": trial.trial_id, "epoch": int(result["epoch"]), "value": result[EPOCH_METRIC],
                              "finished": bool(result.get("finished")), "t": result["reported_at"],
                              "params": {key: trial.config[key] for key in ("optimizer", "lr", "batch_size")}})

    recorder = Recorder()
    started = time.monotonic()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        searcher, scheduler, space = vanilla_search_setup(args, seed, startup_trials)
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(vanilla_trial, name=project(args), overrides=overrides),
                                {"cpu": 1}),
            param_space=space,
            tune_config=tune.TuneConfig(metric=EPOCH_METRIC, mode="max", search_alg=searcher, scheduler=scheduler,
                                        num_samples=trials, max_concurrent_trials=args.workers),
            run_config=tune.RunConfig(name=f"vanilla-{trials}trials-seed{seed}-{int(time.time())}",
                                      storage_path=str(workdir / "ray_results"), verbose=0, callbacks=[recorder],
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
        grid = tuner.fit()
        if grid.errors:
            raise RuntimeError(f"vanilla search: {len(grid.errors)} trial(s) failed; first: {grid.errors[0]}")
        tune_pick = grid.get_best_result()  # what Tune hands a user: the best last reported value
    finally:
        ray.shutdown()
    wall = time.monotonic() - started
    rows = recorder.rows
    per_trial: dict[str, dict] = {}
    for row in rows:
        entry = per_trial.setdefault(row["trial"], {"params": row["params"], "epochs": 0, "value": None})
        entry["epochs"] = max(entry["epochs"], row["epoch"])
        if row["finished"]:
            entry["value"] = row["value"]
    finished = [t for t in per_trial.values() if t["value"] is not None]
    best = max(finished, key=lambda t: t["value"]) if finished else None
    seen = [json.dumps(trial["params"], sort_keys=True) for trial in per_trial.values()]
    events = [(row["t"], "epoch", None) for row in rows] + [(row["t"], "done", row["value"]) for row in rows
                                                              if row["finished"]]
    return {"method": "vanilla", "trials": trials, "seed": seed,
            "best_value": best["value"] if best else None, "best": best["params"] if best else {},
            "epochs": sum(t["epochs"] for t in per_trial.values()), "runs": len(per_trial),
            "states": {"finished": len(finished), "stopped": len(per_trial) - len(finished)}, "full": len(finished),
            "repeated_points": len(seen) - len(set(seen)),
            "tune_best": {"params": {k: tune_pick.config[k] for k in ("optimizer", "lr", "batch_size")},
                          "value": tune_pick.metrics.get(EPOCH_METRIC), "epoch": tune_pick.metrics.get("epoch"),
                          "finished": bool(tune_pick.metrics.get("finished"))},
            "wall_s": wall, "events": sorted(events, key=event_order)}


# --- 3. medxp's search -----------------------------------------------------------------------------------------

def run_medxp_search(args: argparse.Namespace, workdir: Path, trials: int, seed: int) -> dict:
    import mlflow
    import optuna
    from mlflow.tracking import MlflowClient

    from medxp.config import load_project
    from medxp.search import run_search
    from medxp.search.study import DUPLICATE_OF

    space = grid_space(workdir)
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    config = load_project(project(args), {
        **base_overrides(args, workdir), "search.space": str(space), "search.n_trials": trials,
        "search.max_concurrent": args.workers, "search.cpus_per_trial": 1, "search.ray_cpus": args.workers,
        "search.seed": seed}, experiment=EXPERIMENT.get(project(args)))
    started = time.monotonic()
    result = run_search(config, search_name=f"efficiency-{args.data}-{trials}trials-seed{seed}-{int(time.time())}")
    wall = time.monotonic() - started
    # The measurement: each trained epoch's time (its MLflow metric) and each finished trial's value and time.
    client = MlflowClient()
    experiment = client.get_run(result.parent_run_id).info.experiment_id
    query = f"tags.`medxp.study` = '{result.study_name}' and tags.`medxp.trial_number` != ''"
    events: list[tuple[float, str, float | None]] = []
    for run in client.search_runs([experiment], query, max_results=1000):
        history = client.get_metric_history(run.info.run_id, EPOCH_METRIC)
        events += [(metric.timestamp / 1000, "epoch", None) for metric in history]
    study = optuna.load_study(study_name=result.study_name, storage=result.storage)
    events += [(t.datetime_complete.timestamp(), "done", t.value) for t in study.get_trials(deepcopy=False)
               if t.state == optuna.trial.TrialState.COMPLETE and DUPLICATE_OF not in t.user_attrs]
    logged_epochs = sum(kind == "epoch" for _, kind, _ in events)
    if logged_epochs != result.epochs_total:
        print(f"medxp search seed {seed}: {logged_epochs} epochs logged in MLflow, the study counts "
              f"{result.epochs_total}: 'epochs' is the study's count, 'at the same epochs' uses MLflow's",
              file=sys.stderr)
    return {"method": "medxp", "trials": trials, "seed": seed, "best_value": result.best_value,
            "best": result.best_params, "epochs": result.epochs_total, "runs": result.trials_trained,
            "states": result.state_counts, "full": result.state_counts.get("complete", 0), "wall_s": wall,
            "events": sorted(events, key=event_order)}


def grid_space(workdir: Path) -> Path:
    """The grid's 16 points as a medxp space file (three categorical keys)."""
    space = workdir / "grid_space.yaml"
    space.write_text(f"optimizer: {{type: categorical, choices: {list(OPTIMIZERS)}}}\n"
                     f"lr: {{type: categorical, choices: {list(LEARNING_RATES)}}}\n"
                     f"batch_size: {{type: categorical, choices: {list(BATCH_SIZES)}}}\n")
    return space


# --- 4. replay: both searches over the grid's recorded curves, many seeds -------------------------------------

def point_key(params: dict) -> str:
    return f"{params['optimizer']}|{float(params['lr']):g}|{int(params['batch_size'])}"


def replay_vanilla_trial(params: dict, *, points: dict, tick: float) -> None:
    """The vanilla trainable, its training replaced by the grid point's recorded curve: each epoch's own value."""
    from ray import tune

    point = points[point_key(params)]
    for row in point["curve"][:-1]:  # the last epoch goes with the final evaluation, as in vanilla_trial
        time.sleep(tick)
        tune.report({EPOCH_METRIC: row[EPOCH_METRIC], "epoch": int(row["epoch"])})
    time.sleep(tick)
    tune.report({EPOCH_METRIC: point["objective"], "epoch": len(point["curve"]), "finished": True})


def replay_medxp_trial(tune_config: dict, *, points: dict, tick: float) -> None:
    """medxp's trial, its training replaced by the grid point's recorded curve: the trainer's early stopping and
    medxp's `TuneReporter` see the recorded epochs, so Tune gets what a real trial would report."""
    from ray import tune

    from medxp.search.study import EPOCH, EPOCH_OBJECTIVE, FINISHED, OBJECTIVE, PARAMS
    from medxp.search.trial import TuneReporter
    from medxp.training.trainer import EarlyStopping

    point = points[point_key(tune_config[PARAMS])]
    epochs = len(point["curve"])

    class RecordedTrainer:  # the face of Trainer that early stopping and the reporter read
        config = type("Config", (), {"restore_best": True, "epochs": epochs})()
        model = type("Model", (), {"state_dict": staticmethod(dict)})()
        should_stop = False
        early_stopping = EarlyStopping(point["monitor"], patience=0)

    trainer, reporter = RecordedTrainer(), TuneReporter(EPOCH_METRIC, "", epochs)
    for row in point["curve"]:
        time.sleep(tick)
        for callback in (trainer.early_stopping, reporter):
            callback.on_epoch_end(trainer, int(row["epoch"]), row)
    tune.report({OBJECTIVE: point["objective"], EPOCH: epochs, FINISHED: True,
                 EPOCH_OBJECTIVE: reporter.values[trainer.early_stopping.best_epoch]})


def run_replay(args: argparse.Namespace, workdir: Path, grid: dict, method: str, trials: int, seed: int) -> dict:
    """One search, vanilla or medxp, over the grid's recorded curves (`--replay-tick` seconds an epoch)."""
    import optuna
    from ray import tune

    from medxp.config import load_project
    from medxp.search.runner import scheduler_and_searcher
    from medxp.search.space import load_search_space
    from medxp.search.study import EPOCH, FINISHED, OBJECTIVE, create_sampler

    points = {point_key(p): p for p in grid["points"]}
    settings = load_project(project(args), {**base_overrides(args, workdir), "search.seed": seed},
                            experiment=EXPERIMENT.get(project(args))).search
    events: list[tuple[float, str, float | None]] = []
    epochs: dict[str, int] = {}
    values: list[float] = []
    reports: list[dict] = []  # every result Tune got: trial, point, epoch, value, finished
    finished_key, metric = (FINISHED, OBJECTIVE) if method == "medxp" else ("finished", EPOCH_METRIC)

    class Recorder(tune.Callback):
        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            now = time.time()
            epochs[trial.trial_id] = max(epochs.get(trial.trial_id, 0), int(result[EPOCH]))
            events.append((now, "epoch", None))
            reports.append({"trial": trial.trial_id, "point": point_key(trial.config.get("params", trial.config)),
                            "epoch": int(result[EPOCH]), "value": result[metric],
                            "finished": bool(result.get(finished_key))})
            if result.get(finished_key):
                events.append((now, "done", result[metric]))
                values.append(result[metric])

    if method == "medxp":
        study = optuna.create_study(study_name=f"replay-{trials}-{seed}",
                                    storage=f"sqlite:///{workdir / f'replay-{time.time_ns()}.db'}",
                                    direction="maximize", sampler=create_sampler(settings, 0))
        scheduler, searcher = scheduler_and_searcher(study, load_search_space(grid_space(workdir)), settings,
                                                     args.epochs, on_outcome=lambda outcome: None)
        trainable, space = replay_medxp_trial, None
    else:
        searcher, scheduler, space = vanilla_search_setup(args, seed, settings.startup_trials)
        trainable = replay_vanilla_trial
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, points=points, tick=args.replay_tick), {"cpu": 1}),
        param_space=space,
        tune_config=tune.TuneConfig(metric=metric, mode="max", search_alg=searcher, scheduler=scheduler,
                                    num_samples=trials, max_concurrent_trials=args.workers, reuse_actors=True),
        run_config=tune.RunConfig(name=f"replay-{method}-{trials}-{seed}-{time.time_ns()}", verbose=0,
                                  storage_path=str(workdir / "ray_results"), callbacks=[Recorder()],
                                  failure_config=tune.FailureConfig(max_failures=0)))
    tuner.fit()
    return {"method": method, "trials": trials, "seed": seed, "best_value": max(values) if values else None,
            "epochs": sum(epochs.values()), "runs": len(epochs), "events": sorted(events, key=event_order),
            "reports": reports}


def replay_all(args: argparse.Namespace, workdir: Path, grid: dict) -> list[dict]:
    import ray

    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        return [run_replay(args, workdir, grid, method, trials, seed) for trials in args.trials
                for seed in range(args.seed, args.seed + args.replay) for method in ("vanilla", "medxp")]
    finally:
        ray.shutdown()


def replay_report(args: argparse.Namespace, grid: dict, replays: list[dict]) -> dict:
    goal = DATA[args.data]["goal"]
    print(f"\nReplay: {args.replay} searches per method and trial count (seeds {args.seed}-{args.seed + args.replay - 1}) "
          "over the grid's recorded curves (each point's training is deterministic: same seed, 1 thread), through "
          "the same samplers, schedulers and per-epoch reports as the searches above")
    summary: dict[str, Any] = {}
    for trials in args.trials:
        for method in ("vanilla", "medxp"):
            runs = [r for r in replays if (r["method"], r["trials"]) == (method, trials)]
            for run in runs:
                against_grid(run, grid, goal)
            entry = {"goal_met": sum(r["goal_met"] for r in runs), "searches": len(runs),
                     "mean_best_value": mean([r["best_value"] for r in runs]),
                     "found_grid_best": sum(r["best_value"] == grid["best_value"] for r in runs),
                     "mean_epochs": mean([r["epochs"] for r in runs])}
            summary[f"{method}_{trials}"] = entry
            print(f"  {method:<8} {trials:>3} trials: grid goal met in {entry['goal_met']} of {len(runs)} (found the "
                  f"grid's best point in {entry['found_grid_best']}); mean best {fmt(entry['mean_best_value'], '.4f')}, "
                  f"mean epochs {fmt(entry['mean_epochs'], '.1f')} of the grid's {grid['epochs']}")
        pairs = [head_to_head(m, v) for m in replays for v in replays
                 if (m["method"], v["method"]) == ("medxp", "vanilla") and m["trials"] == v["trials"] == trials
                 and m["seed"] == v["seed"]]
        entry = {outcome: sum(p["outcome"] == outcome for p in pairs) for outcome in ("higher", "equal", "lower")}
        entry["mean_diff_points"] = mean([p["diff_points"] for p in pairs])
        summary[f"medxp_vs_vanilla_{trials}"] = entry
        print(f"  medxp against vanilla at the same epochs, {trials} trials: higher in {entry['higher']}, equal in "
              f"{entry['equal']}, lower in {entry['lower']} of {len(pairs)}; mean "
              f"{fmt(entry['mean_diff_points'], '+.2f')} points")
    return summary


# --- comparison ------------------------------------------------------------------------------------------------

def event_order(event: tuple[float, str, float | None]) -> tuple[float, int]:
    """Time order; at equal times an epoch before the completion it belongs to."""
    return event[0], 0 if event[1] == "epoch" else 1


def best_within(events: list[tuple[float, str, float | None]], budget: int) -> float | None:
    """The best finished value a search had before it had spent more than `budget` epochs in all."""
    spent, best = 0, None
    for _, kind, value in sorted(events, key=event_order):
        if kind == "epoch":
            spent += 1
            if spent > budget:
                break
        elif value is not None and (best is None or value > best):
            best = value
    return best


def against_grid(search: dict, grid: dict, goal: dict) -> None:
    value = search["best_value"]
    search["gap_points"] = None if value is None else (grid["best_value"] - value) * 100
    search["epochs_ratio"] = search["epochs"] / grid["epochs"]
    search["goal_met"] = (value is not None and round(search["gap_points"], 6) <= goal["gap_points"]
                          and search["epochs_ratio"] <= goal["epochs_ratio"] + 1e-9)


def head_to_head(medxp: dict, vanilla: dict) -> dict:
    """medxp against vanilla (same trials and seed) once both have spent the same epochs."""
    budget = min(medxp["epochs"], vanilla["epochs"])
    ours, theirs = best_within(medxp["events"], budget), best_within(vanilla["events"], budget)
    diff = None if ours is None or theirs is None else (ours - theirs) * 100
    return {"trials": medxp["trials"], "seed": medxp["seed"], "epochs": budget, "medxp_best": ours,
            "vanilla_best": theirs, "diff_points": diff,
            "outcome": ("no value" if diff is None else "higher" if diff > 1e-9 else "equal" if diff > -1e-9
                        else "lower")}


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def report(args: argparse.Namespace, grid: dict, searches: list[dict], pairs: list[dict]) -> dict:
    goal = DATA[args.data]["goal"]
    images = grid.get("validation_images", 0)
    print(f"\nData: {args.data}" + (" (GENERATED DEMO DATA)" if args.data == "demo" else f" ({data_file(args)})")
          + f"; metric: validation accuracy (arg-max, no threshold; eval.primary_metric={PRIMARY_METRIC} for all "
            f"three), {images} validation images (one image = {100 / max(images, 1):.2f} points); "
            f"{args.epochs} epochs max, ASHA grace {args.grace_period}, reduction {args.reduction_factor:g}")
    print(f"\n{'method':<26} {'runs':>5} {'full':>5} {'epochs':>7} {'ratio':>6} {'best val':>9} {'gap pt':>7} "
          f"{'wall s':>7}  best")
    rows = [("grid (4x2x2)", {**grid, "gap_points": 0.0, "full": grid["runs"]})] + [
        (f"{s['method']} {s['trials']} trials seed {s['seed']}", s) for s in searches]
    for name, row in rows:
        print(f"{name:<26} {row['runs']:>5} {row['full']:>5} {row['epochs']:>7} {row['epochs'] / grid['epochs']:>6.2f} "
              f"{fmt(row['best_value'], '9.4f')} {fmt(row['gap_points'], '7.2f')} {row['wall_s']:>7.0f}  {row['best']}")
    print("runs: points trained (vanilla trains a repeated proposal again, medxp does not); full: trained to the last "
          "epoch (ASHA stopped the others); ratio: epochs / the grid's; gap: grid's best - this best, in points")
    summary: dict[str, Any] = {}
    print(f"\nAgainst the grid (goal: gap <= {goal['gap_points']:g} point with <= {goal['epochs_ratio']:.0%} "
          f"of its {grid['epochs']} epochs):")
    for method in ("medxp", "vanilla"):
        for trials in args.trials:
            runs = [s for s in searches if s["method"] == method and s["trials"] == trials]
            entry = {"goal_met": sum(s["goal_met"] for s in runs), "searches": len(runs),
                     "mean_gap_points": mean([s["gap_points"] for s in runs]),
                     "mean_epochs_ratio": mean([s["epochs_ratio"] for s in runs]),
                     "mean_best_value": mean([s["best_value"] for s in runs]),
                     "mean_wall_s": mean([s["wall_s"] for s in runs])}
            summary[f"{method}_{trials}"] = entry
            print(f"  {method:<8} {trials:>3} trials: goal met in {entry['goal_met']} of {len(runs)}; mean gap "
                  f"{fmt(entry['mean_gap_points'], '.2f')} points, mean epochs ratio {fmt(entry['mean_epochs_ratio'], '.2f')}")
    print("\nmedxp against vanilla at the same epochs spent (goal: higher):")
    for pair in pairs:
        print(f"  {pair['trials']:>3} trials seed {pair['seed']}: at {pair['epochs']} epochs medxp "
              f"{fmt(pair['medxp_best'], '.4f')}, vanilla {fmt(pair['vanilla_best'], '.4f')}: "
              f"{fmt(pair['diff_points'], '+.2f')} points ({pair['outcome']})")
    for trials in args.trials:
        runs = [p for p in pairs if p["trials"] == trials]
        entry = {outcome: sum(p["outcome"] == outcome for p in runs) for outcome in ("higher", "equal", "lower")}
        entry["mean_diff_points"] = mean([p["diff_points"] for p in runs])
        summary[f"medxp_vs_vanilla_{trials}"] = entry
        print(f"  {trials:>3} trials: medxp higher in {entry['higher']}, equal in {entry['equal']}, lower in "
              f"{entry['lower']} of {len(runs)}; mean {fmt(entry['mean_diff_points'], '+.2f')} points")
    return summary


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    path = data_file(args)
    if path is not None and not path.is_file():
        print(f"search_efficiency --data {args.data}: {path} not found; skipped (pass --data-dir, or --data demo "
              "for generated data)")
        return
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="medxp-bench-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    from medxp.config import load_project
    from medxp.data.datamodule import ensure_data

    out = RESULTS / f"search_efficiency_{args.data}{'_quick' if args.quick else ''}.json"
    ensure_data(load_project(project(args), base_overrides(args, workdir),  # the demo data, once
                             experiment=EXPERIMENT.get(project(args))))
    grid = saved_grid(args, out)
    if grid is None:
        grid = run_grid(args, workdir)
        RESULTS.mkdir(exist_ok=True)  # saved at once: --reuse-grid can pick it up even if a search fails
        out.write_text(json.dumps({"args": vars(args), "grid": grid}, indent=2))
    searches = []
    for trials in args.trials if not args.replay_only else ():
        for seed in range(args.seed, args.seed + args.repeats):
            searches.append(run_vanilla_search(args, workdir, trials, seed))
            searches.append(run_medxp_search(args, workdir, trials, seed))
    for search in searches:
        against_grid(search, grid, DATA[args.data]["goal"])
    pairs = [head_to_head(m, v) for m in searches if m["method"] == "medxp" for v in searches
             if v["method"] == "vanilla" and (v["trials"], v["seed"]) == (m["trials"], m["seed"])]
    summary = report(args, grid, searches, pairs) if searches else {}
    replays = replay_all(args, workdir, grid) if args.replay else []
    if replays:
        summary["replay"] = replay_report(args, grid, replays)
    out.write_text(json.dumps({"args": vars(args), "metric": f"validation {PRIMARY_METRIC} (arg-max)",
                               "grid": grid, "searches": searches, "medxp_vs_vanilla": pairs, "replays": replays,
                               "summary": summary}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
