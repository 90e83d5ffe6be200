"""One search trial, as it runs in a Ray worker: a nested MLflow run around `run_experiment`.

The trial reports every epoch to Tune (ASHA decides from those) and, once trained,
evaluated and logged, a final result flagged `medxp_finished`: only that makes the trial
COMPLETE in the study. When Tune stops a trial it raises `SystemExit` inside
`tune.report`; the worker then leaves the MLflow run alone and the driver, which knows
why the trial stopped, closes it (see `close_trial_run`), so there is one writer.

On a cluster a trial may run on any node. Its run records where (`medxp.node_id`,
`medxp.node_ip`, `medxp.hostname`) and the devices it was given (`medxp.cuda_visible_devices`,
`medxp.ray_gpu_ids`), and before training it checks that the data on its node has the
fingerprint the driver recorded: a missing or different copy fails the trial with an error
naming the node, the path and both fingerprints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Iterator

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from ray import tune

from medxp.config import ExperimentConfig
from medxp.data.datamodule import DataModule, PriorAudit, create_datamodule
from medxp.errors import MedxpError
from medxp.models.backbones import pretrained_input
from medxp.search.report import NOTE_TAG, shown
from medxp.objectives import objective_values, parse_objectives
from medxp.search.study import (
    EPOCH,
    EPOCH_OBJECTIVE,
    FINISHED,
    MODEL_URI,
    OBJECTIVE,
    OBJECTIVE_VALUES,
    PARAMS,
    RUN_ID,
    TRIAL_NUMBER,
)
from medxp.tracking.mlflow_tracker import MlflowTracker

log = logging.getLogger(__name__)

STATE_TAG = "medxp.trial_state"
RUN_STATUS = {"finished": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs from the driver (plain values: it travels to Ray workers)."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    study_name: str
    epoch_metric: str
    data_dir: str = ""
    data_fingerprint: str = ""
    dataset: str = ""
    model: str = ""
    # `search.objectives`; empty: the single `val_<eval.primary_metric>`.
    objectives: tuple[str, ...] = ()


class TuneReporter:
    """Trainer callback: reports to Tune, each epoch, the validation metric of the weights the trial
    would hand back if it stopped there (`objective`), which is what a finished trial's value is.

    A trial that finishes hands back its best epoch's weights (`train.restore_best`: the epoch with the
    best `train.monitor`), so what a trial is worth after epoch k is the metric of its best epoch up to k,
    not of epoch k itself. With a learning rate still high, a single epoch's validation accuracy swings by
    points: ASHA ranking trials on it stops good ones on a bad epoch. On PneumoniaMNIST's 16-point grid
    (bench/search_efficiency.py) the rank correlation of epoch 3's value with the finished value was
    0.08 on the epoch's own accuracy and 0.87 on the handed-back epoch's. With `train.restore_best: false`
    a trial hands back its last epoch, and that epoch's value is reported. The MLflow curves
    (`val_*` per epoch) keep every epoch's own values.

    The trial's last epoch (`last_epoch`, all stages together: a later stage's trainer numbers its epochs
    after the earlier stages' but counts only its own budget) is not reported here but with the final
    result, so that the scheduler can never stop a trial that has already spent its whole budget.
    """

    def __init__(self, epoch_metric: str, run_id: str, last_epoch: int) -> None:
        self.epoch_metric = epoch_metric
        self.run_id = run_id
        self.last_epoch = last_epoch
        self.values: dict[int, float] = {}  # epoch -> its own value of `epoch_metric`

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        self.values[int(epoch)] = float(metrics[self.epoch_metric])
        if trainer.should_stop or epoch >= self.last_epoch:
            return
        tune.report({OBJECTIVE: self.handed_back(trainer, epoch), EPOCH: epoch, RUN_ID: self.run_id})

    def handed_back(self, trainer: Any, epoch: int) -> float:
        """The metric of the epoch whose weights the trainer would hand back after `epoch`: its early
        stopping's best epoch with `train.restore_best`, else `epoch` itself."""
        best = trainer.early_stopping.best_epoch if trainer.config.restore_best else epoch
        return self.values.get(int(best), self.values[int(epoch)])


def handed_back_value(fit: Any, metric: str) -> float:
    """`metric` of the epoch whose weights the fit handed back (`FitResult.restored_epoch`): the last
    per-epoch value the study records for a finished trial; NaN without epochs."""
    rows = {int(row["epoch"]): row for row in fit.history}
    row = rows.get(int(fit.restored_epoch)) or (fit.history[-1] if fit.history else None)
    return float(row[metric]) if row is not None else float("nan")


def trained_epochs(config: ExperimentConfig) -> int:
    """The epochs a trial trains when nothing stops it: every stage's together."""
    from medxp.training.stages import training_stages  # with the trainer, as run_trial imports the pipeline

    return sum(epochs for _, epochs, _ in training_stages(config))


def run_trial(tune_config: dict, *, base: ExperimentConfig, context: TrialContext,
              prior_audit: PriorAudit | None = None) -> None:
    """Tune's function trainable: trains `base` with the sampled parameters in a child MLflow run.

    The trial scores the validation split only (the search's objective): the test split is scored
    once, by the main flow, on the model the search chooses. A multi-objective search's final result
    also holds every objective's value (`objective_values`, in `search.objectives`' order; `objective`
    is the first's), from the validation metrics and the cost the run recorded.

    `prior_audit` is the driver's audit of the data (`audit.on_leak` set): the trial applies the
    policy to it (drops the same held-out copies, logs the same report) without scanning again.
    """
    from medxp.pipeline import run_experiment

    os.environ.pop("MLFLOW_RUN_ID", None)  # inherited from `mlflow run`: it would attach us to the parent
    mlflow.set_tracking_uri(context.tracking_uri)
    params, number = tune_config[PARAMS], tune_config[TRIAL_NUMBER]
    with trial_run(context, number, params) as tracker:
        tracker.set_tags(placement_tags())
        config = pretrained_input(base.replace(params, origin=f"search trial {number}"))
        data = node_data(config, context, prior_audit)
        reporter = TuneReporter(context.epoch_metric, tracker.run_id, trained_epochs(config))
        result = run_experiment(config, tracker, callbacks=[reporter], log_model=True, progress=False, data=data,
                                splits=("valid",))
        final = final_objectives(context, result)  # in the run: a missing metric fails it, saying why
        if config.search.cv_folds:
            final = {OBJECTIVE: cv_objective(config, result.data, tracker)}
    history = result.fit.history
    tune.report({**final, EPOCH: len(history), FINISHED: True, RUN_ID: tracker.run_id,
                 MODEL_URI: result.model_uri or "",
                 EPOCH_OBJECTIVE: handed_back_value(result.fit, context.epoch_metric)})


def final_objectives(context: TrialContext, result: Any) -> dict[str, Any]:
    """`{objective: <first value>, objective_values: [...]}` with `search.objectives`; `{objective:
    val_<eval.primary_metric>}` without.

    Raises:
        MedxpError: an objective the run did not record (naming `search.objectives`).
    """
    if not context.objectives:
        return {OBJECTIVE: float(result.objective)}
    values = objective_values(parse_objectives(context.objectives), result.evaluations["valid"].metrics,
                              result.cost)
    return {OBJECTIVE: values[0], OBJECTIVE_VALUES: values}


def cv_objective(config: ExperimentConfig, data: DataModule, tracker: MlflowTracker) -> float:
    """The trial's objective with `search.cv_folds` = K: the mean `val_<eval.primary_metric>` over K stratified
    folds of the train + valid pool, logged as `cv_<metric>_mean` and `cv_<metric>_std` with one
    `cv_<metric>` value per fold (step = fold); the trial's `val_*` metrics and model stay those of
    its fit on train."""
    from medxp.training.estimator import cross_validate

    metric, folds = config.eval.primary_metric, config.search.cv_folds
    scores = cross_validate(config, data, folds, metric)
    for index, score in enumerate(scores):
        tracker.log_metrics({f"cv_{metric}": score}, step=index)
    mean = float(np.mean(scores))
    tracker.log_metrics({f"cv_{metric}_mean": mean, f"cv_{metric}_std": float(np.std(scores, ddof=1))})
    tracker.set_tags({"medxp.objective": f"cv_{metric}_mean: the mean val {metric} of {folds}-fold stratified "
                                         "cross-validation over train + valid (search.cv_folds)"})
    return mean


def placement_tags() -> dict[str, str]:
    """Where this trial runs: the Ray node, its address and host name, and the devices Ray gave it."""
    import ray

    return {"medxp.node_id": ray.get_runtime_context().get_node_id(), "medxp.node_ip": ray.util.get_node_ip_address(),
            "medxp.hostname": socket.gethostname(),
            "medxp.cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            "medxp.ray_gpu_ids": ",".join(str(gpu) for gpu in ray.get_gpu_ids())}


def node_data(config: ExperimentConfig, context: TrialContext, prior_audit: PriorAudit | None) -> DataModule:
    """The trial's data as this node sees it, checked against the fingerprint the driver recorded.

    Raises:
        MedxpError: the data is missing on this node or differs from the driver's (node, path and
            both fingerprints in the message).
    """
    node = f"node {socket.gethostname()} ({_node_id()})"
    try:
        data = create_datamodule(config, prior_audit)
    except MedxpError as error:
        raise MedxpError(f"{node}: cannot read the search's data at {context.data_dir} (the driver's fingerprint "
                         f"{context.data_fingerprint}): {error}. Every node needs the same data at the same path "
                         "(a shared mount): see README, cluster mode") from error
    if context.data_fingerprint and data.fingerprint != context.data_fingerprint:
        raise MedxpError(f"{node}: the data at {context.data_dir} has fingerprint {data.fingerprint}, but the driver "
                         f"recorded {context.data_fingerprint}: this node's copy differs from the driver's; every node "
                         "needs the same data at the same path (a shared mount): see README, cluster mode")
    return data


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()[:12] if ray.is_initialized() else "no Ray node"


@contextlib.contextmanager
def trial_run(context: TrialContext, number: int, params: dict[str, Any]) -> Iterator[MlflowTracker]:
    """A child run of the search's parent run; ends FINISHED or FAILED, or is left to the driver when stopped."""
    tags = {MLFLOW_PARENT_RUN_ID: context.parent_run_id, "medxp.study": context.study_name,
            "medxp.trial_number": str(number), STATE_TAG: "running",
            NOTE_TAG: trial_note(context.study_name, number, params)}
    run = mlflow.start_run(experiment_id=context.experiment_id,
                           run_name=trial_run_name(context.dataset, context.model, number, params), tags=tags)
    tracker = MlflowTracker(run)
    tracker.log_dict({"trial_number": number, "params": params}, "trial/sampled_params.json")
    started = time.monotonic()
    try:
        yield tracker
    except SystemExit:
        raise  # Tune stopped the trial (pruned or interrupted): the driver closes the run
    except BaseException as error:
        tracker.record_failure(error)
        _end_active_run("failed", time.monotonic() - started)
        raise
    else:
        _end_active_run("finished", time.monotonic() - started)


def trial_run_name(dataset: str, model: str, number: int, params: dict[str, Any]) -> str:
    """`glaucoma-small_cnn-trial-003`: the trial's dataset, its model (the sampled one when the space
    searches `model`) and number; `trial-003` without a dataset."""
    sampled = next((value for key, value in params.items() if key in ("model", "model.name")), None)
    parts = [part for part in (dataset, str(sampled) if sampled is not None else model) if part]
    return "-".join([*parts, f"trial-{number:03d}"])


def trial_note(study_name: str, number: int, params: dict[str, Any], trained: bool = True) -> str:
    """The trial run's description (Markdown): its search, the values it was given, the split it is scored on;
    with `trained` False, that the trial never trained (its search stopped before the trial opened its run)."""
    sampled = "\n".join(f"- `{key}` = {shown(value)}" for key, value in params.items()) or "- (none)"
    if not trained:
        return (f"Trial {number} of search `{study_name}` (the parent run): the study started it, but its search "
                f"stopped before the trial opened its MLflow run, so it never trained. Sampled values:\n\n{sampled}")
    return (f"Trial {number} of search `{study_name}` (the parent run). Sampled values, also this run's MLflow "
            f"params under their config keys:\n\n{sampled}\n\nScored on the validation split only "
            f"(`valid_*` metrics; `val_*` per epoch); its state is tag `{STATE_TAG}` "
            "(finished, pruned by ASHA, or failed).")


def _end_active_run(state: str, duration: float) -> None:
    with contextlib.suppress(Exception):
        mlflow.log_metric("trial_duration_s", duration)
    mlflow.set_tag(STATE_TAG, state)
    mlflow.end_run(status=RUN_STATUS[state])


def close_trial_run(client: MlflowClient, run_id: str, state: str, reason: str = "") -> None:
    """Driver side: sets the trial state tag and, if the run is still open, ends it with the matching status."""
    run = client.get_run(run_id)
    if run.data.tags.get(STATE_TAG) == state and run.info.status != "RUNNING":
        return
    client.set_tag(run_id, STATE_TAG, state)
    if reason:
        client.set_tag(run_id, "medxp.trial_reason", reason[:500])
    if run.info.status == "RUNNING":
        client.set_terminated(run_id, status=RUN_STATUS[state])
