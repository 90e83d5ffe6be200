"""Loading a logged medxp model from MLflow as an `nn.Module`: pixels (or features) in, probabilities out.

A logged model is either a medxp PyTorch model (`models:/m-...` of a run, or a registered
version `models:/<name>/<version>`, `models:/<name>@champion`) or a medxp ensemble, stored as
one pyfunc model (`EnsemblePyfunc`) with each member saved as an artifact inside it and
loaded in `load_context`, so `mlflow.pyfunc.load_model(uri).predict(pixels)` returns the
averaged probabilities. `load_inference_model` loads either kind; `member_info` reads what
must agree between ensemble members (class names and input shape from the model's `medxp`
flavor, else the run's `dataset.class_names` and the model's signature). An ensemble also answers
image files (a column `image` of base64 strings) through `medxp.serving.image_table`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from torch import nn

from medxp.errors import MedxpError
from medxp.models.ensemble import EnsembleModel, MemberInfo


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
                     "or a medxp ensemble (pyfunc logged by medxp.flows.ensemble.log_ensemble)")


def member_info(model_uri: str, model: nn.Module | None = None) -> MemberInfo:
    """The class names and input shape: the model's `medxp` flavor or attributes, else its run and signature."""
    info = _model_info(model_uri)
    recorded = (info.flavors or {}).get("medxp") or {}
    class_names = tuple(recorded.get("class_names") or getattr(model, "class_names", ())
                        or _run_class_names(info.run_id))
    input_shape = tuple(int(size) for size in recorded.get("input_shape") or getattr(model, "input_shape", ()) or ())
    if not input_shape and info.signature is not None and info.signature.inputs is not None:
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


class EnsemblePyfunc(mlflow.pyfunc.PythonModel):
    """The MLflow face of an ensemble: members are artifacts `member_0`, ... loaded in `load_context`."""

    def __init__(self, member_info: Sequence[MemberInfo] = (), decision: dict | None = None) -> None:
        self.member_info = tuple(member_info)
        self.decision = dict(decision or {})  # the operating point, plain values pickled with the pyfunc
        self.ensemble: EnsembleModel | None = None  # built at load time, never pickled with the model

    def load_context(self, context: Any) -> None:
        keys = sorted(context.artifacts, key=lambda key: int(key.rsplit("_", 1)[1]))
        models = [mlflow.pytorch.load_model(context.artifacts[key], map_location="cpu").eval() for key in keys]
        self.ensemble = EnsembleModel(models, self.member_info or None, getattr(self, "decision", None)).eval()
        from medxp.serving import identity_of_folder  # serving reads files; only a loaded ensemble needs it

        # The members lie in <model folder>/artifacts/member_<i>: the folder above names the ensemble.
        self.identity = identity_of_folder(Path(context.artifacts[keys[0]]).parent) if keys else None

    def predict(self, context, model_input, params=None):  # no hints: MLflow would read them as a schema
        """(N, C, H, W) float32 pixels in [0, 1] -> (N, classes) probabilities (numpy); a column `image` of
        base64 files -> the answer table of `medxp.serving` (probabilities, label, threshold, ..., error)."""
        from medxp.serving import ModelFacts, ModelIdentity, image_table, image_values

        images = image_values(model_input)
        if images is not None:
            facts = ModelFacts(tuple(self.ensemble.class_names), tuple(self.ensemble.input_shape))
            return image_table(self.ensemble, images, facts, getattr(self, "identity", None) or ModelIdentity())
        inputs = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            return self.ensemble(inputs).numpy()
