"""The Optuna side of a search: the persistent study, and a Ray searcher that records states truthfully.

Ray's `OptunaSearch` tells Optuna COMPLETE, with the truncated score, for a trial that
ASHA stopped, and Optuna's own pruners never run under Tune. `StudySearcher` fixes
the record: a trial is COMPLETE only when its function reported that it finished (final
evaluation included); a trial the scheduler stopped is PRUNED with its per-epoch
intermediate values (`trial.report(value, epoch)`), so TPE and the study history treat it
as the pruned trial it is; an error is FAIL; a trial cut short by the time budget or a
shutdown is FAIL too (so that a resumed search runs it again).

Every trial trains with the same seed, so a proposal whose parameters equal those of a
finished trial would train the same model again. On a discrete space TPE proposes such
twins often. Unless `search.rerun_duplicates` is set, the searcher records the twin in
the study with the earlier trial's outcome (user attribute `duplicate_of`, 0 epochs; the
way Optuna's FAQ suggests) and asks again; the twin takes no Tune trial and no epoch. A
twin of a trial still training waits (RUNNING in the study) and takes its outcome when it ends.
When the sampler proposes nothing new `MAX_REDRAWS` times in a row, the space is taken
as exhausted and the search ends.

With two or more `search.objectives` the study has one direction per objective and a COMPLETE
trial is told the list of their values. Optuna's `trial.report` is for single-objective studies
only, so there a trial's per-epoch values of the first objective (what ASHA prunes on) are kept
as its user attribute `epoch_objectives` instead: a resumed search seeds ASHA's rungs from them
and a twin copies them.

Ray offers no public hook for what these classes change, so they use a few of its internals:
ASHA's `_brackets`, `_trial_info` and each bracket's `_rungs`; OptunaSearch's `_setup_study`,
`_ot_study` and `_ot_trials`. tests/unit/test_library_contracts.py pins each of them, so an upgrade
that changes one fails there rather than silently here.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from medxp.config import SearchConfig
from medxp.errors import MedxpError
from medxp.objectives import parse_objectives

log = logging.getLogger(__name__)

# Keys of the results a trial reports to Tune.
OBJECTIVE = "objective"
EPOCH = "epoch"
FINISHED = "medxp_finished"
RUN_ID = "mlflow_run_id"
MODEL_URI = "model_uri"
EPOCH_OBJECTIVE = "epoch_objective"
# The final result's objective values, in `search.objectives`' order (a multi-objective search).
OBJECTIVE_VALUES = "objective_values"
TRIAL_NUMBER = "trial_number"
PARAMS = "params"
# User attribute of a study trial that repeats an earlier trial's parameters (that trial's number).
DUPLICATE_OF = "duplicate_of"
# User attribute of a multi-objective study's trial: its per-epoch first-objective values ({"1": 0.7, ...}).
EPOCH_VALUES = "epoch_objectives"
# Study user attribute of a multi-objective study: its `search.objectives`, in order.
STUDY_OBJECTIVES = "objectives"
# Proposals in a row that may all repeat finished or running trials before the space counts as exhausted.
MAX_REDRAWS = 20

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended, as the driver saw it: what the MLflow child run must say, and its value if COMPLETE."""

    number: int
    state: TrialState
    run_id: str | None
    epochs: int
    reason: str = ""
    value: float | None = None  # the first objective's
    values: tuple[float, ...] = ()  # every objective's, in order (COMPLETE)


class PruningScheduler(AsyncHyperBandScheduler):
    """ASHA that remembers which trials it stopped (so the searcher can call them PRUNED).

    `stop_last_trials=False`: ASHA never stops a trial for reaching `max_t`; a trial ends its
    last epoch by itself and reports its final evaluation.

    `revisit_rungs`: ASHA judges a trial once per rung, against the trials that reached the
    rung before it, so the first trials of a search pass every rung whatever their score (in a
    12-trial search, two such trials can spend a quarter of the epochs). With it, a trial is
    judged again at each epoch until its next rung (after the last rung: until halfway to
    `max_t`), against everything recorded at its latest rung so far, and stops once it falls
    below that rung's cutoff.
    """

    def __init__(self, max_t: int, grace_period: int, reduction_factor: float, revisit_rungs: bool = True) -> None:
        super().__init__(time_attr=EPOCH, max_t=max_t, grace_period=grace_period,
                         reduction_factor=reduction_factor, stop_last_trials=False)
        self.pruned: set[str] = set()
        self.revisit_rungs = revisit_rungs
        self.max_t = max_t

    def seed_rungs(self, study: optuna.Study) -> None:
        """Fills the rungs with the study's earlier trials, so that a resumed search prunes against them too."""
        for trial in trained_trials(study):
            per_epoch = epoch_values(trial)
            for bracket in self._brackets:
                for milestone, recorded in bracket._rungs:
                    value = per_epoch.get(math.ceil(milestone))
                    if value is not None and math.isfinite(value):
                        recorded[f"study-trial-{trial.number}"] = value

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if (decision == TrialScheduler.CONTINUE and self.revisit_rungs and EPOCH in result
                and not result.get(FINISHED) and self._below_latest_rung(trial.trial_id, result[EPOCH])):
            decision = TrialScheduler.STOP
        if decision == TrialScheduler.STOP and not result.get(FINISHED):
            self.pruned.add(trial.trial_id)
        return decision

    def _below_latest_rung(self, trial_id: str, epoch: int) -> bool:
        """Whether the trial's score at its latest rung is now below that rung's cutoff.

        After the last rung, only in the first half of the way to `max_t`: a trial that has come
        most of the way to its full result is worth its last epochs more than stopping it saves.
        """
        bracket = self._trial_info.get(trial_id)
        next_milestone = self.max_t
        for milestone, recorded in bracket._rungs if bracket else ():  # highest milestone first
            if epoch >= milestone:
                last_stretch = next_milestone >= self.max_t
                if trial_id not in recorded or (last_stretch and epoch - milestone > (self.max_t - milestone) / 2):
                    return False
                cutoff = bracket.cutoff(recorded)
                return cutoff is not None and recorded[trial_id] < cutoff
            next_milestone = milestone
        return False


class StudySearcher(OptunaSearch):
    """OptunaSearch whose record in the study is right for pruned, failed and interrupted trials.

    Args:
        space: The define-by-run function (a `SearchSpace`).
        study: The persistent study trials are asked from and told to.
        scheduler: The scheduler whose stops count as pruning.
        on_outcome: Called on the driver with each trial's outcome (closes its MLflow run, shows progress).
        rerun_duplicates: Train a proposal again even when a finished trial had the same parameters.
    """

    def __init__(self, space: Callable, study: optuna.Study, scheduler: PruningScheduler,
                 on_outcome: Callable[[TrialOutcome], None], rerun_duplicates: bool = False) -> None:
        self._study = study  # before OptunaSearch's __init__, whose `_setup_study` takes it
        super().__init__(space=space, metric=OBJECTIVE, mode="max", sampler=study.sampler,
                         study_name=study.study_name)
        self._scheduler = scheduler
        self._on_outcome = on_outcome
        self._last_results: dict[str, dict] = {}
        self._reported_epochs: dict[str, set[int]] = {}
        self._rerun_duplicates = rerun_duplicates
        self._waiting_twins: dict[int, list[optuna.Trial]] = {}  # running trial's number -> its twins
        self._ended: set[str] = set()  # Tune ids of the trials told to the study
        self._multi_objective = len(study.directions) > 1
        self._epoch_values: dict[str, dict[int, float]] = {}  # multi-objective: per-epoch values, told at the end

    @property
    def study(self) -> optuna.Study:
        """The study trials are asked from and told to."""
        return self._study

    def _setup_study(self, mode: str) -> None:
        """Asks from and tells the study medxp opened (OptunaSearch would create or load one of its own)."""
        self._ot_study = self._study

    def suggest(self, trial_id: str) -> dict | str | None:
        for _ in range(MAX_REDRAWS):
            params = super().suggest(trial_id)
            ot_trial = self._ot_trials[trial_id]
            if self._rerun_duplicates:
                return {PARAMS: params, TRIAL_NUMBER: ot_trial.number}
            finished = self._finished_twin(ot_trial.params)
            running = None if finished else self._running_twin(trial_id, ot_trial.params)
            if finished is None and running is None:
                return {PARAMS: params, TRIAL_NUMBER: ot_trial.number}
            if finished is not None:
                self._record_twin(self._ot_trials.pop(trial_id), finished)
            else:
                self._waiting_twins.setdefault(running, []).append(self._ot_trials.pop(trial_id))
                log.info("trial %d repeats running trial %d's parameters: it will take that trial's outcome",
                         ot_trial.number, running)
        log.warning("the sampler proposed only parameters of finished or running trials %d times in a row: the "
                    "space looks exhausted, no new trials are started", MAX_REDRAWS)
        return Searcher.FINISHED

    def _finished_twin(self, params: dict[str, Any]) -> optuna.trial.FrozenTrial | None:
        """The first trained trial that finished (complete or pruned) with exactly these parameters."""
        for trial in trained_trials(self._study):
            if trial.params == params:
                return trial
        return None

    def _running_twin(self, trial_id: str, params: dict[str, Any]) -> int | None:
        """The study number of a trial of this search still training with exactly these parameters."""
        for other_id, trial in self._ot_trials.items():
            if other_id != trial_id and other_id not in self._ended and trial.params == params:
                return trial.number
        return None

    def _settle_waiting_twins(self, number: int) -> None:
        """Gives the proposals that waited for trial `number` its outcome (FAIL if it failed)."""
        waiting = self._waiting_twins.pop(number, [])
        if not waiting:
            return
        ended = self._study.get_trials(deepcopy=False)[number]
        for ot_trial in waiting:
            if ended.state in FINISHED_STATES:
                self._record_twin(ot_trial, ended)
            else:
                ot_trial.set_user_attr(DUPLICATE_OF, number)
                ot_trial.set_user_attr("reason", f"same parameters as trial {number}, which failed")
                self._study.tell(ot_trial, state=TrialState.FAIL)

    def _record_twin(self, ot_trial: optuna.Trial, twin: optuna.trial.FrozenTrial) -> None:
        """Tells the study `ot_trial` ended as `twin` did, without training it (0 epochs, no MLflow run)."""
        if self._multi_objective:
            if EPOCH_VALUES in twin.user_attrs:
                ot_trial.set_user_attr(EPOCH_VALUES, twin.user_attrs[EPOCH_VALUES])
        else:
            for epoch, value in sorted(twin.intermediate_values.items()):
                ot_trial.report(value, epoch)
        ot_trial.set_user_attr(DUPLICATE_OF, twin.number)
        ot_trial.set_user_attr("epochs", 0)
        for key in (RUN_ID, MODEL_URI):
            if key in twin.user_attrs:
                ot_trial.set_user_attr(key, twin.user_attrs[key])
        ot_trial.set_user_attr("reason", f"same parameters as trial {twin.number}: its outcome, not trained again")
        self._study.tell(ot_trial, twin.values if twin.state == TrialState.COMPLETE else None, state=twin.state)
        log.info("trial %d repeats trial %d's parameters: recorded %s from it, not trained again", ot_trial.number,
                 twin.number, twin.state.name.lower())

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._last_results[trial_id] = result
        if not result.get(FINISHED):
            self._report_epoch(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._ended or trial_id not in self._ot_trials:
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
        if self._multi_objective and self._epoch_values.get(trial_id):
            ot_trial.set_user_attr(EPOCH_VALUES, {str(epoch): v for epoch, v in
                                                  sorted(self._epoch_values[trial_id].items())})
        self._study.tell(ot_trial, value, state=state)
        self._ended.add(trial_id)
        self._settle_waiting_twins(ot_trial.number)
        values = tuple(value) if isinstance(value, list) else (() if value is None else (value,))
        log.debug("trial %d %s after %s epoch(s)%s", ot_trial.number, state.name.lower(), result.get(EPOCH, 0),
                  f": {OBJECTIVE} {', '.join(f'{v:.4f}' for v in values)}" if values
                  else (f" ({reason})" if reason else ""))
        self._on_outcome(TrialOutcome(ot_trial.number, state, result.get(RUN_ID), int(result.get(EPOCH) or 0), reason,
                                      values[0] if values else None, values))

    def _judge(self, trial_id: str, result: dict, error: bool) -> tuple[TrialState, float | list[float] | None, str]:
        """(state, value, reason) of a trial Tune says has ended; a multi-objective study's value is the list."""
        if error:
            return TrialState.FAIL, None, "the trial raised an error (see its MLflow run)"
        if result.get(FINISHED) and self._multi_objective:
            values = result.get(OBJECTIVE_VALUES)
            if (not isinstance(values, (list, tuple)) or len(values) != len(self._study.directions)
                    or not all(v is not None and math.isfinite(v) for v in values)):
                return TrialState.FAIL, None, f"final {OBJECTIVE_VALUES} is {values}"
            return TrialState.COMPLETE, [float(v) for v in values], ""
        if result.get(FINISHED):
            value = result.get(OBJECTIVE)
            if value is None or not math.isfinite(value):
                return TrialState.FAIL, None, f"final {OBJECTIVE} is {value}"
            return TrialState.COMPLETE, float(value), ""
        if trial_id in self._scheduler.pruned:
            return TrialState.PRUNED, None, ""
        return TrialState.FAIL, None, "interrupted (time budget or shutdown) before it finished"

    def _report_epoch(self, trial_id: str, result: dict) -> None:
        """`trial.report(value, epoch)`, once per epoch, finite values only (multi-objective: kept for
        the user attribute `epoch_objectives`, Optuna's report being single-objective only)."""
        epoch, value = result.get(EPOCH), result.get(OBJECTIVE)
        if epoch is None or value is None or not math.isfinite(value):
            return
        if self._multi_objective:
            self._epoch_values.setdefault(trial_id, {}).setdefault(int(epoch), float(value))
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
    from medxp.tracking.mlflow_tracker import local_store_folder  # here: the tracking package imports torch

    return local_store_folder(tracking_uri) or Path.cwd()


_LOCKS = "_medxp_locks"  # in a pickled sampler's state: the names of the locks left out, and what makes each
_LOCK_FACTORIES = {type(threading.Lock()): threading.Lock, type(threading.RLock()): threading.RLock}


class NSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II, picklable.

    Tune pickles the searcher, with its study and the study's sampler, into `tuner.pkl` when the
    search starts; Optuna's genetic samplers (from 5.1) hold a thread lock and pickle it. The locks
    are left out of the pickled state and made anew when it is read back.
    """

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        locks = {name: _LOCK_FACTORIES[type(value)] for name, value in state.items()
                 if type(value) in _LOCK_FACTORIES}
        for name in locks:
            del state[name]
        state[_LOCKS] = locks
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        locks = state.pop(_LOCKS, {})
        self.__dict__.update(state)
        for name, factory in locks.items():
            setattr(self, name, factory())


def create_sampler(settings: SearchConfig, previous_trials: int) -> optuna.samplers.BaseSampler:
    """TPE (default), random or NSGA-II (generations of `startup_trials` trials, at least 4), seeded; a resumed
    study shifts the seed so it does not replay its first draws. TPE and NSGA-II handle several objectives."""
    seed = settings.seed + previous_trials
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if settings.sampler == "nsga2":
        return NSGAIISampler(seed=seed, population_size=nsga2_population(settings))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=settings.startup_trials, constant_liar=True)


def nsga2_population(settings: SearchConfig) -> int:
    """NSGA-II's generation size: `search.startup_trials`, at least 4 (two parents and room to choose them)."""
    return max(settings.startup_trials, 4)


def study_directions(settings: SearchConfig) -> list[str]:
    """`["maximize"]` for a single objective; one Optuna direction per objective with two or more."""
    objectives = parse_objectives(settings.objectives)
    return [objective.optuna_direction for objective in objectives] if len(objectives) > 1 else ["maximize"]


def open_study(name: str, storage: str, settings: SearchConfig) -> optuna.Study:
    """Creates or loads the study `name`; trials a killed search left RUNNING (or WAITING) are marked FAIL.

    Raises:
        MedxpError: an existing study whose objectives (directions, or the metrics a multi-objective
            study recorded) differ from `search.objectives`.
    """
    storage_object = optuna.storages.RDBStorage(storage)
    existing = optuna.study.get_all_study_names(storage_object)
    directions = study_directions(settings)
    previous = 0
    if name in existing:
        loaded = optuna.load_study(study_name=name, storage=storage_object)
        _check_same_objectives(loaded, settings, directions)
        previous = len(loaded.trials)
    study = optuna.create_study(study_name=name, storage=storage_object, directions=directions,
                                sampler=create_sampler(settings, previous), load_if_exists=True)
    if len(directions) > 1 and STUDY_OBJECTIVES not in study.user_attrs:
        study.set_user_attr(STUDY_OBJECTIVES, list(settings.objectives))
    study_id = storage_object.get_study_id_from_name(name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        # The storage's own (public) methods: `study.tell` refuses a WAITING trial and sets no user attribute.
        trial_id = storage_object.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage_object.set_trial_user_attr(trial_id, "reason", "left running by an interrupted search")
        storage_object.set_trial_state_values(trial_id, TrialState.FAIL)
        log.warning("study %s: trial %d was left running by an interrupted search; marked FAIL", name, trial.number)
    return study


def _check_same_objectives(study: optuna.Study, settings: SearchConfig, directions: list[str]) -> None:
    """Refuses to resume a study under objectives other than those it was created with."""
    recorded = [direction.name.lower() for direction in study.directions]
    recorded_objectives = study.user_attrs.get(STUDY_OBJECTIVES)
    asked = list(settings.objectives) or ["(single objective)"]
    if recorded != directions:
        raise MedxpError(f"study '{study.study_name}': it was created with the direction(s) {', '.join(recorded)}, "
                         f"but 'search.objectives' = {asked} asks {', '.join(directions)}; expected the objectives "
                         "the study was created with, or another search name (search.name) for a new study")
    if recorded_objectives is not None and len(directions) > 1 and \
            [o.text for o in parse_objectives(recorded_objectives)] != [o.text for o in parse_objectives(asked)]:
        raise MedxpError(f"study '{study.study_name}': it was created with 'search.objectives' = "
                         f"{list(recorded_objectives)}, but the config asks {asked}; expected the same objectives, "
                         "or another search name (search.name) for a new study")


def epoch_values(trial: optuna.trial.FrozenTrial) -> dict[int, float]:
    """A trial's per-epoch values of the (first) objective: Optuna's intermediate values, or a multi-objective
    study's user attribute `epoch_objectives`."""
    if trial.intermediate_values:
        return dict(trial.intermediate_values)
    return {int(epoch): float(value) for epoch, value in trial.user_attrs.get(EPOCH_VALUES, {}).items()}


def trained_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that trained to an outcome (COMPLETE or PRUNED), not those recorded as another's duplicate."""
    return [trial for trial in study.get_trials(deepcopy=False, states=FINISHED_STATES)
            if DUPLICATE_OF not in trial.user_attrs]


def finished_count(study: optuna.Study) -> int:
    """Trials that trained to an outcome (`search.n_trials` counts these); failed ones are tried again on resume."""
    return len(trained_trials(study))
