"""The MLflow tracker: one MLflow run per medxp run, attached to the run `mlflow run` created."""

from __future__ import annotations

import contextlib
import logging
import os
import traceback
from pathlib import Path
from typing import Any, Iterator, Mapping

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import torch
from mlflow.models import infer_signature
from torch import nn

import medxp

log = logging.getLogger(__name__)


class _PickleNoticeFilter(logging.Filter):
    """Drops MLflow's notice about pickled models: medxp pickles on purpose (see `log_model`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Saving pytorch model by Pickle")


logging.getLogger("mlflow.pytorch").addFilter(_PickleNoticeFilter())

# MLflow params are strings of at most 6000 characters; keep ours well below.
_MAX_PARAM_LENGTH = 500


def ensure_experiment(name: str) -> str:
    """Creates the experiment if missing and returns its id (call once, before any parallel work)."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow.create_experiment(name)
    except mlflow.exceptions.MlflowException:
        # Another process created it between our look-up and our create.
        return mlflow.get_experiment_by_name(name).experiment_id


class MlflowTracker:
    """Logs through the fluent MLflow API into the active run."""

    def __init__(self, run: mlflow.ActiveRun) -> None:
        self.run = run
        self.run_id = run.info.run_id

    @classmethod
    @contextlib.contextmanager
    def start(cls, experiment: str, run_name: str | None = None, nested: bool = False,
              tags: Mapping[str, str] | None = None) -> Iterator["MlflowTracker"]:
        """Starts (or, under `mlflow run`, attaches to) a run; a failure ends it FAILED with the error logged.

        Args:
            experiment: Experiment name, used when not attached to an existing run.
            run_name: Shown in the MLflow UI.
            nested: Start a child of the active run.
            tags: Tags set at start.
        """
        attached = bool(os.environ.get("MLFLOW_RUN_ID")) and not nested and mlflow.active_run() is None
        experiment_id = None if attached else ensure_experiment(experiment)
        with mlflow.start_run(experiment_id=experiment_id, run_name=None if attached else run_name,
                              nested=nested, tags=dict(tags or {})) as run:
            if attached and run_name:
                mlflow.set_tag("mlflow.runName", run_name)
            tracker = cls(run)
            try:
                yield tracker
            except BaseException as error:
                tracker.record_failure(error)
                raise

    def record_failure(self, error: BaseException) -> None:
        """Keeps the error on the run (tag + traceback artifact); the run ends FAILED."""
        with contextlib.suppress(Exception):
            mlflow.set_tag("medxp.error", f"{type(error).__name__}: {error}"[:_MAX_PARAM_LENGTH])
            mlflow.log_text("".join(traceback.format_exception(error)), "error.txt")

    def set_tags(self, tags: Mapping[str, str]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_params(self, params: Mapping[str, Any]) -> None:
        mlflow.log_params({k: _param_value(v) for k, v in params.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        finite = {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}
        if finite:
            mlflow.log_metrics(finite, step=step)

    def log_figure(self, figure: Any, path: str) -> None:
        mlflow.log_figure(figure, path)
        plt.close(figure)

    def log_dict(self, data: Any, path: str) -> None:
        mlflow.log_dict(data, path)

    def log_text(self, text: str, path: str) -> None:
        mlflow.log_text(text, path)

    def log_model(self, model: nn.Module, input_example: Any, name: str = "model") -> str | None:
        """Logs the model as a pickled PyTorch flavour; returns its `models:/m-...` URI.

        Pickle, not MLflow's default pt2 export: pt2 traces with the input example and
        can freeze the batch dimension, so the logged model would refuse other batch sizes.
        """
        model = model.cpu().eval()
        with torch.no_grad():
            output = model(torch.as_tensor(input_example)).numpy()
        info = mlflow.pytorch.log_model(
            model, name=name, input_example=input_example, signature=infer_signature(input_example, output),
            serialization_format="pickle", pip_requirements=pinned_requirements(),
            code_paths=[str(Path(medxp.__file__).parent)],
        )
        return info.model_uri


def _param_value(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return text if len(text) <= _MAX_PARAM_LENGTH else text[: _MAX_PARAM_LENGTH - 3] + "..."


def pinned_requirements() -> list[str]:
    """Pins of what loading a logged medxp model needs (saves MLflow's slow requirement inference)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("torch", "torchvision", "timm", "numpy", "mlflow")]
