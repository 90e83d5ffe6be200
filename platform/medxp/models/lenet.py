"""The OrganSMNIST study's LeNet and its wider "big" variant, with batch norm.

Two conv blocks (conv -> BN -> ReLU -> 2x2 max-pool; no conv bias in front of BN) and
three fully connected layers. As in the conv stacks, `model.dropout` (one rate, or one per
conv block) adds Dropout2d after each block's pooling (empty: none, as in the study);
`model.head_dropout` drops out before each fully connected layer after the first. The classic geometry (28 px, first conv padded by 2,
kernel 5) leaves a 5x5 map; an adaptive pool fixes the map at 5x5 so other image sizes
work too (at 28 px it changes nothing).
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from medxp.config import DatasetSpec, ModelConfig
from medxp.models.cnn import broadcast
from medxp.models.factory import dropout_rates, register_model

FEATURE_MAP_SIDE = 5
CONV_BLOCKS = 2


class LeNet(nn.Module):
    """LeNet-5 with batch norm.

    Args:
        in_channels: Image channels.
        num_classes: Output logits.
        maps: Feature maps of the two conv layers (6, 16 in the original).
        hidden: Widths of the two hidden fully connected layers (120, 84 in the original).
        kernel_size: Conv kernel side.
        head_dropout: Dropout before each fully connected layer after the first.
        dropout: Dropout2d after each of the two conv blocks (0: none).
    """

    def __init__(self, in_channels: int, num_classes: int, maps: tuple[int, int] = (6, 16),
                 hidden: tuple[int, int] = (120, 84), kernel_size: int = 5, head_dropout: float = 0.0,
                 dropout: Sequence[float] = (0.0, 0.0)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu_pool(in_channels, maps[0], kernel_size, padding=2, dropout=dropout[0]),
            *_conv_bn_relu_pool(maps[0], maps[1], kernel_size, padding=0, dropout=dropout[1]),
            nn.AdaptiveAvgPool2d(FEATURE_MAP_SIDE),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(maps[1] * FEATURE_MAP_SIDE ** 2, hidden[0], bias=False), nn.BatchNorm1d(hidden[0]),
            nn.ReLU(inplace=True), nn.Dropout(head_dropout),
            nn.Linear(hidden[0], hidden[1], bias=False), nn.BatchNorm1d(hidden[1]),
            nn.ReLU(inplace=True), nn.Dropout(head_dropout),
            nn.Linear(hidden[1], num_classes),
        )

    def forward(self, images):
        return self.head(self.features(images))


def _conv_bn_relu_pool(in_channels: int, out_channels: int, kernel_size: int, padding: int,
                       dropout: float) -> list[nn.Module]:
    layers = [nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=False),
              nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
    return layers + ([nn.Dropout2d(dropout)] if dropout > 0 else [])


def _lenet(model: ModelConfig, spec: DatasetSpec, maps: tuple[int, int], hidden: tuple[int, int]) -> LeNet:
    dropout = broadcast(dropout_rates(model), CONV_BLOCKS, "model.dropout", f"conv blocks of {model.name}")
    return LeNet(spec.channels, len(spec.class_names), maps, hidden, 5, model.head_dropout, dropout)


LENET_KEYS = ("dropout", "head_dropout")


@register_model("lenet", min_input_size=10, default_input_size=28, accepts=LENET_KEYS, default_dropout=(0.0,))
def lenet(model: ModelConfig, spec: DatasetSpec) -> nn.Module:
    """LeNet base: 6 and 16 maps, 120-84 fully connected."""
    return _lenet(model, spec, (6, 16), (120, 84))


@register_model("lenet_big", min_input_size=10, default_input_size=28, accepts=LENET_KEYS, default_dropout=(0.0,))
def lenet_big(model: ModelConfig, spec: DatasetSpec) -> nn.Module:
    """The study's big variant: 24 and 64 maps, kernel 5, 480-240 fully connected."""
    return _lenet(model, spec, (24, 64), (480, 240))
