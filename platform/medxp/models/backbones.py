"""timm backbones by name (EfficientNet, ResNet, Inception, MobileNet, DenseNet, ConvNeXt) with a new head.

The head follows the glaucoma study: global pooling (`model.head_pooling`: avg or max)
-> batch norm (`model.head_batch_norm`) -> dropout (`model.head_dropout`) -> linear; that
dropout is where timm's own `drop_rate` would act, so `model.dropout` is not read.
`model.pretrained` picks the weights, found through `medxp.models.pretrained` (offline
sources first): `auto` (the default) loads ImageNet weights when some source has them and
otherwise starts from random init with a warning and says so in `weights_source`; `true`
requires them; `false` never loads them. Grey images get the first conv's RGB weights summed (timm's
`adapt_input_conv`), whichever source the weights came from. The architectures listed
in `TIMM_BACKBONES` are registered by their timm names; any other timm model is
reachable as `timm/<name>`.
"""

from __future__ import annotations

from typing import Callable

import logging

import timm
from timm.models import load_pretrained
from torch import nn

from medxp.choices import modality_contract
from medxp.config import DatasetSpec, ExperimentConfig, ModelConfig
from medxp.errors import MedxpError
from medxp.models.factory import MODEL_INFO, ModelBuilder, ModelInfo, register_model
from medxp.models.pretrained import find_weights, hub_allowed, resolve_weights, weights_available

log = logging.getLogger(__name__)

TIMM_BACKBONES = (
    "efficientnet_b0",
    *(f"tf_efficientnet_b{i}" for i in range(8)),
    *(f"tf_efficientnet_lite{i}" for i in range(5)),
    "resnet18", "resnet50", "resnet101", "resnet152",
    "inception_v3",
    "mobilenetv2_100", "mobilenetv3_large_100", "mobilenetv3_small_100",
    "densenet121", "densenet169", "densenet201",
    "convnext_nano", "convnext_tiny", "convnext_small", "convnext_base",
)
# Smallest side the stems and pooling stages accept; Inception-v3's unpadded stem needs 75 px.
MIN_INPUT_SIZE = {"inception_v3": 75}
DEFAULT_MIN_INPUT_SIZE = 32
# The `model.*` keys a timm backbone with medxp's head reads.
TIMM_KEYS = ("head_dropout", "head_pooling", "head_batch_norm", "pretrained", "pretrained_file")


class TimmClassifier(nn.Module):
    """A timm feature extractor (pooled features) with medxp's classification head.

    Attributes:
        backbone: The timm model built with `num_classes=0` (it returns pooled features).
        head: (BatchNorm1d) -> Dropout -> Linear.
        pretrained_cfg: The backbone's timm pretrained config (mean, std, input size).
        weights_source: Where pretrained weights came from, or `random-init` (with the reason when
            `model.pretrained = auto` found none).
        weights_sha256: SHA-256 of the weight file, or empty for random init.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, head_dropout: float, head_batch_norm: bool) -> None:
        super().__init__()
        self.backbone = backbone
        # Pooled width: MobileNetV3 widens after pooling (`head_hidden_size`), the others do not.
        features = getattr(backbone, "head_hidden_size", None) or backbone.num_features
        norm: list[nn.Module] = [nn.BatchNorm1d(features)] if head_batch_norm else []
        self.head = nn.Sequential(*norm, nn.Dropout(head_dropout), nn.Linear(features, num_classes))
        self.pretrained_cfg = dict(backbone.pretrained_cfg)
        self.weights_source = "random-init"
        self.weights_sha256 = ""

    def forward(self, images):
        return self.head(self.backbone(images))


def create_timm_classifier(name: str, model: ModelConfig, spec: DatasetSpec) -> TimmClassifier:
    """The timm architecture `name` for the spec's channels and classes, pretrained when asked.

    Raises:
        MedxpError: `name` is not a timm model, or pretrained weights cannot be found.
    """
    if not timm.is_model(name):
        raise MedxpError(f"model.name = 'timm/{name}': timm has no model '{name}'; expected a name from "
                         f"timm.list_models() (registered: {', '.join(TIMM_BACKBONES)})")
    backbone = timm.create_model(name, pretrained=False, num_classes=0, in_chans=spec.channels,
                                 global_pool=model.head_pooling)
    network = TimmClassifier(backbone, len(spec.class_names), model.head_dropout, model.head_batch_norm)
    if model.pretrained is False:
        return network
    keys = backbone.state_dict().keys()
    if model.pretrained is True:
        weights = resolve_weights(name, keys, model.pretrained_file)
    else:
        weights, tried = find_weights(name, keys, model.pretrained_file, allow_download=hub_allowed(name),
                                      hub_skipped="not tried: HF_HUB_OFFLINE is set or the hub does not answer")
        if weights is None:
            log.warning("model '%s': no ImageNet weights found (tried: %s); training from RANDOM INIT. "
                        "Set model.pretrained = true to require them, or false to silence this.",
                        name, "; ".join(tried))
            network.weights_source = f"random-init (no ImageNet weights found for {name})"
            return network
    # timm's loader adapts the first conv to `in_chans` (grey: RGB weights summed) and drops the classifier.
    load_pretrained(backbone, pretrained_cfg={**backbone.pretrained_cfg, "state_dict": weights.state_dict},
                    num_classes=0, in_chans=spec.channels)
    network.weights_source, network.weights_sha256 = weights.source, weights.sha256
    return network


def uses_imagenet_weights(model: ModelConfig) -> bool:
    """Whether `create_model(model, ...)` will load ImageNet weights (auto: whether a source has them)."""
    name = model.name.removeprefix("timm/")
    if model.pretrained is False or not timm.is_model(name):
        return False
    if model.pretrained is True:
        return True
    return weights_available(name, model.pretrained_file, allow_download=hub_allowed(name))


def timm_builder(name: str) -> ModelBuilder:
    """A builder for any timm architecture (the `timm/<name>` form)."""
    return lambda model, spec: create_timm_classifier(name, model, spec)


def timm_model_info(name: str) -> ModelInfo:
    """Input limits of a timm architecture: its pretrained input size, and the smallest side it takes."""
    if name in MODEL_INFO:
        return MODEL_INFO[name]
    config = timm.get_pretrained_cfg(name)
    size = config.input_size[-1] if config is not None and config.input_size else 224
    return ModelInfo(min_input_size=MIN_INPUT_SIZE.get(name, DEFAULT_MIN_INPUT_SIZE), default_input_size=size,
                     family="timm", accepts=TIMM_KEYS)


def pretrained_input(config: ExperimentConfig, use_input_size: bool = False) -> ExperimentConfig:
    """The config with the dataset's normalisation (and optionally image size) taken from the backbone.

    Pretrained weights expect the inputs they were trained on: their mean and std (grey
    images: the average over RGB, matching the summed first conv), and, when
    `use_input_size`, their input size. Configs of models without pretrained weights come
    back unchanged, and so do those of `model.pretrained = auto` when no weights are found.
    """
    name = config.model.name.removeprefix("timm/")
    if not modality_contract(config.dataset).images or not uses_imagenet_weights(config.model):
        return config
    pretrained = timm.get_pretrained_cfg(name)
    if pretrained is None:
        return config
    mean, std = _per_channel(pretrained.mean, config.dataset.channels), _per_channel(pretrained.std,
                                                                                    config.dataset.channels)
    overrides = {"dataset.mean": mean, "dataset.std": std}
    if use_input_size:
        overrides["dataset.image_size"] = pretrained.input_size[-1]
    return config.replace(overrides, origin=f"pretrained config of {name}")


def _per_channel(values: tuple[float, ...], channels: int) -> list[float]:
    if channels == len(values):
        return list(values)
    average = sum(values) / len(values)
    return [average] * channels


def _register(name: str) -> None:
    builder: Callable = timm_builder(name)
    builder.__doc__ = f"timm '{name}' with medxp's head."
    register_model(name, min_input_size=MIN_INPUT_SIZE.get(name, DEFAULT_MIN_INPUT_SIZE),
                   default_input_size=timm.get_pretrained_cfg(name).input_size[-1], family="timm",
                   accepts=TIMM_KEYS)(builder)


for _name in TIMM_BACKBONES:
    _register(_name)
