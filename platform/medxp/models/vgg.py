"""The pneumonia study's VGG16-style network with depthwise-separable convolutions, and its plain twin.

Four blocks, each ending in a 2x2 max-pool: two plain 3x3 convs (64), then two
depthwise-separable convs (128), then three (256) and three (512) depthwise-separable
convs with batch norm after all but the last conv of each of the two deeper blocks.
The classifier flattens the last map and runs 1024 -> dropout 0.7 -> 512 -> dropout
0.5 -> classes. `vgg16_plain` is the same network with every separable conv replaced
by a plain 3x3 conv, for comparing size and speed.

As in the conv stacks, `model.dropout` (one rate, or one per block) adds Dropout2d after
each block's pooling (empty: none, as in the study). The classifier's 0.7 and 0.5 are the
study's and fixed (`model.head_dropout` is not read).
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from medxp.config import DatasetSpec, ModelConfig
from medxp.models.cnn import broadcast
from medxp.models.factory import dropout_rates, register_model

# (width, convs, separable, batch norm after all but the last conv) per block.
BLOCKS = ((64, 2, False, False), (128, 2, True, False), (256, 3, True, True), (512, 3, True, True))
POOLING_STAGES = len(BLOCKS)


class SeparableConv2d(nn.Sequential):
    """A depthwise 3x3 conv followed by a pointwise 1x1 conv (Keras' SeparableConv2D)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
                         nn.Conv2d(in_channels, out_channels, 1, bias=bias))


class VGG16DWSep(nn.Module):
    """VGG16-style classifier; `separable=False` gives the plain-conv twin.

    Args:
        in_channels: Image channels.
        num_classes: Output logits.
        image_size: Input side; the flattened map is (image_size / 16)^2 * 512.
        separable: Depthwise-separable convs from the second block on.
        dropout: Dropout2d after each block's pooling, one rate per block (0: none).
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int, separable: bool = True,
                 dropout: Sequence[float] = (0.0,) * POOLING_STAGES) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for (out, convs, block_separable, batch_norm), rate in zip(BLOCKS, dropout):
            for index in range(convs):
                with_norm = batch_norm and index < convs - 1
                layers.append(_conv(width, out, separable and block_separable, bias=not with_norm))
                layers += [nn.BatchNorm2d(out)] if with_norm else []
                layers.append(nn.ReLU(inplace=True))
                width = out
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
            layers += [nn.Dropout2d(rate)] if rate > 0 else []
        self.features = nn.Sequential(*layers)
        side = feature_map_side(image_size)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(width * side * side, 1024), nn.ReLU(inplace=True), nn.Dropout(0.7),
            nn.Linear(1024, 512), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(512, num_classes),
        )

    def forward(self, images):
        return self.head(self.features(images))


def feature_map_side(image_size: int) -> int:
    """Side of the last feature map: four ceil-mode 2x2 poolings."""
    side = image_size
    for _ in range(POOLING_STAGES):
        side = -(-side // 2)
    return side


def _conv(in_channels: int, out_channels: int, separable: bool, bias: bool) -> nn.Module:
    if separable:
        return SeparableConv2d(in_channels, out_channels, bias=bias)
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)


def _block_dropout(model: ModelConfig) -> list[float]:
    return broadcast(dropout_rates(model), POOLING_STAGES, "model.dropout", f"conv blocks of {model.name}")


@register_model("vgg16_dwsep", min_input_size=16, default_input_size=224, accepts=("dropout",),
                default_dropout=(0.0,))
def vgg16_dwsep(model: ModelConfig, spec: DatasetSpec) -> nn.Module:
    """VGG16 with depthwise-separable convolutions (the pneumonia study's VGG16DWSep)."""
    return VGG16DWSep(spec.channels, len(spec.class_names), spec.image_size, True, _block_dropout(model))


@register_model("vgg16_plain", min_input_size=16, default_input_size=224, accepts=("dropout",),
                default_dropout=(0.0,))
def vgg16_plain(model: ModelConfig, spec: DatasetSpec) -> nn.Module:
    """The same network with plain 3x3 convolutions throughout."""
    return VGG16DWSep(spec.channels, len(spec.class_names), spec.image_size, False, _block_dropout(model))
