"""Serving: what a logged medxp model answers through MLflow's pyfunc and `mlflow models serve`.

A model logged by `MlflowTracker.log_model` (`medxp.tracking.mlflow_flavor`) names this module
as its pyfunc loader, so `mlflow.pyfunc.load_model(uri)` returns a `ServedModel` and
`mlflow models serve -m models:/<name>@champion` serves it. Its `predict` takes either:

- image files: a DataFrame with a column `image` of base64 strings (PNG, JPEG or DICOM bytes;
  raw `bytes` work in-process), or the same column as `{"image": [...]}` (the server's `inputs`
  format). Each file is decoded with evaluation's own preprocessing (`medxp.data.images.
  pixels_for_spec`: grey/RGB to the model's channels, bilinear resize to its image size, then
  /255), so a file scores as it would in `medxp evaluate`. DICOM: rescale slope/intercept (the
  modality LUT), the file's window (or VOI LUT), MONOCHROME1 inverted, then [0, 1]. The answer is
  a DataFrame, one row per input row (`OUTPUT_COLUMNS`): `prob_<class>` for every class,
  `label` (the class at the model's stored operating point: the validation threshold on the
  positive class of a binary model, else the arg-max), `threshold` (NaN for the arg-max),
  `model_name`, `model_version` and `error` ("" when fine; else why, with NaN probabilities,
  while the other rows are still answered);
- tensors: float (N, C, H, W) pixels in [0, 1] (or (N, F) raw features) as a numpy array, a
  torch tensor, nested lists or a DataFrame of numbers: class probabilities, as an array (or a
  DataFrame for a DataFrame), as the PyTorch flavour's pyfunc answered.

`model_name` / `model_version` come from the Model Registry (the version whose source is this
LoggedModel, looked up once at load with a time limit) when a tracking server is set and
reachable; else the LoggedModel's name (when known) and id. A request with no rows is an
`MlflowException` (INVALID_PARAMETER_VALUE: the server's 400) saying what was expected.
Ensembles (`medxp.models.loading.EnsemblePyfunc`) answer the image column through `image_table` too.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.environment_variables import MLFLOW_DEFAULT_PREDICTION_DEVICE
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from PIL import Image, UnidentifiedImageError
from torch import nn

from medxp.data.images import pixels_for_spec
from medxp.errors import MedxpError
from medxp.models.factory import decide_labels

log = logging.getLogger(__name__)

IMAGE_COLUMN = "image"
FILE_KINDS = "a PNG, JPEG or DICOM file"
# Besides one `prob_<class>` column per class, first, in the model's class order.
OUTPUT_COLUMNS = ("label", "threshold", "model_name", "model_version", "error")
FLAVOR_NAME = "medxp"  # the MLmodel flavor medxp.tracking.mlflow_flavor writes
# The registry look-up at load never holds the server up longer than this.
REGISTRY_TIMEOUT_S = 10.0
BATCH_SIZE = 64
_IMAGE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class ModelFacts:
    """What serving reads inputs by, recorded with the model (the `medxp` flavor, else the model's attributes).

    Attributes:
        class_names: The output columns' classes, in order (empty: unknown, columns are numbered).
        input_shape: One input without the batch axis: (C, H, W) for images, (F,) for table rows.
        modality: `image` or `tabular`.
        feature_names: A table's feature columns, in the order the model takes them.
    """

    class_names: tuple[str, ...] = ()
    input_shape: tuple[int, ...] = ()
    modality: str = "image"
    feature_names: tuple[str, ...] = ()

    @classmethod
    def of(cls, model: nn.Module, recorded: dict | None = None) -> "ModelFacts":
        """The facts in `recorded` (the flavor's config), completed from the model's attributes."""
        recorded = recorded or {}

        def pick(key: str, default: Any) -> Any:
            return recorded.get(key) or getattr(model, key, None) or default

        return cls(tuple(str(name) for name in pick("class_names", ())),
                   tuple(int(size) for size in pick("input_shape", ())),
                   str(pick("modality", "image")),
                   tuple(str(name) for name in pick("feature_names", ())))

    def expected_tensor(self) -> str:
        shape = ", ".join(map(str, self.input_shape)) if self.input_shape else "..."
        what = "raw features" if self.modality == "tabular" else "pixels in [0, 1]"
        return f"a float32 array (N, {shape}) of {what}"

    def expected_request(self) -> str:
        if self.modality == "tabular":
            return f"{self.expected_tensor()}, or a DataFrame of those numbers"
        return (f"a column '{IMAGE_COLUMN}' of base64 strings, each {FILE_KINDS}, "
                f"or {self.expected_tensor()}")


@dataclass(frozen=True)
class ModelIdentity:
    """The `model_name` and `model_version` columns: the registered name and version, else the LoggedModel's."""

    name: str = ""
    version: str = ""


# ---------------------------------------------------------------- decoding one file


def file_bytes(value: Any, what: str = "image") -> bytes:
    """The file inside one request cell: a base64 string (a `data:...;base64,` prefix allowed), or raw bytes.

    Raises:
        MedxpError: not a string, empty, or not base64; the message names `what` and what was expected.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if not isinstance(value, str):
        shown = "nothing" if value is None or (isinstance(value, float) and math.isnan(value)) else \
            f"{type(value).__name__} {str(value)[:40]!r}"
        raise MedxpError(f"{what}: got {shown}; expected a base64 string of {FILE_KINDS}")
    text = value.strip()
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    text = "".join(text.split())
    if not text:
        raise MedxpError(f"{what}: empty string; expected a base64 string of {FILE_KINDS}")
    try:
        if "-" in text or "_" in text:  # the URL-safe alphabet
            return base64.b64decode(text.translate(str.maketrans("-_", "+/")), validate=True)
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise MedxpError(f"{what}: not base64 ({error}); expected a base64 string of {FILE_KINDS}") from None


def encode_file(path: str | Path) -> str:
    """A file's bytes as the base64 string a request's `image` column takes."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def is_dicom(data: bytes) -> bool:
    """Whether the bytes are a DICOM Part 10 file (the `DICM` marker after the 128-byte preamble)."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def open_image(data: bytes, what: str = "image") -> Image.Image:
    """The decoded image of a file's bytes: DICOM through pydicom (`dicom_image`), anything else through PIL.

    Raises:
        MedxpError: not an image, or a corrupt or truncated one; the message names `what`.
    """
    if is_dicom(data):
        return dicom_image(data, what)
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decodes now, so a truncated file fails here rather than later
        return image
    except _IMAGE_ERRORS as error:
        raise MedxpError(f"{what}: unreadable image ({error}); expected {FILE_KINDS}") from None


def decode_file(data: bytes, image_size: int, channels: int, what: str = "image") -> np.ndarray:
    """One file as a model input: (channels, size, size) float32 in [0, 1], preprocessed as evaluation does.

    Evaluation decodes a file with `medxp.data.images.pixels_for_spec` (to L or RGB, bilinear resize)
    into uint8 and feeds the model uint8 / 255 (`medxp.pipeline.model_inputs`); this is the same.

    Raises:
        MedxpError: an unreadable file (see `open_image`).
    """
    image = open_image(data, what)
    try:
        pixels = pixels_for_spec(image, image_size, channels)
    except _IMAGE_ERRORS as error:
        raise MedxpError(f"{what}: unreadable image ({error}); expected {FILE_KINDS}") from None
    finally:
        image.close()
    return pixels.astype(np.float32) / 255.0


def dicom_image(data: bytes, what: str = "image") -> Image.Image:
    """A single-frame DICOM image as an 8-bit PIL image (L, or RGB for colour files).

    Grey images: the modality LUT (rescale slope and intercept), then the file's first window
    (Window Center / Width, with its VOI LUT Function: LINEAR, LINEAR_EXACT or SIGMOID) or its VOI
    LUT, else the image's own minimum to maximum, to [0, 1]; MONOCHROME1 is inverted so that high
    values are bright, as in MONOCHROME2. Colour images are scaled by their stored bit depth.

    Raises:
        MedxpError: pydicom missing, an unreadable or truncated file, pixel data pydicom cannot
            decode, several frames, or neither grey nor RGB samples.
    """
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        raise MedxpError(f"{what}: a DICOM file, but pydicom is not installed; expected `pip install pydicom`") \
            from None
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        pixels = dataset.pixel_array
    except Exception as error:  # pydicom raises many kinds on a damaged file; each is this file's fault
        raise MedxpError(f"{what}: unreadable DICOM file ({type(error).__name__}: {error}); expected a complete "
                         "single-frame DICOM image whose pixel data pydicom can decode") from None
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise MedxpError(f"{what}: DICOM file with {frames} frames; expected a single-frame image")
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if samples == 3 and pixels.ndim == 3:
        bits = int(dataset.get("BitsStored", 8) or 8)
        return Image.fromarray(_to_8_bits(pixels.astype(np.float64) / (2 ** bits - 1)), mode="RGB")
    if samples != 1 or pixels.ndim != 2:
        raise MedxpError(f"{what}: DICOM pixels of shape {list(pixels.shape)} with {samples} samples per pixel; "
                         "expected one grey or RGB image")
    values = np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float64)
    window = _first_window(dataset)
    if window is not None:
        scaled = _apply_window(values, *window, str(dataset.get("VOILUTFunction", "LINEAR") or "LINEAR").upper())
    else:
        if "VOILUTSequence" in dataset:
            values = np.asarray(apply_voi_lut(values, dataset), dtype=np.float64)
        scaled = _stretch(values)
    if str(dataset.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        scaled = 1.0 - scaled
    return Image.fromarray(_to_8_bits(scaled), mode="L")


def _first_window(dataset: Any) -> tuple[float, float] | None:
    """(center, width) of the file's first window, None when it has none (or a width below 1)."""
    center, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    if center is None or width is None:
        return None

    def first(value: Any) -> float:
        if isinstance(value, (str, bytes)):
            return float(value)
        try:
            return float(value[0])  # several windows (a MultiValue): the first
        except TypeError:
            return float(value)

    try:
        center, width = first(center), first(width)
    except (TypeError, ValueError, IndexError):
        return None
    return (center, width) if width >= 1 else None


def _apply_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """The DICOM VOI window (PS3.3 C.11.2.1.2) to [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width == 1:
        return (values >= center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _stretch(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def _to_8_bits(scaled: np.ndarray) -> np.ndarray:
    return np.clip(np.round(scaled * 255.0), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- answering a request


def image_values(model_input: Any) -> pd.Series | None:
    """The request's `image` cells (with the input's row index), or None when the request is not images.

    Images: a DataFrame with a column `image`; `{"image": [...]}`; a list of `{"image": ...}` rows;
    a 1-d array or list of strings.

    Raises:
        MlflowException: a dict or DataFrame of strings without an `image` column (INVALID_PARAMETER_VALUE).
    """
    if isinstance(model_input, list) and model_input and all(isinstance(row, dict) for row in model_input):
        model_input = pd.DataFrame(model_input)
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN in model_input.columns:
            return model_input[IMAGE_COLUMN]
        text = [column for column, dtype in model_input.dtypes.items() if not pd.api.types.is_numeric_dtype(dtype)]
        if text and len(model_input):
            raise invalid(f"columns {[str(c) for c in model_input.columns][:8]} hold no '{IMAGE_COLUMN}' column; "
                          f"expected a column '{IMAGE_COLUMN}' of base64 strings, each {FILE_KINDS}")
        return None
    if isinstance(model_input, dict):
        if IMAGE_COLUMN not in model_input:
            raise invalid(f"keys {sorted(map(str, model_input))[:8]} hold no '{IMAGE_COLUMN}'; expected "
                          f"{{'{IMAGE_COLUMN}': [base64 strings, each {FILE_KINDS}]}}")
        values = np.asarray(model_input[IMAGE_COLUMN], dtype=object).reshape(-1)
        return pd.Series(list(values), dtype=object)
    if isinstance(model_input, pd.Series) and not pd.api.types.is_numeric_dtype(model_input.dtype):
        return model_input
    if isinstance(model_input, (list, tuple)) and model_input and all(isinstance(v, (str, bytes)) for v in model_input):
        return pd.Series(list(model_input), dtype=object)
    if isinstance(model_input, np.ndarray) and model_input.dtype.kind in "OUS" and model_input.ndim == 1:
        return pd.Series(list(model_input), dtype=object)
    return None


def invalid(message: str) -> MlflowException:
    """A bad request: MLflow's server answers it with a 400 and this message."""
    return MlflowException.invalid_parameter_value(message)


def empty_request(facts: ModelFacts) -> MlflowException:
    return invalid(f"empty request: no rows; expected at least one row: {facts.expected_request()}")


def image_table(model: nn.Module, images: pd.Series, facts: ModelFacts, identity: ModelIdentity,
                device: str | torch.device = "cpu") -> pd.DataFrame:
    """One answer row per image cell (see the module docstring); a cell that fails gets its error, NaN probabilities.

    Args:
        model: Pixels in [0, 1] in, probabilities out; its `threshold` / `positive_index` give the label.
        images: The request's `image` cells (base64 strings or raw bytes), with the index the answer keeps.
        facts: The model's input shape and class names.
        identity: The `model_name` and `model_version` columns.
        device: Where the model runs.

    Raises:
        MlflowException: no rows, or a model that does not record an image input shape.
    """
    if not len(images):
        raise empty_request(facts)
    if facts.modality != "image" or len(facts.input_shape) != 3 or facts.input_shape[1] != facts.input_shape[2]:
        raise invalid(f"this model takes {facts.expected_tensor()}, not image files; expected a medxp image model "
                      "(it records its (C, H, W) input shape)")
    channels, image_size = facts.input_shape[0], facts.input_shape[1]
    errors, decoded = [""] * len(images), {}
    for row, value in enumerate(images.tolist()):
        what = f"row {row} ('{IMAGE_COLUMN}')"
        try:
            decoded[row] = decode_file(file_bytes(value, what), image_size, channels, what)
        except MedxpError as error:
            errors[row] = str(error)
    rows = sorted(decoded)
    answered = probabilities_of(model, torch.from_numpy(np.stack([decoded[r] for r in rows])), device) if rows \
        else np.zeros((0, len(facts.class_names)), dtype=np.float32)
    width = answered.shape[1] if rows else len(facts.class_names)
    names = facts.class_names if len(facts.class_names) == width else tuple(str(i) for i in range(width))
    probabilities = np.full((len(images), width), np.nan)
    probabilities[rows] = answered
    labels = [""] * len(images)
    threshold, positive = getattr(model, "threshold", None), getattr(model, "positive_index", None)
    if rows:
        for row, index in zip(rows, decide_labels(torch.from_numpy(answered), threshold, positive).tolist()):
            labels[row] = names[int(index)]
    table = pd.DataFrame({f"prob_{name}": probabilities[:, column] for column, name in enumerate(names)},
                         index=images.index)
    table["label"] = labels
    table["threshold"] = _stored_threshold(threshold, positive)
    table["model_name"] = identity.name
    table["model_version"] = identity.version
    table["error"] = errors
    return table


def _stored_threshold(threshold: Any, positive: Any) -> float:
    value = float("nan") if threshold is None else float(threshold)
    return value if positive is not None and int(positive) >= 0 else float("nan")


def probabilities_of(model: nn.Module, inputs: torch.Tensor, device: str | torch.device = "cpu") -> np.ndarray:
    """The model's probabilities of float inputs, in batches, as float32 numpy."""
    with torch.no_grad():
        chunks = [model(chunk.to(device)).float().cpu() for chunk in inputs.split(BATCH_SIZE)]
    return torch.cat(chunks).numpy()


def tensor_answer(model: nn.Module, model_input: Any, facts: ModelFacts, device: str | torch.device = "cpu") -> Any:
    """Probabilities of float inputs: an array (a DataFrame, same index, for a DataFrame), as the PyTorch pyfunc gave.

    A DataFrame holding every feature name is reordered to the model's feature order; an (N, C*H*W)
    table of an image model is reshaped to (N, C, H, W).

    Raises:
        MlflowException: no rows, non-numbers, or a shape other than the model's (INVALID_PARAMETER_VALUE).
    """
    frame = model_input if isinstance(model_input, pd.DataFrame) else None
    if frame is not None and facts.feature_names and set(facts.feature_names) <= set(map(str, frame.columns)):
        frame = frame.rename(columns=str)[list(facts.feature_names)]
    try:
        if frame is not None:
            array = frame.to_numpy(dtype=np.float32)
        elif isinstance(model_input, torch.Tensor):
            array = model_input.detach().cpu().float().numpy()
        else:
            array = np.asarray(model_input, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise invalid(f"input is not numbers ({error}); expected {facts.expected_request()}") from None
    if array.size == 0:
        raise empty_request(facts)
    shape = facts.input_shape
    if shape and array.ndim == 2 and len(shape) > 1 and array.shape[1] == math.prod(shape):
        array = array.reshape(-1, *shape)
    if shape and tuple(array.shape[1:]) != tuple(shape):
        raise invalid(f"input of shape {list(array.shape)}; expected {facts.expected_request()}")
    probabilities = probabilities_of(model, torch.from_numpy(np.ascontiguousarray(array)), device)
    if frame is not None:
        return pd.DataFrame(probabilities, index=frame.index)
    return probabilities


def answer(model: nn.Module, model_input: Any, facts: ModelFacts, identity: ModelIdentity,
           device: str | torch.device = "cpu") -> Any:
    """A request's answer: `image_table` for image files, `tensor_answer` for numbers."""
    images = image_values(model_input)
    if images is not None:
        return image_table(model, images, facts, identity, device)
    if isinstance(model_input, pd.DataFrame) and model_input.empty:
        raise empty_request(facts)
    return tensor_answer(model, model_input, facts, device)


# ---------------------------------------------------------------- the model's identity


def model_identity(model_dir: str | Path, timeout: float = REGISTRY_TIMEOUT_S) -> ModelIdentity:
    """The registered name and version of the model saved in `model_dir`, else its LoggedModel name and id.

    Reads `run_id` and `model_id` from the folder's MLmodel and, when a tracking URI is set, asks the
    registry for the versions of that run whose source is this LoggedModel (an aliased version
    first, then the newest). Never raises: a missing file, an unreachable server or a look-up that
    takes longer than `timeout` seconds leaves the LoggedModel's id (or "").
    """
    try:
        meta = Model.load(str(Path(model_dir) / "MLmodel"))
    except Exception:  # not a model folder: nothing to name it by
        return ModelIdentity()
    model_id, run_id = meta.model_id or "", meta.run_id or ""
    fallback = ModelIdentity("", model_id)
    if not model_id or not mlflow.is_tracking_uri_set():
        return fallback
    found: dict[str, ModelIdentity] = {}

    def look_up() -> None:
        try:
            found["identity"] = _registered_identity(model_id, run_id)
        except Exception as error:  # unreachable, no permission, no registry: serving goes on without it
            log.info("model %s: registry look-up failed (%s); model_version is the LoggedModel id", model_id, error)

    worker = threading.Thread(target=look_up, name="medxp-registry-look-up", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        log.warning("model %s: the registry did not answer within %.0f s; model_version is the LoggedModel id",
                    model_id, timeout)
    return found.get("identity") or fallback


def _registered_identity(model_id: str, run_id: str) -> ModelIdentity:
    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"run_id = '{run_id}'") if run_id else []
    matching = [v for v in versions if _is_version_of(v, model_id)]
    if matching:
        best = max(matching, key=lambda v: (bool(getattr(v, "aliases", None)), int(v.creation_timestamp or 0),
                                            int(v.version)))
        return ModelIdentity(best.name, str(best.version))
    return ModelIdentity(client.get_logged_model(model_id).name or "", model_id)


def _is_version_of(version: Any, model_id: str) -> bool:
    return (getattr(version, "model_id", None) == model_id or (version.tags or {}).get("source.model_id") == model_id
            or str(version.source or "").rstrip("/").endswith(model_id))


# ---------------------------------------------------------------- MLflow's pyfunc loader


class ServedModel:
    """What `mlflow.pyfunc.load_model` wraps for a medxp model: `predict` answers files or tensors."""

    def __init__(self, model: nn.Module, facts: ModelFacts, identity: ModelIdentity,
                 device: str | torch.device = "cpu") -> None:
        self.model = model.eval()
        self.facts = facts
        self.identity = identity
        self.device = device

    def predict(self, model_input: Any, params: dict | None = None) -> Any:
        """See the module docstring: an `image` column gets the answer table, numbers get probabilities."""
        return answer(self.model, model_input, self.facts, self.identity, self.device)

    def get_raw_model(self) -> nn.Module:
        """The `nn.Module` (`PyFuncModel.get_raw_model()`)."""
        return self.model


def _load_pyfunc(path: str, model_config: dict | None = None) -> ServedModel:
    """MLflow's loader hook: the model folder at `path` (it has no `data` key, so MLflow passes the folder)."""
    model_dir = Path(path)
    meta = Model.load(str(model_dir / "MLmodel"))
    device = (model_config or {}).get("device") or MLFLOW_DEFAULT_PREDICTION_DEVICE.get() or \
        ("cuda" if torch.cuda.is_available() else "cpu")
    network = mlflow.pytorch.load_model(str(model_dir), map_location=device).eval()
    facts = ModelFacts.of(network, meta.flavors.get(FLAVOR_NAME))
    return ServedModel(network, facts, model_identity(model_dir), device)


def model_folder(inside: str | Path) -> Path | None:
    """The model folder (the one holding `MLmodel`) at or above `inside`, None when there is none within 3 levels."""
    path = Path(inside)
    for candidate in (path, *list(path.parents)[:3]):
        if (candidate / "MLmodel").is_file():
            return candidate
    return None


def identity_of_folder(inside: str | Path) -> ModelIdentity:
    """`model_identity` of the model folder at or above `inside` (an ensemble's member artifact)."""
    folder = model_folder(inside)
    return model_identity(folder) if folder is not None else ModelIdentity()


__all__ = ["IMAGE_COLUMN", "OUTPUT_COLUMNS", "ModelFacts", "ModelIdentity", "ServedModel", "answer", "decode_file",
           "dicom_image", "encode_file", "file_bytes", "image_table", "image_values", "model_identity",
           "tensor_answer"]
