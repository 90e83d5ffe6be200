"""The series flow (`medxp series`): a ladder of variants trained under one parent run and compared in one table.

A series is `projects/<dataset>/series/<name>.yaml` (format: `medxp.series_files`).

Every variant is a nested run named by its label, trained by `medxp.pipeline.run_experiment`
with the same seed and the same data split (the keys that choose the split must agree, or the
series is refused before it trains). Variants whose networks share an architecture (the same
state-dict names and shapes) start from the same initial weights: the first such variant's
are kept and loaded into the others; each run records `model.init_sha256`. A variant that
finished before with the same resolved config (tag `series.config_hash`; the data's path is
part of the config) is not trained again: its earlier run fills its row.

The parent run logs `series/comparison.csv` (one row per variant: train / valid / test x
accuracy, weighted and macro precision, recall and F1, ROC AUC; epochs, training seconds,
parameter count, CPU inference ms per batch of 16), `series/comparison.md` (the same, Markdown,
also the run's description), `series/evolution.png` (the metrics per variant in ladder order)
and `series/loss_curves.png` (every variant's train and validation loss, overlaid).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Mapping

import mlflow
import pandas as pd
import torch
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient
from torch import nn

from medxp.config import ExperimentConfig, load_project
from medxp.errors import MedxpError
from medxp.search.report import NOTE_TAG, note
from medxp.series_files import SeriesSpec, Variant, load_series
from medxp.tracking.mlflow_tracker import MlflowTracker

log = logging.getLogger(__name__)

FINISHED, FAILED, REUSED = "FINISHED", "FAILED", "REUSED"
SPLITS = ("train", "valid", "test")
METRICS = ("accuracy", "precision_weighted", "recall_weighted", "f1_weighted", "precision_macro", "recall_macro",
           "f1_macro", "roc_auc")
COSTS = ("epochs_trained", "train_seconds", "model_params", "infer_ms")
# The keys that decide which image goes to which split: every variant of a series must agree on them.
SPLIT_KEYS = ("dataset.name", "dataset.class_names", "data.data_dir", "data.fold", "data.split_fractions",
              "data.split_seed", "data.patient_id_pattern")


@dataclass
class SeriesResult:
    """What a series produced: the comparison table (one row per variant, ladder order) and the parent run."""

    spec: SeriesSpec
    table: pd.DataFrame
    run_id: str

    def count(self, status: str) -> int:
        return int((self.table["status"] == status).sum())


# ---------------------------------------------------------------- the variants' configs


def variant_configs(dataset: str, spec: SeriesSpec, overrides: Mapping[str, Any]) -> dict[str, ExperimentConfig]:
    """Each trained variant's resolved config: the project, its experiment, the series' overrides, the variant's,
    then `overrides` (the command line's); every one with the series' seed.

    Raises:
        MedxpError: a variant's config is invalid (named by its label), or two variants disagree on the split.
    """
    configs: dict[str, ExperimentConfig] = {}
    seed = spec.seed
    for variant in (v for v in spec.variants if not v.is_ensemble):
        merged = {**spec.overrides, **variant.overrides, **overrides}
        try:
            config = load_project(dataset, merged, variant.experiment)
            seed = config.train.seed if seed is None else seed
            configs[variant.label] = config.replace({"train.seed": seed}, origin=f"series {spec.name}")
        except MedxpError as error:
            raise MedxpError(f"{spec.path}: variant '{variant.label}': {error}") from None
    _check_same_split(spec, configs)
    return configs


def _check_same_split(spec: SeriesSpec, configs: Mapping[str, ExperimentConfig]) -> None:
    (first_label, first), *others = configs.items()
    reference = first.to_flat_dict()
    for label, config in others:
        flat = config.to_flat_dict()
        for key in SPLIT_KEYS:
            if flat.get(key) != reference.get(key):
                raise MedxpError(f"{spec.path}: variant '{label}' has '{key}' = {flat.get(key)!r} but '{first_label}' "
                                 f"has {reference.get(key)!r}; a series compares its variants on the same split, "
                                 "expected the same value")


def config_hash(config: ExperimentConfig) -> str:
    """SHA-256 of the resolved config (every key, the data path included): what a rerun compares."""
    text = json.dumps(config.to_flat_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------- shared initial weights


class InitialWeights:
    """The first initial state dict of each architecture (its state-dict names and shapes), for the variants after.

    A variant whose network has the same names and shapes as an earlier one's starts from that
    one's initial weights (not just the same seed: what happened between seeding and creating the
    network may differ between variants).
    """

    def __init__(self) -> None:
        self._by_architecture: dict[tuple, tuple[str, dict[str, torch.Tensor]]] = {}
        self.source: dict[str, str] = {}  # variant label -> label whose initial weights it took

    def initialiser(self, label: str):
        """A `run_experiment(initialise=...)` callback for the variant `label`."""

        def initialise(model: nn.Module) -> None:
            state = model.state_dict()
            if not state:  # an estimator before its fit: nothing to share
                return
            architecture = tuple((name, tuple(value.shape), str(value.dtype)) for name, value in state.items())
            if architecture in self._by_architecture:
                owner, initial = self._by_architecture[architecture]
                model.load_state_dict(initial)
                self.source[label] = owner
            else:
                self._by_architecture[architecture] = (label, {k: v.detach().clone() for k, v in state.items()})
                self.source[label] = label

        return initialise


# ---------------------------------------------------------------- running the series


def run_series(dataset: str, name: str, tracker: MlflowTracker, overrides: Mapping[str, Any] | None = None, *,
               progress: bool = True) -> SeriesResult:
    """Runs (or completes) the series `name` of `dataset` under `tracker`'s run and records the comparison there.

    Args:
        dataset: The project.
        name: The series file's name (`projects/<dataset>/series/<name>.yaml`).
        tracker: The parent run, active (inside `MlflowTracker.start(...)`).
        overrides: Config keys applied to every variant, last (the command line's `--set`).
        progress: Show progress bars.

    Returns:
        The comparison table and the parent run.

    Raises:
        MedxpError: a bad series file or variant config (before anything trains), or no variant finished
            (the table is logged first).
    """
    from medxp.data.synthetic import is_generated
    from medxp.data.datamodule import ensure_data

    tracker.check_active("series")
    spec = load_series(dataset, name)
    configs = variant_configs(dataset, spec, dict(overrides or {}))
    first = next(iter(configs.values()))
    synthetic = is_generated(ensure_data(first))  # once, here: the variants never generate the demo together
    experiment = mlflow.get_experiment(mlflow.active_run().info.experiment_id).name
    tracker.set_tags({"medxp.kind": "series", "series.name": spec.name, "series.file": str(spec.path),
                      "dataset": first.dataset.name, "data.synthetic": str(synthetic).lower(),
                      "series.variants": ", ".join(v.label for v in spec.variants)[:4900],
                      NOTE_TAG: note("", _plan_note(spec, synthetic))})
    tracker.log_text(spec.path.read_text(), f"series/{spec.path.name}")
    client, weights, rows = MlflowClient(), InitialWeights(), []
    for position, variant in enumerate(spec.variants, start=1):
        log.info("series %s: variant %d/%d '%s'%s", spec.name, position, len(spec.variants), variant.label,
                 " (GENERATED demo data)" if synthetic else "")
        context = _VariantContext(spec, variant, position, experiment, tracker.run_id, client)
        if variant.is_ensemble:
            rows.append(_run_ensemble_variant(context, rows, configs))
        else:
            rows.append(_run_trained_variant(context, configs[variant.label], weights, progress))
    result = SeriesResult(spec, comparison_table(rows), tracker.run_id)
    record_series(tracker, result, first, synthetic, client)
    if not result.count(FINISHED) + result.count(REUSED):
        raise MedxpError(f"series '{spec.name}' of '{dataset}': none of the {len(rows)} variants finished; see "
                         "series/comparison.csv and the variants' runs")
    return result


@dataclass
class _VariantContext:
    spec: SeriesSpec
    variant: Variant
    position: int
    experiment: str
    parent_run_id: str
    client: MlflowClient

    def tags(self, config_hash_value: str) -> dict[str, str]:
        return {"medxp.kind": "series-variant", "series.name": self.spec.name, "series.variant": self.variant.label,
                "series.position": str(self.position), "series.config_hash": config_hash_value,
                "series.experiment": self.variant.experiment or ""}

    def previous_run(self, config_hash_value: str) -> Any | None:
        """The latest finished run of this variant with the same config hash, in this experiment."""
        experiment = mlflow.get_experiment_by_name(self.experiment)
        query = (f"tags.`series.name` = '{self.spec.name}' and tags.`series.variant` = '{self.variant.label}' and "
                 f"tags.`series.config_hash` = '{config_hash_value}' and attributes.status = 'FINISHED'")
        runs = self.client.search_runs([experiment.experiment_id], query, order_by=["attributes.start_time DESC"],
                                       max_results=1)
        return runs[0] if runs else None


def _run_trained_variant(context: _VariantContext, config: ExperimentConfig, weights: InitialWeights,
                         progress: bool) -> dict[str, Any]:
    from medxp.pipeline import run_experiment

    label, hashed = context.variant.label, config_hash(config)
    earlier = context.previous_run(hashed)
    if earlier is not None:
        log.info("series %s: '%s' finished before with the same config (run %s): not trained again",
                 context.spec.name, label, earlier.info.run_id)
        weights.source.setdefault(label, label)
        return _row(context, earlier, REUSED)
    started, run_id = time.perf_counter(), ""
    try:
        with MlflowTracker.start(context.experiment, run_name=label, nested=True,
                                 tags=context.tags(hashed)) as variant_tracker:
            run_id = variant_tracker.run_id
            result = run_experiment(config, variant_tracker, progress=progress, splits=SPLITS,
                                    initialise=weights.initialiser(label))
            variant_tracker.set_tags({"series.model_uri": result.model_uri or "",
                                      "series.init_from": weights.source.get(label, label)})
    except Exception as error:  # one variant's failure must not end the series; its run keeps the traceback
        log.exception("series %s: variant '%s' failed", context.spec.name, label)
        return _failed_row(context, run_id, error, time.perf_counter() - started)
    return _row(context, context.client.get_run(run_id), FINISHED)


def _run_ensemble_variant(context: _VariantContext, rows: list[dict[str, Any]],
                          configs: Mapping[str, ExperimentConfig]) -> dict[str, Any]:
    """The mean of the `top` earlier variants best on validation (`eval.primary_metric`), scored like a variant."""
    from medxp.flows.ensemble import build_ensemble, evaluate_ensemble, fit_ensemble_rule, log_ensemble
    from medxp.pipeline import example_batch, prepare, record_cost

    label, top = context.variant.label, context.variant.ensemble_top
    trained = [row for row in rows if row["status"] in (FINISHED, REUSED) and row["model_uri"]]
    config = configs[trained[0]["label"]] if trained else next(iter(configs.values()))
    metric = f"valid_{config.eval.primary_metric}"
    members = sorted(trained, key=lambda row: _number(row.get(metric)), reverse=True)[:top]
    hashed = hashlib.sha256(json.dumps({"top": top, "metric": metric, "members": [r["run_id"] for r in members]})
                            .encode()).hexdigest()
    earlier = context.previous_run(hashed)
    if earlier is not None:
        log.info("series %s: '%s' was built before from the same members: not built again", context.spec.name, label)
        return _row(context, earlier, REUSED)
    started, run_id = time.perf_counter(), ""
    try:
        with MlflowTracker.start(context.experiment, run_name=label, nested=True,
                                 tags=context.tags(hashed)) as variant_tracker:
            run_id = variant_tracker.run_id
            if len(members) < 2:
                raise MedxpError(f"variant '{label}': only {len(members)} earlier variant(s) finished with a model; "
                                 "expected at least 2 to average")
            member_config = configs[members[0]["label"]]
            data = prepare(member_config, variant_tracker)
            ensemble = fit_ensemble_rule(build_ensemble([row["model_uri"] for row in members]), data, member_config)
            variant_tracker.set_tags({"model": "ensemble", "series.members": ", ".join(r["label"] for r in members),
                                      "series.init_from": ""})
            for split in SPLITS:
                evaluate_ensemble(ensemble, data, split, member_config, variant_tracker)
            record_cost(variant_tracker, ensemble, data, 0.0)
            variant_tracker.log_metrics({"epochs_trained": 0})
            model_uri = log_ensemble(ensemble, variant_tracker, example_batch(data))
            variant_tracker.set_tags({"series.model_uri": model_uri})
    except Exception as error:  # noqa: BLE001 - recorded on the row and in the variant's run
        log.exception("series %s: ensemble variant '%s' failed", context.spec.name, label)
        return _failed_row(context, run_id, error, time.perf_counter() - started)
    return _row(context, context.client.get_run(run_id), FINISHED)


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return -math.inf
    return number if math.isfinite(number) else -math.inf


def _row(context: _VariantContext, run: Any, status: str) -> dict[str, Any]:
    """A variant's table row, read back from its MLflow run (the same for a new run and a reused one)."""
    metrics, tags = run.data.metrics, run.data.tags
    row: dict[str, Any] = {"position": context.position, "label": context.variant.label, "status": status,
                           "model": tags.get("model", ""), "experiment": context.variant.experiment or ""}
    for split in SPLITS:
        for metric in METRICS:
            row[f"{split}_{metric}"] = metrics.get(f"{split}_{metric}", math.nan)
    for cost in COSTS:
        row[cost] = metrics.get(cost, math.nan)
    row.update(init_sha256=tags.get("model.init_sha256", ""), init_from=tags.get("series.init_from", ""),
               members=tags.get("series.members", ""), run_id=run.info.run_id,
               model_uri=tags.get("series.model_uri", ""), error="")
    return row


def _failed_row(context: _VariantContext, run_id: str, error: BaseException, seconds: float) -> dict[str, Any]:
    row = {"position": context.position, "label": context.variant.label, "status": FAILED, "model": "",
           "experiment": context.variant.experiment or "", "run_id": run_id, "model_uri": "",
           "error": f"{type(error).__name__}: {error}"[:500]}
    row.update({f"{split}_{metric}": math.nan for split in SPLITS for metric in METRICS})
    row.update({cost: math.nan for cost in COSTS}, train_seconds=seconds)
    return row


# ---------------------------------------------------------------- the comparison


def comparison_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per variant in ladder order; metric columns `<split>_<metric>`, then cost, then provenance."""
    table = pd.DataFrame(rows)
    leading = ["position", "label", "status", "model", "experiment"]
    metric_columns = [f"{split}_{metric}" for split in SPLITS for metric in METRICS]
    trailing = ["init_sha256", "init_from", "members", "run_id", "model_uri", "error"]
    for column in trailing:
        if column not in table:
            table[column] = ""
    return table[leading + metric_columns + list(COSTS) + trailing].fillna({c: "" for c in trailing})


# Columns of the Markdown table in the run's description: what a reader compares first.
SUMMARY_COLUMNS = {"label": "variant", "status": "status", "train_accuracy": "train acc", "valid_accuracy": "valid acc",
                   "test_accuracy": "test acc", "test_precision_weighted": "test P (w)",
                   "test_recall_weighted": "test R (w)", "test_f1_weighted": "test F1 (w)",
                   "test_f1_macro": "test F1 (macro)", "test_roc_auc": "test ROC AUC",
                   "epochs_trained": "epochs", "train_seconds": "train s", "model_params": "params",
                   "infer_ms": "infer ms / 16"}


def markdown_table(table: pd.DataFrame, columns: Mapping[str, str] | None = None) -> str:
    """The table as GitHub Markdown: metrics to 3 decimals, parameters as integers, seconds to 1 decimal."""
    columns = dict(columns) if columns is not None else {c: c for c in table.columns
                                                        if c not in ("init_sha256", "members", "error")}
    shown = table[list(columns)].rename(columns=columns)
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    for _, row in table[list(columns)].iterrows():
        lines.append("| " + " | ".join(_cell(name, row[name]) for name in columns) + " |")
    return "\n".join(lines)


def _cell(column: str, value: Any) -> str:
    if isinstance(value, str):
        return value.replace("|", "\\|")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if column in ("model_params", "epochs_trained", "position"):
        return f"{int(value):,}"
    if column in ("train_seconds", "infer_ms"):
        return f"{float(value):.1f}"
    return f"{float(value):.3f}"


def definitions(config: ExperimentConfig, synthetic: bool) -> str:
    """What the numbers are: positive class, threshold, splits, cost."""
    classes = config.dataset.class_names
    if len(classes) == 2:
        auc = f"ROC AUC of the positive class `{config.dataset.positive_class}`"
    else:
        auc = "ROC AUC one-vs-rest, macro over the classes"
    data = "**GENERATED demo data, not patients.** " if synthetic else ""
    return (f"{data}Classes: {', '.join(classes)}. Accuracy, precision, recall and F1 at the arg-max of the "
            f"probabilities (no tuned threshold); (w) weighted by class support, macro unweighted; {auc}. Splits: "
            f"train (scored without augmentation), valid, test; the same split for every variant "
            f"(split seed {config.data.split_seed}), training seed {config.train.seed}. Cost: parameters, training "
            "wall seconds, and the median CPU milliseconds of one batch of 16 through the logged model on the "
            "machine that trained it.")


def _plan_note(spec: SeriesSpec, synthetic: bool) -> str:
    steps = "\n".join(f"{i}. `{v.label}`" + (f": the mean of the {v.ensemble_top} best earlier variants on valid"
                                              if v.is_ensemble else f" (experiment `{v.experiment}`)"
                                              if v.experiment else "")
                      for i, v in enumerate(spec.variants, start=1))
    demo = "\n\n**GENERATED demo data, not patients.**" if synthetic else ""
    return (f"## Series `{spec.name}` (running)\n\n{spec.description}\n\n{steps}{demo}\n\nEach variant is a nested run "
            "named by its label; the comparison appears here when the series ends.")


def record_series(tracker: MlflowTracker, result: SeriesResult, config: ExperimentConfig, synthetic: bool,
                  client: MlflowClient) -> None:
    """The comparison table (CSV, Markdown, the description), the evolution plot and the overlaid loss curves."""
    table, spec = result.table, result.spec
    tracker.log_text(table.to_csv(index=False), "series/comparison.csv")
    full = markdown_table(table)
    summary = markdown_table(table, SUMMARY_COLUMNS)
    notes = definitions(config, synthetic)
    tracker.log_text(f"# Series {spec.name}\n\n{notes}\n\n{full}\n", "series/comparison.md")
    tracker.log_figure(evolution_figure(table, spec.name), "series/evolution.png")
    tracker.log_figure(loss_curves_figure(loss_histories(client, table), spec.name), "series/loss_curves.png")
    tracker.log_metrics({"variants_finished": result.count(FINISHED), "variants_reused": result.count(REUSED),
                         "variants_failed": result.count(FAILED)})
    failed = "".join(f"\n- `{row.label}` failed: {row.error}" for row in table.itertuples() if row.status == FAILED)
    reused = ("\n\nREUSED: finished before with the same resolved config; the row is that earlier run's."
              if result.count(REUSED) else "")
    where = ("All columns: artifact `series/comparison.csv` (and `.md`); plots `series/evolution.png`, "
             "`series/loss_curves.png`.")
    # Within MLflow's tag length (a long ladder's table is cut; the artifacts hold it whole).
    tracker.set_tags({NOTE_TAG: note("", f"## Series `{spec.name}`\n\n{where}\n\n{spec.description}\n\n{notes}"
                                         f"{reused}{failed}\n\n{summary}")})


def loss_histories(client: MlflowClient, table: pd.DataFrame) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """`{label: {"train_loss": [(epoch, value), ...], "val_loss": [...]}}` from each variant's run."""
    histories = {}
    for row in table.itertuples():
        if not row.run_id or row.status == FAILED:
            continue
        histories[row.label] = {key: sorted((m.step, m.value) for m in client.get_metric_history(row.run_id, key))
                                for key in ("train_loss", "val_loss")}
    return histories


def evolution_figure(table: pd.DataFrame, name: str) -> Figure:
    """The metrics per variant in ladder order: accuracy per split, test precision / recall / F1 / AUC, and cost."""
    figure = Figure(figsize=(16, 4.8), layout="constrained")
    accuracy_axes, test_axes, cost_axes = figure.subplots(1, 3, width_ratios=(1, 1, 0.8))
    labels = list(table["label"])
    positions = range(len(labels))
    for split, marker in zip(SPLITS, "o^s"):
        accuracy_axes.plot(positions, table[f"{split}_accuracy"].astype(float), marker=marker, label=split)
    for metric, marker in zip(("precision_weighted", "recall_weighted", "f1_weighted", "f1_macro", "roc_auc"),
                              "os^Dv"):
        test_axes.plot(positions, table[f"test_{metric}"].astype(float), marker=marker, label=metric)
    for axes, title in ((accuracy_axes, "Accuracy per split"), (test_axes, "Test metrics")):
        axes.set_xticks(list(positions), labels, rotation=30, ha="right")
        axes.set(title=f"{title} — series {name}", ylabel="value", ylim=(-0.02, 1.02))
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    params = table["model_params"].astype(float)
    cost_axes.bar(positions, params, color="C0", alpha=0.6, label="parameters")
    if params.fillna(0).gt(0).all() and params.max() > 20 * params.min():  # a ladder spanning orders of magnitude
        cost_axes.set_yscale("log")
    cost_axes.set(title="Cost", ylabel="parameters")
    cost_axes.set_xticks(list(positions), labels, rotation=30, ha="right")
    time_axes = cost_axes.twinx()
    time_axes.plot(positions, table["infer_ms"].astype(float), color="C3", marker="o", label="infer ms / 16")
    time_axes.set_ylabel("CPU ms per batch of 16", color="C3")
    return figure


def loss_curves_figure(histories: Mapping[str, Mapping[str, list[tuple[int, float]]]], name: str) -> Figure:
    """Train and validation loss per epoch, every variant overlaid in its own colour."""
    figure = Figure(figsize=(12, 4.5), layout="constrained")
    train_axes, valid_axes = figure.subplots(1, 2, sharey=True)
    for index, (label, curves) in enumerate(histories.items()):
        for axes, key in ((train_axes, "train_loss"), (valid_axes, "val_loss")):
            points = curves.get(key) or []
            if points:
                axes.plot([p[0] for p in points], [p[1] for p in points], marker=".", color=f"C{index % 10}",
                          label=label)
    for axes, title in ((train_axes, "Train loss"), (valid_axes, "Validation loss")):
        axes.set(title=f"{title} — series {name}", xlabel="epoch", ylabel="loss")
        axes.grid(alpha=0.3)
    if histories:
        valid_axes.legend(fontsize="small")
    return figure
