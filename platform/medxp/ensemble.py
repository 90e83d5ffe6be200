"""Ensembles: the mean of N medxp models' class probabilities, logged and registered as one MLflow model.

A member is any model medxp logs: (N, C, H, W) float32 pixels in [0, 1] in, class
probabilities out (`medxp.models.InferenceModel`), from a run's logged model
(`models:/m-...`) or a registered version (`models:/<name>/<version>`, `models:/<name>@champion`).
Members must agree on class names (from their runs' `dataset.class_names`) and input
shape (from their signatures); a mismatch is an error naming the members.

`EnsembleModel` is an `nn.Module`, so it is evaluated like any logged model
(`medxp.pipeline.evaluate_inference_model`). `log_ensemble` stores it as one MLflow pyfunc
model (`EnsemblePyfunc`): each member saved as an artifact inside it and loaded in
`load_context`, so `mlflow.pyfunc.load_model(uri).predict(pixels)` returns the averaged
probabilities and the model registers like any other. `load_inference_model` loads either
kind (a medxp PyTorch model or an ensemble) as an `nn.Module`.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from torch import nn

import medxp
from medxp.config import ExperimentConfig
from medxp.data import DataModule, create_datamodule
from medxp.errors import MedxpError
from medxp.pipeline import evaluate_inference_model, example_batch
from medxp.promotion import register_model
from medxp.tracking.base import Tracker
from medxp.tracking.mlflow_tracker import MlflowTracker, pinned_requirements
from medxp.tracking.records import record_context, record_evaluation
from medxp.training.evaluate import Evaluation

log = logging.getLogger(__name__)

MEMBER_ARTIFACT = "member_{index}"


@dataclass(frozen=True)
class MemberInfo:
    """What must agree between ensemble members; empty fields are unknown and not compared.

    Attributes:
        source: Where the member came from (its model URI), named in errors.
        class_names: The classes of its output columns, in order.
        input_shape: One input's shape without the batch axis, e.g. (3, 64, 64).
    """

    source: str
    class_names: tuple[str, ...] = ()
    input_shape: tuple[int, ...] = ()


class EnsembleModel(nn.Module):
    """Averages the class probabilities of its members: pixels in [0, 1] in, probabilities out."""

    def __init__(self, models: Sequence[nn.Module], members: Sequence[MemberInfo] | None = None) -> None:
        """Builds the ensemble.

        Args:
            models: Medxp inference models (each returns probabilities).
            members: One description per model; checked for agreement. None: `member 0`, ... unchecked.

        Raises:
            MedxpError: no model, a description count that differs, or members that disagree.
        """
        super().__init__()
        if not models:
            raise MedxpError("ensemble: no member models; expected at least one model URI")
        members = tuple(members) if members is not None else tuple(MemberInfo(f"member {i}")
                                                                      for i in range(len(models)))
        if len(members) != len(models):
            raise MedxpError(f"ensemble: {len(models)} models but {len(members)} member descriptions; "
                             "expected one description per model")
        self.class_names, self.input_shape = check_members(members)
        self.member_info = members
        self.members = nn.ModuleList(models)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        probabilities = [member(inputs) for member in self.members]
        widths = [p.shape[-1] for p in probabilities]
        if len(set(widths)) > 1:
            described = ", ".join(f"{info.source}: {width}" for info, width in zip(self.member_info, widths))
            raise MedxpError(f"ensemble: members return different numbers of classes ({described}); "
                             "expected members trained on the same classes")
        return torch.stack(probabilities).mean(dim=0)


def check_members(members: Sequence[MemberInfo]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The members' common (class names, input shape); unknown fields are skipped.

    Raises:
        MedxpError: two members with different class names or input shapes, naming every member.
    """
    agreed = []
    for field, what in (("class_names", "class names"), ("input_shape", "input shape")):
        known = {getattr(info, field) for info in members if getattr(info, field)}
        if len(known) > 1:
            described = "; ".join(f"{info.source}: {list(getattr(info, field)) or 'unknown'}" for info in members)
            raise MedxpError(f"ensemble members disagree on {what} ({described}); "
                             f"expected every member to have the same {what}")
        agreed.append(known.pop() if known else ())
    return agreed[0], agreed[1]


# ---------------------------------------------------------------- building from logged models


def build_ensemble(model_uris: Sequence[str]) -> EnsembleModel:
    """Loads each model and averages them.

    Args:
        model_uris: `models:/m-...` (a run's logged model), `models:/<name>/<version>`,
            `models:/<name>@<alias>`, or any URI MLflow loads; medxp models or medxp ensembles.

    Returns:
        The ensemble, in eval mode on the CPU.

    Raises:
        MedxpError: an unloadable URI, or members that disagree on class names or input shape.
    """
    if not model_uris:
        raise MedxpError("ensemble: no model URIs; expected two or more, e.g. models:/m-... models:/<name>/<v>")
    models = [load_inference_model(uri) for uri in model_uris]
    members = [member_info(uri, model) for uri, model in zip(model_uris, models)]
    return EnsembleModel(models, members).eval()


def load_inference_model(model_uri: str) -> nn.Module:
    """A logged medxp model as an `nn.Module` (pixels in, probabilities out): PyTorch flavour or an ensemble.

    Raises:
        MedxpError: the URI does not resolve, or holds neither kind of model.
    """
    flavors = _model_info(model_uri).flavors
    if "pytorch" in flavors:
        return mlflow.pytorch.load_model(model_uri, map_location="cpu").eval()
    python_model = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    if isinstance(python_model, EnsemblePyfunc) and python_model.ensemble is not None:
        return python_model.ensemble.eval()
    raise MedxpError(f"model '{model_uri}': flavours {sorted(flavors)}; expected a medxp model (pytorch flavour) "
                     "or a medxp ensemble (pyfunc logged by medxp.ensemble.log_ensemble)")


def member_info(model_uri: str, model: nn.Module | None = None) -> MemberInfo:
    """The class names (from the model, else its run's `dataset.class_names`) and input shape (signature)."""
    info = _model_info(model_uri)
    class_names = tuple(getattr(model, "class_names", ()) or _run_class_names(info.run_id))
    input_shape: tuple[int, ...] = ()
    if info.signature is not None and info.signature.inputs is not None:
        shape = getattr(info.signature.inputs.inputs[0], "shape", None)
        input_shape = tuple(int(size) for size in shape[1:]) if shape else ()
    return MemberInfo(model_uri, class_names, input_shape)


def _model_info(model_uri: str) -> Any:
    try:
        return mlflow.models.get_model_info(model_uri)
    except (MlflowException, OSError) as error:
        raise MedxpError(f"model '{model_uri}': cannot be resolved at {mlflow.get_tracking_uri()}; expected "
                         f"models:/m-..., models:/<name>/<version> or models:/<name>@<alias> ({error})") from None


def _run_class_names(run_id: str | None) -> tuple[str, ...]:
    """`dataset.class_names` as the run logged it (comma-joined); () when unknown."""
    if not run_id:
        return ()
    try:
        logged = mlflow.MlflowClient().get_run(run_id).data.params.get("dataset.class_names", "")
    except MlflowException:
        return ()
    return tuple(name for name in logged.split(",") if name)


# ---------------------------------------------------------------- evaluation


def evaluate_ensemble(ensemble: EnsembleModel, data: DataModule, split: str, config: ExperimentConfig,
                      tracker: Tracker | None = None) -> Evaluation:
    """Scores the ensemble on one split like any logged model, recording it when a tracker is given.

    Raises:
        MedxpError: the ensemble's classes or input shape differ from the data's.
    """
    if ensemble.class_names and tuple(ensemble.class_names) != tuple(data.class_names):
        raise MedxpError(f"ensemble classes {list(ensemble.class_names)} differ from 'dataset.class_names' "
                         f"{list(data.class_names)}; expected members trained on this dataset")
    input_shape = tuple(data.datasets[split].images.shape[1:])
    if ensemble.input_shape and tuple(ensemble.input_shape) != input_shape:
        raise MedxpError(f"ensemble input shape {list(ensemble.input_shape)} differs from the data's "
                         f"{list(input_shape)}; expected 'dataset.image_size' and 'dataset.channels' as trained")
    evaluation = evaluate_inference_model(ensemble.eval(), data, split, config)
    if tracker is not None:
        record_evaluation(tracker, evaluation)
    return evaluation


# ---------------------------------------------------------------- logging as one pyfunc model


class EnsemblePyfunc(mlflow.pyfunc.PythonModel):
    """The MLflow face of an ensemble: members are artifacts `member_0`, ... loaded in `load_context`."""

    def __init__(self, member_info: Sequence[MemberInfo] = ()) -> None:
        self.member_info = tuple(member_info)
        self.ensemble: EnsembleModel | None = None  # built at load time, never pickled with the model

    def load_context(self, context: Any) -> None:
        keys = sorted(context.artifacts, key=lambda key: int(key.rsplit("_", 1)[1]))
        models = [mlflow.pytorch.load_model(context.artifacts[key], map_location="cpu").eval() for key in keys]
        self.ensemble = EnsembleModel(models, self.member_info or None).eval()

    def predict(self, context, model_input, params=None):  # no hints: MLflow would read them as a schema
        """(N, C, H, W) float32 pixels in [0, 1] -> (N, classes) probabilities (numpy)."""
        inputs = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            return self.ensemble(inputs).numpy()


def log_ensemble(ensemble: EnsembleModel, tracker: MlflowTracker, input_example: np.ndarray | None = None,
                 name: str = "model") -> str:
    """Logs the ensemble into `tracker`'s (active) run as one pyfunc model with its members inside.

    Args:
        ensemble: The ensemble to store.
        tracker: The run it belongs to; gets the tags `ensemble.size` and `ensemble.members`.
        input_example: A few [0, 1] float32 images; default: two grey images of the members' input shape.
        name: The logged model's name.

    Returns:
        The model's URI (`models:/m-...`), for `mlflow.register_model` or `medxp.promotion.register_model`.

    Raises:
        MedxpError: `tracker` is not the active run, or no example and no known input shape.
    """
    _check_active(tracker)
    example = _example(ensemble, input_example)
    with torch.no_grad():
        output = ensemble.eval()(torch.as_tensor(example)).numpy()
    with tempfile.TemporaryDirectory(prefix="medxp-ensemble-") as scratch:
        artifacts = _save_members(ensemble, Path(scratch))
        info = mlflow.pyfunc.log_model(
            name=name, python_model=EnsemblePyfunc(ensemble.member_info), artifacts=artifacts,
            code_paths=[str(Path(medxp.__file__).parent)], pip_requirements=pinned_requirements(),
            signature=infer_signature(example, output), input_example=example,
            metadata={"medxp.kind": "ensemble", "class_names": list(ensemble.class_names),
                      "members": [info.source for info in ensemble.member_info]},
        )
    tracker.set_tags({"ensemble.size": str(len(ensemble.members)),
                      "ensemble.members": ", ".join(info.source for info in ensemble.member_info)[:4900]})
    return info.model_uri


def _save_members(ensemble: EnsembleModel, folder: Path) -> dict[str, str]:
    """Saves each member as a PyTorch-flavour model folder; returns the pyfunc's artifacts mapping."""
    artifacts = {}
    for index, member in enumerate(ensemble.members):
        key = MEMBER_ARTIFACT.format(index=index)
        # Pickle, as MlflowTracker.log_model: any batch size; medxp's code ships once, with the pyfunc.
        mlflow.pytorch.save_model(member.cpu().eval(), str(folder / key), serialization_format="pickle",
                                  pip_requirements=pinned_requirements())
        artifacts[key] = str(folder / key)
    return artifacts


def _example(ensemble: EnsembleModel, input_example: np.ndarray | None) -> np.ndarray:
    if input_example is not None:
        return np.asarray(input_example, dtype=np.float32)
    if not ensemble.input_shape:
        raise MedxpError("log_ensemble: the members' input shape is unknown; expected an input_example "
                         "(a few [0, 1] float32 images)")
    return np.full((2, *ensemble.input_shape), 0.5, dtype=np.float32)


def _check_active(tracker: MlflowTracker) -> None:
    active = mlflow.active_run()
    if active is None or active.info.run_id != tracker.run_id:
        raise MedxpError(f"ensemble: tracker run {tracker.run_id} is not the active MLflow run; "
                         "expected to be called inside `with MlflowTracker.start(...) as tracker`")


# ---------------------------------------------------------------- the whole verb


@dataclass
class EnsembleResult:
    """What `run_ensemble` produced."""

    ensemble: EnsembleModel
    evaluations: dict[str, Evaluation]
    model_uri: str
    registered_name: str | None = None
    registered_version: str | None = None


def run_ensemble(config: ExperimentConfig, model_uris: Sequence[str], tracker: MlflowTracker, *,
                 register: bool = False) -> EnsembleResult:
    """Builds the ensemble, evaluates it on valid and test, logs it, and optionally registers it.

    The run records the same context as a training run (config, data fingerprint, synthetic
    tag), so `medxp.promotion.register_model` and `promote` treat the ensemble like any
    candidate of `<dataset>-classifier` (or `-demo`).

    Args:
        config: The dataset's config (the data the ensemble is scored on).
        model_uris: The members (see `build_ensemble`).
        tracker: The active run that records it all.
        register: Register the logged ensemble as a new version of the dataset's model.

    Returns:
        The ensemble, its evaluations, its model URI and, when registered, the version.
    """
    ensemble = build_ensemble(model_uris)
    data = create_datamodule(config)
    record_context(tracker, config, data)
    tracker.set_tags({"medxp.kind": "ensemble", "model": "ensemble"})
    evaluations = {split: evaluate_ensemble(ensemble, data, split, config, tracker) for split in ("valid", "test")}
    model_uri = log_ensemble(ensemble, tracker, example_batch(data))
    result = EnsembleResult(ensemble, evaluations, model_uri)
    if register:
        version = register_model(tracker.run_id, model_uri, config, synthetic=data.synthetic)
        result.registered_name, result.registered_version = version.name, str(version.version)
    log.info("ensemble of %d: test %s = %.4f", len(model_uris), config.eval.primary_metric,
             evaluations["test"].metrics[config.eval.primary_metric])
    return result
