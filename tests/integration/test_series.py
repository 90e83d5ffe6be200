"""Series end to end on tiny generated COVID-layout folders: nested runs, the comparison, shared initial
weights, reruns that train nothing new, an ensemble step, and `mlflow run . -e series` on two classes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from medxp.config import projects_dir
from medxp.flows.series import COSTS, METRICS, SPLITS, run_series
from medxp.tracking.mlflow_tracker import MlflowTracker
from tests.conftest import REPO
from tests.unit.test_sources import COVID_FOLDERS, make_covid, write_npz

pytestmark = pytest.mark.slow

SHRINK = {"dataset.image_size": "32", "train.epochs": "2", "train.batch_size": "8", "eval.bootstrap_resamples": "20",
          "data.cache": "false", "model.channels": "[8,16]"}
THREE = """
description: three steps of the ablation, one inline
variants:
  - label: base
    experiment: cnn_base
  - label: base_dropout
    experiment: cnn_base
    overrides: {model.dropout: [0.25]}
  - label: batch_norm
    experiment: cnn_bn
"""


@pytest.fixture
def projects(tmp_path, monkeypatch) -> Path:
    """A copy of the real projects with a three-variant COVID series and a small OrganSMNIST ladder added."""
    root = tmp_path / "projects"
    for name in ("covid_radiography", "organsmnist"):
        shutil.copytree(projects_dir() / name, root / name)
    (root / "covid_radiography" / "series" / "three.yaml").write_text(THREE)
    (root / "organsmnist" / "series" / "short.yaml").write_text(
        "variants:\n  - {label: lenet, experiment: 1_lenet}\n  - {label: lenet_big, experiment: 2_lenet_big}\n"
        "  - {label: mean_of_two, ensemble: {top: 2}}\n")
    monkeypatch.setenv("MEDXP_PROJECTS_DIR", str(root))
    return root


def series(dataset: str, name: str, overrides: dict) -> tuple:
    with MlflowTracker.start(dataset, run_name=f"series-{name}", tags={"medxp.kind": "series"}) as tracker:
        result = run_series(dataset, name, tracker, overrides, progress=False)
    return result, mlflow.get_run(tracker.run_id)


def variant_runs(dataset: str) -> list:
    runs = mlflow.search_runs(experiment_names=[dataset], output_format="list",
                              filter_string="tags.`medxp.kind` = 'series-variant'")
    return sorted(runs, key=lambda run: int(run.data.tags["series.position"]))


def test_a_three_variant_series_compares_its_nested_runs_and_a_rerun_trains_nothing(tmp_path, mlflow_store, projects):
    data = make_covid(tmp_path / "covid", per_class=10)
    result, parent = series("covid_radiography", "three", {**SHRINK, "data.data_dir": str(data)})

    runs = variant_runs("covid_radiography")
    assert [run.info.run_name for run in runs] == ["base", "base_dropout", "batch_norm"]
    assert {run.data.tags[MLFLOW_PARENT_RUN_ID] for run in runs} == {parent.info.run_id}
    assert {run.data.params["train.seed"] for run in runs} == {"42"}
    assert len({run.data.tags["data.split_hash"] for run in runs}) == 1
    assert runs[1].data.params["model.dropout"] == "0.25" and runs[0].data.params["model.dropout"] == "0.0"

    table = result.table
    assert list(table["label"]) == ["base", "base_dropout", "batch_norm"]
    assert list(table["status"]) == ["FINISHED"] * 3
    for column in [f"{split}_{metric}" for split in SPLITS for metric in METRICS] + list(COSTS):
        assert column in table and table[column].notna().all(), column
    assert (table["model_params"] > 0).all() and (table["infer_ms"] > 0).all()
    assert table.loc[0, "model_params"] == table.loc[1, "model_params"] < table.loc[2, "model_params"]
    # base and base_dropout share an architecture (dropout has no weights): the same initial state dict.
    hashes = [run.data.tags["model.init_sha256"] for run in runs]
    assert hashes[0] == hashes[1] != hashes[2]
    assert [run.data.tags["series.init_from"] for run in runs] == ["base", "base", "batch_norm"]

    client = mlflow.MlflowClient()
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "series")}
    assert {"series/comparison.csv", "series/comparison.md", "series/evolution.png",
            "series/loss_curves.png", "series/three.yaml"} <= artifacts
    logged = pd.read_csv(client.download_artifacts(parent.info.run_id, "series/comparison.csv", str(tmp_path)))
    assert list(logged["label"]) == ["base", "base_dropout", "batch_norm"]
    note = parent.data.tags["mlflow.note.content"]
    assert "| variant |" in note and "| base_dropout | FINISHED |" in note and "one-vs-rest" in note

    again, second_parent = series("covid_radiography", "three", {**SHRINK, "data.data_dir": str(data)})
    assert list(again.table["status"]) == ["REUSED"] * 3
    assert len(variant_runs("covid_radiography")) == 3  # nothing new trained
    assert list(again.table["run_id"]) == list(table["run_id"])
    assert again.table["test_accuracy"].tolist() == table["test_accuracy"].tolist()
    assert second_parent.data.metrics["variants_reused"] == 3

    changed, _ = series("covid_radiography", "three", {**SHRINK, "data.data_dir": str(data), "train.lr": "0.01"})
    assert list(changed.table["status"]) == ["FINISHED"] * 3  # another config: trained again
    assert len(variant_runs("covid_radiography")) == 6


def test_a_ladder_ending_in_an_ensemble_averages_the_best_earlier_variants(tmp_path, mlflow_store, projects):
    data = write_npz(tmp_path / "organsmnist.npz", counts=(44, 22, 22), classes=11)
    result, _ = series("organsmnist", "short", {"train.epochs": "1", "train.batch_size": "16",
                                                 "eval.bootstrap_resamples": "20", "data.cache": "false",
                                                 "data.data_dir": str(data)})
    assert list(result.table["status"]) == ["FINISHED"] * 3
    ensemble = result.table.iloc[2]
    assert ensemble["model"] == "ensemble" and set(ensemble["members"].split(", ")) == {"lenet", "lenet_big"}
    assert ensemble["model_params"] == result.table.iloc[0]["model_params"] + result.table.iloc[1]["model_params"]
    assert ensemble["epochs_trained"] == 0 and ensemble["model_uri"].startswith("models:/")
    assert 0.0 <= ensemble["test_accuracy"] <= 1.0


@pytest.mark.parametrize("classes", [["covid", "normal"], ["covid", "lung_opacity", "normal", "viral_pneumonia"]],
                         ids=["two-class COVID-Normal folder", "four-class layout"])
def test_mlflow_run_series_runs_the_covid_ablation(tmp_path, mlflow_store, classes):
    data = tmp_path / "covid"
    make_covid(data, per_class=20 if len(classes) == 2 else 10)
    if len(classes) == 2:
        for folder in set(COVID_FOLDERS) - {"COVID", "Normal"}:
            shutil.rmtree(data / folder)
    overrides = " ".join(f"{key}={value}" for key, value in {**SHRINK, "train.epochs": "1"}.items())
    if len(classes) == 2:
        overrides += " dataset.class_names=[covid,normal]"
    command = [str(Path(sys.executable).parent / "mlflow"), "run", str(REPO), "-e", "series", "--env-manager", "local",
               "-P", "dataset=covid_radiography", "-P", "series=ablation", "-P", f"data_dir={data}",
               "-P", f"overrides={overrides}"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "5 trained, 0 reused, 0 failed" in done.stdout

    [parent] = mlflow.search_runs(experiment_names=["covid_radiography"], output_format="list",
                                  filter_string="tags.`medxp.kind` = 'series'")
    assert parent.info.status == "FINISHED" and parent.info.run_name == "series-ablation"
    runs = variant_runs("covid_radiography")
    assert [run.info.run_name for run in runs] == ["cnn_base", "cnn_bn", "cnn_dropout", "cnn_bn_dropout",
                                                   "cnn_bn_dropout_early_stopping"]
    assert {run.data.tags[MLFLOW_PARENT_RUN_ID] for run in runs} == {parent.info.run_id}
    assert {run.data.params["dataset.class_names"] for run in runs} == {",".join(classes)}
    note = parent.data.tags["mlflow.note.content"]
    assert f"Classes: {', '.join(classes)}." in note
    auc = "ROC AUC of the positive class `covid`" if len(classes) == 2 else "ROC AUC one-vs-rest"
    assert auc in note
