"""The MLflow tracker: one MLflow run per medxp run, in the experiment a user looks for.

Where a run lands (`place_run`):

- `mlflow run ... --experiment-name X` (or `MLFLOW_EXPERIMENT_NAME=X`, or `--experiment-id`)
  opens a run in X before medxp starts and passes it as `MLFLOW_RUN_ID`: medxp attaches to it.
- `mlflow run` without an experiment opens its run in MLflow's Default experiment (id 0):
  medxp leaves that run a pointer only (tags `medxp.moved_to`, `medxp.moved_to_experiment`
  and a note) and starts its own run in experiment `<dataset>`.
- `medxp <verb>`: experiment `$MLFLOW_EXPERIMENT_NAME` when set, else `<dataset>`.
- A nested run (cv folds) goes where its parent is.

Every experiment medxp creates or uses is tagged `mlflow.experimentKind=custom_model_development`,
so the MLflow UI opens it in its model-training view rather than the GenAI one. On a local SQLite
store, an experiment medxp creates keeps its artifacts beside the store (`<store folder>/mlruns/<name>`),
wherever the process runs from (`local_artifact_location`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import matplotlib.pyplot as plt
import mlflow
import numpy as np
from mlflow.environment_variables import MLFLOW_EXPERIMENT_ID, MLFLOW_EXPERIMENT_NAME, MLFLOW_RUN_ID
from mlflow.tracking import MlflowClient
from mlflow.tracking.default_experiment import DEFAULT_EXPERIMENT_ID
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from torch import nn

import medxp
from medxp.errors import MedxpError
from medxp.tracking import mlflow_flavor

log = logging.getLogger(__name__)


class _PickleNoticeFilter(logging.Filter):
    """Drops MLflow's notice about pickled models: medxp pickles on purpose (see `log_model`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Saving pytorch model by Pickle")


logging.getLogger("mlflow.pytorch").addFilter(_PickleNoticeFilter())

# MLflow params are strings of at most 6000 characters; keep ours well below.
_MAX_PARAM_LENGTH = 500


# The MLflow UI picks its view from this experiment tag; without it, it opens the GenAI view.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
MOVED_TO_TAG = "medxp.moved_to"
MOVED_TO_EXPERIMENT_TAG = "medxp.moved_to_experiment"
MOVED_FROM_TAG = "medxp.moved_from"
# Tags `mlflow run` puts on its run that say how the work was launched; they follow the work when it moves.
_LAUNCH_TAG_PREFIXES = ("mlflow.source.", "mlflow.project.", "mlflow.gitRepoURL", "mlflow.user")


def ensure_experiment(name: str) -> str:
    """Creates the experiment if missing, tags its kind, and returns its id (call once, before any parallel work)."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        try:
            return mlflow.create_experiment(name, artifact_location=local_artifact_location(name),
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except mlflow.exceptions.MlflowException:
            # Another process created it between our look-up and our create.
            experiment = mlflow.get_experiment_by_name(name)
    tag_experiment_kind(experiment.experiment_id)
    return experiment.experiment_id


def local_artifact_location(name: str) -> str | None:
    """Where a new experiment `name` keeps its artifacts on a local SQLite store: `<store folder>/mlruns/<name>`
    (the name reduced to letters, digits, `.`, `_` and `-`), as a file URI.

    MLflow's own default for a SQLite store opened by the client is `./mlruns/<id>` under the working directory
    of whichever process creates the experiment, so one store used from several folders (a clone, a test, a bench
    script) would scatter its artifacts. None for a tracking server or a file store: they place artifacts themselves.
    """
    uri = mlflow.get_tracking_uri()
    if not uri.startswith("sqlite:///"):
        return None
    folder = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-") or "experiment"
    return (local_store_folder(uri) / "mlruns" / folder).as_uri()


def local_store_folder(tracking_uri: str) -> Path | None:
    """The folder holding a local MLflow store (a SQLite file, or a file store's folder); None for a tracking server."""
    for prefix in ("sqlite:///", "file://"):
        if tracking_uri.startswith(prefix):
            return Path(tracking_uri[len(prefix):].split("?", 1)[0]).resolve().parent
    return None


def tag_experiment_kind(experiment_id: str) -> None:
    """Tags the experiment `mlflow.experimentKind=custom_model_development` unless it already has a kind."""
    client = MlflowClient()
    if EXPERIMENT_KIND_TAG not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


@dataclass(frozen=True)
class RunPlacement:
    """Where `MlflowTracker.start` opens its run.

    Attributes:
        experiment_id: The experiment of the new run (None when attaching).
        attach_run_id: The run `mlflow run` opened, to continue (None: start a new run).
        moved_from: The run `mlflow run` opened in the Default experiment, left a pointer only.
    """

    experiment_id: str | None
    attach_run_id: str | None = None
    moved_from: str | None = None


def place_run(experiment: str, nested: bool = False) -> RunPlacement:
    """Decides where a medxp run goes (see the module docstring); creates and tags its experiment.

    Args:
        experiment: The experiment used when nothing names one (medxp passes the dataset name).
        nested: A child of the active run: it goes to the parent's experiment.

    Returns:
        The placement; when `mlflow run` opened a run in the Default experiment, `MLFLOW_RUN_ID`
        is removed from the environment (nothing may attach to that run again) and
        `MLFLOW_EXPERIMENT_ID` names the new experiment, for the processes medxp starts.
    """
    active = mlflow.active_run()
    if nested and active is not None:
        return RunPlacement(active.info.experiment_id)
    given_name = MLFLOW_EXPERIMENT_NAME.get()
    launched_run_id = MLFLOW_RUN_ID.get() if active is None else None
    if not launched_run_id:
        return RunPlacement(ensure_experiment(given_name or experiment))
    launched = MlflowClient().get_run(launched_run_id)
    launched_experiment = launched.info.experiment_id
    if launched_experiment != DEFAULT_EXPERIMENT_ID or _names_experiment(given_name, launched_experiment):
        tag_experiment_kind(launched_experiment)
        return RunPlacement(None, attach_run_id=launched_run_id)
    # `mlflow run` without an experiment: the work goes to `experiment`, not to Default.
    experiment_id = ensure_experiment(experiment)
    os.environ.pop(MLFLOW_RUN_ID.name, None)
    os.environ[MLFLOW_EXPERIMENT_ID.name] = experiment_id
    return RunPlacement(experiment_id, moved_from=launched_run_id)


def _names_experiment(name: str | None, experiment_id: str) -> bool:
    """Whether `$MLFLOW_EXPERIMENT_NAME` explicitly names this experiment (e.g. `Default`)."""
    return bool(name) and mlflow.get_experiment(experiment_id).name == name


def leave_pointer(moved_from: str, run: mlflow.ActiveRun) -> None:
    """Tells the run `mlflow run` opened in Default where the work went; the new run gets its launch tags."""
    client = MlflowClient()
    experiment = client.get_experiment(run.info.experiment_id)
    launched = client.get_run(moved_from)
    mlflow.set_tags({MOVED_FROM_TAG: moved_from,
                     **{key: value for key, value in launched.data.tags.items()
                        if key.startswith(_LAUNCH_TAG_PREFIXES)}})
    for key, value in {
        MOVED_TO_TAG: run.info.run_id,
        MOVED_TO_EXPERIMENT_TAG: experiment.name,
        MLFLOW_RUN_NOTE: f"medxp recorded this work in experiment '{experiment.name}' (id "
                         f"{experiment.experiment_id}), run {run.info.run_id}; this run is only a pointer. "
                         f"Pass --experiment-name to `mlflow run` to choose the experiment.",
    }.items():
        client.set_tag(moved_from, key, value)


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

        Where the run goes is `place_run`'s decision: the run `mlflow run` opened in a named
        experiment is continued; one it opened in the Default experiment gets a pointer to a
        new run in `experiment`.

        Args:
            experiment: Experiment name (the dataset), used unless `mlflow run --experiment-name`
                or `$MLFLOW_EXPERIMENT_NAME` names one.
            run_name: Shown in the MLflow UI.
            nested: Start a child of the active run (in the parent's experiment).
            tags: Tags set at start.
        """
        placement = place_run(experiment, nested=nested)
        attached = placement.attach_run_id is not None
        with mlflow.start_run(run_id=placement.attach_run_id, experiment_id=placement.experiment_id,
                              run_name=None if attached else run_name, nested=nested, tags=dict(tags or {})) as run:
            if attached and run_name:
                mlflow.set_tag("mlflow.runName", run_name)
            if placement.moved_from:
                leave_pointer(placement.moved_from, run)
            tracker = cls(run)
            try:
                yield tracker
            except BaseException as error:
                tracker.record_failure(error)
                raise

    def check_active(self, what: str) -> None:
        """Refuses work that logs into the active run (nested runs, pyfunc models) when this is not that run.

        Args:
            what: The work, named first in the error (`cross-validation`, `ensemble`).

        Raises:
            MedxpError: no active MLflow run, or another one than this tracker's.
        """
        active = mlflow.active_run()
        if active is None or active.info.run_id != self.run_id:
            raise MedxpError(f"{what}: tracker run {self.run_id} is not the active MLflow run; "
                             "expected to be called inside `with MlflowTracker.start(...) as tracker`")

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
        """Logs the model in medxp's flavor (`medxp.tracking.mlflow_flavor`); returns its `models:/m-...` URI.

        The folder keeps the pickled `pytorch` flavor (`mlflow.pytorch.load_model` returns the module) and
        gets `medxp.serving` as its pyfunc face (`mlflow.pyfunc.load_model`, `mlflow models serve`: image
        files or tensors in). Pickle, not MLflow's pt2 export: pt2 traces with the input example and can
        freeze the batch dimension, so the logged model would refuse other batch sizes.
        """
        info = mlflow.models.Model.log(
            artifact_path=None, name=name, flavor=mlflow_flavor, pytorch_model=model.cpu().eval(),
            input_example=input_example, serialization_format="pickle", pip_requirements=pinned_requirements(),
            code_paths=[str(Path(medxp.__file__).parent)],
        )
        return info.model_uri


def _param_value(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return text if len(text) <= _MAX_PARAM_LENGTH else text[: _MAX_PARAM_LENGTH - 3] + "..."


def pinned_requirements() -> list[str]:
    """Pins of what loading a logged medxp model needs (saves MLflow's slow requirement inference)."""
    from importlib.metadata import version

    # scikit-learn: estimator models (hist_gradient_boosting) are pickled with the logged model;
    # pillow, pydicom and pandas: `medxp.serving` decodes image files and answers a table.
    return [f"{name}=={version(name)}" for name in ("torch", "torchvision", "timm", "numpy", "scikit-learn", "mlflow",
                                                    "pandas", "pillow", "pydicom")]
