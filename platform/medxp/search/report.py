"""What a search's parent run shows: its description, the best trial, a table of every trial, Optuna's plots.

The description (`mlflow.note.content`, Markdown, shown on the run's page in the MLflow UI) is
set twice: when the search starts, with what it searches (`search_plan`: the space's parameters
and ranges, the sampler, ASHA's rungs, the number of trials, the objective and its split), and
when it ends, with the outcome on top (`search_outcome`: the best trial, its validation value,
the trials per state, where the trials table and the plots are).

A multi-objective search (two or more `search.objectives`) names its objectives and its select
rule in the plan, says that ASHA prunes on the first objective, and at the end shows the
selection and the Pareto front: `search/pareto_front.csv`, `search/pareto_front.md` (also in the
description) and `search/pareto_front.png` (every trained trial grey, the front highlighted, the
chosen trial marked; the first two objectives when there are more).
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
PARETO_TABLE = "search/pareto_front.csv"
PARETO_MARKDOWN = "search/pareto_front.md"
PARETO_PLOT = "search/pareto_front.png"
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
    objectives = _objective_names(result)
    tracker.log_text(trials_table(study.get_trials(deepcopy=False), objectives), TRIALS_TABLE)
    plots = log_plots(tracker, study, objectives)
    if objectives:
        tracker.log_metrics({f"best_{name}": value for name, value in result.best_values.items()})
        plots = log_pareto_front(tracker, study, result) + plots
    if plan:
        tracker.set_tags({NOTE_TAG: note(search_outcome(result, config, plots), plan)})


def _objective_names(result: Any) -> list[str]:
    """The metrics of a multi-objective search's objectives, in order; [] for a single objective."""
    from medxp.objectives import parse_objectives

    entries = getattr(result, "objectives", ())
    return [objective.metric for objective in parse_objectives(entries)] if len(entries) > 1 else []


def log_pareto_front(tracker: Any, study: optuna.Study, result: Any) -> list[str]:
    """Logs the front as CSV and Markdown, the selection as tag `medxp.select`, and the front's plot;
    returns the plot's artifact path ([] when there is nothing to plot)."""
    from medxp.search.study import trained_trials

    if result.selection:
        tracker.set_tags({"medxp.select": result.selection[:5000]})
    front = result.pareto_front
    if front is None or front.empty:
        return []
    tracker.log_text(front.to_csv(index=False), PARETO_TABLE)
    tracker.log_text(front_markdown(front, _objective_names(result)), PARETO_MARKDOWN)
    from medxp.objectives import parse_objectives

    trained = [t for t in trained_trials(study) if t.state == optuna.trial.TrialState.COMPLETE]
    directions = [objective.direction for objective in parse_objectives(result.objectives)]
    tracker.log_figure(pareto_figure(trained, _objective_names(result), set(front["number"]),
                                     result.best_trial_number, directions), PARETO_PLOT)
    return [PARETO_PLOT]


def front_markdown(front: Any, objectives: list[str]) -> str:
    """The front as a Markdown table: trial, each objective (4 significant digits), MLflow run, chosen."""
    header = ["trial", *objectives, "MLflow run", "chosen"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in front.to_dict("records"):
        lines.append("| " + " | ".join([str(row["number"]), *(f"{row[name]:.4g}" for name in objectives),
                                        f"`{row['mlflow_run_id']}`" if row["mlflow_run_id"] else "",
                                        "**yes**" if row["selected"] else ""]) + " |")
    return "\n".join(lines) + "\n"


def pareto_figure(trials: list[FrozenTrial], objectives: list[str], front: set[int], selected: int | None,
                  directions: list[str] | None = None) -> Any:
    """Scatter of the first two objectives: every trained trial grey, the front's highlighted (joined in order
    of the first objective), the selected trial marked; `directions` (`max`/`min`) label the axes."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 5))
    axes = figure.add_subplot()
    x_name, y_name = objectives[0], objectives[1]
    points = {trial.number: (trial.values[0], trial.values[1]) for trial in trials if trial.values}
    others = [point for number, point in points.items() if number not in front]
    on_front = sorted((point, number) for number, point in points.items() if number in front)
    if others:
        axes.scatter(*zip(*others), color="0.7", label="trained trials", zorder=1)
    if on_front:
        axes.plot([p[0] for p, _ in on_front], [p[1] for p, _ in on_front], color="tab:blue", alpha=0.4, zorder=2)
        axes.scatter([p[0] for p, _ in on_front], [p[1] for p, _ in on_front], color="tab:blue",
                     label="Pareto front", zorder=3)
        for point, number in on_front:
            axes.annotate(str(number), point, textcoords="offset points", xytext=(4, 4), fontsize=8)
    if selected in points:
        axes.scatter(*points[selected], s=220, facecolors="none", edgecolors="tab:red", linewidths=2,
                     label=f"chosen: trial {selected}", zorder=4)
    better = {"max": "higher is better", "min": "lower is better"}
    axes.set_xlabel(f"{x_name} ({better[directions[0]]})" if directions else x_name)
    axes.set_ylabel(f"{y_name} ({better[directions[1]]})" if directions else y_name)
    more = f" (of {len(objectives)} objectives: {', '.join(objectives)})" if len(objectives) > 2 else ""
    axes.set_title(f"Pareto front{more}", fontsize=10)
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    return figure


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
    sampler = sampler_phrase(settings)
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
        *objective_lines(config),
    ])


def sampler_phrase(settings: Any) -> str:
    """`Optuna TPE (seed 42; the first 4 trials sampled at random)`, `Optuna random (seed 42)`, or NSGA-II's."""
    if settings.sampler == "tpe":
        return f"Optuna TPE (seed {settings.seed}; the first {settings.startup_trials} trials sampled at random)"
    if settings.sampler == "nsga2":
        from medxp.search.study import nsga2_population

        return f"Optuna NSGA-II (seed {settings.seed}; generations of {nsga2_population(settings)} trials)"
    return f"Optuna {settings.sampler} (seed {settings.seed})"


def objective_lines(config: Any) -> list[str]:
    """The plan's objective: the primary metric maximised, or a multi-objective search's objectives,
    that ASHA prunes on the first, and the select rule."""
    settings = config.search
    if len(settings.objectives) < 2:
        return [f"- **Objective**: {objective_phrase(config, single_metric(config))}, maximised. "
                "The search never scores the test split."]
    from medxp.objectives import parse_objectives, parse_select

    objectives = parse_objectives(settings.objectives)
    named = ", ".join(f"`{o.metric}` ({'maximised' if o.direction == 'max' else 'minimised'})" for o in objectives)
    first = objectives[0].metric.removeprefix("val_")
    return [f"- **Objectives** (`search.objectives`): {named}; the study keeps their Pareto front. `val_*` are "
            "validation metrics of a trial's final evaluation; `infer_ms` is the median CPU time of a batch of 16, "
            "`model_params` the parameter count, `train_seconds` the fit's wall time. The search never scores the "
            "test split.",
            f"- **ASHA prunes on the first objective** only: {objective_phrase(config, first)}, every epoch.",
            f"- **Selection** (`search.select`): `{parse_select(settings.select, objectives).text}` among the front; "
            "when no front trial meets its conditions, the front's best on the first objective."]


def search_outcome(result: Any, config: Any = None, plots: list[str] | None = None) -> str:
    """Markdown: the best trial and its validation value, the trials per state, and where the table and plots are."""
    counts = ", ".join(f"{count} {state}" for state, count in sorted(result.state_counts.items())) or "none"
    lines = ["### Outcome", ""]
    if result.best_trial_number is None:
        lines.append(f"**No trial finished**: nothing to choose (trials per state: {counts}); "
                     "see the failed trials' runs below this one (tags `medxp.trial_state`, `medxp.error`).")
    else:
        metric = (objective_phrase(config, single_metric(config)) if config is not None
                  else "validation objective")
        params = ", ".join(f"`{key}` = {shown(value)}" for key, value in result.best_params.items())
        run = getattr(result, "best_run_name", "") or result.best_run_id
        run = f" (run `{run}`)" if run else ""
        if _objective_names(result):
            lines += [f"Chosen: **trial {result.best_trial_number}**{run} by `search.select`: {result.selection}.",
                      "", f"Pareto front (`{PARETO_TABLE}`, plot `{PARETO_PLOT}`):", "",
                      front_markdown(result.pareto_front, _objective_names(result)).rstrip()
                      if result.pareto_front is not None else "(none)"]
        else:
            lines.append(f"Best: **trial {result.best_trial_number}**{run}, {metric} **{result.best_value:.4f}**.")
        lines += ["", f"Its parameters: {params} (`{BEST_PARAMS}`)." if params else "It searched no parameter."]
    values = "each objective's value" if _objective_names(result) else "validation value"
    lines += ["",
              f"Trials in the study: {counts}; {result.epochs_total} epochs trained; this run took "
              f"{result.wall_time_s:.0f} s.",
              "",
              f"- **Trials table**: artifact `{TRIALS_TABLE}` (one row per trial: state, parameters, {values}, "
              "epochs, MLflow run id), and the nested runs below this one (select them, *Compare*).",
              "- **Plots**: " + (", ".join(f"`{path}`" for path in plots) if plots
                                 else "none (too few finished trials)") + "."]
    return "\n".join(lines)


def shown(value: Any) -> str:
    """A parameter's value as a description shows it: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def single_metric(config: Any) -> str:
    """A single-objective search's metric as `eval.*` names it: the one `search.objectives` entry without its
    `val_` prefix, else `eval.primary_metric`."""
    entries = config.search.objectives
    return entries[0].partition(":")[0].removeprefix("val_") if len(entries) == 1 else config.eval.primary_metric


def objective_phrase(config: Any, metric: str | None = None) -> str:
    """`validation accuracy (`valid_accuracy`; arg-max decision, ...; positive class `abnormal`)`: the metric
    (default `eval.primary_metric`), its split and its decision rule."""
    metric = metric or config.eval.primary_metric
    names = [str(name) for name in config.dataset.class_names]
    phrase = f"validation {_METRIC_NAMES.get(metric, metric)} (`valid_{metric}`"
    if config.search.cv_folds:
        phrase = (f"held-out {_METRIC_NAMES.get(metric, metric)} averaged over {config.search.cv_folds} stratified "
                  f"folds of train + valid (`cv_{metric}_mean`, `search.cv_folds`; the trial's logged model is its "
                  "fit on train")
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


def trials_table(trials: list[FrozenTrial], objectives: list[str] | None = None) -> str:
    """CSV: number, state, one column per parameter, value (a multi-objective study: one column per objective,
    named by its metric), epochs run, duration, MLflow run, twin of."""
    names = sorted({name for trial in trials for name in trial.params})
    value_columns = objectives or ["value"]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["number", "state", *names, *value_columns, "epochs", "duration_s", "mlflow_run_id",
                     "duplicate_of"])
    for trial in trials:
        duration = trial.duration.total_seconds() if trial.duration is not None else ""
        values = trial.values if trial.values is not None else [""] * len(value_columns)
        writer.writerow([trial.number, trial.state.name.lower(), *(trial.params.get(n, "") for n in names),
                         *values, trial.user_attrs.get("epochs", ""),
                         f"{duration:.1f}" if duration != "" else "", trial.user_attrs.get("mlflow_run_id", ""),
                         trial.user_attrs.get("duplicate_of", "")])
    return buffer.getvalue()


def log_plots(tracker: Any, study: optuna.Study, objectives: list[str] | None = None) -> list[str]:
    """Each of Optuna's plots that can be drawn for this study, as `search/plots/<name>.png|.html`; returns
    the PNGs' artifact paths. A multi-objective study's plots show the first objective (`objectives[0]`);
    it has no intermediate values (Optuna's report is single-objective), so no plot of them."""
    finished = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                             optuna.trial.TrialState.PRUNED)))
    html = _plotly_available()
    if not html:
        log.info("plotly is not installed: search plots are logged as PNG only (no HTML)")
    logged = []
    target = {"target": lambda trial: trial.values[0], "target_name": objectives[0]} if objectives else {}
    for name, function, needs in PLOTS:
        if finished < needs:
            log.info("plot %s skipped: %d finished trial(s), needs %d", name, finished, needs)
            continue
        if objectives and name == "intermediate_values":
            continue
        if _try_plot(name, lambda: _png(getattr(optuna.visualization.matplotlib, function)(study, **target)),
                     lambda figure: tracker.log_figure(figure, f"search/plots/{name}.png")):
            logged.append(f"search/plots/{name}.png")
        if html:
            _try_plot(name, lambda: getattr(optuna.visualization, function)(study, **target)
                      .to_html(include_plotlyjs="cdn"),
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
