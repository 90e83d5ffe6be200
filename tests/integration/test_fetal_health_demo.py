"""End to end: `mlflow run . -e search -P dataset=fetal_health -P n_trials=4` on a checkout without the CSV.

The command a new user types, in a working copy of the project's files with no ./data: medxp
generates the synthetic CTG demo in ./data/fetal_health, searches 4 trials with the project's
own settings (about a minute on two CPU cores), and says everywhere that the data is generated.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import mlflow
import pytest

from medxp.data.synthetic import MARKER_FILE
from tests.conftest import REPO

pytestmark = pytest.mark.slow

# What `mlflow run .` needs of a checkout; the medxp package itself is the installed one.
CHECKOUT_FILES = ("MLproject", "conda.yaml", "pyproject.toml", "projects", "search_spaces")


def test_search_on_a_clean_checkout_generates_the_demo_and_finds_a_best_trial(tmp_path, mlflow_store):
    checkout = tmp_path / "medxp"
    checkout.mkdir()
    for name in CHECKOUT_FILES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, checkout / name)
    bin_dir = os.path.dirname(sys.executable)
    env = {key: value for key, value in os.environ.items()
           if key not in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MEDXP_DATA_DIR")}
    env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    command = [os.path.join(bin_dir, "mlflow"), "run", ".", "-e", "search", "-P", "dataset=fetal_health",
               "-P", "n_trials=4", "--env-manager", "local"]
    done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    assert re.search(r"generating SYNTHETIC demo data in data/fetal_health .* not real patients", done.stderr)
    data = checkout / "data" / "fetal_health"
    assert (data / MARKER_FILE).is_file() and (data / "fetal_health.csv").is_file()
    best = re.search(r"best trial (\d+) value ([0-9.]+); model models:/\S+", done.stdout)
    assert best, done.stdout[-2000:]
    print(best.group(0))  # the search's own summary line, shown by pytest -rP
    best_value = float(best.group(2))
    assert 0.5 < best_value <= 1.0  # the macro F1 of a model that learned the demo's signal

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("fetal_health")
    [parent] = client.search_runs([experiment.experiment_id], "tags.`medxp.kind` = 'search'")
    assert parent.info.status == "FINISHED" and parent.data.tags["data.synthetic"] == "true"
    assert parent.data.tags["best_trial"] == best.group(1)
    assert parent.data.metrics["best_value"] == pytest.approx(best_value)
    trial_counts = {key: value for key, value in parent.data.metrics.items() if key.startswith("trials_")}
    assert trial_counts["trials_complete"] >= 1 and sum(trial_counts.values()) == 4
    trials = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(trials) == 4
    assert all(trial.data.tags["data.synthetic"] == "true" for trial in trials)
    best_run = client.get_run(parent.data.tags["best_run_id"])
    assert best_run.data.tags["data.synthetic"] == "true"
    assert best_run.data.params["dataset.demo"] == "ctg"
    # The project judges a trial by 5-fold stratified CV over train + valid (search.cv_folds): the
    # search's best value is the best trial's mean over its five held-out folds.
    folds = client.get_metric_history(best_run.info.run_id, "cv_f1_macro")
    assert sorted(metric.step for metric in folds) == [0, 1, 2, 3, 4]
    assert sum(metric.value for metric in folds) / 5 == pytest.approx(best_value)
    assert best_run.data.metrics["cv_f1_macro_mean"] == pytest.approx(best_value)
    assert "5-fold stratified cross-validation" in best_run.data.tags["medxp.objective"]
