"""The search driver's progress: one line per finished trial (counts, best so far, ETA), or a bar in a terminal."""

from __future__ import annotations

import logging

from optuna.trial import TrialState

from medxp.search.progress import SearchProgress, format_duration
from medxp.search.study import TrialOutcome


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_each_finished_trial_is_one_line_with_counts_best_and_eta(caplog):
    clock = FakeClock()
    progress = SearchProgress(4, "tiny", bar=False, clock=clock)
    with caplog.at_level(logging.INFO, logger="medxp.search.progress"), progress:
        clock.now += 60
        progress(TrialOutcome(0, TrialState.COMPLETE, "run0", 3, value=0.75))
        clock.now += 60
        progress(TrialOutcome(1, TrialState.PRUNED, "run1", 1))
        clock.now += 60
        progress(TrialOutcome(2, TrialState.COMPLETE, "run2", 3, value=0.7))
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "tiny: trial 0 finished (objective 0.7500) - 1/4 done: 1 finished, 0 pruned, 0 failed; best 0.7500 (trial 0); "
        "ETA 3m00s",
        "tiny: trial 1 pruned (after 1 epoch(s)) - 2/4 done: 1 finished, 1 pruned, 0 failed; best 0.7500 (trial 0); "
        "ETA 2m00s",
        "tiny: trial 2 finished (objective 0.7000) - 3/4 done: 2 finished, 1 pruned, 0 failed; best 0.7500 (trial 0); "
        "ETA 1m00s",
    ]


def test_a_failed_trial_says_why_and_a_better_one_becomes_the_best():
    progress = SearchProgress(2, "s", bar=False, clock=FakeClock())
    failed = TrialOutcome(0, TrialState.FAIL, "run0", 1, "the trial raised an error (see its MLflow run)")
    progress(failed)
    assert progress.line(failed) == ("s: trial 0 failed (after 1 epoch(s): the trial raised an error (see its MLflow "
                                     "run)) - 1/2 done: 0 finished, 0 pruned, 1 failed; no best yet; ETA 0s")
    progress(TrialOutcome(1, TrialState.COMPLETE, "run1", 2, value=0.9))
    assert progress.best_value == 0.9 and progress.best_trial == 1 and progress.done == 2


def test_in_a_terminal_the_bar_counts_trials_and_shows_the_summary(capsys):
    progress = SearchProgress(3, "tiny", bar=True)
    with progress:
        progress(TrialOutcome(0, TrialState.COMPLETE, "run0", 3, value=0.8))
        assert progress._bar.n == 1 and "best 0.8000 (trial 0)" in progress._bar.postfix
    assert progress._bar is None  # closed with the context
    assert "tiny" in capsys.readouterr().err


def test_durations_read_as_seconds_minutes_or_hours():
    assert [format_duration(s) for s in (4.4, 185, 7620)] == ["4s", "3m05s", "2h07m"]
