"""`search.ensemble_with`: its settings, the companion configs, and `Resized`, which feeds a companion its own size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from medxp.config import load_project
from medxp.data.images import pixels_for_spec
from medxp.errors import MedxpError
from medxp.flows.companions import companion_configs, same_source
from medxp.models.ensemble import EnsembleModel, MemberInfo, Resized


class _Recorder(nn.Module):
    """Returns its input's first pixels as two 'probabilities', and keeps the input it was given."""

    def __init__(self, input_shape) -> None:
        super().__init__()
        self.input_shape, self.class_names, self.seen = tuple(input_shape), ("a", "b"), None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.seen = inputs
        first = inputs[:, 0, 0, 0]
        return torch.stack([first, 1 - first], dim=1)


def test_resized_feeds_a_companion_the_pixels_the_data_module_would_have_decoded_at_its_size():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    # What the MedMNIST reader stores for a 64 px config: the 28 px array resized with PIL's bilinear filter.
    decoded = pixels_for_spec(Image.fromarray(small), image_size=64, channels=1)
    inner = _Recorder((1, 64, 64))
    member = Resized(inner, (1, 28, 28))
    member(torch.from_numpy(small).float().div(255).view(1, 1, 28, 28))
    assert inner.seen.shape == (1, 1, 64, 64) and member.input_shape == (1, 28, 28)
    difference = (inner.seen[0, 0].numpy() * 255 - decoded[0].astype(np.float32))
    assert np.abs(difference).max() < 1.5  # the uint8 rounding of PIL's fixed-point filter, no more (align_corners: 80)

    inner.seen = None
    member(torch.rand(2, 1, 64, 64))  # already its size: passed through untouched
    assert inner.seen.shape == (2, 1, 64, 64)


def test_resized_members_join_an_ensemble_of_the_projects_size_and_other_channels_are_refused():
    ensemble = EnsembleModel([Resized(_Recorder((3, 64, 64)), (3, 28, 28)), _Recorder((3, 28, 28))],
                             [MemberInfo("lite0", ("a", "b"), (3, 28, 28)), MemberInfo("cnn", ("a", "b"), (3, 28, 28))])
    assert ensemble(torch.rand(4, 3, 28, 28)).shape == (4, 2) and ensemble.input_shape == (3, 28, 28)
    with pytest.raises(MedxpError, match=r"shape \[1, 64, 64\] cannot take images of shape \[3, 28, 28\]"):
        Resized(_Recorder((1, 64, 64)), (3, 28, 28))


def test_companion_configs_follow_the_main_seed_and_overrides_and_fail_before_the_search():
    config = load_project("breastmnist", {"seed": 45, "data_dir": "/data/here"})
    companions = companion_configs(config, {"seed": 45, "data_dir": "/data/here"})
    assert companions.name == "efficientnet_lite0_upsampled"
    assert [c.train.seed for c in companions.configs] == [45, 46, 47]
    assert {(c.model.name, c.dataset.image_size, c.data.data_dir) for c in companions.configs} == {
        ("tf_efficientnet_lite0", 64, "/data/here")}
    assert companion_configs(load_project("pneumoniamnist"), None) is None  # not set: nothing to train

    unknown = load_project("breastmnist", {"search.ensemble_with": "resnet_x"})
    with pytest.raises(MedxpError, match="unknown experiment 'resnet_x'.*valid: .*efficientnet_lite0_upsampled"):
        companion_configs(unknown, None)


@pytest.mark.parametrize("overrides, key", [
    ({"search.ensemble_with_seeds": 0}, "search.ensemble_with_seeds"),
    ({"search.cv_folds": 5, "search.refit": True}, "search.ensemble_with"),
    ({"search.objectives": "[val_roc_auc:max, infer_ms:min]"}, "search.ensemble_with"),
])
def test_bad_ensemble_with_settings_name_the_key(overrides, key):
    with pytest.raises(MedxpError, match=key):
        load_project("breastmnist", overrides)


def test_a_medmnist_companion_at_another_size_reads_the_projects_file_not_the_sized_one(tmp_path):
    for name in ("breastmnist.npz", "breastmnist_64.npz"):  # MedMNIST+ publishes one file per size
        (tmp_path / name).write_bytes(b"")
    project = load_project("breastmnist", {"data_dir": str(tmp_path)})
    one_seed = project.replace({"search.ensemble_with_seeds": 1}, "test")
    [companion] = companion_configs(one_seed, {"data_dir": str(tmp_path)}).configs
    assert same_source(companion, project).data.data_dir == str(tmp_path / "breastmnist.npz")  # not the _64 file
    assert same_source(project, project) is project  # the same size: nothing to pin
