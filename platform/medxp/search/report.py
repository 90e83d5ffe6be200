"""What a search's parent run shows: its description, the best trial, a table of every trial, Optuna's plots.

The description (`mlflow.note.content`, Markdown, shown on the run's page in the MLflow UI) is
set twice: when the search starts, with what it searches (`search_plan`: the space's parameters
and ranges, the sampler, ASHA's rungs, the number of trials, the objective and its split), and
when it ends, with the outcome on top (`search_outcome`: the best trial, its validation value,
the trials per state, where the trials table and the plots are).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import warnings
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial

log = logging.getLogger(__name__)

# The run's description in the MLflow UI (Markdown); MLflow keeps a tag value up to 8000 characters.
NOTE_TAG = "mlflow.note.content"
_NOTE_LENGTH = 7900
# The description's head while the search runs; the outcome replaces it at the end.
RUNNING = "_Running: the outcome appears here when the search ends._"
TRIALS_TABLE = "search/trials.csv"
BEST_PARAMS = "search/best_params.yaml"
_METRIC_NAMES = {"accuracy": "accuracy", "f1_macro": "F1 (macro average)", "f1_weighted": "F1 (weighted average)",
                 "roc_auc": "ROC AUC"}

# (artifact name, Optuna plot function name, needs at least this many finished trials)
PLOTS = (
    ("optimization_history", "plot_optimization_history", 1),
    ("param_importances", "plot_param_importances", 2),
    ("parallel_coordinate", "plot_parallel_coordinate", 1),
    ("intermediate_values", "plot_intermediate_values", 1),
)


def log_search_report(tracker: Any, study: optuna.Study, result: Any, plan: str = "",
                      config: Any = None) -> None:
    """Logs the outcome metrics and tags, `search/trials.csv`, the plots (PNG; HTML when plotly is
    installed) and, with the search's `plan` (`search_plan`), the run's description: outcome, then plan."""
    tracker.log_metrics({"best_value": result.best_value if result.best_value is not None else float("nan"),
                         "epochs_total": result.epochs_total, "wall_time_s": result.wall_time_s,
                         **{f"trials_{state}": count for state, count in result.state_counts.items()}})
    tracker.set_tags({"best_trial": str(result.best_trial_number), "best_run_id": str(result.best_run_id),
                      "best_model_uri": str(result.best_model_uri)})
    if result.best_params:
        tracker.log_dict(result.best_params, BEST_PARAMS)
    tracker.log_text(trials_table(study.get_trials(deepcopy=False)), TRIALS_TABLE)
    plots = log_plots(tracker, study)
    if plan:
        tracker.set_tags({NOTE_TAG: note(search_outcome(result, config, plots), plan)})


def note(head: str, plan: str) -> str:
    """A description: `head` (the outcome, or why it stopped) above the plan, within MLflow's tag length."""
    text = f"{head}\n\n{plan}" if head else plan
    return text if len(text) <= _NOTE_LENGTH else text[:_NOTE_LENGTH - 40] + "\n\n… (cut to MLflow's tag length)"


def search_plan(config: Any, space: Any, name: str, storage: str, new_trials: int, run_prefix: str,
                synthetic: bool, data_dir: str = "") -> str:
    """Markdown: what the search searches, how it samples and prunes, how many trials, and what it maximises."""
    settings = config.search
    max_epochs = settings.max_epochs or config.train.epochs
    rungs = asha_rungs(max_epochs, settings.grace_period, settings.reduction_factor)
    data = "generated demo data (synthetic, not patients)" if synthetic else f"the data in `{data_dir or config.data.data_dir}`"
    rows = "\n".join(f"| `{p.name}` | `{p.config_key}` | {parameter_values(p)} |" for p in space.parameters)
    sampler = ("Optuna TPE" if settings.sampler == "tpe" else f"Optuna {settings.sampler}") + \
        f" (seed {settings.seed}" + (f"; the first {settings.startup_trials} trials sampled at random)"
                                     if settings.sampler == "tpe" else ")")
    revisits = ("; a trial is judged again at every epoch until its next rung (`search.revisit_rungs`)"
                if settings.revisit_rungs else "")
    judged = (f"judged at epoch{'s' if len(rungs) > 1 else ''} {', '.join(map(str, rungs))}"
              if rungs else "never stopped early (no rung below the epoch budget)")
    return "\n".join([
        f"### Hyper-parameter search `{name}`",
        "",
        f"Project `{config.dataset.name}`, model `{config.model.name}`, on {data}.",
        "",
        f"**Searched** (space `{space.path.name}`):",
        "",
        "| parameter | config key (MLflow param) | values |",
        "|---|---|---|",
        rows,
        "",
        f"- **Sampler**: {sampler}; study `{name}` in `{storage}`.",
        f"- **Pruning**: ASHA on epochs: up to {max_epochs} epochs a trial, {judged} (grace period "
        f"{settings.grace_period}, reduction factor {settings.reduction_factor:g}){revisits}.",
        f"- **Trials**: {settings.n_trials} (`search.n_trials`; {new_trials} to run now), "
        f"{settings.max_concurrent} at a time; each is a nested run `{run_prefix}-trial-NNN` below this one.",
        f"- **Objective**: {objective_phrase(config)}, maximised. The search never scores the test split.",
    ])


def search_outcome(result: Any, config: Any = None, plots: list[str] | None = None) -> str:
    """Markdown: the best trial and its validation value, the trials per state, and where the table and plots are."""
    counts = ", ".join(f"{count} {state}" for state, count in sorted(result.state_counts.items())) or "none"
    lines = ["### Outcome", ""]
    if result.best_trial_number is None:
        lines.append(f"**No trial finished**: nothing to choose (trials per state: {counts}); "
                     "see the failed trials' runs below this one (tags `medxp.trial_state`, `medxp.error`).")
    else:
        metric = objective_phrase(config) if config is not None else "validation objective"
        params = ", ".join(f"`{key}` = {shown(value)}" for key, value in result.best_params.items())
        run = getattr(result, "best_run_name", "") or result.best_run_id
        run = f" (run `{run}`)" if run else ""
        lines += [f"Best: **trial {result.best_trial_number}**{run}, {metric} **{result.best_value:.4f}**.",
                  "",
                  f"Its parameters: {params} (`{BEST_PARAMS}`)." if params else "It searched no parameter."]
    lines += ["",
              f"Trials in the study: {counts}; {result.epochs_total} epochs trained; this run took "
              f"{result.wall_time_s:.0f} s.",
              "",
              f"- **Trials table**: artifact `{TRIALS_TABLE}` (one row per trial: state, parameters, "
              "validation value, epochs, MLflow run id), and the nested runs below this one (select them, *Compare*).",
              "- **Plots**: " + (", ".join(f"`{path}`" for path in plots) if plots
                                 else "none (too few finished trials)") + "."]
    return "\n".join(lines)


def shown(value: Any) -> str:
    """A parameter's value as a description shows it: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def objective_phrase(config: Any) -> str:
    """`validation accuracy (`valid_accuracy`; arg-max decision, ...; positive class `abnormal`)`: the metric,
    its split and its decision rule."""
    metric = config.eval.primary_metric
    names = [str(name) for name in config.dataset.class_names]
    phrase = f"validation {_METRIC_NAMES.get(metric, metric)} (`valid_{metric}`"
    if metric == "roc_auc":
        rule = f"positive class `{config.dataset.positive_class}`, threshold-free" if len(names) == 2 \
            else "one-vs-rest, macro average, threshold-free"
    else:
        rule = "arg-max decision, not the operating point's threshold"
        if len(names) == 2:
            rule += f"; positive class `{config.dataset.positive_class}`"
    return f"{phrase}; {rule})"


def asha_rungs(max_t: int, grace_period: int, reduction_factor: float) -> list[int]:
    """The epochs at which ASHA may stop a trial: `grace_period × reduction_factor^k` below `max_t`."""
    rungs, milestone = [], float(grace_period)
    while milestone < max_t:
        rungs.append(math.ceil(milestone))
        milestone *= reduction_factor
    return rungs


def parameter_values(parameter: Any) -> str:
    """`0.0001 to 0.03, log scale`, `adam, sgd`, and `only when optimizer is sgd`: one parameter's values."""
    if parameter.type == "categorical":
        text = ", ".join(str(choice) for choice in parameter.choices)
    else:
        text = f"{'integers ' if parameter.type == 'int' else ''}{parameter.low:g} to {parameter.high:g}"
        text += ", log scale" if parameter.log else ""
        text += f", step {parameter.step:g}" if parameter.step else ""
    conditions = "; ".join(f"{name} is {' or '.join(map(str, values))}" for name, values in parameter.when.items())
    return f"{text} (only when {conditions})" if conditions else text


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


def log_plots(tracker: Any, study: optuna.Study) -> list[str]:
    """Each of Optuna's plots that can be drawn for this study, as `search/plots/<name>.png|.html`; returns
    the PNGs' artifact paths."""
    finished = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                             optuna.trial.TrialState.PRUNED)))
    html = _plotly_available()
    if not html:
        log.info("plotly is not installed: search plots are logged as PNG only (no HTML)")
    logged = []
    for name, function, needs in PLOTS:
        if finished < needs:
            log.info("plot %s skipped: %d finished trial(s), needs %d", name, finished, needs)
            continue
        if _try_plot(name, lambda: _png(getattr(optuna.visualization.matplotlib, function)(study)),
                     lambda figure: tracker.log_figure(figure, f"search/plots/{name}.png")):
            logged.append(f"search/plots/{name}.png")
        if html:
            _try_plot(name, lambda: getattr(optuna.visualization, function)(study).to_html(include_plotlyjs="cdn"),
                      lambda page: tracker.log_text(page, f"search/plots/{name}.html"))
    return logged


def _try_plot(name: str, draw: Callable[[], Any], store: Callable[[Any], None]) -> bool:
    """Draws and stores one plot; a plot that cannot be computed (e.g. importances of one trial) is skipped."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
            drawn = draw()
    except Exception as error:  # noqa: BLE001 - Optuna raises several types for "not computable"
        log.info("plot %s skipped: %s", name, error)
        return False
    store(drawn)
    return True


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
