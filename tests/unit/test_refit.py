"""The refit (`search.refit`): the chosen estimator fitted again on train + valid before the test split.

Generated data only: the CTG demo (medxp.data.synthetic_tabular, not real patients).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.ensemble import HistGradientBoostingClassifier

from medxp.config import load_project
from medxp.data.synthetic_tabular import generate_ctg_demo
from medxp.errors import MedxpError
from medxp.flows.refit import REFIT_TAG, refit_on_pool, refit_selected
from medxp.flows.search_register import chosen_name
from medxp.models import InferenceModel
from medxp.models.ensemble import EnsembleModel
from medxp.pipeline import inference_model, run_experiment
from medxp.tracking import NullTracker
from medxp.training.estimator import split_arrays


@pytest.fixture(scope="module")
def ctg_root(tmp_path_factory):
    """600 generated CTG exams (synthetic, not real patients)."""
    return generate_ctg_demo(tmp_path_factory.mktemp("ctg") / "fetal_health", rows=600)


def trained(root, **overrides):
    """A boosting model fitted on the demo's train split, wrapped as the pipeline logs it, and its data."""
    config = load_project("fetal_health", {"data.data_dir": str(root), "model.gb_max_iter": 40,
                                           "eval.bootstrap_resamples": 20, "train.threads": 1, **overrides})
    result = run_experiment(config, NullTracker(), log_model=False, progress=False, splits=("valid",))
    return inference_model(result.model, config, result.data, result.evaluations["valid"].rule), result.data


def probabilities(model, data, split="test"):
    with torch.no_grad():
        return model(data.datasets[split].images).numpy()


def test_the_refit_fits_the_same_settings_and_iterations_on_train_plus_valid(ctg_root):
    model, data = trained(ctg_root, **{"train.class_weights": "balanced", "model.gb_learning_rate": 0.2})
    before = probabilities(model, data)
    refitted = refit_on_pool(model, data)
    assert np.array_equal(probabilities(model, data), before)  # the chosen model itself is untouched
    assert refitted.network.iterations == model.network.iterations == 40
    assert torch.equal(refitted.mean, model.mean) and torch.equal(refitted.std, model.std)
    # What it must equal: scikit-learn's estimator with the trial's settings, class weights and seed,
    # fitted on every train + valid row (as the data module standardises them).
    (train, train_labels), (valid, valid_labels) = split_arrays(data, "train"), split_arrays(data, "valid")
    original = model.network.estimator
    expected = HistGradientBoostingClassifier(
        learning_rate=0.2, max_iter=40, max_leaf_nodes=original.max_leaf_nodes, max_depth=original.max_depth,
        min_samples_leaf=original.min_samples_leaf, l2_regularization=original.l2_regularization,
        max_features=original.max_features, class_weight=original.class_weight, random_state=original.random_state,
        early_stopping=False).fit(np.concatenate([train, valid]), np.concatenate([train_labels, valid_labels]))
    assert original.class_weight is not None  # balanced weights travel with the refit
    test, _ = split_arrays(data, "test")
    assert np.allclose(refitted.network.estimator.predict_proba(test), expected.predict_proba(test), atol=1e-6)
    assert not np.allclose(probabilities(refitted, data), before)  # more rows, other trees


def test_every_member_of_an_ensemble_is_refitted(ctg_root):
    first, data = trained(ctg_root)
    second, _ = trained(ctg_root, **{"model.gb_max_leaf_nodes": 7, "train.seed": 3})
    ensemble = EnsembleModel([first, second])
    refitted = refit_on_pool(ensemble, data)
    assert isinstance(refitted, EnsembleModel) and len(refitted.members) == 2
    for original, member in zip(ensemble.members, refitted.members):
        assert member is not original and member.network.iterations == original.network.iterations
        assert not np.allclose(probabilities(member, data), probabilities(original, data))
    assert np.allclose(probabilities(refitted, data),
                       (probabilities(refitted.members[0], data) + probabilities(refitted.members[1], data)) / 2,
                       atol=1e-6)


def test_the_refitted_model_is_logged_and_the_run_says_what_was_refitted(ctg_root):
    model, data = trained(ctg_root)
    tracker = NullTracker()
    refitted, uri = refit_selected(model, data, tracker, "trial 5")
    assert tracker.models["refit"] is refitted and refitted is not model
    pool = len(data.datasets["train"]) + len(data.datasets["valid"])
    assert tracker.latest("refit_rows") == pool
    assert tracker.tags[REFIT_TAG].startswith(f"trial 5 fitted again on train + valid ({pool} rows: "
                                              f"{len(data.datasets['train'])} train, ")


def test_the_chosen_model_is_named_by_trial_or_by_the_ensembles_trials():
    class Search:
        best_trial_number = 5
        ranked_models = [(5, 0.9, "models:/m-a"), (2, 0.8, "models:/m-b"), (9, 0.7, "models:/m-c")]

    assert chosen_name(Search, torch.nn.Linear(1, 1)) == "trial 5"
    ensemble = EnsembleModel([torch.nn.Softmax(dim=1), torch.nn.Softmax(dim=1)])
    assert chosen_name(Search, ensemble) == "the ensemble of trials 5, 2"


def test_a_network_or_a_model_with_a_fitted_rule_is_refused(ctg_root):
    model, data = trained(ctg_root)
    network = InferenceModel(torch.nn.Linear(21, 3), torch.zeros(21), torch.ones(21))
    with pytest.raises(MedxpError, match=r"'search.refit': the chosen model is Linear, not a fitted model of a kind "
                                         r"fitted in one call.*expected search.refit: false"):
        refit_on_pool(network, data)
    with pytest.raises(MedxpError, match="'search.refit': ensemble member 1 is Linear"):
        refit_on_pool(EnsembleModel([model, network]), data)
    calibrated = InferenceModel(model.network, model.mean, model.std, temperature=1.7)
    with pytest.raises(MedxpError, match="'search.refit': the chosen model carries a decision threshold or "
                                         "temperature fitted on the validation split"):
        refit_on_pool(calibrated, data)


@pytest.mark.parametrize("project, overrides", [
    ("fetal_health", {"search.cv_folds": 0}),  # ranked on valid: the refit would train on what chose it
    ("fetal_health", {"eval.calibration": "temperature"}),
    # binary: its threshold needs valid (and without its Lite0 companions, which refuse a refit first)
    ("breastmnist", {"search.cv_folds": 5, "search.refit": True, "search.ensemble_with": ""}),
])
def test_the_config_refuses_a_refit_without_k_fold_ranking_or_with_a_rule_to_fit(project, overrides):
    with pytest.raises(MedxpError, match=r"'search.refit' = True: expected false, or true with search.cv_folds >= 2"):
        load_project(project, overrides)


def test_the_fetal_project_refits_its_boosting_and_its_mlp_experiments_do_not():
    assert load_project("fetal_health").search.refit is True
    for experiment in ("mlp", "mlp_class_weights"):
        assert load_project("fetal_health", experiment=experiment).search.refit is False
