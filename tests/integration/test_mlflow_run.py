"""End to end: `mlflow run . -e train --env-manager local` on a tiny demo set, checked in the tracking store.

Also where `mlflow run` puts the work: experiment `<dataset>` without `--experiment-name` (the run
`mlflow run` opened in Default keeps only a pointer), the named experiment with it.
(`mlflow run .` with the default entry point, the search, is exercised by test_main_flow.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

from tests.conftest import REPO, SMALL_CNN

pytestmark = pytest.mark.slow


def test_mlflow_run_trains_tracks_and_logs_a_loadable_model(tmp_path, mlflow_store):
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    overrides = ("data.demo_images_per_class=24 data.demo_folds=3 data.demo_image_size=48 "
                 "dataset.image_size=32 model.channels=[8,16] eval.bootstrap_resamples=100")
    command = [str(mlflow_cli), "run", str(REPO), "-e", "train", "--env-manager", "local",
               "--experiment-name", "glaucoma",
               "-P", "dataset=glaucoma", "-P", f"experiment={SMALL_CNN}", "-P", f"data_dir={tmp_path / 'data'}",
               "-P", "epochs=3",
               "-P", f"overrides={overrides}"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SYNTHETIC demo data" in done.stdout

    [run] = mlflow.search_runs(experiment_names=["glaucoma"], output_format="list")
    assert run.info.status == "FINISHED"
    assert run.data.tags["data.synthetic"] == "true" and run.data.tags["dataset"] == "glaucoma"
    assert run.data.params["train.epochs"] == "3"
    client = mlflow.MlflowClient()
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert sorted(m.step for m in history) == [1, 2, 3]
    for key in ("test_accuracy", "test_roc_auc", "test_f1_macro", "test_sensitivity", "test_specificity"):
        assert 0.0 <= run.data.metrics[key] <= 1.0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/test_confusion_matrix.png" in artifacts

    [logged] = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert logged.source_run_id == run.info.run_id
    model = mlflow.pyfunc.load_model(f"models:/{logged.model_id}")
    for batch in (1, 7):
        probabilities = np.asarray(model.predict(np.random.rand(batch, 3, 32, 32).astype(np.float32)))
        assert probabilities.shape == (batch, 2)
        np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)


def mlflow_run_train(tmp_path: Path, *options: str) -> subprocess.CompletedProcess:
    """`mlflow run . -e train` on the shared tiny demo set, one epoch, with extra `mlflow run` options."""
    overrides = ("data.demo_images_per_class=12 data.demo_folds=3 data.demo_image_size=32 "
                 "dataset.image_size=16 model.channels=[4,8] eval.bootstrap_resamples=20")
    command = [str(Path(sys.executable).parent / "mlflow"), "run", str(REPO), "-e", "train", "--env-manager", "local",
               *options, "-P", "dataset=glaucoma", "-P", f"experiment={SMALL_CNN}", "-P", f"data_dir={tmp_path / 'data'}",
               "-P", "epochs=1",
               "-P", f"overrides={overrides}"]
    env = {key: value for key, value in os.environ.items()
           if key not in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")}
    env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_mlflow_run_without_an_experiment_name_lands_in_the_dataset_experiment(tmp_path, mlflow_store):
    client = mlflow.MlflowClient()
    mlflow_run_train(tmp_path)
    experiment = client.get_experiment_by_name("glaucoma")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["dataset"] == "glaucoma"
    assert "test_accuracy" in run.data.metrics and run.data.params["train.epochs"] == "1"
    assert run.data.tags["mlflow.project.entryPoint"] == "train"
    [pointer] = client.search_runs(["0"])  # what `mlflow run` opened in Default: a pointer, nothing else
    assert run.data.tags["medxp.moved_from"] == pointer.info.run_id
    assert pointer.data.tags["medxp.moved_to"] == run.info.run_id
    assert pointer.data.tags["medxp.moved_to_experiment"] == "glaucoma"
    assert "experiment 'glaucoma'" in pointer.data.tags["mlflow.note.content"]
    assert pointer.data.metrics == {} and client.list_artifacts(pointer.info.run_id) == []
    assert not {key for key in pointer.data.tags if key.startswith(("medxp.", "data.", "dataset"))} - {
        "medxp.moved_to", "medxp.moved_to_experiment"}
    assert mlflow.search_logged_models(experiment_ids=["0"], output_format="list") == []

    mlflow_run_train(tmp_path, "--experiment-name", "my-study")
    named = client.get_experiment_by_name("my-study")
    assert named.tags["mlflow.experimentKind"] == "custom_model_development"
    [attached] = client.search_runs([named.experiment_id])
    assert attached.info.status == "FINISHED" and "medxp.moved_from" not in attached.data.tags
    assert "test_accuracy" in attached.data.metrics
    assert len(client.search_runs(["0"])) == 1 and len(client.search_runs([experiment.experiment_id])) == 1
