"""The Optuna side of a search: the persistent study, and a Ray searcher that records states truthfully.

Ray's `OptunaSearch` tells Optuna COMPLETE, with the truncated score, for a trial that
ASHA stopped, and Optuna's own pruners never run under Tune. `StudySearcher` fixes
the record: a trial is COMPLETE only when its function reported that it finished (final
evaluation included); a trial the scheduler stopped is PRUNED with its per-epoch
intermediate values (`trial.report(value, epoch)`), so TPE and the study history treat it
as the pruned trial it is; an error is FAIL; a trial cut short by the time budget or a
shutdown is FAIL too (so that a resumed search runs it again).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from medxp.config import SearchConfig

log = logging.getLogger(__name__)

# Keys of the results a trial reports to Tune.
OBJECTIVE = "objective"
EPOCH = "epoch"
FINISHED = "medxp_finished"
RUN_ID = "mlflow_run_id"
MODEL_URI = "model_uri"
EPOCH_OBJECTIVE = "epoch_objective"
TRIAL_NUMBER = "trial_number"
PARAMS = "params"

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended, as the driver saw it: what the MLflow child run must say."""

    number: int
    state: TrialState
    run_id: str | None
    epochs: int
    reason: str = ""


class PruningScheduler(AsyncHyperBandScheduler):
    """ASHA that remembers which trials it stopped (so the searcher can call them PRUNED).

    `stop_last_trials=False`: ASHA never stops a trial for reaching `max_t`; a trial ends its
    last epoch by itself and reports its final evaluation.
    """

    def __init__(self, max_t: int, grace_period: int, reduction_factor: float) -> None:
        super().__init__(time_attr=EPOCH, max_t=max_t, grace_period=grace_period,
                         reduction_factor=reduction_factor, stop_last_trials=False)
        self.pruned: set[str] = set()

    def seed_rungs(self, study: optuna.Study) -> None:
        """Fills the rungs with the study's earlier trials, so that a resumed search prunes against them too."""
        for trial in study.get_trials(deepcopy=False, states=FINISHED_STATES):
            for bracket in self._brackets:
                for milestone, recorded in bracket._rungs:
                    value = trial.intermediate_values.get(math.ceil(milestone))
                    if value is not None and math.isfinite(value):
                        recorded[f"study-trial-{trial.number}"] = value

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and not result.get(FINISHED):
            self.pruned.add(trial.trial_id)
        return decision


class StudySearcher(OptunaSearch):
    """OptunaSearch whose record in the study is right for pruned, failed and interrupted trials.

    Args:
        space: The define-by-run function (a `SearchSpace`).
        study: The persistent study trials are asked from and told to.
        scheduler: The scheduler whose stops count as pruning.
        on_outcome: Called on the driver with each trial's outcome (closes its MLflow run).
    """

    def __init__(self, space: Callable, study: optuna.Study, scheduler: PruningScheduler,
                 on_outcome: Callable[[TrialOutcome], None]) -> None:
        super().__init__(space=space, metric=OBJECTIVE, mode="max", sampler=study.sampler,
                         study_name=study.study_name, storage=study._storage)
        self._ot_study = study
        self._scheduler = scheduler
        self._on_outcome = on_outcome
        self._last_results: dict[str, dict] = {}
        self._reported_epochs: dict[str, set[int]] = {}

    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        return {PARAMS: params, TRIAL_NUMBER: self._ot_trials[trial_id].number}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._last_results[trial_id] = result
        if not result.get(FINISHED):
            self._report_epoch(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        result = result or self._last_results.get(trial_id) or {}
        ot_trial = self._ot_trials[trial_id]
        state, value, reason = self._judge(trial_id, result, error)
        if state == TrialState.PRUNED and not result.get(FINISHED):
            self._report_epoch(trial_id, result)
        if result.get(FINISHED):
            self._report_epoch(trial_id, {EPOCH: result.get(EPOCH), OBJECTIVE: result.get(EPOCH_OBJECTIVE)})
        for key in (RUN_ID, MODEL_URI, EPOCH):
            if result.get(key) is not None:
                ot_trial.set_user_attr(key if key != EPOCH else "epochs", result[key])
        if reason:
            ot_trial.set_user_attr("reason", reason)
        self._ot_study.tell(ot_trial, value, state=state)
        self._completed_trials.add(trial_id)
        log.info("trial %d %s after %s epoch(s)%s", ot_trial.number, state.name.lower(), result.get(EPOCH, 0),
                 f": {OBJECTIVE} {value:.4f}" if value is not None else (f" ({reason})" if reason else ""))
        self._on_outcome(TrialOutcome(ot_trial.number, state, result.get(RUN_ID), int(result.get(EPOCH) or 0), reason))

    def _judge(self, trial_id: str, result: dict, error: bool) -> tuple[TrialState, float | None, str]:
        """(state, value, reason) of a trial Tune says has ended."""
        if error:
            return TrialState.FAIL, None, "the trial raised an error (see its MLflow run)"
        if result.get(FINISHED):
            value = result.get(OBJECTIVE)
            if value is None or not math.isfinite(value):
                return TrialState.FAIL, None, f"final {OBJECTIVE} is {value}"
            return TrialState.COMPLETE, float(value), ""
        if trial_id in self._scheduler.pruned:
            return TrialState.PRUNED, None, ""
        return TrialState.FAIL, None, "interrupted (time budget or shutdown) before it finished"

    def _report_epoch(self, trial_id: str, result: dict) -> None:
        """`trial.report(value, epoch)`, once per epoch, finite values only."""
        epoch, value = result.get(EPOCH), result.get(OBJECTIVE)
        if epoch is None or value is None or not math.isfinite(value):
            return
        reported = self._reported_epochs.setdefault(trial_id, set())
        if int(epoch) not in reported:
            self._ot_trials[trial_id].report(float(value), int(epoch))
            reported.add(int(epoch))

    def save(self, checkpoint_path: str) -> None:
        """No Tune checkpoint: a search resumes from its Optuna study, by name."""

    def restore(self, checkpoint_path: str) -> None:
        """See `save`."""


def default_storage(tracking_uri: str) -> str:
    """`sqlite:///<folder of the MLflow store>/optuna.db`, or `./optuna.db` for a remote MLflow."""
    return f"sqlite:///{search_home(tracking_uri) / 'optuna.db'}"


def search_home(tracking_uri: str) -> Path:
    """The folder holding the local MLflow store (sqlite file or file store), else the working directory."""
    for prefix in ("sqlite:///", "file://"):
        if tracking_uri.startswith(prefix):
            return Path(tracking_uri[len(prefix):]).resolve().parent
    return Path.cwd()


def create_sampler(settings: SearchConfig, previous_trials: int) -> optuna.samplers.BaseSampler:
    """TPE (default) or random, seeded; a resumed study shifts the seed so it does not replay its first draws."""
    seed = settings.seed + previous_trials
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=settings.startup_trials, constant_liar=True)


def open_study(name: str, storage: str, settings: SearchConfig) -> optuna.Study:
    """Creates or loads the study `name`; trials a killed search left RUNNING are marked FAIL."""
    storage_object = optuna.storages.RDBStorage(storage)
    existing = optuna.study.get_all_study_names(storage_object)
    previous = len(optuna.load_study(study_name=name, storage=storage_object).trials) if name in existing else 0
    study = optuna.create_study(study_name=name, storage=storage_object, direction="maximize",
                                sampler=create_sampler(settings, previous), load_if_exists=True)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        study._storage.set_trial_user_attr(trial._trial_id, "reason", "left running by an interrupted search")
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        log.warning("study %s: trial %d was left running by an interrupted search; marked FAIL", name, trial.number)
    return study


def finished_count(study: optuna.Study) -> int:
    """Trials that ran to an outcome (COMPLETE or PRUNED); failed ones are tried again on resume."""
    return len(study.get_trials(deepcopy=False, states=FINISHED_STATES))
