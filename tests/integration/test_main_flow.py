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
from tests.conftest import REPO

pytestmark = pytest.mark.slow

TINY_SEARCH = ("data.demo_images_per_class=24 data.demo_folds=3 data.demo_image_size=48 dataset.image_size=32 "
               "model.channels=[8,16] search.n_trials=3 search.max_epochs=2 search.grace_period=1 "
               "search.startup_trials=2 eval.bootstrap_resamples=100")


def test_main_registers_a_demo_model_that_promote_makes_champion(tmp_path, mlflow_store, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data_dir = f"data_dir={tmp_path / 'data'}"
    bin_dir = Path(sys.executable).parent
    command = [str(bin_dir / "mlflow"), "run", str(REPO), "--env-manager", "local", "--experiment-name", "glaucoma",
               "-P", "dataset=glaucoma", "-P", f"data_dir={tmp_path / 'data'}", "-P", "search_name=flow",
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
    champion = mlflow.pytorch.load_model("models:/glaucoma-classifier-demo@champion")
    with np.errstate(all="ignore"):
        import torch

        probabilities = champion(torch.rand(3, 3, 32, 32)).detach().numpy()
    assert probabilities.shape == (3, 2)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)

    evaluated = main(["evaluate", "--dataset", "glaucoma", "--set", data_dir, "--set", TINY_SEARCH])
    assert evaluated == 0 and "precision" in capsys.readouterr().out
