"""The cross-validation flow (`medxp cv`): one nested MLflow run per fold, and the glaucoma study's summary table.

Where the folds come from (`cv.source`):

- `dataset`: the data's own folds (layout `folds`: Fold0..FoldK-1, each with its own
  train/valid/test); fold k is an ordinary run with `data.fold = k`.
- `stratified`: scikit-learn's StratifiedKFold (`medxp.data.pooled_folds`)
  over the pooled train + valid images of any layout, grouped by patient when
  `data.patient_id_pattern` is set; the test split stays fixed and fold k validates on
  the k-th held-out part. The pixels are decoded once; each fold re-indexes them.
- `auto`: `dataset` for the folds layout, else `stratified`.

Every fold calls `medxp.pipeline.run_experiment` under its own nested run (`fold-<k>`).
The parent run gets `cv/folds.csv` (one row per fold: status, seconds, validation and test
metrics, run id), `cv/summary.csv` (pandas `describe()` of the finished folds: count, mean,
std, min, 25%, 50%, 75%, max), `cv/metrics.png` and the metrics `cv_<column>_<statistic>`.
A fold that fails ends its run FAILED, is marked FAILED in the table, and the others go
on; the summary covers the finished folds and its `count` says how many.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from medxp.config import ExperimentConfig
from medxp.data import DataModule, create_datamodule
from medxp.data.datamodule import ensure_data
from medxp.data.pooled_folds import fold_datamodule, pool_folds
from medxp.data.synthetic import is_generated
from medxp.errors import MedxpError
from medxp.pipeline import run_experiment
from medxp.recording import record_run_config
from medxp.tracking.mlflow_tracker import MlflowTracker

log = logging.getLogger(__name__)

DEFAULT_STRATIFIED_FOLDS = 5
FINISHED, FAILED = "FINISHED", "FAILED"
SUMMARY_STATISTICS = ("mean", "std", "min", "max")  # logged as parent metrics; the CSV has all of describe()
_FOLD_FOLDER = re.compile(r"^fold(\d+)$", re.IGNORECASE)


@dataclass
class Fold:
    """One fold to run: its index, its config, and how to get its splits (None: from the config)."""

    index: int
    config: ExperimentConfig
    make_data: Callable[[], DataModule | None]


@dataclass
class CVResult:
    """What a cross-validation produced.

    Attributes:
        source: `dataset` or `stratified`.
        folds: One row per fold: fold, status, seconds, valid_* and test_* metrics, run_id, model_uri, error.
        summary: `describe()` of the finished folds' metric columns and seconds (rows count ... max).
        run_id: The parent run.
    """

    source: str
    folds: pd.DataFrame
    summary: pd.DataFrame
    run_id: str

    @property
    def finished(self) -> int:
        """How many folds finished."""
        return int((self.folds["status"] == FINISHED).sum())

    @property
    def failed(self) -> int:
        """How many folds failed."""
        return int((self.folds["status"] == FAILED).sum())

    @property
    def model_uris(self) -> list[str]:
        """The finished folds' logged models, e.g. for `medxp.flows.ensemble.build_ensemble`."""
        return [uri for uri in self.folds["model_uri"] if uri]


def run_cross_validation(config: ExperimentConfig, tracker: MlflowTracker, *, log_models: bool = True,
                         progress: bool = True) -> CVResult:
    """Runs every fold as a nested run under `tracker`'s run and records the summary on it.

    Args:
        config: The resolved config; `cv.source` and `cv.folds` choose the folds.
        tracker: The parent run, active (inside `MlflowTracker.start(...)`).
        log_models: Log each fold's trained model (an ensemble of folds needs them).
        progress: Show progress bars.

    Returns:
        The per-fold table and its summary.

    Raises:
        MedxpError: bad cv settings, no parent run, or no fold finished (the table is logged first).
    """
    tracker.check_active("cross-validation")
    source = cv_source(config)
    folds, synthetic = dataset_folds(config) if source == "dataset" else stratified_plan(config)
    experiment = mlflow.get_experiment(mlflow.active_run().info.experiment_id).name
    record_run_config(tracker, config, {"medxp.kind": "cv", "cv.source": source, "cv.folds": str(len(folds)),
                                        "data.synthetic": str(synthetic).lower()})
    rows = [run_fold(fold, experiment, source, log_models=log_models, progress=progress) for fold in folds]
    result = summarise(rows, source, tracker.run_id)
    record_cv(tracker, result)
    if not result.finished:
        raise MedxpError(f"cross-validation of '{config.dataset.name}': none of the {len(folds)} folds finished; "
                         f"see cv/folds.csv and the fold runs' error.txt")
    return result


def cv_source(config: ExperimentConfig) -> str:
    """`cv.source` with `auto` resolved: `dataset` for the folds layout, else `stratified`.

    Raises:
        MedxpError: `dataset` asked for a layout without given folds.
    """
    layout, source = config.dataset.layout, config.cv.source
    if source == "auto":
        return "dataset" if layout == "folds" else "stratified"
    if source == "dataset" and layout != "folds":
        raise MedxpError(f"'cv.source' = 'dataset': layout '{layout}' of '{config.dataset.name}' has no given folds; "
                         "expected cv.source stratified (or auto)")
    return source


# ---------------------------------------------------------------- planning the folds


def dataset_folds(config: ExperimentConfig) -> tuple[list[Fold], bool]:
    """The data's own folds, `data.fold = k` each: every FoldN folder, or the first `cv.folds`.

    Returns:
        The folds, and whether the data is generated.

    Raises:
        MedxpError: no FoldN folder, or fewer than `cv.folds`.
    """
    root = ensure_data(config)
    found = sorted(int(match.group(1)) for child in root.iterdir()
                   if child.is_dir() and (match := _FOLD_FOLDER.match(child.name)))
    if not found:
        raise MedxpError(f"{root}: no FoldN folders; expected the 'folds' layout (Fold0, Fold1, ...) "
                         f"for cv.source dataset")
    wanted = config.cv.folds or len(found)
    if wanted > len(found):
        raise MedxpError(f"'cv.folds' = {wanted}: {root} has only {len(found)} folds "
                         f"({', '.join(f'Fold{k}' for k in found)}); expected at most {len(found)}, or 0 for all")
    folds = [Fold(k, config.replace({"data.fold": k}, "cv"), lambda: None) for k in found[:wanted]]
    return folds, is_generated(root)


def stratified_plan(config: ExperimentConfig) -> tuple[list[Fold], bool]:
    """Stratified K-fold over train + valid, the test split fixed; the data is decoded once here.

    Returns:
        The folds (each builds its DataModule when it runs), and whether the data is generated.
    """
    fold_count = config.cv.folds or DEFAULT_STRATIFIED_FOLDS
    base = create_datamodule(config)
    pairs = pool_folds(base, fold_count, config)
    folds = [Fold(k, config, partial(fold_datamodule, base, train, held_out))
             for k, (train, held_out) in enumerate(pairs)]
    return folds, base.synthetic


# ---------------------------------------------------------------- running a fold


def run_fold(fold: Fold, experiment: str, source: str, *, log_models: bool = True,
             progress: bool = True) -> dict[str, Any]:
    """Trains and evaluates one fold in a nested run; a failure is caught and returned as a FAILED row.

    Returns:
        The fold's row: fold, status, seconds, valid_* / test_* metrics, epochs, run_id, model_uri, error.
    """
    row: dict[str, Any] = {"fold": fold.index, "status": FINISHED, "run_id": "", "model_uri": "", "error": ""}
    started = time.perf_counter()
    tags = {"medxp.kind": "cv-fold", "cv.fold": str(fold.index), "cv.source": source}
    try:
        with MlflowTracker.start(experiment, run_name=f"fold-{fold.index}", nested=True, tags=tags) as fold_tracker:
            row["run_id"] = fold_tracker.run_id
            result = run_experiment(fold.config, fold_tracker, log_model=log_models, progress=progress,
                                    data=fold.make_data())
    except Exception as error:  # one fold's failure must not end the CV; its run keeps the traceback
        log.exception("fold %d failed", fold.index)
        row.update(status=FAILED, error=f"{type(error).__name__}: {error}")
    else:
        for split, evaluation in result.evaluations.items():
            row.update({f"{split}_{name}": value for name, value in evaluation.metrics.items()})
        row.update(best_epoch=result.fit.best_epoch, epochs_trained=len(result.fit.history),
                   model_uri=result.model_uri or "")
    row["seconds"] = time.perf_counter() - started
    return row


# ---------------------------------------------------------------- summary and records


def summarise(rows: list[dict[str, Any]], source: str, run_id: str) -> CVResult:
    """The per-fold table (columns in a fixed order) and `describe()` of its finished folds."""
    folds = pd.DataFrame(rows)
    columns = metric_columns(folds)
    leading = ["fold", "status", "seconds", *columns]
    trailing = [c for c in ("best_epoch", "epochs_trained", "run_id", "model_uri", "error") if c in folds]
    folds = folds[leading + trailing]
    finished = folds[folds["status"] == FINISHED]
    summary = finished[columns + ["seconds"]].astype(float).describe()
    return CVResult(source, folds, summary, run_id)


def metric_columns(folds: pd.DataFrame) -> list[str]:
    """The validation then test metric columns of the fold table."""
    return ([c for c in folds.columns if c.startswith("valid_")] +
            [c for c in folds.columns if c.startswith("test_")])


def summary_metrics(summary: pd.DataFrame) -> dict[str, float]:
    """`{"cv_test_accuracy_mean": ..., "cv_seconds_std": ...}`: the parent run's metrics."""
    return {f"cv_{column}_{statistic}": float(summary.at[statistic, column])
            for column in summary.columns for statistic in SUMMARY_STATISTICS}


def record_cv(tracker: MlflowTracker, result: CVResult) -> None:
    """The fold table, the summary, the plot and the summary metrics, on the parent run."""
    tracker.log_text(result.folds.to_csv(index=False), "cv/folds.csv")
    tracker.log_text(result.summary.to_csv(index_label="statistic"), "cv/summary.csv")
    tracker.log_figure(cv_metrics_figure(result.folds), "cv/metrics.png")
    tracker.log_metrics({**summary_metrics(result.summary), "cv_folds_finished": result.finished,
                         "cv_folds_failed": result.failed})


# ---------------------------------------------------------------- the plot


def cv_metrics_figure(folds: pd.DataFrame) -> Figure:
    """Validation and test metrics per fold (box plot + one point per fold), and seconds per fold.

    Args:
        folds: The fold table of `summarise` (failed folds are left out of the boxes).

    Returns:
        The figure, with three axes: validation metrics, test metrics, seconds per fold.
    """
    finished = folds[folds["status"] == FINISHED]
    figure = Figure(figsize=(15, 5), layout="constrained")
    valid_axes, test_axes, time_axes = figure.subplots(1, 3, width_ratios=(3, 3, 1.3))
    columns = metric_columns(folds)
    for axes, split in ((valid_axes, "valid"), (test_axes, "test")):
        _metric_panel(axes, finished, [c for c in columns if c.startswith(f"{split}_")], split)
    _time_panel(time_axes, folds)
    if len(finished):
        test_axes.legend(fontsize="small", loc="lower left", ncols=2)
    return figure


def _metric_panel(axes, finished: pd.DataFrame, columns: list[str], split: str) -> None:
    """Box plot of each metric over the finished folds, each fold's value a coloured point."""
    names = [column.removeprefix(f"{split}_") for column in columns]
    values = [finished[column].astype(float).dropna().to_numpy() for column in columns]
    if any(len(v) for v in values):
        axes.boxplot(values, positions=range(1, len(columns) + 1), widths=0.5, showfliers=False)
    offsets = np.linspace(-0.15, 0.15, max(len(finished), 1))
    for offset, (_, row) in zip(offsets, finished.iterrows()):
        axes.scatter(np.arange(1, len(columns) + 1) + offset, row[columns].astype(float), s=14,
                     color=f"C{int(row['fold']) % 10}", label=f"fold {int(row['fold'])}", zorder=3)
    axes.set_xticks(range(1, len(columns) + 1), names, rotation=40, ha="right")
    axes.set(title=f"{'Validation' if split == 'valid' else 'Test'} metrics per fold (n={len(finished)})",
             ylabel="value", ylim=(-0.02, 1.02))
    axes.grid(alpha=0.3, axis="y")


def _time_panel(axes, folds: pd.DataFrame) -> None:
    """Seconds per fold as bars, failed folds in grey."""
    colours = ["C0" if status == FINISHED else "lightgrey" for status in folds["status"]]
    axes.bar(folds["fold"].astype(str), folds["seconds"].astype(float), color=colours)
    axes.set(title="Time per fold (grey: failed)", xlabel="fold", ylabel="seconds")
    axes.grid(alpha=0.3, axis="y")
