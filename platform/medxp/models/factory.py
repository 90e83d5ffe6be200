"""`create_model(model_config, dataset_spec)`: the one way medxp builds a network.

Architectures register themselves with `@register_model(name, ...)`, which files the
builder in `MODELS` and records what inputs it takes and which `model.*` keys it reads
(`ModelInfo`). `timm/<name>` builds any timm model without registering it.
`unfrozen_layers` is defined here, once.

A `model.*` key means the same thing for every architecture that reads it. A tuning knob
(`TUNING_KEYS`: dropout, head settings, weights) set to a non-default value for an
architecture that does not read it is an error naming the model and the key; another
architecture's layer geometry (`channels`, `kernel_size`, `hidden_sizes`, ...), which project
files set for their default model, is left unused and logged.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from medxp.choices import modality_contract
from medxp.config import DatasetSpec, ModelConfig
from medxp.errors import MedxpError
from medxp.models.estimator import ESTIMATOR_TRAIN_KEYS
from medxp.named import Registry

log = logging.getLogger(__name__)

ModelBuilder = Callable[[ModelConfig, DatasetSpec], nn.Module]
MODELS: Registry[ModelBuilder] = Registry("model")
TIMM_PREFIX = "timm/"
# Read for every architecture by `create_model` itself.
COMMON_KEYS = ("name", "unfrozen_layers", "channels_last")
# Knobs a user expects to act on any model: refused (not ignored) where the model cannot apply them.
TUNING_KEYS = ("dropout", "head_dropout", "head_pooling", "head_batch_norm", "pretrained", "pretrained_file")
# `model.pretrained` values that ask for nothing a model without ImageNet weights cannot give.
NO_WEIGHTS_NEEDED = ("auto", False)


@dataclass(frozen=True)
class ModelInfo:
    """What a registered architecture accepts.

    Attributes:
        modalities: Dataset modalities it can read (`image`, `tabular`).
        min_input_size: Smallest image side it accepts (pooling stages must not run out of pixels).
        default_input_size: The side it was designed for (its paper's or pretrained weights' size).
        family: A short group name for tables (`seed`, `timm`, `tabular`).
        accepts: The `model.*` keys it reads besides `COMMON_KEYS`.
        default_dropout: What an empty `model.dropout` means for it (one rate, or one per layer).
        trainer: `gradient` (the epoch loop, `medxp.training.trainer`) or `estimator` (one fit on the
            train split, `medxp.training.estimator`; the model is a `models.estimator.EstimatorModel`).
    """

    modalities: tuple[str, ...] = ("image",)
    min_input_size: int = 1
    default_input_size: int = 224
    family: str = "seed"
    accepts: tuple[str, ...] = ()
    default_dropout: tuple[float, ...] = ()
    trainer: str = "gradient"

    def reads(self, key: str) -> bool:
        """Whether the architecture uses `model.<key>` (short name, without `model.`)."""
        return key in COMMON_KEYS or key in self.accepts

    def reads_train(self, key: str) -> bool:
        """Whether its training uses `train.<key>`: the epoch loop reads them all, an estimator fit only
        `ESTIMATOR_TRAIN_KEYS`."""
        return self.trainer == "gradient" or key in ESTIMATOR_TRAIN_KEYS


MODEL_INFO: dict[str, ModelInfo] = {}


def register_model(name: str, **info) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: files a builder under `name` in `MODELS` with its `ModelInfo(**info)`."""

    def add(builder: ModelBuilder) -> ModelBuilder:
        MODELS.register(name)(builder)
        MODEL_INFO[name] = ModelInfo(**info)
        return builder

    return add


def create_model(model: ModelConfig, spec: DatasetSpec) -> nn.Module:
    """Builds the architecture `model.name` for the spec's input and classes.

    Args:
        model: Architecture name and knobs (`unfrozen_layers`, pretrained weights, head).
        spec: The dataset contract: modality, channels, image size or feature columns, classes.

    Returns:
        The network, with `unfrozen_layers` applied; pretrained timm backbones carry
        `weights_source` and `weights_sha256` attributes.

    Raises:
        MedxpError: an unknown name (the message lists the valid ones), a model that cannot
            read the spec's modality, a tuning knob the model cannot apply (`TUNING_KEYS`),
            or pretrained weights that cannot be found.
    """
    builder = _builder(model.name)
    info = model_info(model.name)
    if spec.modality not in info.modalities:
        fitting = [name for name, entry in MODEL_INFO.items() if spec.modality in entry.modalities]
        raise MedxpError(f"model.name = '{model.name}' reads {'/'.join(info.modalities)} data but dataset "
                         f"'{spec.name}' is {spec.modality}; expected one of: {', '.join(sorted(fitting))}")
    check_settings(model)
    network = freeze_backbone(builder(model, spec), model.unfrozen_layers)
    if model.channels_last and modality_contract(spec).images:
        network = network.to(memory_format=torch.channels_last)
    return network


def unused_settings(model: ModelConfig) -> dict[str, Any]:
    """`{key: value}` of the `model.*` keys set away from their defaults that `model.name` does not read."""
    info = model_info(model.name)
    unused = {}
    for item in dataclasses.fields(ModelConfig):
        value = getattr(model, item.name)
        if info.reads(item.name) or value == item.default:
            continue
        if item.name == "pretrained" and value in NO_WEIGHTS_NEEDED:
            continue  # random init is what such a model does anyway
        unused[item.name] = value
    return unused


def check_settings(model: ModelConfig) -> None:
    """Refuses a tuning knob `model.name` cannot apply; logs the other keys it leaves unused.

    Raises:
        MedxpError: a key of `TUNING_KEYS` set to a non-default value that the model does not
            read; the message names model and key and lists the models that read it.
    """
    unused = unused_settings(model)
    for key, value in unused.items():
        if key in TUNING_KEYS:
            raise MedxpError(f"model.{key} = {_plain(value)!r}: model '{model.name}' does not read it, so it would "
                             f"do nothing; {KEY_HINTS.get(key, 'leave it at its default')} "
                             f"(models that read it: {', '.join(models_reading(key))})")
    if unused:
        log.info("model '%s' does not use %s", model.name,
                 ", ".join(f"model.{key}={_plain(value)}" for key, value in unused.items()))


KEY_HINTS = {
    "dropout": "timm backbones take their dropout before the classifier from model.head_dropout",
    "head_dropout": "it has no dropout of its own before the classifier (vgg16_*: the study's fixed 0.7/0.5; "
                    "mlp: model.dropout after each hidden layer)",
    "pretrained": "it has no ImageNet weights; set model.pretrained to auto or false",
}


def models_reading(key: str) -> list[str]:
    """The registered architectures that read `model.<key>`."""
    return [name for name in model_names() if MODEL_INFO[name].reads(key)]


def dropout_rates(model: ModelConfig) -> tuple[float, ...]:
    """`model.dropout`, or the architecture's `default_dropout` when it is empty."""
    return tuple(model.dropout) or model_info(model.name).default_dropout


def applied_settings(model: ModelConfig) -> dict[str, Any]:
    """The tuning knobs `model.name` reads, with their effective values (for model cards)."""
    info = model_info(model.name)
    settings = {key: getattr(model, key) for key in TUNING_KEYS if info.reads(key)}
    if "dropout" in settings:
        settings["dropout"] = dropout_rates(model)
    return settings


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def model_info(name: str) -> ModelInfo:
    """The `ModelInfo` of a registered name or a `timm/<name>`."""
    _register_builtins()
    if name.startswith(TIMM_PREFIX):
        from medxp.models.backbones import timm_model_info

        return timm_model_info(name.removeprefix(TIMM_PREFIX))
    MODELS.get(name)  # raises, listing the valid names
    return MODEL_INFO[name]


def _builder(name: str) -> ModelBuilder:
    _register_builtins()
    if name.startswith(TIMM_PREFIX):
        from medxp.models.backbones import timm_builder

        return timm_builder(name.removeprefix(TIMM_PREFIX))
    return MODELS.get(name)


def freeze_backbone(network: nn.Module, unfrozen_layers: int) -> nn.Module:
    """Leaves only the classifier head and the last `unfrozen_layers` backbone layers trainable.

    A layer is a module holding weights of its own (conv, linear, ...); batch-norm layers
    are not counted. Whenever the backbone is partly frozen its 2-d batch-norm layers are
    frozen too, weights and running statistics alike (they become timm's
    `FrozenBatchNorm2d`, which has no parameters and ignores train mode), as in the glaucoma
    study's fine-tuning. -1 trains everything; 0 trains the head only.

    Args:
        network: A model whose classifier is `get_classifier()` or a `head` attribute.
        unfrozen_layers: Trailing backbone layers to train; -1 for all, 0 for the head only.

    Returns:
        The network (its batch-norm layers replaced when partly frozen).
    """
    if unfrozen_layers < 0:
        # Also undoes an earlier partial freeze (staged fine-tuning); batch-norm layers frozen
        # by it stay frozen.
        for param in network.parameters():
            param.requires_grad = True
        return network
    from timm.layers import freeze_batch_norm_2d  # timm is heavy to import; only needed here

    network = freeze_batch_norm_2d(network)
    head_params = {id(p) for module in _head_modules(network) for p in module.parameters()}
    layers = [m for m in network.modules()
              if _owns_weights(m) and not any(id(p) in head_params for p in m.parameters(recurse=False))]
    trainable = {id(m) for m in layers[len(layers) - unfrozen_layers:]} if unfrozen_layers else set()
    for module in network.modules():
        for param in module.parameters(recurse=False):
            param.requires_grad = id(param) in head_params or id(module) in trainable
    return network


def _owns_weights(module: nn.Module) -> bool:
    has_weights = any(True for _ in module.parameters(recurse=False))
    return has_weights and not isinstance(module, nn.modules.batchnorm._BatchNorm)


def _head_modules(network: nn.Module) -> list[nn.Module]:
    """The classifier: a `head` attribute, or timm's `get_classifier()`."""
    if isinstance(getattr(network, "head", None), nn.Module):
        return [network.head]
    if hasattr(network, "get_classifier"):
        return [network.get_classifier()]
    return []


def model_names() -> list[str]:
    """Every registered architecture name."""
    _register_builtins()
    return MODELS.names()


class InferenceModel(nn.Module):
    """What medxp logs and registers: raw inputs in, class probabilities out.

    Images: (N, C, H, W) float32 pixels in [0, 1]; tabular data: (N, F) float32 raw
    features. `mean` and `std` (per channel, or per feature) are applied inside, so users
    of a registered model feed plain pixels or raw features.

    The decision rule fitted on the validation split travels with the model as buffers:
    `temperature` divides the logits inside `forward` (1: not calibrated), and binary
    models carry `threshold` (on the probability of class `positive_index`) for
    `predict_label`. Without a threshold (`threshold` NaN, `positive_index` -1)
    `predict_label` is the arg-max. `operating_point` names the rule that chose the
    threshold and `threshold_split` the split it was chosen on.

    What serving needs to read files without the project config travels as plain attributes:
    `class_names` (the output columns, in order), `input_shape` (one input without the batch
    axis: (C, H, W) or (F,)), `modality` (`image`, `tabular`) and `feature_names` (a table's
    columns, in order). Models pickled before these existed lack them; read them with getattr.
    """

    def __init__(self, network: nn.Module, mean, std, *, temperature: float = 1.0,
                 threshold: float | None = None, positive_index: int | None = None,
                 operating_point: str = "argmax", threshold_split: str = "valid",
                 class_names: Sequence[str] = (), input_shape: Sequence[int] = (), modality: str = "image",
                 feature_names: Sequence[str] = ()) -> None:
        super().__init__()
        if (threshold is None) != (positive_index is None):
            raise MedxpError("InferenceModel: a threshold needs its positive_index (and the reverse); "
                             f"got threshold={threshold!r}, positive_index={positive_index!r}")
        if not temperature > 0:
            raise MedxpError(f"InferenceModel: temperature must be > 0, got {temperature!r}")
        self.network = network
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).flatten())
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).flatten())
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        # float64: the threshold is one of the validation scores, kept exactly as it was chosen and logged.
        self.register_buffer("threshold", torch.tensor(float("nan") if threshold is None else float(threshold),
                                                       dtype=torch.float64))
        self.register_buffer("positive_index", torch.tensor(-1 if positive_index is None else int(positive_index)))
        self.operating_point = operating_point if threshold is not None else "argmax"
        self.threshold_split = threshold_split
        self.class_names = tuple(str(name) for name in class_names)
        self.input_shape = tuple(int(size) for size in input_shape)
        self.modality = modality
        self.feature_names = tuple(str(name) for name in feature_names)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (inputs.ndim - 2)
        logits = self.network((inputs - self.mean.view(shape)) / self.std.view(shape))
        # Models logged before calibration existed have no temperature buffer.
        temperature = getattr(self, "temperature", None)
        return torch.softmax(logits if temperature is None else logits / temperature, dim=1)

    def predict_label(self, inputs: torch.Tensor) -> torch.Tensor:
        """Class labels: positive where p(positive) >= `threshold`, else the other class; arg-max without one."""
        return decide_labels(self(inputs), getattr(self, "threshold", None), getattr(self, "positive_index", None))


def decide_labels(probabilities: torch.Tensor, threshold: Any, positive_index: Any) -> torch.Tensor:
    """Class indices at a stored operating point: positive where p(positive) >= `threshold`, else the other class.

    Args:
        probabilities: (N, classes) class probabilities.
        threshold: The binary threshold (a tensor or a number); None or NaN: arg-max.
        positive_index: The positive class's column; None or negative: arg-max.
    """
    threshold = float("nan") if threshold is None else float(threshold)
    positive = -1 if positive_index is None else int(positive_index)
    if math.isnan(threshold) or positive < 0:
        return probabilities.argmax(dim=1)
    return torch.where(probabilities[:, positive].double() >= threshold, positive, 1 - positive)


def _register_builtins() -> None:
    # Importing the architecture modules fills the registry; done lazily so that
    # `import medxp.models` stays cheap.
    from medxp.models import backbones, cnn, gradient_boosting, lenet, mlp, vgg  # noqa: F401
