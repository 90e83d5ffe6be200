"""After a search, every trial's MLflow run agrees with the study, even one that ended after its driver died."""

from __future__ import annotations

import mlflow
import optuna
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from medxp.search.runner import close_leftover_runs
from medxp.search.trial import STATE_TAG
from medxp.tracking.mlflow_tracker import ensure_experiment


def _trial_run(experiment_id: str, study: str, number: int, state: str, end: bool = True) -> str:
    run = mlflow.MlflowClient().create_run(experiment_id, run_name=f"trial-{number:03d}", tags={
        "medxp.study": study, "medxp.trial_number": str(number), STATE_TAG: state, MLFLOW_PARENT_RUN_ID: "parent"})
    if end:
        mlflow.MlflowClient().set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def test_runs_are_made_to_agree_with_the_study(mlflow_store):
    experiment_id = ensure_experiment("leftovers")  # artifacts beside the test's store, not in the cwd
    study = optuna.create_study(study_name="s", direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.9, state=optuna.trial.TrialState.COMPLETE))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))  # its driver was killed
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    kept = _trial_run(experiment_id, "s", 0, "finished")
    late = _trial_run(experiment_id, "s", 1, "finished")  # ended after the driver died: the study never heard
    open_run = _trial_run(experiment_id, "s", 2, "running", end=False)
    other = _trial_run(experiment_id, "another-study", 1, "finished")

    close_leftover_runs(study, experiment_id)

    client = mlflow.MlflowClient()
    assert client.get_run(kept).data.tags[STATE_TAG] == "finished"
    assert client.get_run(late).data.tags[STATE_TAG] == "failed"
    assert "stopped before recording the result" in client.get_run(late).data.tags["medxp.trial_reason"]
    assert client.get_run(open_run).data.tags[STATE_TAG] == "failed"
    assert client.get_run(open_run).info.status == "FAILED"
    assert client.get_run(other).data.tags[STATE_TAG] == "finished"  # another study's run is left alone


def test_a_trial_whose_worker_never_opened_its_run_gets_a_failed_run(mlflow_store):
    experiment_id = ensure_experiment("unopened")
    study = optuna.create_study(study_name="s", direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.9, state=optuna.trial.TrialState.COMPLETE))
    study.add_trial(optuna.trial.create_trial(  # asked by the driver, which was killed before the worker began
        state=optuna.trial.TrialState.FAIL, params={"lr": 0.01},
        distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}))
    kept = _trial_run(experiment_id, "s", 0, "finished")
    parent = mlflow.MlflowClient().create_run(experiment_id, run_name="search").info.run_id

    close_leftover_runs(study, experiment_id, parent, dataset="glaucoma", model="small_cnn")
    close_leftover_runs(study, experiment_id, parent, dataset="glaucoma", model="small_cnn")  # adds nothing

    runs = mlflow.MlflowClient().search_runs([experiment_id], "tags.`medxp.study` = 's'")
    by_number = {run.data.tags["medxp.trial_number"]: run for run in runs}
    assert sorted(by_number) == ["0", "1"] and by_number["0"].info.run_id == kept
    made = by_number["1"]
    assert made.data.tags[STATE_TAG] == "failed" and made.info.status == "FAILED"
    assert made.data.tags[MLFLOW_PARENT_RUN_ID] == parent
    assert "never trained" in made.data.tags["medxp.trial_reason"]
    assert made.info.run_name == "glaucoma-small_cnn-trial-001"  # named like the trials that ran
    assert "never trained" in made.data.tags["mlflow.note.content"] and "`lr` = 0.01" in made.data.tags[
        "mlflow.note.content"]
    params = mlflow.artifacts.load_dict(f"{made.info.artifact_uri}/trial/sampled_params.json")
    assert params == {"trial_number": 1, "params": {"lr": 0.01}}
