"""Contracts on the library internals medxp uses: each test pins an attribute's name, type and shape.

Ray offers no public hook for what `medxp.search.study` changes in ASHA and OptunaSearch (see its
module docstring). An upgrade that renames or reshapes one of these internals fails here, loudly,
instead of silently changing how a search prunes or records its trials.
"""

from __future__ import annotations

import inspect

import numpy as np
import optuna
import pytest
from ray.tune.schedulers import AsyncHyperBandScheduler
from ray.tune.search.optuna import OptunaSearch

optuna.logging.set_verbosity(optuna.logging.WARNING)


class FakeTrial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def asha(max_t: int = 9) -> AsyncHyperBandScheduler:
    """The scheduler as `PruningScheduler` builds it (one bracket, no stop at max_t)."""
    scheduler = AsyncHyperBandScheduler(time_attr="epoch", max_t=max_t, grace_period=1, reduction_factor=3,
                                        stop_last_trials=False)
    scheduler.set_search_properties(metric="objective", mode="max")
    return scheduler


# ---------------------------------------------------------------- ASHA (PruningScheduler)


def test_asha_brackets_hold_rungs_as_milestone_dict_pairs_highest_first():
    brackets = asha(max_t=9)._brackets
    assert isinstance(brackets, list) and len(brackets) == 1
    rungs = brackets[0]._rungs
    assert isinstance(rungs, list) and all(isinstance(rung, tuple) and len(rung) == 2 for rung in rungs)
    milestones = [milestone for milestone, _ in rungs]
    assert milestones == [9, 3, 1]  # grace period 1, reduction factor 3, max_t 9; highest first
    assert all(isinstance(recorded, dict) and not recorded for _, recorded in rungs)


def test_asha_records_a_trial_score_under_its_id_in_the_rung_dict_and_cutoff_reads_it():
    scheduler = asha()
    trials = [FakeTrial(name) for name in ("a", "b", "c")]
    for trial in trials:
        scheduler.on_trial_add(None, trial)
    for trial, score in zip(trials, (0.2, 0.5, 0.9)):
        scheduler.on_trial_result(None, trial, {"epoch": 1, "objective": score})
    bracket = scheduler._brackets[0]
    recorded = dict(bracket._rungs)[1]
    assert recorded == {"a": 0.2, "b": 0.5, "c": 0.9}  # mode max: the score as reported
    assert bracket.cutoff(recorded) == pytest.approx(np.nanpercentile([0.2, 0.5, 0.9], 100 * (1 - 1 / 3)))
    assert bracket.cutoff({}) is None
    recorded["study-trial-0"] = 1.0  # what `seed_rungs` adds: a key of its own, counted by the next cutoff
    assert scheduler.on_trial_result(None, FakeTrial("a"), {"epoch": 3, "objective": 0.1}) == "CONTINUE"
    late = FakeTrial("late")
    scheduler.on_trial_add(None, late)
    assert scheduler.on_trial_result(None, late, {"epoch": 1, "objective": 0.3}) == "STOP"


def test_asha_trial_info_maps_a_tune_trial_id_to_its_bracket_until_it_completes():
    scheduler = asha()
    trial = FakeTrial("t")
    assert isinstance(scheduler._trial_info, dict) and "t" not in scheduler._trial_info
    scheduler.on_trial_add(None, trial)
    assert scheduler._trial_info["t"] is scheduler._brackets[0]
    scheduler.on_trial_complete(None, trial, {"epoch": 1, "objective": 0.5})
    assert "t" not in scheduler._trial_info  # `PruningScheduler` reads it with .get for that reason


# ---------------------------------------------------------------- OptunaSearch (StudySearcher)


def space(trial: optuna.Trial) -> None:
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)


def test_optuna_search_sets_up_its_study_in_setup_study_called_from_init_with_the_mode():
    assert list(inspect.signature(OptunaSearch._setup_study).parameters) == ["self", "mode"]
    study = optuna.create_study(direction="maximize")
    calls = []

    class Given(OptunaSearch):
        def _setup_study(self, mode):
            calls.append(mode)
            self._ot_study = study

    searcher = Given(space=space, metric="objective", mode="max")
    assert calls == ["max"] and searcher._ot_study is study


def test_optuna_search_asks_from_ot_study_and_keeps_the_trial_in_ot_trials_by_tune_id():
    study = optuna.create_study(direction="maximize")
    searcher = OptunaSearch(space=space, metric="objective", mode="max")
    searcher._ot_study = study
    params = searcher.suggest("tune-1")
    assert isinstance(searcher._ot_trials, dict)
    trial = searcher._ot_trials["tune-1"]
    assert isinstance(trial, optuna.Trial) and trial.params == params and trial.number == 0
    assert len(study.trials) == 1 and study.trials[0].state == optuna.trial.TrialState.RUNNING
    assert searcher.suggest("tune-1") == params and len(study.trials) == 1  # the same Tune id: the same trial
    searcher._ot_trials.pop("tune-1")  # what `StudySearcher` does with a twin: the next suggest asks anew
    searcher.suggest("tune-1")
    assert len(study.trials) == 2 and searcher._ot_trials["tune-1"].number == 1


# ---------------------------------------------------------------- scikit-learn (medxp.models.gradient_boosting)


def test_hist_gradient_boosting_keeps_its_fitted_trees_in_predictors_one_list_per_iteration_with_nodes():
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    rows = rng.normal(size=(60, 2)) + labels[:, None]
    estimator = HistGradientBoostingClassifier(max_iter=4, early_stopping=False).fit(rows, labels)
    assert len(estimator._predictors) == estimator.n_iter_ == 4
    assert all(len(per_iteration) == 3 for per_iteration in estimator._predictors)  # one tree per class
    assert all(len(tree.nodes) >= 1 for per_iteration in estimator._predictors for tree in per_iteration)
