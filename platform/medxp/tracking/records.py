"""What a run records, written once for every entry point: context, curves, evaluations."""

from __future__ import annotations

import platform as system_platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from medxp.config import ExperimentConfig
from medxp.data import DataModule
from medxp.tracking.base import Tracker
from medxp.training.evaluate import Evaluation
from medxp.training.plots import confusion_matrix_figure, curves_figure, roc_figure
from medxp.training.trainer import FitResult

PACKAGES = ("medxp", "torch", "torchvision", "timm", "mlflow", "optuna", "ray", "scikit-learn", "numpy")


def record_context(tracker: Tracker, config: ExperimentConfig, data: DataModule) -> None:
    """Tags, resolved config and provenance: what is needed to reproduce the run."""
    tracker.set_tags({
        "dataset": config.dataset.name,
        "model": config.model.name,
        "data.fingerprint": data.fingerprint,
        "data.split_hash": data.split_hash,
        "data.synthetic": str(data.synthetic).lower(),
        "data.dir": str(data.root),
        "git.commit": git_commit(),
        **{f"version.{name}": package_version(name) for name in ("torch", "mlflow")},
    })
    # Search settings are the search parent run's params, not a training run's.
    tracker.log_params({k: v for k, v in config.to_flat_dict().items() if not k.startswith("search.")})
    if getattr(data, "audit", None) is not None:
        from medxp.data.audit import log_audit

        log_audit(data.audit, tracker)
    tracker.log_dict(config.to_dict(), "config/resolved.yaml")
    tracker.log_dict({
        "python": system_platform.python_version(),
        "packages": {name: package_version(name) for name in PACKAGES},
        "data": {"root": str(data.root), "fingerprint": data.fingerprint, "split_hash": data.split_hash,
                 "synthetic": data.synthetic,
                 "class_counts": {split: data.class_counts(split) for split in data.datasets}},
    }, "config/environment.json")


def record_fit(tracker: Tracker, fit: FitResult) -> None:
    """Best epoch, stopping, and the loss/metric curves as a picture."""
    tracker.log_metrics({"best_epoch": fit.best_epoch, "epochs_trained": len(fit.history),
                         "stopped_early": float(fit.stopped_early)})
    if fit.history:
        tracker.log_figure(curves_figure(fit.history, best_epoch=fit.best_epoch), "plots/curves.png")


def record_evaluation(tracker: Tracker, evaluation: Evaluation) -> None:
    """Metrics with CIs, classification report, confusion matrix (PNG + JSON), ROC curve."""
    split, names = evaluation.split, evaluation.class_names
    tracker.log_metrics(evaluation.prefixed())
    tracker.log_text(evaluation.report, f"evaluation/{split}_classification_report.txt")
    tracker.log_dict(evaluation.report_table, f"evaluation/{split}_classification_report.json")
    tracker.log_dict(evaluation.confusion, f"evaluation/{split}_confusion_matrix.json")
    tracker.log_figure(confusion_matrix_figure(evaluation.confusion["matrix"], names,
                                               title=f"Confusion matrix ({split})"),
                       f"evaluation/{split}_confusion_matrix.png")
    tracker.log_figure(roc_figure(evaluation.y_true, evaluation.y_prob, names), f"evaluation/{split}_roc.png")


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
