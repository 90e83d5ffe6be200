"""The fetal-health study's multilayer perceptron for tabular data.

Hidden layers of `model.hidden_sizes` widths, each Linear -> ReLU -> dropout
(`model.dropout`, one value or one per hidden layer; empty: 0.1), then a linear head. Features
arrive standardised by the tabular data source (statistics fitted on the train split),
so the network has no normalisation of its own. On an image spec it flattens the image,
which keeps it usable as a baseline there too.
"""

from __future__ import annotations

from math import prod
from typing import Sequence

from torch import nn

from medxp.choices import modality_contract
from medxp.config import DatasetSpec, ModelConfig
from medxp.models.cnn import broadcast
from medxp.models.factory import dropout_rates, register_model


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU -> Dropout] per hidden size -> Linear.

    Args:
        in_features: Input width (feature count, or C*H*W of an image).
        num_classes: Output logits.
        hidden_sizes: Widths of the hidden layers.
        dropout: Dropout after each hidden layer.
    """

    def __init__(self, in_features: int, num_classes: int, hidden_sizes: Sequence[int],
                 dropout: Sequence[float]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size, rate in zip(hidden_sizes, dropout):
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True)]
            layers += [nn.Dropout(rate)] if rate > 0 else []
            width = size
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, inputs):
        return self.head(self.features(inputs))


def input_width(spec: DatasetSpec) -> int:
    """The size of one flattened input, from the modality's contract: the feature count of a table,
    channels x side x side of an image."""
    return prod(modality_contract(spec).input_shape(spec))


@register_model("mlp", modalities=("tabular", "image"), default_input_size=0, family="tabular",
                accepts=("hidden_sizes", "dropout"), default_dropout=(0.1,))
def mlp(model: ModelConfig, spec: DatasetSpec) -> nn.Module:
    """MLP with `model.hidden_sizes` and per-layer `model.dropout`."""
    hidden = list(model.hidden_sizes)
    dropout = broadcast(dropout_rates(model), len(hidden), "model.dropout", "hidden layers (model.hidden_sizes)") if hidden else []
    return MLP(input_width(spec), len(spec.class_names), hidden, dropout)
