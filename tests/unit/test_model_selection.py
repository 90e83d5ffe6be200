"""The main flow's choice between the best trial's model and the mean of the best few, on validation only."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import medxp.flows.ensemble as ensemble_flow
from medxp.config import load_project
from medxp.errors import MedxpError
from medxp.flows.search_register import select_model
from medxp.tracking import NullTracker

RANKED = [(4, 0.90, "models:/m-four"), (1, 0.88, "models:/m-one"), (7, 0.85, "models:/m-seven")]


def search_result(ranked=RANKED):
    return SimpleNamespace(ranked_models=list(ranked), best_value=ranked[0][1] if ranked else None,
                           best_trial_number=ranked[0][0] if ranked else None,
                           best_model_uri=ranked[0][2] if ranked else None)


@pytest.fixture
def fake_ensembles(monkeypatch):
    """build / evaluate / log of the ensemble flow replaced; records what was built, scores `value`."""
    state = SimpleNamespace(built=[], value=0.0, logged=0, error=None)

    def build(uris):
        if state.error:
            raise MedxpError(state.error)
        state.built.append(list(uris))
        return torch.nn.Identity()

    def evaluate(ensemble, data, split, config, tracker=None):
        assert split == "valid" and tracker is None  # selection never touches test, records nothing
        return SimpleNamespace(metrics={config.eval.primary_metric: state.value})

    def log(ensemble, tracker, example):
        state.logged += 1
        return "models:/m-ensemble"

    monkeypatch.setattr(ensemble_flow, "build_ensemble", build)
    monkeypatch.setattr(ensemble_flow, "evaluate_ensemble", evaluate)
    monkeypatch.setattr(ensemble_flow, "log_ensemble", log)
    monkeypatch.setattr(ensemble_flow, "fit_ensemble_rule", lambda ensemble, data, config: ensemble)
    monkeypatch.setattr("medxp.flows.search_register.example_batch", lambda data: None)
    return state


def config(top: int, **search):
    return load_project("glaucoma", {"search.ensemble_top": top, "eval.primary_metric": "roc_auc",
                                     **{f"search.{key}": value for key, value in search.items()}})


def test_ensemble_registered_when_it_beats_the_best_trial_on_valid(fake_ensembles):
    fake_ensembles.value = 0.93
    tracker, best = NullTracker(), torch.nn.Linear(1, 1)
    model, uri = select_model(search_result(), best, None, config(2), tracker)
    assert fake_ensembles.built == [["models:/m-four", "models:/m-one"]]  # the two best, best first
    assert uri == "models:/m-ensemble" and model is not best and fake_ensembles.logged == 1
    assert tracker.latest("valid_roc_auc_ensemble_top2") == pytest.approx(0.93)
    assert tracker.latest("valid_roc_auc_best_trial") == pytest.approx(0.90)
    assert tracker.tags["medxp.selected"].startswith("ensemble of trials 4, 1")


def test_best_trial_kept_when_the_ensemble_does_not_beat_it(fake_ensembles):
    fake_ensembles.value = 0.90  # a tie keeps the single model
    tracker, best = NullTracker(), torch.nn.Linear(1, 1)
    model, uri = select_model(search_result(), best, None, config(3), tracker)
    assert fake_ensembles.built == [["models:/m-four", "models:/m-one", "models:/m-seven"]]
    assert (model, uri) == (best, "models:/m-four") and fake_ensembles.logged == 0
    assert tracker.tags["medxp.selected"].startswith("trial 4: val roc_auc 0.9000, the mean of trials 4, 1, 7")


@pytest.mark.parametrize("value, relation", [(0.87, "<"), (0.90, "=")])
def test_without_ensemble_if_better_the_mean_is_registered_whatever_the_comparison(fake_ensembles, value, relation):
    fake_ensembles.value = value  # below or level with the best trial's (selection-inflated) valid value
    tracker, best = NullTracker(), torch.nn.Linear(1, 1)
    model, uri = select_model(search_result(), best, None, config(3, ensemble_if_better=False), tracker)
    assert fake_ensembles.built == [["models:/m-four", "models:/m-one", "models:/m-seven"]]
    assert uri == "models:/m-ensemble" and model is not best and fake_ensembles.logged == 1
    assert tracker.latest("valid_roc_auc_ensemble_top3") == pytest.approx(value)  # both values stay on record
    assert tracker.latest("valid_roc_auc_best_trial") == pytest.approx(0.90)
    selected = tracker.tags["medxp.selected"]
    assert selected.startswith(f"ensemble of trials 4, 1, 7: val roc_auc {value:.4f} {relation} 0.9000")
    assert "search.ensemble_if_better is false" in selected and tracker.tags["model"] == "ensemble"


def test_without_ensemble_if_better_one_finished_trial_is_still_registered_alone(fake_ensembles):
    tracker, best = NullTracker(), torch.nn.Linear(1, 1)
    assert select_model(search_result(RANKED[:1]), best, None, config(3, ensemble_if_better=False),
                        tracker) == (best, "models:/m-four")
    assert fake_ensembles.built == [] and "fewer than 2 finished trials" in tracker.tags["medxp.selected"]


@pytest.mark.parametrize("top, ranked", [(0, RANKED), (3, RANKED[:1])])
def test_no_ensemble_when_off_or_one_finished_trial(fake_ensembles, top, ranked):
    tracker, best = NullTracker(), torch.nn.Linear(1, 1)
    assert select_model(search_result(ranked), best, None, config(top), tracker) == (best, ranked[0][2])
    assert fake_ensembles.built == []
    assert ("medxp.selected" in tracker.tags) == (top >= 2)


def test_members_that_disagree_fall_back_to_the_best_trial(fake_ensembles):
    fake_ensembles.error = "ensemble input shape [1, 28, 28] differs"
    tracker, best = NullTracker(), torch.nn.Linear(1, 1)
    assert select_model(search_result(), best, None, config(2), tracker) == (best, "models:/m-four")
    assert "no ensemble: ensemble input shape" in tracker.tags["medxp.selected"]


def test_ensemble_top_of_one_is_refused():
    with pytest.raises(MedxpError, match="search.ensemble_top"):
        config(1)


def test_trials_ranked_by_k_fold_means_weigh_the_ensemble_against_the_best_trials_own_valid(fake_ensembles, monkeypatch):
    """With `search.cv_folds` the search's best value is a K-fold mean; the ensemble is compared with the best
    trial's validation value, on the same split."""
    scored = []

    def best_on_valid(model, data, split, config):
        scored.append(split)
        return SimpleNamespace(metrics={"roc_auc": 0.95})

    monkeypatch.setattr("medxp.flows.search_register.evaluate_inference_model", best_on_valid)
    cv = load_project("fetal_health", {"search.ensemble_top": 2, "eval.primary_metric": "roc_auc"})
    fake_ensembles.value = 0.93  # above the best trial's K-fold mean (0.90), below its valid value
    tracker, best = NullTracker(), torch.nn.Linear(1, 1)
    assert select_model(search_result(), best, None, cv, tracker) == (best, "models:/m-four")
    assert scored == ["valid"] and tracker.latest("valid_roc_auc_best_trial") == pytest.approx(0.95)
    assert tracker.tags["medxp.selected"].startswith("trial 4: val roc_auc 0.9500")
