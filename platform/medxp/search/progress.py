"""The search driver's progress: trials done of the total, pruned, failed, the best so far, and an ETA.

Each finished trial is one log line (state, objective or reason, the counts so far, the
best so far, an ETA), so a log reads as the search's story. In a terminal a tqdm bar of
trials sits below those lines (the counts and the best value in its postfix); elsewhere
(`mlflow run` from a script, CI, a log file) there is no bar, only the lines.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable

from optuna.trial import TrialState
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from medxp.search.study import TrialOutcome
from medxp.console import progress_bars_wanted

log = logging.getLogger(__name__)

STATE_WORDS = {TrialState.COMPLETE: "finished", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}


class SearchProgress:
    """Called with each trial's outcome (`StudySearcher`'s `on_outcome`); a context manager (the bar's lifetime).

    Args:
        total: Trials this search will train (`search.n_trials` less those already finished).
        name: The study name, shown in the bar or each line.
        bar: A tqdm bar instead of log lines; default: where bars help (`progress_bars_wanted`).
        clock: Seconds, monotonic (a test passes a fake).
    """

    def __init__(self, total: int, name: str = "search", *, bar: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.name, self.clock = total, name, clock
        self.started = clock()
        self.counts = {word: 0 for word in STATE_WORDS.values()}
        self.best_value: float | None = None
        self.best_trial: int | None = None
        self.use_bar = progress_bars_wanted() if bar is None else bar
        self._bar: tqdm | None = None
        self._stack = contextlib.ExitStack()

    @property
    def done(self) -> int:
        """Trials that ended, whatever their state."""
        return sum(self.counts.values())

    def __enter__(self) -> "SearchProgress":
        if self.use_bar:
            self._stack.enter_context(logging_redirect_tqdm())  # log lines above the bar, not through it
            self._bar = self._stack.enter_context(tqdm(total=self.total, desc=self.name, unit="trial"))
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()
        self._bar = None

    def __call__(self, outcome: TrialOutcome) -> None:
        word = STATE_WORDS.get(outcome.state, "failed")
        self.counts[word] += 1
        if outcome.state == TrialState.COMPLETE and outcome.value is not None and (
                self.best_value is None or outcome.value > self.best_value):
            self.best_value, self.best_trial = outcome.value, outcome.number
        log.info("%s", self.line(outcome))  # above the bar, if there is one (logging_redirect_tqdm)
        if self._bar is not None:
            self._bar.set_postfix_str(self.summary(), refresh=False)
            self._bar.update(1)

    def summary(self) -> str:
        """`2 finished, 1 pruned, 0 failed; best 0.8123 (trial 3)`."""
        counts = ", ".join(f"{count} {word}" for word, count in self.counts.items())
        best = f"best {self.best_value:.4f} (trial {self.best_trial})" if self.best_trial is not None else "no best yet"
        return f"{counts}; {best}"

    def eta_seconds(self) -> float | None:
        """Seconds left at the mean pace so far (trials run side by side count as they end); None before the first."""
        if not self.done:
            return None
        return (self.clock() - self.started) / self.done * max(self.total - self.done, 0)

    def line(self, outcome: TrialOutcome) -> str:
        """The log line for one finished trial, e.g.
        `search s: trial 3 finished (objective 0.8123) - 3/6 done: 2 finished, 1 pruned, 0 failed; best 0.8123
        (trial 3); ETA 1m20s`."""
        word = STATE_WORDS.get(outcome.state, "failed")
        detail = f"objective {outcome.value:.4f}" if outcome.value is not None else f"after {outcome.epochs} epoch(s)"
        if outcome.reason:
            detail += f": {outcome.reason}"
        eta = self.eta_seconds()
        return (f"{self.name}: trial {outcome.number} {word} ({detail}) - {self.done}/{self.total} done: "
                f"{self.summary()}; ETA {format_duration(eta) if eta is not None else '?'}")


def format_duration(seconds: float) -> str:
    """`45s`, `3m05s`, `2h07m`."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
