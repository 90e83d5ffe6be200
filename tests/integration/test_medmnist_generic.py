"""A MedMNIST 2D flag without a project folder, end to end: `mlflow run . -e train -P dataset=bloodmnist`,
then evaluate, cross-validation and a search through the CLI, on a tiny generated bloodmnist.npz."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from medxp.cli import main
from tests.conftest import REPO
from tests.unit.test_sources import write_npz

pytestmark = pytest.mark.slow

TINY = "model.channels=[8,16] eval.bootstrap_resamples=20 train.batch_size=16"


@pytest.fixture
def bloodmnist_data(tmp_path, monkeypatch) -> Path:
    """A generated bloodmnist.npz (8 classes, RGB, 28 px) where a user keeps MedMNIST: `$MEDXP_DATA_DIR/bloodmnist`."""
    monkeypatch.setenv("MEDXP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    return write_npz(tmp_path / "data" / "bloodmnist" / "bloodmnist.npz", counts=(48, 16, 16), rgb=True, classes=8)


def test_mlflow_run_trains_a_flag_without_a_project_and_evaluate_reads_its_model(bloodmnist_data, tmp_path,
                                                                                   mlflow_store, capsys):
    bin_dir = Path(sys.executable).parent
    command = [str(bin_dir / "mlflow"), "run", str(REPO), "-e", "train", "--env-manager", "local",
               "-P", "dataset=bloodmnist", "-P", "epochs=2", "-P", f"overrides={TINY}"]
    env = {key: value for key, value in os.environ.items()
           if key not in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")}
    env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"({bloodmnist_data.parent})" in done.stdout and "SYNTHETIC" not in done.stdout

    [run] = mlflow.search_runs(experiment_names=["bloodmnist"], output_format="list")
    assert run.info.status == "FINISHED" and run.data.tags["dataset"] == "bloodmnist"
    assert run.data.tags["data.synthetic"] == "false"
    assert run.data.tags["eval.positive_class"] == "none (multi-class)"
    assert run.data.params["dataset.class_names"].startswith("basophil,eosinophil,erythroblast,immature_") and run.data.params["dataset.channels"] == "3"
    assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0 and "test_f1_macro" in run.data.metrics

    [logged] = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    model = mlflow.pyfunc.load_model(f"models:/{logged.model_id}")
    probabilities = np.asarray(model.predict(np.random.rand(5, 3, 28, 28).astype(np.float32)))
    assert probabilities.shape == (5, 8)

    assert main(["evaluate", "--dataset", "bloodmnist", "--model-uri", f"models:/{logged.model_id}",
                 "--no-progress"]) == 0
    report = capsys.readouterr().out
    assert "on test:" in report and "immature_granulocytes_myelocytes_metamyelocytes_and_promyelocytes" in report


def test_cv_and_search_run_a_flag_without_a_project(bloodmnist_data, mlflow_store, capsys):
    assert main(["cv", "--dataset", "bloodmnist", "--no-progress", "--set", f"folds=2 epochs=1 {TINY}"]) == 0
    assert "2 folds (stratified), 2 finished" in capsys.readouterr().out

    search = ("search.n_trials=2 search.max_concurrent=1 search.max_epochs=1 search.grace_period=1 "
              "search.startup_trials=2 search.ray_cpus=2 " + TINY)
    assert main(["search", "--dataset", "bloodmnist", "--name", "blood", "--no-progress", "--set", search]) == 0
    assert "search blood:" in capsys.readouterr().out
    [parent] = mlflow.search_runs(experiment_names=["bloodmnist"], output_format="list",
                                  filter_string="tags.`medxp.kind` = 'search'")
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "search")}
    assert "search/space.yaml" in artifacts
    space = yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/search/space.yaml"))
    assert "train.class_weights" in space  # the generic space, search_spaces/medmnist.yaml
