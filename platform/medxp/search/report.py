"""What a search's parent run shows: the best trial, a table of every trial, Optuna's plots."""

from __future__ import annotations

import csv
import io
import logging
import warnings
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial

log = logging.getLogger(__name__)

# (artifact name, Optuna plot function name, needs at least this many finished trials)
PLOTS = (
    ("optimization_history", "plot_optimization_history", 1),
    ("param_importances", "plot_param_importances", 2),
    ("parallel_coordinate", "plot_parallel_coordinate", 1),
    ("intermediate_values", "plot_intermediate_values", 1),
)


def log_search_report(tracker: Any, study: optuna.Study, result: Any) -> None:
    """Logs the outcome metrics and tags, `search/trials.csv`, and the plots (PNG; HTML when plotly is installed)."""
    tracker.log_metrics({"best_value": result.best_value if result.best_value is not None else float("nan"),
                         "epochs_total": result.epochs_total, "wall_time_s": result.wall_time_s,
                         **{f"trials_{state}": count for state, count in result.state_counts.items()}})
    tracker.set_tags({"best_trial": str(result.best_trial_number), "best_run_id": str(result.best_run_id),
                      "best_model_uri": str(result.best_model_uri)})
    if result.best_params:
        tracker.log_dict(result.best_params, "search/best_params.yaml")
    tracker.log_text(trials_table(study.get_trials(deepcopy=False)), "search/trials.csv")
    log_plots(tracker, study)


def trials_table(trials: list[FrozenTrial]) -> str:
    """CSV: number, state, one column per parameter, value, epochs run, duration, MLflow run, twin of."""
    names = sorted({name for trial in trials for name in trial.params})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["number", "state", *names, "value", "epochs", "duration_s", "mlflow_run_id",
                     "duplicate_of"])
    for trial in trials:
        duration = trial.duration.total_seconds() if trial.duration is not None else ""
        writer.writerow([trial.number, trial.state.name.lower(), *(trial.params.get(n, "") for n in names),
                         "" if trial.value is None else trial.value, trial.user_attrs.get("epochs", ""),
                         f"{duration:.1f}" if duration != "" else "", trial.user_attrs.get("mlflow_run_id", ""),
                         trial.user_attrs.get("duplicate_of", "")])
    return buffer.getvalue()


def log_plots(tracker: Any, study: optuna.Study) -> None:
    """Each of Optuna's plots that can be drawn for this study, as `search/plots/<name>.png|.html`."""
    finished = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                             optuna.trial.TrialState.PRUNED)))
    html = _plotly_available()
    if not html:
        log.info("plotly is not installed: search plots are logged as PNG only (no HTML)")
    for name, function, needs in PLOTS:
        if finished < needs:
            log.info("plot %s skipped: %d finished trial(s), needs %d", name, finished, needs)
            continue
        _try_plot(name, lambda: _png(getattr(optuna.visualization.matplotlib, function)(study)),
                  lambda figure: tracker.log_figure(figure, f"search/plots/{name}.png"))
        if html:
            _try_plot(name, lambda: getattr(optuna.visualization, function)(study).to_html(include_plotlyjs="cdn"),
                      lambda page: tracker.log_text(page, f"search/plots/{name}.html"))


def _try_plot(name: str, draw: Callable[[], Any], store: Callable[[Any], None]) -> None:
    """Draws and stores one plot; a plot that cannot be computed (e.g. importances of one trial) is skipped."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
            drawn = draw()
    except Exception as error:  # noqa: BLE001 - Optuna raises several types for "not computable"
        log.info("plot %s skipped: %s", name, error)
        return
    store(drawn)


def _png(axes: Any) -> Any:
    """The matplotlib figure behind what Optuna's matplotlib backend returns (axes or an array of axes)."""
    first = axes.flat[0] if hasattr(axes, "flat") else axes
    figure = first.get_figure()
    figure.set_size_inches(9, 6)
    figure.tight_layout()
    return figure


def _plotly_available() -> bool:
    try:
        import plotly  # noqa: F401
    except ImportError:
        return False
    return True
