"""Where progress is drawn: bars in a terminal or notebook, plain log lines everywhere else.

Outside a terminal (`mlflow run` from a script, CI, a log file) a tqdm bar writes every update
as a carriage-return line, megabytes of them; medxp then logs one line per epoch or trial
instead, and MLflow's artifact transfer bars are switched off too.
"""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress_bars_wanted() -> bool:
    """Whether bars help: stderr is a terminal, or a notebook shows them as widgets."""
    in_notebook = any(base.__module__ == "tqdm.notebook" for base in tqdm.__mro__)  # what tqdm.auto chose
    return sys.stderr.isatty() or in_notebook


def quiet_library_bars() -> None:
    """Outside a terminal, turns off MLflow's artifact upload/download bars (unless the user set it)."""
    if not progress_bars_wanted():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
