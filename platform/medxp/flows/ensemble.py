"""The ensemble flow: the mean of N medxp models' class probabilities, logged and registered as one MLflow model.

A member is any model medxp logs (`medxp.models.InferenceModel`), from a run's logged model
(`models:/m-...`) or a registered version (`models:/<name>/<version>`, `models:/<name>@champion`).
Members must agree on class names (from their runs' `dataset.class_names`) and input
shape (from their signatures); a mismatch is an error naming the members.

`medxp.models.EnsembleModel` is an `nn.Module`, so it is evaluated like any logged model
(`medxp.pipeline.evaluate_and_record`). `log_ensemble` stores it as one MLflow pyfunc
model (`medxp.models.loading.EnsemblePyfunc`): each member saved as an artifact inside it, so
`mlflow.pyfunc.load_model(uri).predict(pixels)` returns the averaged probabilities (and a column
`image` of base64 files gets `medxp.serving`'s answer table), and the model registers like any other; `medxp.models.load_inference_model` loads it back as an `nn.Module`.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import mlflow
import numpy as np
import torch

import medxp
from medxp.config import ExperimentConfig
from medxp.data import DataModule
from medxp.errors import MedxpError
from medxp.models.ensemble import EnsembleModel, MemberInfo
from medxp.models.loading import EnsemblePyfunc, load_inference_model, member_info
from medxp.pipeline import (
    evaluate_and_record,
    evaluate_inference_model,
    example_batch,
    model_inputs,
    prepare,
    record_cost,
)
from medxp.promotion import register_model
from medxp.tracking.base import Tracker
from medxp.tracking.mlflow_flavor import serving_example
from medxp.tracking.mlflow_tracker import MlflowTracker, pinned_requirements
from medxp.training.evaluate import Evaluation, fit_prediction_rule

log = logging.getLogger(__name__)

MEMBER_ARTIFACT = "member_{index}"


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


def evaluate_ensemble(ensemble: EnsembleModel, data: DataModule, split: str, config: ExperimentConfig,
                      tracker: Tracker | None = None) -> Evaluation:
    """Scores the ensemble on one split like any logged model, recording it when a tracker is given.

    Raises:
        MedxpError: the ensemble's classes or input shape differ from the data's.
    """
    check_fits(ensemble, data, split)
    if tracker is None:
        return evaluate_inference_model(ensemble.eval(), data, split, config)
    return evaluate_and_record(ensemble.eval(), data, split, config, tracker)


def check_fits(ensemble: EnsembleModel, data: DataModule, split: str) -> None:
    """Raises MedxpError when the ensemble's classes or input shape differ from the data's."""
    if ensemble.class_names and tuple(ensemble.class_names) != tuple(data.class_names):
        raise MedxpError(f"ensemble classes {list(ensemble.class_names)} differ from 'dataset.class_names' "
                         f"{list(data.class_names)}; expected members trained on this dataset")
    input_shape = tuple(data.datasets[split].images.shape[1:])
    if ensemble.input_shape and tuple(ensemble.input_shape) != input_shape:
        raise MedxpError(f"ensemble input shape {list(ensemble.input_shape)} differs from the data's "
                         f"{list(input_shape)}; expected 'dataset.image_size' and 'dataset.channels' as trained")


def fit_ensemble_rule(ensemble: EnsembleModel, data: DataModule, config: ExperimentConfig) -> EnsembleModel:
    """Gives a binary task's ensemble its operating point (`eval.operating_point`), chosen on the validation split.

    The members' probabilities (each with its own temperature) are averaged as they are: no
    temperature is fitted on the mean. Multi-class ensembles keep the arg-max.
    """
    with torch.no_grad():
        y_prob = torch.cat([ensemble.eval()(batch) for batch in model_inputs(data, "valid").split(256)]).numpy()
    rule = fit_prediction_rule(data.datasets["valid"].labels.numpy(), y_prob, data.class_names,
                               config.dataset.positive_class, dataclasses.replace(config.eval, calibration="none"))
    if rule.threshold is not None:
        ensemble.set_decision({"threshold": rule.threshold, "positive_index": rule.positive_index,
                               "operating_point": rule.operating_point, "threshold_split": rule.chosen_on})
    return ensemble


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
    tracker.check_active("ensemble")
    example = _example(ensemble, input_example)
    with tempfile.TemporaryDirectory(prefix="medxp-ensemble-") as scratch:
        artifacts = _save_members(ensemble, Path(scratch))
        # No signature, as for a single model (medxp.tracking.mlflow_flavor): the server then passes both the
        # `image` column and tensors through to EnsemblePyfunc.predict; the example is one image as that column.
        info = mlflow.pyfunc.log_model(
            name=name, python_model=EnsemblePyfunc(ensemble.member_info, ensemble.decision), artifacts=artifacts,
            code_paths=[str(Path(medxp.__file__).parent)], pip_requirements=pinned_requirements(),
            signature=False, input_example=serving_example(ensemble, example),
            metadata={"medxp.kind": "ensemble", "class_names": list(ensemble.class_names),
                      "input_shape": list(ensemble.input_shape),
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
    data = prepare(config, tracker)
    ensemble = fit_ensemble_rule(build_ensemble(model_uris), data, config)
    tracker.set_tags({"medxp.kind": "ensemble", "model": "ensemble"})
    evaluations = {split: evaluate_ensemble(ensemble, data, split, config, tracker) for split in ("valid", "test")}
    record_cost(tracker, ensemble, data, 0.0)  # the members' parameters summed, the mean's inference time
    model_uri = log_ensemble(ensemble, tracker, example_batch(data))
    result = EnsembleResult(ensemble, evaluations, model_uri)
    if register:
        version = register_model(tracker.run_id, model_uri, config, synthetic=data.synthetic)
        result.registered_name, result.registered_version = version.name, str(version.version)
    log.info("ensemble of %d: test %s = %.4f", len(model_uris), config.eval.primary_metric,
             evaluations["test"].metrics[config.eval.primary_metric])
    return result
