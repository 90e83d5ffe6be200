"""End-to-end search on tiny generated data: Ray Tune trials, Optuna study states, MLflow parent/child runs.

One module-scoped scenario keeps the file fast: a 2-trial search, then an interrupted trial
left RUNNING (in Optuna and in MLflow), then the same search resumed with n_trials=6, which
must run exactly 4 new trials, 2 at a time. The space is one categorical learning rate for
SGD: 0.03 learns, 1e-6 does not (ASHA prunes it against the earlier trials), 1e6 gives a
NaN (the trial fails). The seeded random sampler draws 0.03, 0.03, then 0.03, 1e-6, 1e6, 1e-6;
the scenario trains every draw (`search.rerun_duplicates`), and a search of its own checks that
by default a repeat of a finished trial is not trained again.
"""

from __future__ import annotations

import csv
import io
import json
import types

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from optuna.trial import TrialState

from medxp.config import load_project
from tests.conftest import SMALL_CNN, local_ray, tracking_store
from medxp.errors import MedxpError
from medxp.search.runner import run_search

pytestmark = pytest.mark.slow

GOOD_LR, HOPELESS_LR, EXPLODING_LR = 0.03, 1.0e-6, 1.0e6
SPACE = "lr: {type: categorical, choices: [0.03, 1.0e-6, 1.0e+6]}\n"
STUDY = "tiny-search"


def tiny_config(tmp_path, n_trials: int, **overrides):
    return load_project("glaucoma", {
        "data_dir": str(tmp_path / "data"), "data.demo_images_per_class": 64, "data.demo_folds": 3,
        "data.demo_image_size": 48, "dataset.image_size": 32, "epochs": 3, "optimizer": "sgd",
        "eval.primary_metric": "roc_auc", "eval.bootstrap_resamples": 20,
        "search.space": str(tmp_path / "space.yaml"), "search.n_trials": n_trials, "search.max_concurrent": 2,
        "search.max_epochs": 3,
        "search.sampler": "random", "search.seed": 32, "search.grace_period": 1, "search.reduction_factor": 2,
        "search.rerun_duplicates": True, **overrides,
    }, experiment=SMALL_CNN)


def leave_running_trial(tmp_path, experiment_id: str) -> tuple[int, str]:
    """What a killed search leaves behind: a RUNNING Optuna trial and its RUNNING MLflow child run."""
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    trial = study.ask()
    run = MlflowClient().create_run(experiment_id, tags={"medxp.study": STUDY,
                                                         "medxp.trial_number": str(trial.number)})
    return trial.number, run.info.run_id


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("search")
    (tmp_path / "space.yaml").write_text(SPACE)
    with tracking_store(tmp_path):
        with local_ray():
            first = run_search(tiny_config(tmp_path, 2), search_name=STUDY)
            experiment_id = MlflowClient().get_run(first.parent_run_id).info.experiment_id
            leftover_number, leftover_run = leave_running_trial(tmp_path, experiment_id)
            second = run_search(tiny_config(tmp_path, 6), search_name=STUDY)
        study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
        yield types.SimpleNamespace(first=first, second=second, study=study, client=MlflowClient(),
                                    leftover_number=leftover_number, leftover_run=leftover_run,
                                    experiment_id=experiment_id)


def child_runs(searched, parent_run_id: str):
    return searched.client.search_runs([searched.experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'")


def trials_with_lr(study, lr: float):
    return [t for t in study.trials if t.params.get("lr") == lr]


def test_first_search_completes_its_trials(searched):
    assert searched.first.state_counts == {"complete": 2}
    assert searched.first.best_params == {"lr": GOOD_LR}


def test_the_parent_run_of_generated_data_is_tagged_synthetic(searched):
    assert searched.client.get_run(searched.first.parent_run_id).data.tags["data.synthetic"] == "true"


def test_parent_has_one_nested_child_run_per_trial(searched):
    children = child_runs(searched, searched.second.parent_run_id)
    assert len(children) == 4
    for run in children:
        assert run.data.params["train.lr"] in {str(GOOD_LR), str(HOPELESS_LR), str(EXPLODING_LR)}
        assert run.data.tags["medxp.study"] == STUDY
        assert run.data.tags["medxp.trial_state"] in {"finished", "pruned", "failed"}
        assert run.info.status != "RUNNING"
    finished = [r for r in children if r.data.tags["medxp.trial_state"] == "finished"]
    history = searched.client.get_metric_history(finished[0].info.run_id, "val_roc_auc")
    assert [m.step for m in history] == [1, 2, 3]
    # Trials are scored on validation only: the test split is left for the model the search chooses.
    assert "valid_accuracy_ci_low" in finished[0].data.metrics
    assert not [key for run in children for key in run.data.metrics if key.startswith("test_")]


def test_resume_runs_only_the_missing_trials_and_fails_the_leftover(searched):
    study = searched.study
    assert searched.second.new_trials == 4
    assert len(study.trials) == 2 + 1 + 4
    assert study.trials[searched.leftover_number].state == TrialState.FAIL
    assert searched.client.get_run(searched.leftover_run).info.status == "FAILED"
    first_numbers = {0, 1}
    assert all(study.trials[n].state == TrialState.COMPLETE for n in first_numbers)
    assert {int(r.data.tags["medxp.trial_number"]) for r in child_runs(searched, searched.second.parent_run_id)} \
        .isdisjoint(first_numbers)


def test_scheduler_stopped_trials_are_pruned_with_intermediate_values(searched):
    hopeless = trials_with_lr(searched.study, HOPELESS_LR)
    assert hopeless and all(t.state == TrialState.PRUNED for t in hopeless)
    for trial in hopeless:
        assert trial.intermediate_values and max(trial.intermediate_values) < 3
        run = searched.client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags["medxp.trial_state"] == "pruned" and run.info.status == "KILLED"
    complete = trials_with_lr(searched.study, GOOD_LR)
    assert all(t.state == TrialState.COMPLETE and sorted(t.intermediate_values) == [1, 2, 3] for t in complete)


def test_each_epoch_reports_the_value_of_the_weights_the_trial_would_hand_back(searched, tmp_path):
    """What ASHA and the study see at epoch k is the metric of the best `train.monitor` epoch up to k (the
    weights a trial stopped there would hand back), not epoch k's own value; MLflow keeps every epoch's own."""
    monitor = tiny_config(tmp_path, 1).train.monitor
    assert monitor == "val_loss"
    checked = 0
    for trial in searched.study.trials:
        if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED) or "duplicate_of" in trial.user_attrs:
            continue
        run_id = trial.user_attrs["mlflow_run_id"]
        own = {m.step: m.value for m in searched.client.get_metric_history(run_id, "val_roc_auc")}
        losses = {m.step: m.value for m in searched.client.get_metric_history(run_id, monitor)}
        for epoch, value in trial.intermediate_values.items():
            best = min((step for step in losses if step <= epoch), key=lambda step: (losses[step], step))
            assert value == pytest.approx(own[best]), (trial.number, epoch)
            checked += 1
    assert checked >= 6


def test_failing_trial_is_fail_in_optuna_and_failed_in_mlflow(searched):
    exploding = trials_with_lr(searched.study, EXPLODING_LR)
    assert [t.state for t in exploding] == [TrialState.FAIL]
    children = child_runs(searched, searched.second.parent_run_id)
    [run] = [r for r in children if r.data.params["train.lr"] == str(EXPLODING_LR)]
    assert run.info.status == "FAILED" and run.data.tags["medxp.trial_state"] == "failed"
    assert "FloatingPointError" in run.data.tags["medxp.error"]
    assert searched.second.state_counts == {"complete": 3, "pruned": 2, "fail": 2}


def test_best_trial_points_at_its_logged_model_and_the_parent_has_the_report(searched):
    result = searched.second
    assert result.best_params == {"lr": GOOD_LR} and result.best_config.train.lr == GOOD_LR
    assert result.best_model_uri.startswith("models:/")
    assert searched.client.get_run(result.best_run_id).data.tags["medxp.trial_state"] == "finished"
    parent = result.parent_run_id
    table = searched.client.download_artifacts(parent, "search/trials.csv")
    rows = list(csv.DictReader(io.StringIO(open(table).read())))
    assert len(rows) == 7 and {row["state"] for row in rows} == {"complete", "pruned", "fail"}
    plots = {a.path for a in searched.client.list_artifacts(parent, "search/plots")}
    assert "search/plots/optimization_history.png" in plots and "search/plots/intermediate_values.png" in plots
    assert "search/plots/optimization_history.html" in plots  # plotly is a dependency: interactive pages too


def test_the_parent_run_describes_the_search_and_the_trials_are_named_by_dataset_and_model(searched):
    parent = searched.client.get_run(searched.second.parent_run_id)
    assert parent.info.run_name == "search-glaucoma-small_cnn"
    description = parent.data.tags["mlflow.note.content"]
    outcome, plan = description.split("### Hyper-parameter search")
    assert outcome.startswith("### Outcome")
    best = searched.second
    assert f"Best: **trial {best.best_trial_number}** (run `glaucoma-small_cnn-trial-{best.best_trial_number:03d}`)" \
        in outcome
    metric = "validation ROC AUC (`valid_roc_auc`; positive class `abnormal`, threshold-free)"
    assert f"{metric} **{best.best_value:.4f}**" in outcome
    assert "3 complete, 2 fail, 2 pruned" in outcome and "`search/trials.csv`" in outcome
    assert "`search/plots/optimization_history.png`" in outcome
    assert "| `lr` | `train.lr` | 0.03, 1e-06, 1000000.0 |" in plan
    assert "up to 3 epochs a trial, judged at epochs 1, 2" in plan
    assert "**Trials**: 6 (`search.n_trials`; 4 to run now)" in plan
    trials = child_runs(searched, best.parent_run_id)
    for run in trials:
        assert run.info.run_name == f"glaucoma-small_cnn-trial-{int(run.data.tags['medxp.trial_number']):03d}"
    for run in trials:  # the searched value is a param, the validation metric a metric: Compare shows both
        assert "train.lr" in run.data.params and "`lr` =" in run.data.tags["mlflow.note.content"]
        if run.data.tags["medxp.trial_state"] == "finished":
            assert "valid_roc_auc" in run.data.metrics


def test_a_space_with_nothing_new_left_trains_each_point_once_and_ends(tmp_path, monkeypatch):
    (tmp_path / "space.yaml").write_text("lr: {type: categorical, choices: [0.03]}\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    settings = {"search.rerun_duplicates": False, "search.max_concurrent": 1, "epochs": 1, "search.max_epochs": 1}
    try:
        result = run_search(tiny_config(tmp_path, 3, **settings), search_name="one-point")
        client = MlflowClient()
        experiment_id = client.get_run(result.parent_run_id).info.experiment_id
        children = client.search_runs([experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{result.parent_run_id}'")
        rows = list(csv.DictReader(open(client.download_artifacts(result.parent_run_id, "search/trials.csv"))))
    finally:
        mlflow.set_tracking_uri(None)
    assert result.state_counts["complete"] == 1 and result.state_counts["duplicate"] >= 1
    assert result.epochs_total == 1 and len(children) == 1 and result.trials_trained == 1
    assert result.best_trial_number == 0 and result.best_run_id == children[0].info.run_id
    assert rows[0]["duplicate_of"] == "" and all(row["duplicate_of"] == "0" for row in rows[1:])


def leaking_data(tmp_path):
    """The demo data the tiny config reads, with one train image of Fold0 copied into its test split."""
    import shutil

    from medxp.data.synthetic import generate_fundus_demo

    fold = generate_fundus_demo(tmp_path / "data", images_per_class=64, folds=3, image_size=48) / "Fold0"
    shutil.copy(sorted((fold / "train" / "normal").iterdir())[0], fold / "test" / "normal" / "leaked_copy.jpg")


@pytest.fixture
def counted_audits(monkeypatch):
    """The driver's calls of the data audit (trials run in Ray workers, which this patch does not reach)."""
    import medxp.data.datamodule as datamodule

    calls, audit_source = [], datamodule.audit_source
    monkeypatch.setattr(datamodule, "audit_source", lambda *args: calls.append(args) or audit_source(*args))
    return calls


def test_a_leak_with_on_leak_fail_refuses_the_search_before_any_trial(tmp_path, monkeypatch, counted_audits):
    import medxp.search.runner as runner

    (tmp_path / "space.yaml").write_text("lr: {type: categorical, choices: [0.03]}\n")
    leaking_data(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(runner, "_run_tune", lambda *args: pytest.fail("the search started its trials"))
    try:
        with pytest.raises(MedxpError, match="leaked_copy.jpg.*audit.on_leak=fail"):
            run_search(tiny_config(tmp_path, 2, **{"audit.on_leak": "fail"}), search_name="refused")
        [parent] = mlflow.search_runs(search_all_experiments=True, output_format="list")
    finally:
        mlflow.set_tracking_uri(None)
    assert len(counted_audits) == 1
    assert parent.info.status == "FAILED"  # the only run: no trial ran
    assert parent.data.metrics["audit_leaking_pairs"] >= 1 and parent.data.tags["data.synthetic"] == "true"
    storage = tmp_path / "optuna.db"
    assert not storage.exists() or not optuna.get_all_study_names(f"sqlite:///{storage}")  # no study opened


def test_a_search_audits_once_on_the_driver_and_every_trial_applies_that_audit(tmp_path, monkeypatch,
                                                                                 counted_audits):
    (tmp_path / "space.yaml").write_text("lr: {type: categorical, choices: [0.03]}\n")
    leaking_data(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    settings = {"audit.on_leak": "warn", "epochs": 1, "search.max_epochs": 1}
    try:
        result = run_search(tiny_config(tmp_path, 2, **settings), search_name="audited-once")
        client = MlflowClient()
        experiment_id = client.get_run(result.parent_run_id).info.experiment_id
        children = client.search_runs([experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{result.parent_run_id}'")
        reports = [json.load(open(client.download_artifacts(run_id, "audit/report.json")))
                   for run_id in [result.parent_run_id, *(run.info.run_id for run in children)]]
    finally:
        mlflow.set_tracking_uri(None)
    assert result.state_counts == {"complete": 2} and len(children) == 2
    assert len(counted_audits) == 1  # the driver's one audit, for two trials
    # Each trial logged the driver's report (its timing too), not an audit of its own.
    assert reports[0]["seconds"] > 0 and all(report == reports[0] for report in reports[1:])
    assert all(run.data.metrics["audit_leaking_pairs"] >= 1 for run in children)
