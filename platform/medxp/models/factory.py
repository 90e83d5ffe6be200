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
    if model.channels_last:
        network = network.to(memory_format=torch.channels_last)
    return network


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
