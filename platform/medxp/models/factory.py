"""`create_model(model_config, dataset_spec)`: the one way medxp builds a network.

Architectures register themselves with `@register_model(name, ...)`, which files the
builder in `MODELS` and records what inputs it takes (`ModelInfo`). `timm/<name>` builds
any timm model without registering it. `unfrozen_layers` is defined here, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from medxp.config import DatasetSpec, ModelConfig
from medxp.errors import MedxpError
from medxp.registry import Registry

ModelBuilder = Callable[[ModelConfig, DatasetSpec], nn.Module]
MODELS: Registry[ModelBuilder] = Registry("model")
TIMM_PREFIX = "timm/"


@dataclass(frozen=True)
class ModelInfo:
    """What a registered architecture accepts.

    Attributes:
        modalities: Dataset modalities it can read (`image`, `tabular`).
        min_input_size: Smallest image side it accepts (pooling stages must not run out of pixels).
        default_input_size: The side it was designed for (its paper's or pretrained weights' size).
        family: A short group name for tables (`seed`, `timm`, `tabular`).
    """

    modalities: tuple[str, ...] = ("image",)
    min_input_size: int = 1
    default_input_size: int = 224
    family: str = "seed"


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
            read the spec's modality, or pretrained weights that cannot be found.
    """
    builder = _builder(model.name)
    info = model_info(model.name)
    if spec.modality not in info.modalities:
        fitting = [name for name, entry in MODEL_INFO.items() if spec.modality in entry.modalities]
        raise MedxpError(f"model.name = '{model.name}' reads {'/'.join(info.modalities)} data but dataset "
                         f"'{spec.name}' is {spec.modality}; expected one of: {', '.join(sorted(fitting))}")
    network = freeze_backbone(builder(model, spec), model.unfrozen_layers)
    if model.channels_last and spec.modality == "image":
        network = network.to(memory_format=torch.channels_last)
    return network


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
    """

    def __init__(self, network: nn.Module, mean, std) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).flatten())
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).flatten())

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (inputs.ndim - 2)
        return torch.softmax(self.network((inputs - self.mean.view(shape)) / self.std.view(shape)), dim=1)


def _register_builtins() -> None:
    # Importing the architecture modules fills the registry; done lazily so that
    # `import medxp.models` stays cheap.
    from medxp.models import backbones, cnn, lenet, mlp, vgg  # noqa: F401
