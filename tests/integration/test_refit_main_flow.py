"""The fetal-health main flow with its project's refit, on the generated CTG demo (not real patients).

One module-scoped run of `search_explain_register`: 3 trials of the project's boosting search, ranked
by 3-fold CV over train + valid (`search.cv_folds`), the chosen model fitted again on train + valid
(`search.refit`, the project's default) and registered. Plus the refit of an ensemble logged into a
real MLflow run and loaded back.
"""

from __future__ import annotations

import types

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from medxp.config import load_project
from medxp.data.synthetic_tabular import generate_ctg_demo
from medxp.data.tabular import create_tabular_datamodule
from medxp.flows.refit import REFIT_TAG, refit_selected
from medxp.flows.search_register import search_explain_register
from medxp.models import load_inference_model
from medxp.models.ensemble import EnsembleModel
from medxp.tracking.mlflow_tracker import MlflowTracker
from tests.conftest import local_ray, tracking_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("refit")
    root = generate_ctg_demo(tmp_path / "data" / "fetal_health", rows=600)
    config = load_project("fetal_health", {
        "data_dir": str(root), "search.n_trials": 3, "search.cv_folds": 3, "search.max_concurrent": 2,
        "eval.bootstrap_resamples": 20, "train.threads": 1})
    assert config.search.refit and root.is_dir()
    with tracking_store(tmp_path):
        with local_ray(), MlflowTracker.start("fetal_health", run_name="main-fetal",
                                              tags={"medxp.kind": "search"}) as tracker:
            result = search_explain_register(config, tracker, search_name="refit", explain_samples=40)
        yield types.SimpleNamespace(result=result, client=MlflowClient(), parent=tracker.run_id, config=config)


def test_the_registered_model_is_the_refit_and_its_card_says_so(searched):
    client, result = searched.client, searched.result
    version = client.get_model_version(result.registered_name, result.registered_version)
    parent = client.get_run(searched.parent)
    refit_models = [model for model in client.search_logged_models(
        experiment_ids=[parent.info.experiment_id], filter_string=f"source_run_id = '{searched.parent}'")
        if model.name == "refit"]
    assert [f"models:/{model.model_id}" for model in refit_models] == [version.source]
    tag = parent.data.tags[REFIT_TAG]
    assert "fitted again on train + valid (" in tag and "the test split is its held-out score" in tag
    data = create_tabular_datamodule(searched.config)
    assert parent.data.metrics["refit_rows"] == len(data.datasets["train"]) + len(data.datasets["valid"]) > 400
    assert "**Refit**: " in version.description and "GENERATED synthetic demo data" in version.description
    assert "21 features input" in version.description
    assert parent.data.metrics["test_f1_macro"] == pytest.approx(result.test_metrics["f1_macro"])


def test_the_refit_differs_from_the_trials_model_that_was_chosen(searched):
    result = searched.result
    chosen = load_inference_model(result.search.best_model_uri)
    registered = load_inference_model(f"models:/{result.registered_name}/{result.registered_version}")
    rows = torch.rand(8, 21) * 100
    with torch.no_grad():
        assert not np.allclose(chosen(rows).numpy(), registered(rows).numpy())
    members = getattr(registered, "members", [registered])
    assert all(member.network.iterations >= 1 for member in members)


def test_a_refitted_ensemble_is_logged_whole_and_loads_back(searched, tmp_path):
    result = searched.result
    members = [load_inference_model(uri) for _, _, uri in result.search.ranked_models[:2]]
    data = create_tabular_datamodule(searched.config)
    with MlflowTracker.start("fetal_health", run_name="refit-ensemble") as tracker:
        refitted, uri = refit_selected(EnsembleModel(members), data, tracker, "the ensemble of trials 0, 1")
    loaded = load_inference_model(uri)
    rows = data.datasets["test"].images[:16]
    with torch.no_grad():
        assert np.allclose(loaded(rows).numpy(), refitted(rows).numpy(), atol=1e-6)
        assert not np.allclose(loaded(rows).numpy(), EnsembleModel(members)(rows).numpy())
    assert mlflow.get_run(tracker.run_id).data.tags[REFIT_TAG].startswith("the ensemble of trials 0, 1 fitted again")
