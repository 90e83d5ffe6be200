"""The seed architectures are the studies' networks: per-layer settings, layer shapes and parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medxp.config import load_project
from medxp.errors import MedxpError
from medxp.models import create_model
from medxp.models.factory import MODEL_INFO, model_names
from medxp.models.vgg import SeparableConv2d
from tests.conftest import SMALL_CNN


def build(overrides: dict, project: str = "glaucoma"):
    """The model of `project` (glaucoma: its small-CNN experiment, 64 px) with `overrides`."""
    config = load_project(project, {"model.channels_last": False, **overrides},
                          experiment=SMALL_CNN if project == "glaucoma" else None)
    return create_model(config.model, config.dataset), config.dataset


def convs(model) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_every_registered_model_has_its_input_limits_recorded():
    assert set(model_names()) <= set(MODEL_INFO)
    for name in model_names():
        info = MODEL_INFO[name]
        assert info.modalities and info.min_input_size >= 1


def test_small_cnn_is_the_covid_family_with_the_defaults():
    small, _ = build({"model": "small_cnn"})
    covid, _ = build({"model": "covid_cnn"})
    assert [tuple(p.shape) for p in small.parameters()] == [tuple(p.shape) for p in covid.parameters()]
    assert [c.out_channels for c in convs(small)] == [16, 32, 64, 128]
    assert all(c.bias is None and c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs(small))


def test_covid_cnn_takes_per_layer_settings_and_descending_order():
    model, _ = build({"model": "covid_cnn", "model.channels": [16, 64, 32, 128], "model.channel_order": "descending",
                      "model.kernel_size": [7, 5, 3, 3], "model.stride": [2, 1, 1, 1], "model.padding": [0, -1, 1, 1],
                      "model.batch_norm": [False, True, True, False], "model.dropout": [0.0, 0.1, 0.2, 0.3],
                      "model.first_activation": False})
    layers = convs(model)
    assert [c.out_channels for c in layers] == [128, 64, 32, 16]
    assert [c.kernel_size[0] for c in layers] == [7, 5, 3, 3]
    assert [(c.stride[0], c.padding[0]) for c in layers] == [(2, 0), (1, 2), (1, 1), (1, 1)]
    assert [c.bias is None for c in layers] == [False, True, True, False]
    blocks = list(model.features)
    assert not any(isinstance(m, nn.ReLU) for m in blocks[0])
    assert all(any(isinstance(m, nn.ReLU) for m in block) for block in blocks[1:])
    assert [next((m.p for m in block if isinstance(m, nn.Dropout2d)), 0.0) for block in blocks] == [0.0, 0.1, 0.2, 0.3]
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 2)


def test_covid_cnn_names_the_key_whose_length_does_not_match():
    with pytest.raises(MedxpError, match=r"'model.kernel_size' has 2 values for 4 conv layers"):
        build({"model": "covid_cnn", "model.kernel_size": [3, 5]})


def test_lenet_has_the_studys_maps_and_widths_and_no_bias_before_batch_norm():
    base, _ = build({"model": "lenet"}, "organsmnist")
    big, _ = build({"model": "lenet_big"}, "organsmnist")
    for model, maps, widths in ((base, [6, 16], [120, 84]), (big, [24, 64], [480, 240])):
        assert [c.out_channels for c in convs(model)] == maps
        assert all(c.kernel_size == (5, 5) and c.bias is None for c in convs(model))
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        assert [m.out_features for m in linears[:-1]] == widths
        assert [m.bias is None for m in linears] == [True, True, False]
        assert model.eval()(torch.rand(2, 1, 28, 28)).shape == (2, 11)


def test_vgg16_dwsep_is_separable_after_two_plain_convs_with_the_studys_classifier():
    model, _ = build({"model": "vgg16_dwsep"})
    assert [type(m).__name__ for m in model.features if isinstance(m, (nn.Conv2d, SeparableConv2d))] == \
        ["Conv2d", "Conv2d"] + ["SeparableConv2d"] * 8
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.features) == 4
    assert [m.p for m in model.head if isinstance(m, nn.Dropout)] == [0.7, 0.5]
    assert [m.out_features for m in model.head if isinstance(m, nn.Linear)] == [1024, 512, 2]


def test_vgg16_plain_twin_has_the_same_shape_and_many_more_conv_weights():
    separable, _ = build({"model": "vgg16_dwsep"})
    plain, _ = build({"model": "vgg16_plain"})
    conv_weights = [sum(p.numel() for p in m.features.parameters()) for m in (separable, plain)]
    assert conv_weights[1] > 5 * conv_weights[0]
    images = torch.rand(2, 3, 64, 64)
    assert separable.eval()(images).shape == plain.eval()(images).shape == (2, 2)


def test_mlp_has_the_hidden_sizes_and_dropouts_asked_for():
    model, spec = build({"model": "mlp", "model.hidden_sizes": [32, 16, 8], "model.dropout": [0.1, 0.2, 0.0]},
                        "fetal_health")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(21, 32), (32, 16), (16, 8), (8, 3)]
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.1, 0.2]
    assert model.eval()(torch.randn(4, len(spec.feature_columns))).shape == (4, 3)


def test_image_models_refuse_tabular_data_naming_the_models_that_fit():
    config = load_project("fetal_health", {"model": "resnet18"})
    with pytest.raises(MedxpError, match=r"'resnet18' reads image data but dataset 'fetal_health' is tabular; "
                                         r"expected one of: hist_gradient_boosting, mlp"):
        create_model(config.model, config.dataset)


# ----------------------------------------------------------------------------- model.dropout: one meaning


def block_dropouts(model) -> list[float]:
    return [m.p for m in model.features.modules() if isinstance(m, nn.Dropout2d)]


@pytest.mark.parametrize("name, blocks", [("lenet", 2), ("lenet_big", 2), ("vgg16_dwsep", 4), ("vgg16_plain", 4)])
def test_dropout_is_dropout2d_after_each_conv_block_as_in_the_conv_stacks(name, blocks):
    project = "organsmnist" if name.startswith("lenet") else "glaucoma"
    studied, _ = build({"model": name}, project)
    assert block_dropouts(studied) == []  # empty model.dropout: the study's network, no conv dropout
    one_rate, _ = build({"model": name, "model.dropout": 0.2}, project)
    assert block_dropouts(one_rate) == [0.2] * blocks
    per_block, _ = build({"model": name, "model.dropout": [0.1 * (i + 1) for i in range(blocks)]}, project)
    assert block_dropouts(per_block) == pytest.approx([0.1 * (i + 1) for i in range(blocks)])
    for block in (list(per_block.features.children()),):
        pools = [i for i, m in enumerate(block) if isinstance(m, nn.MaxPool2d)]
        assert all(isinstance(block[i + 1], nn.Dropout2d) for i in pools)
    if name.startswith("vgg"):  # the study's classifier dropouts are untouched
        assert [m.p for m in per_block.head if isinstance(m, nn.Dropout)] == [0.7, 0.5]
    with pytest.raises(MedxpError, match=rf"'model.dropout' has 3 values for {blocks} conv blocks of {name}"):
        build({"model": name, "model.dropout": [0.1, 0.2, 0.3]}, project)


def test_empty_dropout_keeps_the_conv_stack_and_mlp_defaults():
    small, _ = build({"model": "small_cnn"})
    assert block_dropouts(small) == [0.1] * 4
    mlp, _ = build({"model": "mlp", "model.hidden_sizes": [8, 4], "model.dropout": []}, "fetal_health")
    assert [m.p for m in mlp.modules() if isinstance(m, nn.Dropout)] == [0.1, 0.1]


@pytest.mark.parametrize("name, overrides, key", [
    ("resnet18", {"model.dropout": 0.2}, "dropout"),
    ("tf_efficientnet_lite0", {"model.dropout": [0.1]}, "dropout"),
    ("timm/resnet10t", {"model.dropout": 0.3}, "dropout"),
    ("vgg16_dwsep", {"model.head_dropout": 0.5}, "head_dropout"),
    ("mlp", {"model.head_dropout": 0.1}, "head_dropout"),
    ("small_cnn", {"model.head_batch_norm": True}, "head_batch_norm"),
    ("lenet", {"model.pretrained_file": "x.pth"}, "pretrained_file"),
])
def test_a_knob_the_model_cannot_apply_is_an_error_naming_model_and_key(name, overrides, key):
    project = "fetal_health" if name == "mlp" else "glaucoma"
    with pytest.raises(MedxpError, match=rf"model.{key} = .*model '{name}' does not read it"):
        build({"model": name, "model.pretrained": False, **overrides}, project)


def test_another_models_layer_geometry_is_left_unused_not_refused():
    model, _ = build({"model": "lenet", "model.channels": [32, 64, 128], "model.kernel_size": [5]}, "organsmnist")
    assert [c.out_channels for c in convs(model)] == [6, 16]


def test_applied_settings_list_only_what_the_model_reads():
    from medxp.models.factory import applied_settings

    config = load_project("glaucoma", experiment=SMALL_CNN)
    assert applied_settings(config.model) == {"dropout": (0.1,), "head_dropout": 0.3}
    assert applied_settings(config.replace({"model": "vgg16_plain"}).model) == {"dropout": (0.0,)}
    timm_settings = applied_settings(config.replace({"model": "resnet18"}).model)
    assert "dropout" not in timm_settings and timm_settings["pretrained"] == "auto"
