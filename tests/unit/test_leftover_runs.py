"""After a search, every trial's MLflow run agrees with the study, even one that ended after its driver died."""

from __future__ import annotations

import mlflow
import optuna
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from medxp.search.runner import close_leftover_runs
from medxp.search.trial import STATE_TAG


def _trial_run(experiment_id: str, study: str, number: int, state: str, end: bool = True) -> str:
    run = mlflow.MlflowClient().create_run(experiment_id, run_name=f"trial-{number:03d}", tags={
        "medxp.study": study, "medxp.trial_number": str(number), STATE_TAG: state, MLFLOW_PARENT_RUN_ID: "parent"})
    if end:
        mlflow.MlflowClient().set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def test_runs_are_made_to_agree_with_the_study(mlflow_store):
    experiment_id = mlflow.create_experiment("leftovers")
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
