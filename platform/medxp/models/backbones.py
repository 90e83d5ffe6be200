"""timm backbones by name (EfficientNet, ResNet, MobileNet, ...), with a new classification head."""

from __future__ import annotations

import timm
from torch import nn

from medxp.config import DatasetSpec, ModelConfig
from medxp.errors import MedxpError
from medxp.models.factory import MODELS

TIMM_BACKBONES = (
    "resnet18",
    "resnet50",
    "tf_efficientnet_lite0",
    "efficientnet_b0",
    "mobilenetv2_100",
    "densenet121",
)


def create_timm_backbone(name: str, model: ModelConfig, spec: DatasetSpec) -> nn.Module:
    """A timm model with `num_classes` and `in_chans` from the spec.

    Pretrained weights come from timm's hub when `model.pretrained` is set; offline this
    fails with a message saying so.
    """
    try:
        return timm.create_model(name, pretrained=model.pretrained, num_classes=len(spec.class_names),
                                 in_chans=spec.channels, drop_rate=model.head_dropout)
    except (OSError, RuntimeError) as error:
        if not model.pretrained:
            raise
        raise MedxpError(f"model '{name}': pretrained weights could not be loaded from the hub ({error}); "
                         f"set model.pretrained=false or go online") from None


def _register(name: str) -> None:
    MODELS.register(name)(lambda model, spec: create_timm_backbone(name, model, spec))


for _name in TIMM_BACKBONES:
    _register(_name)
