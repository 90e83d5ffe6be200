"""End to end with MLflow: a gradient-boosting run on the generated CTG demo is recorded, logged, loaded,
registered, promoted and evaluated again through its registry alias, as any medxp model is.

The data is GENERATED (medxp.data.synthetic_tabular, not real patients): 600 exams, so the run
takes seconds.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch

from medxp.config import load_project
from medxp.data.synthetic_tabular import generate_ctg_demo
from medxp.models.gradient_boosting import HistGradientBoosting
from medxp.models.loading import load_inference_model
from medxp.pipeline import evaluate_logged_model, model_inputs, run_experiment
from medxp.promotion import champion_uri, promote, register_model
from medxp.tracking import NullTracker
from medxp.tracking.mlflow_tracker import MlflowTracker

pytestmark = pytest.mark.slow


def test_a_gradient_boosting_run_is_recorded_loadable_registered_and_promotable(tmp_path, mlflow_store, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root, ./mlruns, lands in tmp_path
    root = generate_ctg_demo(tmp_path / "data" / "fetal_health", rows=600)
    config = load_project("fetal_health", {"data.data_dir": str(root), "model.gb_max_iter": 40,
                                           "eval.bootstrap_resamples": 50, "train.threads": 1})
    assert config.model.name == "hist_gradient_boosting"  # the project's own model
    with MlflowTracker.start("fetal_health", run_name="train-gb", tags={"medxp.kind": "train"}) as tracker:
        result = run_experiment(config, tracker, progress=False)
    run = mlflow.MlflowClient().get_run(tracker.run_id)
    metrics = run.data.metrics
    assert metrics["epochs_trained"] == 40 and metrics["restored_epoch"] == 40  # the project fits the whole budget
    assert metrics["test_f1_macro"] == pytest.approx(result.evaluations["test"].metrics["f1_macro"])
    assert 0.6 < metrics["test_accuracy"] <= 1.0
    assert run.data.tags["model"] == "hist_gradient_boosting" and run.data.tags["data.synthetic"] == "true"
    history = mlflow.MlflowClient().get_metric_history(tracker.run_id, "val_loss")
    assert sorted(point.step for point in history) == list(range(1, 41))  # one point per boosting iteration

    loaded = load_inference_model(result.model_uri)
    assert isinstance(loaded.network, HistGradientBoosting) and loaded.network.iterations == 40
    test_inputs = model_inputs(result.data, "test")
    with torch.no_grad():
        probabilities = loaded(test_inputs).numpy()
    assert np.allclose(probabilities, result.evaluations["test"].y_prob, atol=1e-5)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)

    version = register_model(tracker.run_id, result.model_uri, config, synthetic=True)
    assert "fitted in one call on the train split (gb_learning_rate 0.1, gb_max_iter 40" in version.description
    assert "optimizer" not in version.description  # the epoch loop's settings do not describe it
    decision = promote("fetal_health", synthetic=True, primary_metric="f1_macro")
    assert decision.outcome == "promoted"
    evaluation = evaluate_logged_model(config, champion_uri("fetal_health", synthetic=True), NullTracker())
    assert evaluation.metrics["f1_macro"] == pytest.approx(metrics["test_f1_macro"], abs=1e-6)
