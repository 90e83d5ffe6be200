"""What a run records, written once for every entry point: context, curves, evaluations.

It sits above `medxp.training` (it draws the training results' figures) and below
`medxp.pipeline`; it logs only through the `medxp.tracking.Tracker` protocol, so the
tracking package knows nothing of training.
"""

from __future__ import annotations

import platform as system_platform
import re
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Mapping

from medxp.config import ExperimentConfig
from medxp.data import DataModule
from medxp.tracking.base import Tracker
from medxp.training.evaluate import Evaluation
from medxp.training.metrics import predict_at_threshold
from medxp.training.plots import confusion_matrix_figure, curves_figure, reliability_figure, roc_figure
from medxp.training.trainer import FitResult

PACKAGES = ("medxp", "torch", "torchvision", "timm", "mlflow", "optuna", "ray", "scikit-learn", "numpy")


def record_run_config(tracker: Tracker, config: ExperimentConfig, tags: Mapping[str, str],
                      params: Mapping[str, Any] | None = None) -> None:
    """What every run says about its config: tags `dataset`, `model` and `tags`, params, `config/resolved.yaml`.

    Args:
        tracker: The run.
        config: The resolved config, logged whole as `config/resolved.yaml`.
        tags: The run's own tags, set after (so over) `dataset` and `model`.
        params: The params; default `run_params(config)`.
    """
    tracker.set_tags({"dataset": config.dataset.name, "model": config.model.name, **tags})
    tracker.log_params(run_params(config) if params is None else params)
    tracker.log_dict(recorded_config(config), "config/resolved.yaml")


def recorded_config(config: ExperimentConfig) -> dict[str, Any]:
    """`config.to_dict()` as a run may record it: a password in `search.storage` is masked."""
    data = config.to_dict()
    if data.get("search", {}).get("storage"):
        data["search"]["storage"] = redacted_url(data["search"]["storage"])
    return data


def redacted_url(url: str) -> str:
    """`url` with any password masked (`postgresql://medxp:***@host/db`); what a run may record of a URL."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(//[^/:@]+):[^@/]*@", r"\1:***@", url)


def run_params(config: ExperimentConfig) -> dict[str, Any]:
    """The flat config without `search.*`: search settings are the search parent run's params, not a run's."""
    return {key: value for key, value in config.to_flat_dict().items() if not key.startswith("search.")}


def record_context(tracker: Tracker, config: ExperimentConfig, data: DataModule) -> None:
    """Tags, resolved config and provenance: what is needed to reproduce the run."""
    record_run_config(tracker, config, {
        "data.fingerprint": data.fingerprint,
        "data.split_hash": data.split_hash,
        "data.synthetic": str(data.synthetic).lower(),
        "data.dir": str(data.root),
        "git.commit": git_commit(),
        **{f"version.{name}": package_version(name) for name in ("torch", "mlflow")},
    })
    if getattr(data, "audit", None) is not None:
        from medxp.data.audit import log_audit

        log_audit(data.audit, tracker)
    tracker.log_dict({
        "python": system_platform.python_version(),
        "packages": {name: package_version(name) for name in PACKAGES},
        "data": {"root": str(data.root), "fingerprint": data.fingerprint, "split_hash": data.split_hash,
                 "synthetic": data.synthetic,
                 "class_counts": {split: data.class_counts(split) for split in data.datasets}},
    }, "config/environment.json")


def record_fit(tracker: Tracker, fit: FitResult) -> None:
    """Best epoch, the epoch whose weights the model kept (`restored_epoch`), stopping, and the curves as a picture."""
    tracker.log_metrics({"best_epoch": fit.best_epoch, "restored_epoch": fit.restored_epoch,
                         "epochs_trained": len(fit.history), "stopped_early": float(fit.stopped_early)})
    if fit.history:
        tracker.log_figure(curves_figure(fit.history, best_epoch=fit.best_epoch), "plots/curves.png")


def record_evaluation(tracker: Tracker, evaluation: Evaluation) -> None:
    """Metrics with CIs, the decision rule, report, confusion matrices (PNG + JSON), ROC and reliability curves.

    Binary runs are tagged `eval.positive_class`; with an operating point, the metric
    `operating_threshold`, the tags `eval.operating_point` and `eval.threshold_split`, and the
    confusion matrix at the threshold (`<split>_confusion_matrix_operating_point.*`) beside the arg-max one.
    """
    split, names, rule = evaluation.split, evaluation.class_names, evaluation.rule
    tracker.log_metrics({**evaluation.prefixed(), "temperature": rule.temperature})
    tracker.set_tags({"eval.positive_class": evaluation.positive_class or "none (multi-class)",
                      "eval.operating_point": rule.operating_point, "eval.threshold_split": rule.chosen_on,
                      "eval.calibration": "temperature" if rule.temperature != 1.0 else "none"})
    tracker.log_text(evaluation.report, f"evaluation/{split}_classification_report.txt")
    tracker.log_dict(evaluation.report_table, f"evaluation/{split}_classification_report.json")
    tracker.log_dict(evaluation.confusion, f"evaluation/{split}_confusion_matrix.json")
    tracker.log_text(predictions_csv(evaluation), f"evaluation/{split}_predictions.csv")
    argmax = "arg-max" + (f", p({evaluation.positive_class}) >= 0.5" if evaluation.positive_class else "")
    tracker.log_figure(confusion_matrix_figure(evaluation.confusion["matrix"], names,
                                               title=f"Confusion matrix ({split}, {argmax})"),
                       f"evaluation/{split}_confusion_matrix.png")
    if evaluation.operating_confusion is not None:
        _record_operating_point(tracker, evaluation)
    positive = 1 if rule.positive_index is None else rule.positive_index
    roc_title = f"ROC ({split})" + (f", positive {evaluation.positive_class}" if evaluation.positive_class else "")
    tracker.log_figure(roc_figure(evaluation.y_true, evaluation.y_prob, names, positive_index=positive,
                                  threshold=rule.threshold, title=roc_title), f"evaluation/{split}_roc.png")
    tracker.log_figure(reliability_figure(evaluation.y_true, evaluation.y_prob, names,
                                          positive_index=rule.positive_index,
                                          uncalibrated_prob=evaluation.uncalibrated_prob,
                                          title=f"Reliability ({split}, 15 bins)"),
                       f"evaluation/{split}_reliability.png")


def predictions_csv(evaluation: Evaluation) -> str:
    """One row per case, in split order: `label`, `prob_<class>`..., `predicted` (arg-max) and, with an
    operating point, `predicted_at_threshold`. Promotion pairs two versions' test tables case by case."""
    import pandas as pd

    table = pd.DataFrame({"label": evaluation.y_true.astype(int)})
    for index, name in enumerate(evaluation.class_names):
        table[f"prob_{name}"] = evaluation.y_prob[:, index]
    table["predicted"] = evaluation.y_prob.argmax(axis=1)
    rule = evaluation.rule
    if evaluation.operating_confusion is not None:
        table["predicted_at_threshold"] = predict_at_threshold(evaluation.y_prob, rule.positive_index, rule.threshold)
    return table.to_csv(index=False, float_format="%.6g")


def _record_operating_point(tracker: Tracker, evaluation: Evaluation) -> None:
    """The threshold (metric and JSON) and the confusion matrix at it (PNG + JSON)."""
    split, rule = evaluation.split, evaluation.rule
    tracker.log_metrics({"operating_threshold": rule.threshold})
    tracker.log_dict({"positive_class": evaluation.positive_class, "positive_index": rule.positive_index,
                      "threshold": rule.threshold, "operating_point": rule.operating_point,
                      "chosen_on": rule.chosen_on, "temperature": rule.temperature}, "evaluation/operating_point.json")
    tracker.log_dict(evaluation.operating_confusion, f"evaluation/{split}_confusion_matrix_operating_point.json")
    title = (f"Confusion matrix ({split}): p({evaluation.positive_class}) >= {rule.threshold:.3f}\n"
             f"{rule.operating_point} threshold chosen on {rule.chosen_on}")
    tracker.log_figure(confusion_matrix_figure(evaluation.operating_confusion["matrix"], evaluation.class_names,
                                               title=title), f"evaluation/{split}_confusion_matrix_operating_point.png")


def git_commit() -> str:
    """The commit of the checkout medxp runs from, `+dirty` when it has local changes; `unknown` outside git."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def package_version(name: str) -> str:
    """Installed version of a distribution, or `not installed`."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


class EpochLogger:
    """Trainer callback: every epoch's metrics go to the tracker with `step=epoch`."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def on_epoch_end(self, trainer, epoch: int, metrics: dict[str, float]) -> None:
        self.tracker.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)
