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

CLASS_NAMES = ("normal", "glaucoma")


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """One sqlite tracking store for the module (creating its tables takes seconds); artifacts under it too."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # the default artifact root, ./mlruns, lands in the temporary folder
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        yield MlflowClient()
    mlflow.set_tracking_uri(None)


@pytest.fixture
def dataset(tracking, request) -> str:
    """A dataset name of its own for each test, so registered models do not collide."""
    return request.node.name.removeprefix("test_").replace("_", "-")[:40]


def config_for(dataset: str) -> ExperimentConfig:
    return ExperimentConfig(dataset=DatasetSpec(name=dataset, class_names=CLASS_NAMES, image_size=8, channels=3))


def prediction_table(first_right: int, last_right: int, cases: int = 200) -> dict:
    """Per-case test predictions (label, prob_<class>), right exactly on cases first_right..last_right-1."""
    labels = np.arange(cases) % 2
    right = (np.arange(cases) >= first_right) & (np.arange(cases) < last_right)
    positive_prob = np.where(right == (labels == 1), 0.8, 0.2)
    return {"label": labels.tolist(), "prob_normal": (1 - positive_prob).tolist(),
            "prob_glaucoma": positive_prob.tolist()}


def log_fake_run(dataset: str, accuracy: float, *, fingerprint: str = "fp-test-a", synthetic: bool = True,
                 explanations: bool = True, predictions: dict | None = None) -> tuple[str, str]:
    """One run shaped like a medxp training run; returns (run_id, LoggedModel URI)."""
    config = config_for(dataset)
    torch.manual_seed(0)
    network = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, len(CLASS_NAMES)))
    model = InferenceModel(network, config.dataset.mean, config.dataset.std)
    with MlflowTracker.start("promotion-test", run_name=f"{dataset}-{accuracy}") as tracker:
        tracker.set_tags({"dataset": dataset, "model": "tiny", "data.fingerprint": fingerprint,
                          "data.synthetic": str(synthetic).lower()})
        tracker.log_params(config.to_flat_dict())
        tracker.log_metrics({"test_accuracy": accuracy, "test_accuracy_ci_low": accuracy - 0.05,
                             "test_accuracy_ci_high": accuracy + 0.04, "test_roc_auc": accuracy + 0.05,
                             "epochs_trained": 3, "best_epoch": 2})
        tracker.log_dict({"data": {"class_counts": {"test": {"normal": 10, "glaucoma": 10}}}},
                         "config/environment.json")
        tracker.log_figure(confusion_matrix_figure([[8, 2], [2, 8]], CLASS_NAMES),
                           "evaluation/test_confusion_matrix.png")
        tracker.log_text("fake report", "evaluation/test_classification_report.txt")
        tracker.log_dict({"matrix": [[8, 2], [2, 8]]}, "evaluation/test_confusion_matrix.json")
        if predictions is not None:
            import pandas as pd

            mlflow.log_text(pd.DataFrame(predictions).to_csv(index=False), "evaluation/test_predictions.csv")
        if explanations:
            tracker.log_figure(confusion_matrix_figure([[1, 0], [0, 1]], CLASS_NAMES), "explanations/lime_0.png")
        model_uri = tracker.log_model(model, np.random.rand(2, 3, 8, 8).astype(np.float32))
    return tracker.run_id, model_uri


def register_fake_runs(dataset: str, *accuracies: float, synthetic: bool = True, **run_options) -> list[str]:
    """Logs and registers one run per accuracy; returns the version numbers."""
    versions = []
    for accuracy in accuracies:
        run_id, model_uri = log_fake_run(dataset, accuracy, synthetic=synthetic, **run_options)
        versions.append(str(register_model(run_id, model_uri, config_for(dataset), synthetic=synthetic).version))
    return versions


def aliases(client: MlflowClient, dataset: str) -> dict[str, str]:
    """The demo model's aliases, versions as strings."""
    registered = client.get_registered_model(registered_model_name(dataset, synthetic=True))
    return {alias: str(version) for alias, version in registered.aliases.items()}


@pytest.mark.slow
def test_no_regression_rule_force_and_rollback(tracking, dataset):
    client, name = tracking, registered_model_name(dataset, synthetic=True)
    assert register_fake_runs(dataset, 0.80, 0.70, 0.90) == ["1", "2", "3"]

    first = promote(dataset, version=1, synthetic=True)
    assert first.promoted and first.champion_before is None and aliases(client, dataset) == {"champion": "1"}

    worse = promote(dataset, version="2", synthetic=True)
    assert not worse.promoted and worse.outcome == "refused"
    assert (worse.candidate_value, worse.champion_value, worse.champion_after) == (0.70, 0.80, "1")
    assert aliases(client, dataset) == {"champion": "1"}
    recorded = client.get_model_version(name, "2").tags
    assert recorded["promotion.decision"] == "refused" and recorded["promotion.compared_to"] == "1"
    assert recorded["promotion.candidate_value"] == "0.7" and recorded["promotion.champion_value"] == "0.8"
    assert "0.7000 is below the champion's 0.8000" in recorded["promotion.reason"]

    better = promote(dataset, synthetic=True)  # no version: the latest, 3
    assert better.promoted and better.candidate_version == "3" and better.champion_before == "1"
    assert aliases(client, dataset) == {"champion": "3", "previous": "1"}
    assert client.get_model_version(name, "3").tags["promotion.decision"] == "promoted"

    forced = promote(dataset, version=2, synthetic=True, force=True, note="reader study needs v2")
    assert forced.promoted and forced.forced and aliases(client, dataset) == {"champion": "2", "previous": "3"}
    recorded = client.get_model_version(name, "2").tags
    assert recorded["promotion.forced"] == "true" and recorded["promotion.note"] == "reader study needs v2"
    assert recorded["promotion.forced_by"] and recorded["promotion.forced_at"]
    assert recorded["promotion.history"].count("\n") == 1  # the refusal, then the forced promotion

    again = promote(dataset, version=2, synthetic=True)
    assert again.outcome == "unchanged" and aliases(client, dataset) == {"champion": "2", "previous": "3"}

    back = rollback(dataset, synthetic=True)
    assert back.champion_after == "3" and aliases(client, dataset) == {"champion": "3", "previous": "2"}


@pytest.mark.slow
def test_equal_metric_keeps_champion(tracking, dataset):
    register_fake_runs(dataset, 0.80, 0.80)
    promote(dataset, version=1, synthetic=True)
    decision = promote(dataset, version=2, synthetic=True)
    assert not decision.promoted and "ties" in decision.reason
    assert aliases(tracking, dataset) == {"champion": "1"}


@pytest.mark.slow
def test_different_test_data_is_refused_unless_forced(tracking, dataset):
    register_fake_runs(dataset, 0.80, explanations=False)
    register_fake_runs(dataset, 0.95, fingerprint="fp-test-b", explanations=False)
    promote(dataset, version=1, synthetic=True)
    decision = promote(dataset, version=2, synthetic=True)
    assert not decision.promoted and "fingerprint 'fp-test-b'" in decision.reason
    assert tracking.get_model_version(decision.registered_model, "2").tags["promotion.decision"] == "refused"
    assert promote(dataset, version=2, synthetic=True, force=True).forced


@pytest.mark.slow
def test_synthetic_runs_only_reach_the_demo_name(tracking, dataset):
    assert registered_model_name(dataset, synthetic=True) == f"{dataset}-classifier-demo"
    assert registered_model_name(dataset, synthetic=False) == f"{dataset}-classifier"
    run_id, model_uri = log_fake_run(dataset, 0.8, synthetic=True, explanations=False)
    with pytest.raises(MedxpError, match="data.synthetic"):
        register_model(run_id, model_uri, config_for(dataset), synthetic=False)
    assert register_model(run_id, model_uri, config_for(dataset), synthetic=True).name == f"{dataset}-classifier-demo"
    register_fake_runs(dataset, 0.8, synthetic=False, explanations=False)
    assert tracking.get_model_version(f"{dataset}-classifier", "1").tags["data.synthetic"] == "false"
    with pytest.raises(MedxpError, match="'nowhere-classifier-demo' does not exist"):
        promote("nowhere", synthetic=True)
    with pytest.raises(MedxpError, match="expected one of 1"):
        promote(dataset, version=7, synthetic=True)


@pytest.mark.slow
def test_version_carries_card_tags_and_artifacts(tracking, dataset, tmp_path):
    register_fake_runs(dataset, 0.85)
    name = registered_model_name(dataset, synthetic=True)
    version = tracking.get_model_version(name, "1")
    assert version.tags["metric.test_accuracy"] == "0.85" and version.tags["data.fingerprint"] == "fp-test-a"
    assert version.tags["source.run_id"] == version.run_id and version.tags["data.synthetic"] == "true"
    assert "accuracy: 0.850 (95% CI 0.800-0.890)" in version.description
    assert "GENERATED" in version.description and "glaucoma 10" in version.description
    assert "DEMO" in tracking.get_registered_model(name).description

    png_uri = version.tags["artifact.confusion_matrix"]
    assert png_uri == f"models:/{name}/1/evaluation/test_confusion_matrix.png"
    png = Path(mlflow.artifacts.download_artifacts(png_uri, dst_path=str(tmp_path / "by-version")))
    assert png.read_bytes().startswith(b"\x89PNG")
    assert version.source == f"models:/{version.tags['source.model_id']}"
    in_logged_model = tracking.list_logged_model_artifacts(version.tags["source.model_id"], "evaluation")
    assert "evaluation/test_confusion_matrix.png" in {item.path for item in in_logged_model}
    explanations = mlflow.artifacts.download_artifacts(version.tags["artifact.explanations"],
                                                       dst_path=str(tmp_path / "explanations"))
    assert (Path(explanations) / "lime_0.png").is_file()


@pytest.mark.slow
def test_champion_loads_by_alias_and_predicts_any_batch(tracking, dataset):
    register_fake_runs(dataset, 0.85, explanations=False)
    promote(dataset, synthetic=True)
    model = mlflow.pytorch.load_model(champion_uri(dataset, synthetic=True), map_location="cpu").eval()
    for batch_size in (1, 5):
        with torch.no_grad():
            probabilities = model(torch.rand(batch_size, 3, 8, 8))
        assert probabilities.shape == (batch_size, len(CLASS_NAMES))
        assert torch.allclose(probabilities.sum(dim=1), torch.ones(batch_size), atol=1e-5)


@pytest.mark.slow
def test_paired_bootstrap_gate(tracking, dataset):
    """A better point estimate is not enough under require_significant: the paired CI must lie above 0."""
    # Of 200 test cases the champion gets 0-139 right; the slightly better candidate loses 10 of those
    # and gains 12 others (+2 cases); the clearly better one gets 0-179 right (+40 cases, none lost).
    for first, last in ((0, 140), (10, 152), (0, 180)):
        run_id, model_uri = log_fake_run(dataset, (last - first) / 200, explanations=False,
                                         predictions=prediction_table(first, last))
        register_model(run_id, model_uri, config_for(dataset), synthetic=True)
    promote(dataset, version=1, synthetic=True)

    slight = promote(dataset, version=2, synthetic=True, require_significant=True, resamples=500)
    assert not slight.promoted and slight.outcome == "refused"
    assert slight.paired is not None and slight.paired.difference == pytest.approx(0.01)
    assert slight.paired.ci_low < 0 < slight.paired.ci_high and "require_significant" in slight.reason
    tags = tracking.get_model_version(slight.registered_model, "2").tags
    assert tags["promotion.paired_significant"] == "false" and tags["promotion.paired_cases"] == "200"

    # Without the gate the same candidate wins on its point estimate, and the interval is still reported.
    plain = promote(dataset, version=2, synthetic=True, resamples=500)
    assert plain.promoted and "paired bootstrap difference of test_accuracy +0.0100" in plain.reason

    clear = promote(dataset, version=3, synthetic=True, require_significant=True, resamples=500)
    assert clear.promoted and clear.paired.significant and clear.paired.ci_low > 0
    assert clear.paired.difference == pytest.approx(0.19)
    assert aliases(tracking, dataset) == {"champion": "3", "previous": "2"}


@pytest.mark.slow
def test_gate_refuses_without_predictions(tracking, dataset):
    register_fake_runs(dataset, 0.80, 0.90, explanations=False)  # no test_predictions.csv logged
    promote(dataset, version=1, synthetic=True)
    decision = promote(dataset, version=2, synthetic=True, require_significant=True)
    assert not decision.promoted and decision.paired is None
    assert "no evaluation/test_predictions.csv" in decision.reason
