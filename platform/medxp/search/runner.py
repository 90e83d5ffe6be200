"""`run_search(config)`: Ray Tune runs the trials, Optuna proposes them, ASHA stops the weak ones.

The driver does everything that must happen once: it makes sure the data exists, audits it
when `audit.on_leak` asks (`fail` refuses before any trial; every trial applies `drop` or
`warn` to the driver's audit instead of scanning the data again), creates the MLflow
experiment and the parent run (trials never create either, so they cannot race on SQLite),
opens the persistent Optuna study (resuming it by name), shows the search's progress
(medxp.search.progress) and, at the end, closes any child run a stopped trial left open and
logs the trials table and Optuna's plots.

On a cluster (`$RAY_ADDRESS`) the driver also records the data fingerprint every trial must
find on its node (medxp.search.trial checks it), passes the MLflow credentials of its own
environment to the trials (Ray's runtime environment, never a run's params or tags), and
keeps the Optuna study in `search.storage` (or `$MEDXP_SEARCH_STORAGE`), for example the
cluster's PostgreSQL; a password in that URL is masked wherever a run records it.

With two or more `search.objectives` the study is multi-objective: the result's best trial is
the one `search.select` picks among the Pareto front (`study.best_trials`), and the result holds
the front and a sentence on the selection; `best_value` stays the first objective's value.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import time
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import mlflow
import optuna
import pandas as pd
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from optuna.trial import TrialState

from medxp.config import ExperimentConfig, SearchConfig, resolve_data_dir
from medxp.data.audit import leak_policy, log_audit
from medxp.data.datamodule import PriorAudit, create_datamodule, ensure_data, prior_audit
from medxp.data.synthetic import is_generated
from medxp.errors import MedxpError
from medxp.objectives import FrontTrial, Objective, parse_objectives, parse_select, select_from_front
from medxp.recording import record_run_config, redacted_url
from medxp.search.progress import SearchProgress
from medxp.search.report import NOTE_TAG, RUNNING, log_search_report, note, search_plan
from medxp.search.space import SearchSpace, load_search_space
from medxp.search.study import (
    DUPLICATE_OF,
    PruningScheduler,
    StudySearcher,
    TrialOutcome,
    default_storage,
    finished_count,
    open_study,
    search_home,
)
from medxp.search.trial import STATE_TAG, TrialContext, close_trial_run, run_trial, trial_note, trial_run_name
from medxp.tracking.mlflow_tracker import MlflowTracker

log = logging.getLogger(__name__)

# Per-epoch validation metrics the trainer reports, by `eval.primary_metric`.
EPOCH_METRICS = {"accuracy": "val_accuracy", "f1_macro": "val_f1_macro", "roc_auc": "val_roc_auc"}
_STATE_NAMES = {TrialState.COMPLETE: "finished", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
# Where the Optuna study lives when `search.storage` is empty (a cluster's database, say).
STORAGE_ENV = "MEDXP_SEARCH_STORAGE"
# The driver's environment variables a trial needs to reach the tracking server; Ray hands them to every worker.
FORWARDED_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                 "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_CLIENT_CERT_PATH")


@dataclass
class SearchResult:
    """What a search found; the best trial's model is already logged (`best_model_uri`)."""

    study_name: str
    storage: str
    parent_run_id: str
    best_trial_number: int | None
    best_params: dict[str, Any]
    best_config: ExperimentConfig | None
    best_value: float | None
    best_run_id: str | None
    best_model_uri: str | None
    state_counts: dict[str, int] = field(default_factory=dict)
    new_trials: int = 0
    epochs_total: int = 0
    wall_time_s: float = 0.0
    # Finished trials that logged a model, best validation objective first: (trial number, objective, model URI).
    ranked_models: list[tuple[int, float, str]] = field(default_factory=list)
    # The best trial's weight provenance (`model.weights_source`, `model.weights_sha256` tags of its run).
    best_weights: dict[str, str] = field(default_factory=dict)
    # The best trial's MLflow run name (`glaucoma-small_cnn-trial-003`).
    best_run_name: str = ""
    # A multi-objective search (two or more `search.objectives`): the objectives, the Pareto front (one row per
    # front trial: number, each objective, mlflow_run_id, model_uri, selected), the selection (rule, chosen
    # trial and its values, or why none qualified) and the chosen trial's value of each objective.
    objectives: tuple[str, ...] = ()
    pareto_front: pd.DataFrame | None = None
    selection: str = ""
    best_values: dict[str, float] = field(default_factory=dict)

    @property
    def multi_objective(self) -> bool:
        """Whether the search weighed two or more objectives (its best trial is `search.select`'s pick)."""
        return len(self.objectives) > 1

    @property
    def trials_trained(self) -> int:
        """Trials that trained, whatever their state (not those that took a twin's outcome)."""
        return sum(count for state, count in self.state_counts.items() if state != "duplicate")


def run_search(config: ExperimentConfig, *, search_name: str | None = None, parent_tracker: Any = None) -> SearchResult:
    """Runs (or resumes) a hyper-parameter search over `config`'s project.

    Args:
        config: The project config; its `search` section holds the settings (`search.n_trials`, ...).
        search_name: The Optuna study name; an existing study of that name is resumed
            (`search.n_trials` counts its finished trials). Default: `search.name`, else a new
            `<dataset>-<space>-<timestamp>`.
        parent_tracker: An MlflowTracker whose run becomes the parent (the CLI's); default: a new run.

    Returns:
        The best trial (number, params as config keys, config, value, MLflow run and model URI)
        and the count of trials per state.

    Raises:
        MedxpError: a bad space file or setting (named in the message), or leakage in the data with
            `audit.on_leak=fail` (before any trial; the parent run keeps the audit).
    """
    started = time.monotonic()
    space = load_search_space(config.search.space or config.dataset.name)
    space.check_against(config)
    epoch_metric = _epoch_metric(config)
    from medxp.training.estimator import check_cv_model

    check_cv_model(config.model.name, config.search.cv_folds, config.source, config.search.refit)  # before any trial
    root = ensure_data(config)  # once, here: trials must never generate the demo data concurrently
    base = trial_base_config(config)
    if config.search.grace_period > base.train.epochs:
        raise MedxpError(f"{config.source}: 'search.grace_period' = {config.search.grace_period}: expected at most "
                         f"the {base.train.epochs} epochs a trial may train (search.max_epochs, or train.epochs)")
    audit = prior_audit(base)  # once, here: trials apply its policy instead of scanning all the data again
    name = search_name or config.search.name or _default_name(config, space)
    tracking_uri = absolute_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    storage = study_storage(config, tracking_uri)
    with _parent_run(config, name, parent_tracker) as parent:
        _log_search_data(parent, config, root, audit)  # leakage with audit.on_leak=fail stops here
        fingerprint = create_datamodule(base, audit).fingerprint  # what every trial must find on its node
        parent.set_tags({"data.fingerprint": fingerprint})
        study = open_study(name, storage, config.search)
        new_trials = max(config.search.n_trials - finished_count(study), 0)
        log.info("search %s: %d new trial(s) (study in %s)", name, new_trials, redacted_url(storage))
        plan = _log_search_setup(parent, config, space, name, storage, new_trials, root)
        try:
            if new_trials:
                context = TrialContext(tracking_uri, parent.run.info.experiment_id, parent.run_id, name,
                                       epoch_metric, base.data.data_dir, fingerprint, config.dataset.name,
                                       config.model.name, tuple(config.search.objectives))
                _run_tune(study, space, base, context, new_trials, search_home(tracking_uri), audit)
            close_leftover_runs(study, parent.run.info.experiment_id, parent.run_id,
                                dataset=config.dataset.name, model=config.model.name)
            result = _result(study, space, config, base, storage, parent.run_id, new_trials,
                             time.monotonic() - started)
            log_search_report(parent, study, result, plan=plan, config=config)
        except BaseException as error:
            _note_stopped(parent, plan, error)
            raise
    return result


def trial_base_config(config: ExperimentConfig) -> ExperimentConfig:
    """The config every trial starts from: the epoch budget, one torch thread per CPU, the absolute data path."""
    settings = config.search
    # The driver made the data: a trial reads it and never generates demo data (on a node without it, it fails).
    overrides: dict[str, Any] = {"data.data_dir": str(resolve_data_dir(config).resolve()), "data.demo": "never"}
    if settings.max_epochs:
        overrides["train.epochs"] = settings.max_epochs
    if not config.train.threads:
        overrides["train.threads"] = max(int(settings.cpus_per_trial), 1)
    return config.replace(overrides, origin="search settings")


def study_storage(config: ExperimentConfig, tracking_uri: str) -> str:
    """Where the project's Optuna studies live: `search.storage`, `$MEDXP_SEARCH_STORAGE`, else beside the MLflow store."""
    return config.search.storage or os.environ.get(STORAGE_ENV) or default_storage(tracking_uri)


def absolute_tracking_uri() -> str:
    """MLflow's tracking URI with a relative SQLite or file path made absolute (Ray trials run elsewhere)."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    if "://" not in uri:
        return Path(uri).resolve().as_uri()
    return uri


def _epoch_metric(config: ExperimentConfig) -> str:
    """The per-epoch metric ASHA prunes on: the first of `search.objectives`, else `val_<eval.primary_metric>`."""
    if config.search.objectives:
        return parse_objectives(config.search.objectives)[0].metric  # the config checked it is per-epoch
    metric = config.eval.primary_metric
    if metric not in EPOCH_METRICS:
        raise MedxpError(f"{config.source}: 'eval.primary_metric' = {metric!r}: a search needs a metric the "
                         f"trainer reports every epoch; expected one of {', '.join(EPOCH_METRICS)}")
    return EPOCH_METRICS[metric]


def _default_name(config: ExperimentConfig, space: SearchSpace) -> str:
    return f"{config.dataset.name}-{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _parent_run(config: ExperimentConfig, name: str, parent_tracker: Any) -> Any:
    if parent_tracker is not None:
        return nullcontext(parent_tracker)
    return MlflowTracker.start(config.dataset.name, run_name=f"search-{config.dataset.name}-{config.model.name}",
                               tags={"medxp.study": name, "medxp.kind": "search"})


def _note_stopped(parent: MlflowTracker, plan: str, error: BaseException) -> None:
    """The parent run's description when the search stops before its end: why, above what it searched."""
    reason = f"{type(error).__name__}: {error}".strip().rstrip(":")
    try:
        parent.set_tags({NOTE_TAG: note(f"### Stopped before the end\n\n{reason[:1500]}\n\nThe trials that ran "
                                        "are the nested runs below this one (tag `medxp.trial_state`); the same "
                                        "search name resumes the study.", plan)})
    except Exception as failure:  # noqa: BLE001 - the original error matters more
        log.warning("could not update the search run's description: %s", failure)


def _log_search_data(parent: MlflowTracker, config: ExperimentConfig, root: Path, audit: PriorAudit | None) -> None:
    """Tags whether the data is generated; logs the driver's audit and applies `audit.on_leak` to it.

    Raises:
        MedxpError: leakage with `audit.on_leak=fail` (or unreadable images with `audit.fail_on_unreadable`).
    """
    parent.set_tags({"data.synthetic": str(is_generated(root)).lower(), "data.dir": str(root)})
    if audit is not None:
        log_audit(audit.report, parent)
        leak_policy(audit.report, config.audit.on_leak, config.audit.fail_on_unreadable)


def _log_search_setup(parent: MlflowTracker, config: ExperimentConfig, space: SearchSpace, name: str,
                      storage: str, new_trials: int, root: Path | None = None) -> str:
    """Logs the search's settings as params and its plan as the run's description; returns the plan."""
    settings = config.search
    max_epochs = settings.max_epochs or config.train.epochs
    record_run_config(parent, config, {"medxp.study": name, "medxp.kind": "search"}, {
        **{key: value for key, value in config.to_flat_dict().items() if key.startswith("search.")},
        "search.study": name,
        "search.storage": redacted_url(storage),
        "search.space_file": str(space.path),
        "search.sampler_detail": f"{settings.sampler}(seed={settings.seed}, startup_trials={settings.startup_trials})",
        "search.scheduler": f"ASHA(time_attr=epoch, max_t={max_epochs}, grace_period={settings.grace_period}, "
                            f"reduction_factor={settings.reduction_factor}, revisit_rungs={settings.revisit_rungs})",
        "search.new_trials": new_trials,
    })
    parent.log_dict(space.to_dict(), "search/space.yaml")
    searches_model = any(p.config_key == "model.name" for p in space.parameters)
    prefix = f"{config.dataset.name}-{'<model>' if searches_model else config.model.name}"
    plan = search_plan(config, space, name, redacted_url(storage), new_trials, prefix,
                       root is not None and is_generated(root), str(root or ""))
    parent.set_tags({NOTE_TAG: note(RUNNING, plan)})
    return plan


def _run_tune(study: optuna.Study, space: SearchSpace, base: ExperimentConfig, context: TrialContext,
              new_trials: int, home: Path, audit: PriorAudit | None = None) -> None:
    """Runs `new_trials` trials through Ray Tune with the study's sampler and ASHA; `audit` goes to every trial."""
    from ray import tune

    settings = base.search
    started_ray = start_ray(settings.ray_cpus)
    try:
        closer, progress = TrialRunCloser(context.tracking_uri), SearchProgress(new_trials, context.study_name)

        def on_outcome(outcome: TrialOutcome) -> None:
            closer(outcome)
            progress(outcome)

        scheduler, searcher = scheduler_and_searcher(study, space, settings, base.train.epochs, on_outcome)
        trainable = tune.with_resources(tune.with_parameters(run_trial, base=base, context=context,
                                                             prior_audit=audit),
                                        {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})
        with progress, _serialisation_errors():  # Tune pickles the searcher when the Tuner is made, trials after
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(metric="objective", mode="max", search_alg=searcher, scheduler=scheduler,
                                            num_samples=new_trials, max_concurrent_trials=settings.max_concurrent,
                                            time_budget_s=settings.timeout or None, reuse_actors=True),
                run_config=tune.RunConfig(name=re.sub(r"[^A-Za-z0-9_.-]", "_", context.study_name),
                                          storage_path=str(home / "ray_results"), verbose=0,
                                          failure_config=tune.FailureConfig(max_failures=0)),
            )
            tuner.fit()
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def scheduler_and_searcher(study: optuna.Study, space: SearchSpace, settings: SearchConfig, max_epochs: int,
                           on_outcome: Callable[[TrialOutcome], None]) -> tuple[PruningScheduler, StudySearcher]:
    """ASHA (rungs seeded with the study's earlier trials) and the searcher asking and telling `study`: what
    Tune runs a search with (`bench/search_efficiency.py` replays recorded trials through the same pair)."""
    scheduler = PruningScheduler(max_epochs, settings.grace_period, settings.reduction_factor, settings.revisit_rungs)
    scheduler.seed_rungs(study)
    searcher = StudySearcher(space, study, scheduler, on_outcome=on_outcome, rerun_duplicates=settings.rerun_duplicates)
    return scheduler, searcher


@contextmanager
def _serialisation_errors() -> Iterator[None]:
    """A pickling failure inside Ray Tune becomes a MedxpError naming the frames it came from.

    Raises:
        MedxpError: Tune could not serialise the searcher, the scheduler or a trial's state.
    """
    try:
        yield
    except (TypeError, pickle.PicklingError) as error:
        if not isinstance(error, pickle.PicklingError) and "pickle" not in str(error):
            raise
        raise MedxpError(f"Ray Tune could not serialise the search's state ({error}) in "
                         f"{_innermost_frames(error)}; the study keeps every trial told so far (a search of the "
                         "same name resumes from it)") from error


def _innermost_frames(error: BaseException, count: int = 8) -> str:
    """`file:line function` of the innermost frames of `error`, innermost first: where a library failed."""
    frames = traceback.extract_tb(error.__traceback__)[-count:]
    return " <- ".join(f"{Path(frame.filename).name}:{frame.lineno} {frame.name}" for frame in reversed(frames))


def start_ray(num_cpus: int = 0) -> bool:
    """Starts a quiet local Ray (or joins the cluster at `$RAY_ADDRESS`); returns whether this call started it.

    The MLflow credentials in the driver's environment (`FORWARDED_ENV`) go to every worker
    through Ray's runtime environment, so worker nodes need no copy of them. Joining a cluster
    with token authentication takes `$RAY_AUTH_MODE=token` and the cluster's `$RAY_AUTH_TOKEN`.
    """
    import ray

    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    forwarded = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
    if forwarded:
        options["runtime_env"] = {"env_vars": forwarded}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], **options)
        log.info("joined the Ray cluster at %s: %s", os.environ["RAY_ADDRESS"], cluster_summary())
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), **options)
    return True


def cluster_summary() -> str:
    """`2 node(s), 3 CPU, 3 GPU`: what the joined Ray cluster offers."""
    import ray

    resources, nodes = ray.cluster_resources(), [node for node in ray.nodes() if node.get("Alive")]
    return f"{len(nodes)} node(s), {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU"


class TrialRunCloser:
    """Closes a trial's MLflow run from the driver once the searcher knows how the trial ended."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri

    def __call__(self, outcome: TrialOutcome) -> None:
        if not outcome.run_id:
            return
        try:
            close_trial_run(MlflowClient(self.tracking_uri), outcome.run_id, _STATE_NAMES[outcome.state],
                            outcome.reason)
        except Exception as error:  # the study's record stands; the final sweep tries again
            log.warning("trial %d: could not close its MLflow run %s: %s", outcome.number, outcome.run_id, error)


def close_leftover_runs(study: optuna.Study, experiment_id: str, parent_run_id: str = "", *, dataset: str = "",
                        model: str = "") -> None:
    """Makes every child run of the study agree with the study: runs still RUNNING (a stopped or crashed
    trial) end with the study's state, and a run that ended after its driver was killed, before the
    driver recorded its result (the study holds it failed), is tagged failed too. A trial the study holds
    whose worker never opened its run (its driver was killed in between; the study holds it failed) gets
    a failed run under `parent_run_id` saying so, so that the MLflow UI shows every trial that was started
    (named like a trial's run: `dataset`, `model`, number)."""
    client = MlflowClient()
    trials = {trial.number: trial for trial in study.get_trials(deepcopy=False)}
    seen = set()
    for run in _study_runs(client, experiment_id, study.study_name):
        number = int(run.data.tags.get("medxp.trial_number", -1))
        seen.add(number)
        state = trials[number].state if number in trials else TrialState.FAIL
        name = _STATE_NAMES.get(state, "failed")
        if run.info.status != "RUNNING" and run.data.tags.get(STATE_TAG) == name:
            continue
        reason = "" if state in _STATE_NAMES else f"the study says {state.name}"
        if run.info.status != "RUNNING":
            reason = (f"the run ended {run.data.tags.get(STATE_TAG, 'untagged')} but its search stopped before "
                      f"recording the result: the study holds trial {number} {name}")
        close_trial_run(client, run.info.run_id, name, reason)
    if parent_run_id:  # a proposal that took a finished twin's outcome (DUPLICATE_OF) never has a run of its own
        for number, trial in sorted(trials.items()):
            if number not in seen and trial.state == TrialState.FAIL and DUPLICATE_OF not in trial.user_attrs:
                _record_unopened_trial(client, experiment_id, parent_run_id, study.study_name, trial,
                                       dataset, model)


def _record_unopened_trial(client: MlflowClient, experiment_id: str, parent_run_id: str, study_name: str,
                           trial: optuna.trial.FrozenTrial, dataset: str = "", model: str = "") -> None:
    """A closed run for a trial the study started but whose worker never opened its MLflow run."""
    name = _STATE_NAMES[trial.state]
    tags = {MLFLOW_PARENT_RUN_ID: parent_run_id, "medxp.study": study_name,
            "medxp.trial_number": str(trial.number), STATE_TAG: "running",
            NOTE_TAG: trial_note(study_name, trial.number, trial.params, trained=False)}
    run = client.create_run(experiment_id, run_name=trial_run_name(dataset, model, trial.number, trial.params),
                            tags=tags)
    client.log_dict(run.info.run_id, {"trial_number": trial.number, "params": trial.params},
                    "trial/sampled_params.json")
    close_trial_run(client, run.info.run_id, name,
                    f"the study holds trial {trial.number} {name}, but its search stopped before the trial opened "
                    "its MLflow run: it never trained")


def _study_runs(client: MlflowClient, experiment_id: str, study_name: str, extra: str = "") -> Iterator[Any]:
    query = f"tags.`medxp.study` = '{study_name}' and tags.`medxp.trial_number` != ''"
    yield from client.search_runs([experiment_id], f"{query} and {extra}" if extra else query, max_results=5000)


def _result(study: optuna.Study, space: SearchSpace, config: ExperimentConfig, base: ExperimentConfig, storage: str,
            parent_run_id: str, new_trials: int, wall_time_s: float) -> SearchResult:
    """The search's outcome; the best config is the project's config with the best trial's epochs and params."""
    trials = study.get_trials(deepcopy=False)
    trained = [t for t in trials if DUPLICATE_OF not in t.user_attrs]
    counts = {state.name.lower(): sum(t.state == state for t in trained) for state in TrialState}
    counts["duplicate"] = len(trials) - len(trained)
    epochs_total = sum(int(t.user_attrs.get("epochs", 0)) for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    result = SearchResult(study.study_name, storage, parent_run_id, None, {}, None, None, None, None,
                          {k: v for k, v in counts.items() if v}, new_trials, epochs_total, wall_time_s)
    multi_objective = len(study.directions) > 1
    if multi_objective:
        result.objectives = tuple(config.search.objectives)
    if not complete:
        return result
    if multi_objective:
        best = _select_on_front(study, trials, config, result)
    else:
        best = study.best_trial
        if DUPLICATE_OF in best.user_attrs:  # report the trial that trained the model, not its twin
            best = trials[best.user_attrs[DUPLICATE_OF]]
    params = space.config_values(best.params)  # Optuna records a list choice as its JSON text
    result.best_trial_number, result.best_params, result.best_value = best.number, params, best.values[0]
    result.best_config = config.replace({"train.epochs": base.train.epochs, **params},
                                        origin=f"study {study.study_name} trial {best.number}")
    result.best_run_id = best.user_attrs.get("mlflow_run_id")
    if result.best_run_id:
        best_run = MlflowClient().get_run(result.best_run_id)
        tags = best_run.data.tags
        result.best_weights = {key: value for key, value in tags.items() if key.startswith("model.weights_")}
        result.best_run_name = best_run.info.run_name or ""
    result.best_model_uri = best.user_attrs.get("model_uri") or None
    trained_complete = [t for t in complete if DUPLICATE_OF not in t.user_attrs and t.user_attrs.get("model_uri")]
    result.ranked_models = [(t.number, float(t.values[0]), t.user_attrs["model_uri"])
                            for t in sorted(trained_complete, key=lambda t: t.values[0], reverse=True)]
    return result


def pareto_trials(study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The study's Pareto front (`study.best_trials`), a twin replaced by the trial that trained, by number."""
    front: dict[int, optuna.trial.FrozenTrial] = {}
    for trial in study.best_trials:
        if DUPLICATE_OF in trial.user_attrs:
            trial = trials[trial.user_attrs[DUPLICATE_OF]]
        front.setdefault(trial.number, trial)
    return [front[number] for number in sorted(front)]


def _select_on_front(study: optuna.Study, trials: list[optuna.trial.FrozenTrial], config: ExperimentConfig,
                     result: SearchResult) -> optuna.trial.FrozenTrial:
    """The front trial `search.select` picks; fills the result's front table, selection and values."""
    objectives = parse_objectives(config.search.objectives)
    rule = parse_select(config.search.select, objectives)
    front = pareto_trials(study, trials)
    selection = select_from_front([FrontTrial(t.number, objective_map(objectives, t.values)) for t in front], rule,
                                  objectives)
    chosen = next(trial for trial in front if trial.number == selection.number)
    result.selection = selection.text
    result.best_values = objective_map(objectives, chosen.values)
    result.pareto_front = front_table(front, objectives, chosen.number)
    log.info("search %s: %s", study.study_name, selection.text)
    return chosen


def objective_map(objectives: list[Objective] | tuple[Objective, ...], values: list[float]) -> dict[str, float]:
    """`{"val_accuracy": 0.81, "infer_ms": 3.2}`: a trial's values by objective metric."""
    return {objective.metric: float(value) for objective, value in zip(objectives, values)}


def front_table(front: list[optuna.trial.FrozenTrial], objectives: tuple[Objective, ...], selected: int | None
                ) -> pd.DataFrame:
    """One row per front trial: number, each objective's value, MLflow run id, model URI, whether selected."""
    rows = [{"number": trial.number, **objective_map(objectives, trial.values),
             "mlflow_run_id": trial.user_attrs.get("mlflow_run_id", ""),
             "model_uri": trial.user_attrs.get("model_uri", ""), "selected": trial.number == selected}
            for trial in front]
    columns = ["number", *(objective.metric for objective in objectives), "mlflow_run_id", "model_uri", "selected"]
    return pd.DataFrame(rows, columns=columns)
