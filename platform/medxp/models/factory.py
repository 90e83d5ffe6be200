"""`create_model(model_config, dataset_spec)`: the one way medxp builds a network."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from medxp.config import DatasetSpec, ModelConfig
from medxp.registry import Registry

ModelBuilder = Callable[[ModelConfig, DatasetSpec], nn.Module]
MODELS: Registry[ModelBuilder] = Registry("model")


def create_model(model: ModelConfig, spec: DatasetSpec) -> nn.Module:
    """Builds the registered architecture `model.name` for the spec's channels and classes.

    Raises:
        MedxpError: the name is not registered (the message lists the valid names).
    """
    _register_builtins()
    network = MODELS.get(model.name)(model, spec)
    freeze_backbone(network, model.unfrozen_layers)
    if model.channels_last:
        network = network.to(memory_format=torch.channels_last)
    return network


def freeze_backbone(network: nn.Module, unfrozen_layers: int) -> None:
    """Leaves only the classifier head and the last `unfrozen_layers` backbone layers trainable.

    A layer is a module holding weights of its own (conv, linear, ...); batch-norm layers
    are not counted and stay frozen whenever the backbone is partly frozen, as in the
    glaucoma study's fine-tuning. -1 trains everything; 0 trains the head only.
    """
    if unfrozen_layers < 0:
        return
    head = _head_modules(network)
    head_params = {id(p) for module in head for p in module.parameters()}
    layers = [m for m in network.modules() if _owns_weights(m) and not any(p in head_params for p in map(id, m.parameters(recurse=False)))]
    trainable = set(map(id, layers[len(layers) - unfrozen_layers:])) if unfrozen_layers else set()
    for module in network.modules():
        for param in module.parameters(recurse=False):
            param.requires_grad = id(param) in head_params or id(module) in trainable


def _owns_weights(module: nn.Module) -> bool:
    has_weights = any(True for _ in module.parameters(recurse=False))
    return has_weights and not isinstance(module, nn.modules.batchnorm._BatchNorm)


def _head_modules(network: nn.Module) -> list[nn.Module]:
    """The classifier: timm's `get_classifier()`, or a `head` attribute."""
    if hasattr(network, "get_classifier"):
        return [network.get_classifier()]
    return [network.head] if hasattr(network, "head") else []


def model_names() -> list[str]:
    """Every registered architecture name."""
    _register_builtins()
    return MODELS.names()


class InferenceModel(nn.Module):
    """What medxp logs and registers: images in [0, 1], (N, C, H, W) float32 -> class probabilities.

    Normalisation lives inside, so users of a registered model feed plain pixels.
    """

    def __init__(self, network: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.network((images - self.mean) / self.std), dim=1)


def _register_builtins() -> None:
    # Importing the architecture modules fills the registry; done lazily so that
    # `import medxp.models` stays cheap.
    from medxp.models import backbones, cnn  # noqa: F401
