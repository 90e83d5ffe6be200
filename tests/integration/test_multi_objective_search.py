"""A real two-objective search on tiny generated data, through the main flow: validation ROC AUC against
inference time, the Pareto front on the parent run, the chosen trial registered with its rule.

One module-scoped run of `search_explain_register`: 4 trials of up to 2 epochs (NSGA-II, 2 at a time,
ASHA judging at epoch 1) over two learning rates and two widths of the small CNN (so the trials differ
in cost too), objectives `[val_roc_auc:max, infer_ms:min]` (ROC AUC: two epochs on the tiny set leave
the arg-max accuracy at chance), a select rule every front trial meets, and `search.ensemble_top` set,
which a multi-objective search must skip.
"""

from __future__ import annotations

import csv
import io
import types

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from medxp.config import load_project
from medxp.flows.search_register import search_explain_register
from medxp.objectives import parse_objectives, parse_select
from medxp.tracking.mlflow_tracker import MlflowTracker
from tests.conftest import SMALL_CNN, local_ray, tracking_store

pytestmark = pytest.mark.slow

SPACE = ("lr: {type: categorical, choices: [0.01, 0.001]}\n"
         "model.channels: {type: categorical, choices: [[8], [8, 16]]}\n")
STUDY = "two-objectives"
RULE = "max val_roc_auc where infer_ms <= 100000"


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("multi-objective")
    (tmp_path / "space.yaml").write_text(SPACE)
    config = load_project("glaucoma", {
        "data_dir": str(tmp_path / "data"), "data.demo_images_per_class": 32, "data.demo_folds": 3,
        "data.demo_image_size": 48, "dataset.image_size": 32, "epochs": 2, "optimizer": "adam", "batch_size": 16,
        "eval.bootstrap_resamples": 20, "search.space": str(tmp_path / "space.yaml"), "search.n_trials": 4,
        "search.max_concurrent": 2, "search.max_epochs": 2, "search.grace_period": 1, "search.sampler": "nsga2",
        "search.seed": 7, "search.ensemble_top": 2,
        "search.objectives": "[val_roc_auc:max, infer_ms:min]", "search.select": RULE,
    }, experiment=SMALL_CNN)
    with tracking_store(tmp_path):
        with local_ray(), MlflowTracker.start("glaucoma", run_name="main-glaucoma",
                                              tags={"medxp.kind": "search"}) as tracker:
            result = search_explain_register(config, tracker, search_name=STUDY, explain_samples=40)
        study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
        yield types.SimpleNamespace(result=result, search=result.search, study=study, client=MlflowClient(),
                                    parent=tracker.run_id, config=config)


def test_the_study_has_two_directions_and_complete_trials_hold_both_values(searched):
    assert [d.name for d in searched.study.directions] == ["MAXIMIZE", "MINIMIZE"]
    complete = [t for t in searched.study.trials if t.state == TrialState.COMPLETE]
    assert complete and all(len(t.values) == 2 and t.values[1] > 0 for t in complete)
    for trial in complete:  # the second value is the cost the trial's run recorded
        if "duplicate_of" not in trial.user_attrs:
            run = searched.client.get_run(trial.user_attrs["mlflow_run_id"])
            assert run.data.metrics["infer_ms"] == pytest.approx(trial.values[1])
            assert run.data.metrics["valid_roc_auc"] == pytest.approx(trial.values[0])
            assert trial.user_attrs["epoch_objectives"]  # what ASHA saw per epoch, kept beside the values
    for trial in searched.study.trials:  # ASHA prunes on the first objective: a pruned trial has no values
        if trial.state == TrialState.PRUNED:
            assert trial.values is None and trial.user_attrs["epoch_objectives"]["1"] >= 0


def test_the_chosen_trial_is_on_the_front_and_satisfies_the_rule(searched):
    search = searched.search
    front_numbers = {t.number for t in searched.study.best_trials if "duplicate_of" not in t.user_attrs}
    assert search.best_trial_number in front_numbers
    objectives = parse_objectives(searched.config.search.objectives)
    rule = parse_select(RULE, objectives)
    assert all(condition.holds(search.best_values) for condition in rule.conditions)
    assert search.best_value == search.best_values["val_roc_auc"] == max(
        t.values[0] for t in searched.study.best_trials)
    front = search.pareto_front
    assert set(front["number"]) == front_numbers and front.loc[front["selected"], "number"].tolist() == [
        search.best_trial_number]
    assert f"trial {search.best_trial_number} (val_roc_auc" in search.selection


def test_the_parent_run_has_the_front_table_plot_and_a_description_of_the_objectives(searched):
    client, parent = searched.client, searched.parent
    artifacts = {a.path for a in client.list_artifacts(parent, "search")}
    assert {"search/pareto_front.csv", "search/pareto_front.md", "search/pareto_front.png"} <= artifacts
    rows = list(csv.DictReader(io.StringIO(open(client.download_artifacts(parent, "search/pareto_front.csv")).read())))
    assert {int(row["number"]) for row in rows} == set(searched.search.pareto_front["number"])
    assert [row["selected"] for row in rows].count("True") == 1
    run = client.get_run(parent)
    description = run.data.tags["mlflow.note.content"]
    assert "**ASHA prunes on the first objective** only" in description
    assert "`val_roc_auc` (maximised), `infer_ms` (minimised)" in description
    assert f"Chosen: **trial {searched.search.best_trial_number}**" in description and RULE in description
    assert run.data.tags["medxp.select"] == searched.search.selection
    trials = list(csv.DictReader(io.StringIO(open(client.download_artifacts(parent, "search/trials.csv")).read())))
    assert "val_roc_auc" in trials[0] and "infer_ms" in trials[0]


def test_the_registered_version_carries_the_rule_and_no_ensemble_was_built(searched):
    client, result = searched.client, searched.result
    version = client.get_model_version(result.registered_name, result.registered_version)
    assert version.tags["medxp.select"] == searched.search.selection and RULE in version.tags["medxp.select"]
    assert "**Selection**: chosen on the Pareto front" in version.description and RULE in version.description
    selected = client.get_run(searched.parent).data.tags["medxp.selected"]
    assert selected.startswith(f"trial {searched.search.best_trial_number}, chosen on the Pareto front")
    assert "no top-2 ensemble" in selected
    assert version.tags["model"] == "small_cnn"
