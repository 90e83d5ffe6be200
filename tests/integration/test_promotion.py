"""Registration and promotion through the MLflow Model Registry, on small fake-but-real runs.

Each run logs a tiny InferenceModel through MlflowTracker, the tags and test metrics a
medxp training run records, and a confusion matrix PNG; no training happens.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from torch import nn

from medxp.config import DatasetSpec, ExperimentConfig
from medxp.errors import MedxpError
from medxp.models import InferenceModel
from medxp.promotion import champion_uri, promote, register_model, registered_model_name, rollback
from medxp.tracking.mlflow_tracker import MlflowTracker
from medxp.training.plots import confusion_matrix_figure

DATASET = "fundus"
CLASS_NAMES = ("normal", "glaucoma")
CONFIG = ExperimentConfig(dataset=DatasetSpec(name=DATASET, class_names=CLASS_NAMES, image_size=8, channels=3))
DEMO_NAME = f"{DATASET}-classifier-demo"


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """A fresh sqlite tracking store; artifacts land under tmp_path (the working directory)."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield MlflowClient()
    mlflow.set_tracking_uri(None)


def log_fake_run(accuracy: float, *, fingerprint: str = "fp-test-a", synthetic: bool = True,
                 explanations: bool = True) -> tuple[str, str]:
    """One run shaped like a medxp training run; returns (run_id, LoggedModel URI)."""
    torch.manual_seed(0)
    network = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, len(CLASS_NAMES)))
    model = InferenceModel(network, CONFIG.dataset.mean, CONFIG.dataset.std)
    with MlflowTracker.start("promotion-test", run_name=f"acc-{accuracy}") as tracker:
        tracker.set_tags({"dataset": DATASET, "model": "tiny", "data.fingerprint": fingerprint,
                          "data.synthetic": str(synthetic).lower()})
        tracker.log_params(CONFIG.to_flat_dict())
        tracker.log_metrics({"test_accuracy": accuracy, "test_accuracy_ci_low": accuracy - 0.05,
                             "test_accuracy_ci_high": accuracy + 0.04, "test_roc_auc": accuracy + 0.05,
                             "epochs_trained": 3, "best_epoch": 2})
        tracker.log_dict({"data": {"class_counts": {"test": {"normal": 10, "glaucoma": 10}}}},
                         "config/environment.json")
        tracker.log_figure(confusion_matrix_figure([[8, 2], [2, 8]], CLASS_NAMES), "evaluation/test_confusion_matrix.png")
        tracker.log_text("fake report", "evaluation/test_classification_report.txt")
        tracker.log_dict({"matrix": [[8, 2], [2, 8]]}, "evaluation/test_confusion_matrix.json")
        if explanations:
            tracker.log_figure(confusion_matrix_figure([[1, 0], [0, 1]], CLASS_NAMES), "explanations/lime_0.png")
        model_uri = tracker.log_model(model, np.random.rand(2, 3, 8, 8).astype(np.float32))
    return tracker.run_id, model_uri


def register_fake_runs(*accuracies: float, **run_options) -> list[str]:
    """Logs and registers one run per accuracy; returns the version numbers."""
    versions = []
    for accuracy in accuracies:
        run_id, model_uri = log_fake_run(accuracy, **run_options)
        versions.append(register_model(run_id, model_uri, CONFIG, synthetic=run_options.get("synthetic", True)).version)
    return versions


def aliases(client: MlflowClient, name: str = DEMO_NAME) -> dict[str, str]:
    return dict(client.get_registered_model(name).aliases)


@pytest.mark.slow
def test_no_regression_rule_force_and_rollback(tracking):
    client = tracking
    assert register_fake_runs(0.80, 0.70, 0.90) == ["1", "2", "3"]

    first = promote(DATASET, version=1, synthetic=True)
    assert first.promoted and first.champion_before is None and aliases(client) == {"champion": "1"}

    worse = promote(DATASET, version=2, synthetic=True)
    assert not worse.promoted and worse.outcome == "refused"
    assert (worse.candidate_value, worse.champion_value, worse.champion_after) == (0.70, 0.80, "1")
    assert aliases(client) == {"champion": "1"}
    recorded = client.get_model_version(DEMO_NAME, "2").tags
    assert recorded["promotion.decision"] == "refused" and recorded["promotion.compared_to"] == "1"
    assert recorded["promotion.candidate_value"] == "0.7" and "0.8" in recorded["promotion.reason"]

    better = promote(DATASET, synthetic=True)  # latest = version 3
    assert better.promoted and better.candidate_version == "3" and better.champion_before == "1"
    assert aliases(client) == {"champion": "3", "previous": "1"}

    tie = promote(DATASET, version=1, synthetic=True)
    assert not tie.promoted  # 0.80 < 0.90; and equal values would keep the champion too

    forced = promote(DATASET, version=2, synthetic=True, force=True, note="regulator asked for v2")
    assert forced.promoted and forced.forced and aliases(client) == {"champion": "2", "previous": "3"}
    recorded = client.get_model_version(DEMO_NAME, "2").tags
    assert recorded["promotion.forced"] == "true" and recorded["promotion.note"] == "regulator asked for v2"
    assert recorded["promotion.forced_by"] and recorded["promotion.forced_at"]
    assert recorded["promotion.history"].count("\n") == 1  # the refusal, then the forced promotion

    back = rollback(DATASET, synthetic=True)
    assert back.champion_after == "3" and aliases(client) == {"champion": "3", "previous": "2"}


@pytest.mark.slow
def test_equal_metric_keeps_champion(tracking):
    register_fake_runs(0.80, 0.80)
    promote(DATASET, version=1, synthetic=True)
    decision = promote(DATASET, version=2, synthetic=True)
    assert not decision.promoted and "ties" in decision.reason
    assert aliases(tracking) == {"champion": "1"}


@pytest.mark.slow
def test_different_test_data_is_refused_unless_forced(tracking):
    register_fake_runs(0.80)
    register_fake_runs(0.95, fingerprint="fp-test-b")
    promote(DATASET, version=1, synthetic=True)
    decision = promote(DATASET, version=2, synthetic=True)
    assert not decision.promoted and "fingerprint" in decision.reason and "fp-test-b" in decision.reason
    assert tracking.get_model_version(DEMO_NAME, "2").tags["promotion.decision"] == "refused"
    assert promote(DATASET, version=2, synthetic=True, force=True).promoted


@pytest.mark.slow
def test_synthetic_runs_only_reach_the_demo_name(tracking):
    assert registered_model_name(DATASET, synthetic=True) == DEMO_NAME
    assert registered_model_name(DATASET, synthetic=False) == f"{DATASET}-classifier"
    run_id, model_uri = log_fake_run(0.8, synthetic=True, explanations=False)
    with pytest.raises(MedxpError, match="data.synthetic"):
        register_model(run_id, model_uri, CONFIG, synthetic=False)
    assert register_model(run_id, model_uri, CONFIG, synthetic=True).name == DEMO_NAME
    real = register_fake_runs(0.8, synthetic=False, explanations=False)
    assert tracking.get_model_version(f"{DATASET}-classifier", real[0]).tags["data.synthetic"] == "false"
    with pytest.raises(MedxpError, match="fundus-classifier-demo"):
        promote("unknown-dataset", synthetic=True)


@pytest.mark.slow
def test_version_carries_card_tags_and_artifacts(tracking, tmp_path):
    register_fake_runs(0.85)
    version = tracking.get_model_version(DEMO_NAME, "1")
    assert version.tags["metric.test_accuracy"] == "0.85" and version.tags["data.fingerprint"] == "fp-test-a"
    assert version.tags["source.run_id"] == version.run_id and version.tags["data.synthetic"] == "true"
    assert "accuracy: 0.850 (95% CI 0.800-0.890)" in version.description
    assert "GENERATED" in version.description and "glaucoma 10" in version.description
    assert "DEMO" in tracking.get_registered_model(DEMO_NAME).description

    png = mlflow.artifacts.download_artifacts(version.tags["artifact.confusion_matrix"], dst_path=str(tmp_path / "a"))
    assert Path(png).read_bytes().startswith(b"\x89PNG")
    via_model_id = mlflow.artifacts.download_artifacts(
        f"models:/{version.model_id}/evaluation/test_confusion_matrix.png", dst_path=str(tmp_path / "b"))
    assert Path(via_model_id).read_bytes() == Path(png).read_bytes()
    assert version.tags["artifact.explanations"].endswith("/explanations")


@pytest.mark.slow
def test_champion_loads_by_alias_and_predicts_any_batch(tracking):
    register_fake_runs(0.85)
    promote(DATASET, synthetic=True)
    model = mlflow.pytorch.load_model(champion_uri(DATASET, synthetic=True), map_location="cpu").eval()
    for batch_size in (1, 5):
        with torch.no_grad():
            probabilities = model(torch.rand(batch_size, 3, 8, 8))
        assert probabilities.shape == (batch_size, len(CLASS_NAMES))
        assert torch.allclose(probabilities.sum(dim=1), torch.ones(batch_size), atol=1e-5)
