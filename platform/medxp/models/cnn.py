"""The COVID study's CNN family: a stack of conv blocks, each conv -> (BN) -> ReLU -> max-pool -> (dropout).

Every per-layer setting (`model.channels`, `kernel_size`, `stride`, `padding`,
`batch_norm`, `dropout`) is a tuple in the config; a single value applies to every
layer (an empty `dropout` means 0.1 after every block). `channel_order` sorts the widths ascending or descending (the study compared
both), and `first_activation: false` leaves the first block without its ReLU.
`small_cnn` is this family under its old name: with the config defaults it is the
4-block 16-32-64-128 network the glaucoma project and its search space use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, TypeVar

from torch import nn

from medxp.config import DatasetSpec, ModelConfig
from medxp.errors import MedxpError
from medxp.models.factory import dropout_rates, register_model

T = TypeVar("T")


@dataclass(frozen=True)
class ConvLayer:
    """The settings of one conv block."""

    out_channels: int
    kernel_size: int
    stride: int
    padding: int
    batch_norm: bool
    dropout: float
    activation: bool


def broadcast(values: Sequence[T], layers: int, key: str, counted: str = "conv layers (model.channels)") -> list[T]:
    """One value per layer: a single value is repeated; otherwise there must be exactly `layers`.

    Raises:
        MedxpError: a count other than 1 or `layers` (the message names the key).
    """
    if len(values) == 1:
        return list(values) * layers
    if len(values) != layers:
        raise MedxpError(f"'{key}' has {len(values)} values for {layers} {counted}; "
                         f"expected 1 value or {layers}")
    return list(values)


def conv_layers(model: ModelConfig) -> list[ConvLayer]:
    """The per-layer settings of `model`, broadcast and ordered by `model.channel_order`."""
    if not model.channels:
        raise MedxpError("'model.channels' is empty; expected one width per conv layer")
    channels = list(model.channels)
    if model.channel_order != "as_given":
        channels.sort(reverse=model.channel_order == "descending")
    count = len(channels)
    kernels = broadcast(model.kernel_size, count, "model.kernel_size")
    paddings = [k // 2 if p < 0 else p for k, p in zip(kernels, broadcast(model.padding, count, "model.padding"))]
    return [ConvLayer(out, kernel, stride, padding, norm, dropout, activation=model.first_activation or i > 0)
            for i, (out, kernel, stride, padding, norm, dropout) in enumerate(zip(
                channels, kernels, broadcast(model.stride, count, "model.stride"), paddings,
                broadcast(model.batch_norm, count, "model.batch_norm"),
                broadcast(dropout_rates(model), count, "model.dropout")))]


def conv_block(in_channels: int, layer: ConvLayer) -> nn.Sequential:
    """Conv -> (BN) -> (ReLU) -> 2x2 max-pool -> (dropout); no conv bias in front of BN."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                         layer.padding, bias=not layer.batch_norm)]
    if layer.batch_norm:
        layers.append(nn.BatchNorm2d(layer.out_channels))
    if layer.activation:
        layers.append(nn.ReLU(inplace=True))
    # ceil_mode: a 1-pixel map stays 1 pixel instead of vanishing, so deep stacks accept small images.
    layers.append(nn.MaxPool2d(2, ceil_mode=True))
    if layer.dropout > 0:
        layers.append(nn.Dropout2d(layer.dropout))
    return nn.Sequential(*layers)


class ConvStackCNN(nn.Module):
    """Conv blocks, global average pooling, dropout, a linear head.

    Args:
        in_channels: Image channels.
        num_classes: Output logits.
        layers: One `ConvLayer` per block.
        head_dropout: Dropout before the linear head.
    """

    def __init__(self, in_channels: int, num_classes: int, layers: Sequence[ConvLayer],
                 head_dropout: float = 0.0) -> None:
        super().__init__()
        widths = [in_channels, *(layer.out_channels for layer in layers)]
        self.features = nn.Sequential(*(conv_block(widths[i], layer) for i, layer in enumerate(layers)))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(head_dropout),
                                  nn.Linear(widths[-1], num_classes))

    def forward(self, images):
        return self.head(self.features(images))


# The old name of the family's class, for code that imported it.
SmallCNN = ConvStackCNN


def _conv_stack(model: ModelConfig, spec: DatasetSpec) -> nn.Module:
    return ConvStackCNN(spec.channels, len(spec.class_names), conv_layers(model), model.head_dropout)


# The `model.*` keys the conv-stack family reads.
CONV_STACK_KEYS = ("channels", "kernel_size", "stride", "padding", "channel_order", "batch_norm", "dropout",
                   "first_activation", "head_dropout")


@register_model("covid_cnn", default_input_size=128, accepts=CONV_STACK_KEYS, default_dropout=(0.1,))
def covid_cnn(model: ModelConfig, spec: DatasetSpec) -> nn.Module:
    """The COVID study's configurable conv stack (per-layer settings from `model.*`)."""
    return _conv_stack(model, spec)


@register_model("small_cnn", default_input_size=64, accepts=CONV_STACK_KEYS, default_dropout=(0.1,))
def small_cnn(model: ModelConfig, spec: DatasetSpec) -> nn.Module:
    """The default: the same family; with the config defaults 4 blocks (16-32-64-128) with batch norm."""
    return _conv_stack(model, spec)
