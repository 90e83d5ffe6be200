"""The study searcher's record of proposals that repeat a finished trial (no Ray cluster needed)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.search import Searcher

from medxp.search.space import load_search_space
from medxp.search.study import (
    DUPLICATE_OF,
    EPOCH,
    EPOCH_OBJECTIVE,
    FINISHED,
    MAX_REDRAWS,
    MODEL_URI,
    OBJECTIVE,
    PARAMS,
    RUN_ID,
    PruningScheduler,
    StudySearcher,
    finished_count,
    open_study,
)
from medxp.config import SearchConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_searcher(tmp_path: Path, choices: str, rerun_duplicates: bool = False) -> StudySearcher:
    (tmp_path / "space.yaml").write_text(f"lr: {{type: categorical, choices: {choices}}}\n")
    study = optuna.create_study(study_name="twins", storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                                direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    return StudySearcher(load_search_space(str(tmp_path / "space.yaml")), study,
                         PruningScheduler(max_t=3, grace_period=1, reduction_factor=2),
                         on_outcome=lambda outcome: None, rerun_duplicates=rerun_duplicates)


def finish(searcher: StudySearcher, tune_id: str, value: float) -> None:
    """What Tune tells the searcher about a trial that trained 3 epochs."""
    for epoch in (1, 2):
        searcher.on_trial_result(tune_id, {OBJECTIVE: value - 0.1 * (3 - epoch), EPOCH: epoch})
    searcher.on_trial_complete(tune_id, {OBJECTIVE: value, EPOCH: 3, FINISHED: True, EPOCH_OBJECTIVE: value,
                                         RUN_ID: f"run-{tune_id}", MODEL_URI: f"models:/m-{tune_id}"})


def test_a_repeat_of_a_finished_trial_takes_its_outcome_and_is_not_trained(tmp_path):
    searcher = make_searcher(tmp_path, "[0.1, 0.2]")
    study = searcher.study
    for _ in range(2):
        study.enqueue_trial({"lr": 0.1})  # the first two proposals: 0.1, then 0.1 again
    assert searcher.suggest("a")[PARAMS] == {"lr": 0.1}
    finish(searcher, "a", 0.8)
    assert searcher.suggest("b")[PARAMS] == {"lr": 0.2}  # the twin of trial 0 was recorded, not proposed
    twins = [t for t in study.trials if DUPLICATE_OF in t.user_attrs]
    assert twins and study.trials[1] in twins
    original = study.trials[0]
    for twin in twins:
        assert twin.user_attrs[DUPLICATE_OF] == 0 and twin.params == original.params
        assert twin.state == TrialState.COMPLETE and twin.value == pytest.approx(0.8)
        assert twin.intermediate_values == original.intermediate_values
        assert twin.user_attrs["epochs"] == 0 and twin.user_attrs[MODEL_URI] == "models:/m-a"
    assert study.trials[-1].params == {"lr": 0.2} and study.trials[-1].state == TrialState.RUNNING
    assert finished_count(study) == 1  # twins do not count towards search.n_trials


def test_a_space_with_nothing_new_left_ends_the_search(tmp_path):
    searcher = make_searcher(tmp_path, "[0.1]")
    searcher.suggest("a")
    assert searcher.suggest("b") == Searcher.FINISHED  # every redraw repeats the running trial 0
    study = searcher.study
    assert len(study.trials) == 1 + MAX_REDRAWS and study.trials[-1].state == TrialState.RUNNING
    finish(searcher, "a", 0.8)
    twins = [t for t in study.trials if DUPLICATE_OF in t.user_attrs]
    assert len(twins) == MAX_REDRAWS and all(t.state == TrialState.COMPLETE and t.value == 0.8 for t in twins)
    assert finished_count(study) == 1


def test_pruned_twin_is_recorded_pruned_and_rerun_duplicates_trains_again(tmp_path):
    searcher = make_searcher(tmp_path, "[0.1]")
    searcher.suggest("a")
    searcher._scheduler.pruned.add("a")
    searcher.on_trial_result("a", {OBJECTIVE: 0.4, EPOCH: 1})
    searcher.on_trial_complete("a", {OBJECTIVE: 0.4, EPOCH: 1})
    assert searcher.suggest("b") == Searcher.FINISHED
    twin = searcher.study.trials[1]
    assert twin.state == TrialState.PRUNED and twin.intermediate_values == {1: 0.4}
    (tmp_path / "rerun").mkdir()
    rerunning = make_searcher(tmp_path / "rerun", "[0.1]", rerun_duplicates=True)
    rerunning.suggest("a")
    finish(rerunning, "a", 0.8)
    assert rerunning.suggest("b")[PARAMS] == {"lr": 0.1}
    assert not [t for t in rerunning.study.trials if DUPLICATE_OF in t.user_attrs]


def test_a_repeat_of_a_running_trial_waits_for_its_outcome(tmp_path):
    searcher = make_searcher(tmp_path, "[0.1, 0.2]")
    study = searcher.study
    for _ in range(2):
        study.enqueue_trial({"lr": 0.1})
    searcher.suggest("a")
    assert searcher.suggest("b")[PARAMS] == {"lr": 0.2}  # 0.1 is training: its twin is not trained
    waiting = study.trials[1]
    assert waiting.params == {"lr": 0.1} and waiting.state == TrialState.RUNNING
    finish(searcher, "a", 0.8)
    waiting = study.trials[1]
    assert waiting.state == TrialState.COMPLETE and waiting.value == pytest.approx(0.8)
    assert waiting.user_attrs[DUPLICATE_OF] == 0 and waiting.user_attrs["epochs"] == 0


def test_a_twin_waiting_for_a_trial_that_fails_fails_too(tmp_path):
    searcher = make_searcher(tmp_path, "[0.1, 0.2]")
    for _ in range(2):
        searcher.study.enqueue_trial({"lr": 0.1})
    searcher.suggest("a")
    searcher.suggest("b")
    searcher.on_trial_complete("a", error=True)
    waiting = searcher.study.trials[1]
    assert waiting.state == TrialState.FAIL and waiting.user_attrs[DUPLICATE_OF] == 0
    assert finished_count(searcher.study) == 0


def test_open_study_marks_the_trials_an_interrupted_search_left_running_failed(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    killed = optuna.create_study(study_name="resumed", storage=storage, direction="maximize")
    killed.tell(killed.ask(), 0.5)
    killed.ask()  # RUNNING when the search was killed
    killed.enqueue_trial({"lr": 0.1})  # WAITING
    study = open_study("resumed", storage, SearchConfig())
    states = [trial.state for trial in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL]
    assert all(trial.user_attrs["reason"] == "left running by an interrupted search" for trial in study.trials[1:])
    assert "reason" not in study.trials[0].user_attrs and study.trials[0].value == 0.5
    reloaded = optuna.load_study(study_name="resumed", storage=storage)  # written to the database, not a cache
    assert [trial.state for trial in reloaded.trials] == states


class FakeTrial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def asha(revisit_rungs: bool, max_t: int = 9) -> PruningScheduler:
    """Rungs at epochs 1 and 3 (max_t 9, reduction factor 3), and 9 for max_t 27."""
    scheduler = PruningScheduler(max_t=max_t, grace_period=1, reduction_factor=3, revisit_rungs=revisit_rungs)
    scheduler.set_search_properties(metric=OBJECTIVE, mode="max")
    return scheduler


def report(scheduler: PruningScheduler, trial: FakeTrial, epoch: int, value: float) -> str:
    return scheduler.on_trial_result(None, trial, {EPOCH: epoch, OBJECTIVE: value})


@pytest.mark.parametrize("revisit_rungs", [True, False])
def test_a_trial_that_passed_a_rung_first_is_stopped_once_others_outrank_it(revisit_rungs):
    scheduler = asha(revisit_rungs)
    early, strong = FakeTrial("early"), FakeTrial("strong")
    for trial in (early, strong):
        scheduler.on_trial_add(None, trial)
    assert report(scheduler, early, 1, 0.5) == "CONTINUE"  # first at the rung: nothing to compare with
    assert report(scheduler, strong, 1, 0.9) == "CONTINUE"
    decision = report(scheduler, early, 2, 0.55)
    assert decision == ("STOP" if revisit_rungs else "CONTINUE")
    assert ("early" in scheduler.pruned) == revisit_rungs
    assert report(scheduler, strong, 2, 0.92) == "CONTINUE"


def added(scheduler: PruningScheduler, *names: str) -> list[FakeTrial]:
    trials = [FakeTrial(name) for name in names]
    for trial in trials:
        scheduler.on_trial_add(None, trial)
    return trials


def test_a_trial_is_judged_again_only_at_its_latest_rung_until_the_next():
    scheduler = asha(revisit_rungs=True, max_t=27)
    leader, late = added(scheduler, "leader", "late")
    for epoch, value in ((1, 0.6), (2, 0.7), (3, 0.8)):
        assert report(scheduler, leader, epoch, value) == "CONTINUE"
    assert report(scheduler, late, 1, 0.95) == "CONTINUE"  # outranks the leader at rung 1 ...
    assert report(scheduler, leader, 4, 0.85) == "CONTINUE"  # ... which is past rung 3 and alone there
    for epoch, value in ((2, 0.96), (3, 0.97)):
        assert report(scheduler, late, epoch, value) == "CONTINUE"
    assert report(scheduler, leader, 8, 0.85) == "STOP"  # below rung 3's cutoff, before rung 9


@pytest.mark.parametrize("epoch, decision", [(17, "STOP"), (19, "CONTINUE")])
def test_after_the_last_rung_a_trial_is_judged_again_only_until_halfway_to_max_t(epoch, decision):
    scheduler = asha(revisit_rungs=True, max_t=27)
    veteran, ace = added(scheduler, "veteran", "ace")
    for rung in (1, 3, 9):
        assert report(scheduler, veteran, rung, 0.9) == "CONTINUE"  # first at every rung
    for rung in (1, 3, 9):
        assert report(scheduler, ace, rung, 0.99) == "CONTINUE"
    # 8 of the 18 epochs from rung 9 to max_t: stopped; 10 of 18: most of the way, let it end
    assert report(scheduler, veteran, epoch, 0.9) == decision


@pytest.mark.parametrize("failing_step", ["__init__", "fit"])
def test_a_search_whose_tune_state_cannot_be_serialised_says_where_and_keeps_the_study(tmp_path, monkeypatch,
                                                                                        failing_step):
    """Tune pickles the searcher (with its study and sampler) when the Tuner is made, and trials' states
    while it runs: a failure there is a MedxpError naming the frames it came from, and the trials already
    told to the study stay there."""
    import threading

    import ray.cloudpickle
    from ray import tune

    from medxp.config import load_project
    from medxp.errors import MedxpError
    from medxp.search import runner
    from medxp.search.trial import TrialContext

    searcher = make_searcher(tmp_path, "[0.1, 0.01]")
    searcher.suggest("a")
    finish(searcher, "a", 0.7)  # one trial the study already holds

    def save_state():
        ray.cloudpickle.dumps({"state": threading.Lock()})

    class Tuner:
        def __init__(self, *args, **kwargs):
            if failing_step == "__init__":
                save_state()

        def fit(self):
            save_state()

    monkeypatch.setattr(tune, "Tuner", Tuner)
    monkeypatch.setattr(runner, "start_ray", lambda cpus=0: False)
    base = load_project("glaucoma", {"data_dir": str(tmp_path / "data")}, experiment="small_cnn")
    context = TrialContext("sqlite:///x.db", "0", "parent", "twins", "val_accuracy")
    with pytest.raises(MedxpError, match=r"could not serialise the search's state \(cannot pickle '_thread.lock'"
                                         r".*test_search_study.py:\d+ save_state") as caught:
        runner._run_tune(searcher.study, load_search_space(str(tmp_path / "space.yaml")), base, context, 2, tmp_path)
    assert isinstance(caught.value.__cause__, TypeError)
    reloaded = optuna.load_study(study_name="twins", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state for t in reloaded.trials] == [TrialState.COMPLETE]
