"""Every registered model against every project's spec, and what `unfrozen_layers` leaves trainable."""

from __future__ import annotations

import pytest
import torch

from medxp.config import load_project, project_names
from medxp.errors import MedxpError
from medxp.models import InferenceModel, create_model, model_names


@pytest.mark.parametrize("project", project_names())
@pytest.mark.parametrize("name", model_names())
def test_every_model_gives_logits_per_class_for_every_project(project, name):
    config = load_project(project, {"model": name})
    spec = config.dataset
    model = create_model(config.model, spec).eval()
    images = torch.rand(2, spec.channels, spec.image_size, spec.image_size)
    with torch.no_grad():
        logits = model(images.contiguous(memory_format=torch.channels_last))
    assert logits.shape == (2, len(spec.class_names))
    assert torch.isfinite(logits).all()


def test_unknown_model_lists_the_valid_names():
    config = load_project("glaucoma", {"model": "resnet19"})
    with pytest.raises(MedxpError, match=r"unknown model 'resnet19'.*resnet18.*small_cnn"):
        create_model(config.model, config.dataset)


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_unfrozen_layers_freezes_what_it_says(name):
    config = load_project("glaucoma", {"model": name})
    everything = create_model(config.model, config.dataset)
    head_only = create_model(config.replace({"unfrozen_layers": 0}).model, config.dataset)
    last_two = create_model(config.replace({"unfrozen_layers": 2}).model, config.dataset)
    head = sum(p.numel() for p in (head_only.get_classifier() if name != "small_cnn" else head_only.head).parameters())
    assert trainable(everything) == sum(p.numel() for p in everything.parameters())
    assert trainable(head_only) == head
    weight_layers = [m for m in last_two.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    expected = head + sum(p.numel() for m in weight_layers[-3:-1] for p in m.parameters())
    assert trainable(last_two) == expected
    assert not any(p.requires_grad for m in last_two.modules() if isinstance(m, torch.nn.BatchNorm2d)
                   for p in m.parameters())


def test_inference_model_takes_pixels_and_returns_probabilities():
    config = load_project("glaucoma")
    network = create_model(config.model, config.dataset).eval()
    model = InferenceModel(network, config.dataset.mean, config.dataset.std).eval()
    for batch in (1, 5):
        probabilities = model(torch.rand(batch, 3, 64, 64))
        assert probabilities.shape == (batch, 2)
        assert torch.allclose(probabilities.sum(1), torch.ones(batch))
