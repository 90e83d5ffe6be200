"""`medxp dashboard`: optuna-dashboard on the project's study storage, on loopback; a missing storage is named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import optuna

from medxp.cli import main
from tests.model_server import free_port


def test_the_dashboard_serves_the_studies_beside_the_mlflow_store(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"  # where a search with this MLflow store keeps its studies
    study = optuna.create_study(study_name="glaucoma-live", storage=storage, direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("lr", 1e-4, 1e-1, log=True), n_trials=3)
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env.pop("MEDXP_SEARCH_STORAGE", None)
    server = subprocess.Popen([sys.executable, "-m", "medxp.cli", "dashboard", "--dataset", "glaucoma",
                               "--port", str(port)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        studies, deadline = None, time.monotonic() + 120
        while studies is None and time.monotonic() < deadline:
            assert server.poll() is None, server.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as answer:
                    studies = json.load(answer)["study_summaries"]
            except OSError:
                time.sleep(0.5)
        assert studies is not None, "the dashboard did not answer within 120 s"
        [summary] = studies
        assert summary["study_name"] == "glaucoma-live"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_no_study_storage_is_named_with_how_to_fill_it(tmp_path, mlflow_store, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # mlflow_store: sqlite:///<tmp_path>/mlflow.db
    monkeypatch.delenv("MEDXP_SEARCH_STORAGE", raising=False)
    assert main(["dashboard", "--dataset", "glaucoma"]) == 2
    err = capsys.readouterr().err
    assert f"no Optuna study storage at sqlite:///{tmp_path / 'optuna.db'}" in err and "medxp search" in err
