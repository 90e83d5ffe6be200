"""Small CNNs of the COVID study's shape: a conv stack with optional batch norm and dropout."""

from __future__ import annotations

from torch import nn

from medxp.config import DatasetSpec, ModelConfig
from medxp.models.factory import MODELS


def conv_block(in_channels: int, out_channels: int, kernel_size: int, batch_norm: bool, dropout: float) -> nn.Sequential:
    """Conv -> (BN) -> ReLU -> 2x2 max-pool -> (dropout); no conv bias in front of BN."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                                         bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """Conv blocks of `channels` widths, global average pooling, dropout, a linear head."""

    def __init__(self, in_channels: int, num_classes: int, channels: tuple[int, ...], kernel_size: int = 3,
                 batch_norm: bool = True, dropout: float = 0.0, head_dropout: float = 0.0) -> None:
        super().__init__()
        widths = (in_channels, *channels)
        self.features = nn.Sequential(*(conv_block(widths[i], widths[i + 1], kernel_size, batch_norm, dropout)
                                        for i in range(len(channels))))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(head_dropout),
                                  nn.Linear(widths[-1], num_classes))

    def forward(self, images):
        return self.head(self.features(images))


@MODELS.register("small_cnn")
def small_cnn(model: ModelConfig, spec: DatasetSpec) -> nn.Module:
    """The default: 4 blocks (16-32-64-128) with batch norm, fast on CPU."""
    return SmallCNN(spec.channels, len(spec.class_names), model.channels, model.kernel_size,
                    model.batch_norm, model.dropout, model.head_dropout)
