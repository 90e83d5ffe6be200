"""The search's description in the MLflow UI: what it searches, ASHA's rungs, the outcome and where things are."""

from __future__ import annotations

import types

import pytest

from medxp.config import load_project
from medxp.search.report import asha_rungs, note, objective_phrase, search_outcome, search_plan
from medxp.search.space import load_search_space
from medxp.search.trial import trial_note, trial_run_name
from tests.conftest import SMALL_CNN


@pytest.fixture
def config():
    return load_project("glaucoma", {"search.max_epochs": 8, "search.grace_period": 1, "search.n_trials": 12,
                                     "search.sampler": "tpe", "search.startup_trials": 3},
                        experiment=SMALL_CNN)


def test_the_plan_names_every_parameter_with_its_range_the_sampler_the_rungs_and_the_trials(config):
    space = load_search_space("glaucoma_small_cnn")
    plan = search_plan(config, space, "glaucoma-nov", "sqlite:////x/optuna.db", 12, "glaucoma-small_cnn", True)
    assert "### Hyper-parameter search `glaucoma-nov`" in plan
    assert "| `lr` | `train.lr` | 0.0001 to 0.03, log scale |" in plan
    assert "| `optimizer` | `train.optimizer` | adam, adamw, sgd, adadelta, adagrad |" in plan
    assert "0.8 to 0.98 (only when optimizer is sgd)" in plan
    assert "Optuna TPE (seed" in plan and "the first 3 trials sampled at random" in plan
    assert "up to 8 epochs a trial, judged at epochs 1, 2, 4 (grace period 1, reduction factor 2)" in plan
    assert "**Trials**: 12 (`search.n_trials`; 12 to run now)" in plan and "`glaucoma-small_cnn-trial-NNN`" in plan
    assert "validation accuracy (`valid_accuracy`; arg-max decision" in plan
    assert "positive class `abnormal`" in plan and "generated demo data" in plan


@pytest.mark.parametrize("max_t, grace, factor", [(8, 1, 2.0), (10, 2, 3.0), (3, 1, 2.0), (2, 2, 2.0), (30, 4, 2.5)])
def test_the_rungs_are_those_of_ray_asha_below_the_budget(max_t, grace, factor):
    from medxp.search.study import PruningScheduler

    scheduler = PruningScheduler(max_t, grace, factor)
    ray_rungs = sorted(int(milestone) for milestone, _ in scheduler._brackets[0]._rungs if milestone < max_t)
    assert asha_rungs(max_t, grace, factor) == ray_rungs


def test_the_objective_states_its_split_and_decision_rule(config):
    assert objective_phrase(config.replace({"eval.primary_metric": "roc_auc"}, origin="test")) == \
        "validation ROC AUC (`valid_roc_auc`; positive class `abnormal`, threshold-free)"


def test_the_outcome_names_the_best_trial_its_validation_value_the_table_and_the_plots(config):
    result = types.SimpleNamespace(best_trial_number=3, best_value=0.8125, best_params={"train.lr": 0.003},
                                   best_run_id="abc", best_run_name="glaucoma-small_cnn-trial-003",
                                   state_counts={"complete": 5, "pruned": 2}, epochs_total=30, wall_time_s=61.2)
    outcome = search_outcome(result, config, ["search/plots/optimization_history.png"])
    assert "Best: **trial 3** (run `glaucoma-small_cnn-trial-003`), validation accuracy" in outcome
    assert "**0.8125**" in outcome and "`train.lr` = 0.003 (`search/best_params.yaml`)" in outcome
    assert "5 complete, 2 pruned" in outcome and "`search/trials.csv`" in outcome
    assert "`search/plots/optimization_history.png`" in outcome

    nothing = types.SimpleNamespace(best_trial_number=None, best_value=None, best_params={}, best_run_id=None,
                                    state_counts={"fail": 2}, epochs_total=0, wall_time_s=3.0)
    assert "**No trial finished**" in search_outcome(nothing, config, [])


def test_a_long_description_is_cut_to_mlflows_tag_length():
    text = note("head", "x" * 20000)
    assert text.startswith("head\n\n") and len(text) <= 8000 and text.endswith("(cut to MLflow's tag length)")


def test_trial_runs_are_named_by_dataset_model_and_number():
    assert trial_run_name("glaucoma", "small_cnn", 3, {"lr": 0.01}) == "glaucoma-small_cnn-trial-003"
    assert trial_run_name("fetal_health", "mlp", 12, {"model": "hist_gradient_boosting"}) == \
        "fetal_health-hist_gradient_boosting-trial-012"  # the sampled model, when the space searches it
    assert trial_run_name("", "", 7, {}) == "trial-007"
    assert "- `lr` = 0.01" in trial_note("s", 3, {"lr": 0.01}) and "validation split only" in trial_note("s", 3, {})
    assert "never trained" in trial_note("s", 3, {}, trained=False)
