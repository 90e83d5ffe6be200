"""medxp's MLflow flavor: a pickled PyTorch model whose `python_function` face is `medxp.serving`.

`mlflow.models.Model.log(name=..., flavor=medxp.tracking.mlflow_flavor, pytorch_model=...)` calls
`save_model`, which writes the model folder in three steps:

1. `mlflow.pytorch.save_model` (pickle): the `pytorch` flavor, so `mlflow.pytorch.load_model(uri)`
   returns the `nn.Module` (float pixels or features in, probabilities out), as before.
2. The `python_function` flavor is replaced by one whose loader module is `medxp.serving`
   (shipped in the model's `code/` folder), so `mlflow.pyfunc.load_model(uri)` and
   `mlflow models serve` answer image files (a column `image` of base64 strings) as well as tensors.
3. A `medxp` flavor records what serving reads files by: modality, class names, one input's
   shape, feature names, the operating point and medxp's version.

No signature: MLflow enforces a signature before the model sees its input, and a tensor
signature refuses the `image` column while a column signature refuses the tensor; without one,
the scoring server passes `dataframe_split` (a DataFrame) and `inputs` (a dict of arrays, or an
array) through to `medxp.serving`, which checks what it gets. The input example is one image as
that column, so the model's `serving_input_example.json` shows a request that works.

This module knows the loader only by its name; it imports nothing above the tracking layer.
"""

from __future__ import annotations

import base64
import io
import math
import os
from typing import Any, Sequence

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import Model
from torch import nn

import medxp

FLAVOR_NAME = "medxp"
LOADER_MODULE = "medxp.serving"
IMAGE_COLUMN = "image"


def describe(model: nn.Module) -> dict[str, Any]:
    """What the `medxp` flavor records of a model (read from its attributes; empty where it has none)."""
    threshold = getattr(model, "threshold", None)
    threshold = None if threshold is None or math.isnan(float(threshold)) else float(threshold)
    positive = getattr(model, "positive_index", None)
    return {
        "medxp_version": getattr(medxp, "__version__", ""),
        "modality": str(getattr(model, "modality", "image")),
        "class_names": [str(name) for name in getattr(model, "class_names", ()) or ()],
        "input_shape": [int(size) for size in getattr(model, "input_shape", ()) or ()],
        "feature_names": [str(name) for name in getattr(model, "feature_names", ()) or ()],
        "threshold": threshold,
        "positive_index": None if threshold is None or positive is None else int(positive),
        "operating_point": str(getattr(model, "operating_point", "argmax")) if threshold is not None else "argmax",
    }


def serving_example(model: nn.Module, input_example: Any) -> Any:
    """The input example as a request: one image as a base64 PNG in column `image`, or a table's named columns.

    Falls back to the array itself when it is not a batch of 1- or 3-channel [0, 1] images or of table rows.
    """
    if input_example is None:
        return None
    array = np.asarray(input_example, dtype=np.float32)
    modality = getattr(model, "modality", "image")
    if modality == "image" and array.ndim == 4 and array.shape[1] in (1, 3) and len(array):
        return pd.DataFrame({IMAGE_COLUMN: [png_base64(array[0])]})
    names = tuple(getattr(model, "feature_names", ()) or ())
    if modality == "tabular" and array.ndim == 2 and len(names) == array.shape[1]:
        return pd.DataFrame(array, columns=list(names))
    return array


def png_base64(pixels: np.ndarray) -> str:
    """A (C, H, W) float image in [0, 1] as the base64 string of its 8-bit PNG file."""
    from PIL import Image

    channels = np.clip(np.round(np.asarray(pixels, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
    image = Image.fromarray(channels[0] if channels.shape[0] == 1 else channels.transpose(1, 2, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def save_model(pytorch_model: nn.Module, path: str, mlflow_model: Model | None = None, *,
               code_paths: Sequence[str] | None = None, pip_requirements: Sequence[str] | None = None,
               input_example: Any = None, serialization_format: str = "pickle", **kwargs: Any) -> None:
    """Saves a medxp model folder at `path` (see the module docstring); what `Model.log` calls.

    Args:
        pytorch_model: The model (`medxp.models.InferenceModel`: pixels or features in, probabilities out).
        path: An empty or missing local folder.
        mlflow_model: The MLmodel being written (`Model.log` passes the one that knows the run and model id).
        code_paths: Code shipped with the model; must hold the `medxp` package, which the loader imports.
        pip_requirements: The model's pinned requirements.
        input_example: A few float inputs as the model takes them; stored as a request (`serving_example`).
        serialization_format: Only `pickle`: pt2 traces with the example and can freeze the batch size.
        kwargs: What `Model.log` passes on for the flavor (e.g. `validate_serving_input`); not used here.
    """
    if serialization_format != "pickle":
        raise ValueError(f"serialization_format={serialization_format!r}: medxp models are saved as 'pickle'")
    mlflow_model = mlflow_model if mlflow_model is not None else Model()
    mlflow.pytorch.save_model(pytorch_model, path, mlflow_model=mlflow_model, code_paths=list(code_paths or []),
                              pip_requirements=list(pip_requirements) if pip_requirements else None,
                              serialization_format="pickle", signature=False,
                              input_example=serving_example(pytorch_model, input_example))
    torch_conf, generic = mlflow_model.flavors["pytorch"], mlflow_model.flavors["python_function"]
    environment = generic.get("env") or {}
    mlflow.pyfunc.add_to_model(mlflow_model, loader_module=LOADER_MODULE, code=torch_conf.get("code"),
                               conda_env=environment.get("conda"), python_env=environment.get("virtualenv"),
                               model_config={"device": None})
    mlflow_model.add_flavor(FLAVOR_NAME, **describe(pytorch_model))
    mlflow_model.save(os.path.join(path, "MLmodel"))
