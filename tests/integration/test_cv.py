"""Cross-validation on the tiny glaucoma demo: nested fold runs, the summary table, failing folds, stratified folds."""

from __future__ import annotations

import io
import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest

from medxp.flows.cross_validation import cv_source, dataset_folds, fold_datamodule, run_cross_validation, stratified_plan
from medxp.data import create_datamodule
from medxp.errors import MedxpError
from medxp.tracking.mlflow_tracker import MlflowTracker

pytestmark = pytest.mark.slow

ONE_EPOCH = {"train.epochs": 1, "train.patience": 0}


def _csv(run_id: str, path: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(mlflow.artifacts.load_text(f"runs:/{run_id}/{path}")))


def _children(parent_id: str) -> list:
    return mlflow.search_runs(experiment_names=["glaucoma"], output_format="list",
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")


def test_cv_on_the_given_folds_makes_nested_runs_and_the_summary(tiny_config, mlflow_store):
    config = tiny_config.replace(ONE_EPOCH)
    with MlflowTracker.start("glaucoma", run_name="cv") as tracker:
        result = run_cross_validation(config, tracker, log_models=False, progress=False)

    children = _children(tracker.run_id)
    assert sorted(run.info.run_name for run in children) == ["fold-0", "fold-1", "fold-2"]
    assert {run.data.params["data.fold"] for run in children} == {"0", "1", "2"}
    assert all(run.info.status == "FINISHED" for run in children)
    assert result.source == "dataset" and result.finished == 3 and result.failed == 0

    summary = _csv(tracker.run_id, "cv/summary.csv").set_index("statistic")
    assert list(summary.index) == ["count", "mean", "std", "min", "25%", "50%", "75%", "max"]
    assert {"valid_accuracy", "test_accuracy", "test_roc_auc", "seconds"} <= set(summary.columns)
    assert (summary.loc["count"] == 3).all()
    folds = _csv(tracker.run_id, "cv/folds.csv")
    assert list(folds["fold"]) == [0, 1, 2] and set(folds["status"]) == {"FINISHED"}
    np.testing.assert_allclose(summary.at["mean", "test_accuracy"], folds["test_accuracy"].mean())

    parent = mlflow.get_run(tracker.run_id)
    assert parent.data.metrics["cv_test_accuracy_mean"] == pytest.approx(folds["test_accuracy"].mean())
    assert {"cv_valid_accuracy_mean", "cv_test_accuracy_std", "cv_seconds_mean"} <= set(parent.data.metrics)
    assert parent.data.tags["data.synthetic"] == "true" and parent.data.tags["cv.folds"] == "3"
    plots = {a.path for a in mlflow.MlflowClient().list_artifacts(tracker.run_id, "cv")}
    assert "cv/metrics.png" in plots

    stratified = tiny_config.replace({**ONE_EPOCH, "cv.source": "stratified", "cv.folds": 2})
    with MlflowTracker.start("glaucoma", run_name="cv-stratified") as tracker:
        result = run_cross_validation(stratified, tracker, log_models=False, progress=False)
    children = _children(tracker.run_id)
    assert result.source == "stratified" and result.finished == 2 and len(children) == 2
    assert len({run.data.tags["data.split_hash"] for run in children}) == 2


def test_a_failing_fold_is_recorded_and_the_others_go_on(tiny_config, demo_root, tmp_path, mlflow_store):
    broken = tmp_path / "glaucoma"
    shutil.copytree(demo_root, broken)
    shutil.rmtree(broken / "Fold1" / "test" / "abnormal")
    config = tiny_config.replace({**ONE_EPOCH, "data.data_dir": str(broken), "cv.folds": 2})
    with MlflowTracker.start("glaucoma", run_name="cv") as tracker:
        result = run_cross_validation(config, tracker, log_models=False, progress=False)

    assert list(result.folds["status"]) == ["FINISHED", "FAILED"]
    assert "abnormal" in result.folds.at[1, "error"]
    assert result.summary.at["count", "test_accuracy"] == 1
    statuses = {run.info.run_name: run.info.status for run in _children(tracker.run_id)}
    assert statuses == {"fold-0": "FINISHED", "fold-1": "FAILED"}
    assert mlflow.get_run(tracker.run_id).data.metrics["cv_folds_failed"] == 1


def test_stratified_folds_partition_train_and_valid_and_keep_test(tiny_config):
    config = tiny_config.replace({"cv.source": "stratified", "cv.folds": 3})
    base = create_datamodule(config)
    folds, synthetic = stratified_plan(config)
    pool = len(base.datasets["train"]) + len(base.datasets["valid"])
    held_out = [fold.make_data().files["valid"] for fold in folds]
    names = [path.name for part in held_out for path, _ in part]
    assert synthetic and len(folds) == 3
    assert len(names) == len(set(names)) == pool  # every pooled image validates exactly once
    first = folds[0].make_data()
    assert len(first.datasets["train"]) + len(first.datasets["valid"]) == pool
    assert first.datasets["test"] is not None and len(first.datasets["test"]) == len(base.datasets["test"])
    assert first.split_hash != base.split_hash
    assert first.class_counts("valid")["normal"] == pytest.approx(first.class_counts("valid")["abnormal"], abs=1)
    assert fold_datamodule(base, np.arange(pool - 2), np.arange(pool - 2, pool)).datasets["valid"].labels.shape == (2,)


def test_dataset_folds_beyond_those_present_or_on_a_layout_without_folds_are_refused(tiny_config):
    with pytest.raises(MedxpError, match="'cv.folds' = 5: .* has only 3 folds"):
        dataset_folds(tiny_config.replace({"cv.folds": 5}))
    with pytest.raises(MedxpError, match="'cv.source' = 'dataset': layout 'class_folders'"):
        cv_source(tiny_config.replace({"cv.source": "dataset", "dataset.layout": "class_folders"}))
    assert cv_source(tiny_config.replace({"dataset.layout": "class_folders"})) == "stratified"
