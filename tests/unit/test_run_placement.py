"""Where `MlflowTracker.start` puts a run: `mlflow run` in Default or a named experiment, `medxp <verb>`, nested."""

from __future__ import annotations

import os

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from medxp.tracking.mlflow_tracker import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    MOVED_FROM_TAG,
    MOVED_TO_EXPERIMENT_TAG,
    MOVED_TO_TAG,
    MlflowTracker,
)


def launched_run(monkeypatch, experiment_id: str = "0") -> str:
    """A run as `mlflow run` opens it before medxp starts, announced in the environment."""
    run = MlflowClient().create_run(experiment_id, tags={"mlflow.project.entryPoint": "train",
                                                         "mlflow.source.type": "PROJECT"})
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
    return run.info.run_id


def experiment_of(run_id: str):
    client = MlflowClient()
    return client.get_experiment(client.get_run(run_id).info.experiment_id)


@pytest.fixture(autouse=True)
def no_experiment_name(monkeypatch):
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)


def test_mlflow_run_in_default_leaves_a_pointer_and_the_work_goes_to_the_dataset(mlflow_store, monkeypatch):
    default_run_id = launched_run(monkeypatch)
    with MlflowTracker.start("fetal_health", run_name="train-mlp", tags={"medxp.kind": "train"}) as tracker:
        tracker.log_metrics({"val_loss": 0.5}, step=1)
        with MlflowTracker.start("ignored", run_name="fold-0", nested=True) as child:
            child.log_metrics({"val_loss": 0.4}, step=1)
        assert "MLFLOW_RUN_ID" not in os.environ  # nothing (a trial, a nested run) can attach to it again
        assert os.environ["MLFLOW_EXPERIMENT_ID"] == tracker.run.info.experiment_id
    client = MlflowClient()
    experiment = experiment_of(tracker.run_id)
    assert experiment.name == "fetal_health" and experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics == {"val_loss": 0.5}
    assert run.data.tags["mlflow.runName"] == "train-mlp" and run.data.tags["medxp.kind"] == "train"
    assert run.data.tags[MOVED_FROM_TAG] == default_run_id
    assert run.data.tags["mlflow.project.entryPoint"] == "train"  # the launch provenance followed the work
    fold = client.get_run(child.run_id)
    assert fold.info.experiment_id == experiment.experiment_id
    assert fold.data.tags["mlflow.parentRunId"] == tracker.run_id

    pointer = client.get_run(default_run_id)
    assert pointer.info.experiment_id == "0"
    assert pointer.data.tags[MOVED_TO_TAG] == tracker.run_id
    assert pointer.data.tags[MOVED_TO_EXPERIMENT_TAG] == "fetal_health"
    assert "fetal_health" in pointer.data.tags["mlflow.note.content"]
    assert pointer.data.metrics == {} and pointer.data.params == {}
    assert not any(key.startswith("medxp.") and not key.startswith("medxp.moved") for key in pointer.data.tags)
    assert [r.info.run_id for r in client.search_runs(["0"])] == [default_run_id]  # Default holds only it


def test_mlflow_run_with_an_experiment_name_is_attached(mlflow_store, monkeypatch):
    experiment_id = MlflowClient().create_experiment("my-study")
    run_id = launched_run(monkeypatch, experiment_id)
    with MlflowTracker.start("glaucoma", run_name="train-small_cnn") as tracker:
        tracker.log_metrics({"val_loss": 0.5})
    assert tracker.run_id == run_id
    experiment = experiment_of(run_id)
    assert experiment.name == "my-study" and experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert MlflowClient().get_run(run_id).data.tags["mlflow.runName"] == "train-small_cnn"
    assert mlflow.get_experiment_by_name("glaucoma") is None


def test_an_explicit_default_experiment_is_honoured(mlflow_store, monkeypatch):
    run_id = launched_run(monkeypatch)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "Default")
    with MlflowTracker.start("glaucoma") as tracker:
        pass
    assert tracker.run_id == run_id and mlflow.get_experiment_by_name("glaucoma") is None


def test_medxp_verb_uses_the_dataset_or_mlflow_experiment_name(mlflow_store, monkeypatch):
    with MlflowTracker.start("glaucoma") as plain:
        pass
    assert experiment_of(plain.run_id).name == "glaucoma"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "nightly")
    with MlflowTracker.start("glaucoma") as named:
        pass
    experiment = experiment_of(named.run_id)
    assert experiment.name == "nightly" and experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_existing_experiments_get_the_kind_tag_but_keep_their_own(mlflow_store):
    client = MlflowClient()
    untagged = client.create_experiment("glaucoma")
    client.create_experiment("organsmnist", tags={EXPERIMENT_KIND_TAG: "finetuning"})
    with MlflowTracker.start("glaucoma"):
        pass
    with MlflowTracker.start("organsmnist"):
        pass
    assert client.get_experiment(untagged).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert client.get_experiment_by_name("organsmnist").tags[EXPERIMENT_KIND_TAG] == "finetuning"


def test_a_new_experiment_keeps_its_artifacts_beside_the_sqlite_store_whatever_the_working_folder(
        mlflow_store, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # MLflow's own default would be ./mlruns here
    with MlflowTracker.start("chest x-ray/pneumonia", run_name="train") as tracker:
        tracker.log_text("hello", "notes/hello.txt")
    experiment = experiment_of(tracker.run_id)
    assert experiment.artifact_location == (tmp_path / "mlruns" / "chest-x-ray-pneumonia").as_uri()
    logged = tmp_path / "mlruns" / "chest-x-ray-pneumonia" / tracker.run_id / "artifacts" / "notes" / "hello.txt"
    assert logged.read_text() == "hello"
    assert not (elsewhere / "mlruns").exists()


def test_a_tracking_server_places_artifacts_itself(monkeypatch):
    from medxp.tracking.mlflow_tracker import local_artifact_location

    monkeypatch.setattr(mlflow, "get_tracking_uri", lambda: "http://127.0.0.1:5000")
    assert local_artifact_location("glaucoma") is None
    monkeypatch.setattr(mlflow, "get_tracking_uri", lambda: "sqlite:////srv/mlflow/mlflow.db")
    assert local_artifact_location("glaucoma") == "file:///srv/mlflow/mlruns/glaucoma"


def test_the_search_home_is_the_local_stores_folder_and_the_study_module_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys; from medxp.search import study; print('torch' in sys.modules); "
            "print(study.search_home('sqlite:////srv/mlflow/mlflow.db'), study.search_home('file:///srv/runs/mlruns'), "
            "study.search_home('http://127.0.0.1:5000'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert done.stdout.split() == ["False", "/srv/mlflow", "/srv/runs", "/"]
