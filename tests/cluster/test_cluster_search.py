"""Cluster mode for real: searches over two Ray nodes into `mlflow server` on PostgreSQL with basic-auth.

Each test drives `python -m medxp.cli search` as a lab would, then reads back what the
tracking server and the Optuna study in PostgreSQL recorded. The tests run in file order:
the fault test kills the worker node, so it comes last.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tests.cluster.conftest import Cluster, wait_for

pytestmark = pytest.mark.slow

STATE_TAGS = {TrialState.COMPLETE: "finished", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}


@pytest.fixture
def client(cluster: Cluster, monkeypatch) -> MlflowClient:
    for key, value in cluster.server.client_env().items():
        monkeypatch.setenv(key, value)
    return MlflowClient(tracking_uri=cluster.server.uri)


_STORAGES: dict[str, optuna.storages.RDBStorage] = {}


def study_of(cluster: Cluster, name: str) -> optuna.Study:
    """The study as PostgreSQL holds it (one storage, so polling opens no new connections)."""
    url = cluster.postgres.url("optuna")
    storage = _STORAGES.setdefault(url, optuna.storages.RDBStorage(url))
    return optuna.load_study(study_name=name, storage=storage)


def runs_of(client: MlflowClient, name: str, children: bool = True) -> list:
    experiment = client.get_experiment_by_name("glaucoma")
    runs = client.search_runs([experiment.experiment_id], f"tags.`medxp.study` = '{name}'", max_results=1000)
    return [run for run in runs if ("medxp.trial_number" in run.data.tags) == children]


def assert_study_matches_runs(study: optuna.Study, runs: list) -> None:
    """Trial for trial: one MLflow child run per study trial, in the state the study records."""
    numbers = [int(run.data.tags["medxp.trial_number"]) for run in runs]
    assert len(numbers) == len(set(numbers)), f"a trial number has two MLflow runs: {sorted(numbers)}"
    by_number = {int(run.data.tags["medxp.trial_number"]): run for run in runs}
    trials = study.get_trials(deepcopy=False)
    assert sorted(by_number) == sorted(trial.number for trial in trials)
    for trial in trials:
        run = by_number[trial.number]
        assert run.data.tags["medxp.trial_state"] == STATE_TAGS[trial.state], (trial.number, trial.state)
        assert run.info.status != "RUNNING"
        if trial.state == TrialState.COMPLETE:
            assert trial.user_attrs["mlflow_run_id"] == run.info.run_id


def overlapping(runs: list) -> list[tuple]:
    """Pairs of runs whose [start, end] intervals overlap (they ran at the same time)."""
    pairs = []
    for i, first in enumerate(runs):
        for second in runs[i + 1:]:
            if first.info.start_time < second.info.end_time and second.info.start_time < first.info.end_time:
                pairs.append((first, second))
    return pairs


def device_of(run) -> tuple[str, str]:
    return run.data.tags["medxp.node_id"], run.data.tags["medxp.cuda_visible_devices"]


def test_the_server_refuses_requests_without_credentials(cluster: Cluster):
    assert cluster.server.status_without_credentials() == 401
    secret = base64.b64encode(f"{cluster.server.admin_user}:{cluster.server.admin_password}".encode()).decode()
    request = urllib.request.Request(f"{cluster.server.uri}/api/2.0/mlflow/experiments/search?max_results=1",
                                     headers={"Authorization": f"Basic {secret}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def test_the_labs_command_spreads_a_search_over_two_nodes_with_one_gpu_per_trial(cluster: Cluster,
                                                                              client: MlflowClient):
    done = cluster.run_main("spread", 6, **{"search.gpus_per_trial": 1, "search.max_concurrent": 3})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (version,) = client.search_model_versions("name = 'glaucoma-classifier-demo'")  # registered on the server
    assert version.tags["data.synthetic"] == "true"

    (parent,) = runs_of(client, "spread", children=False)
    children = runs_of(client, "spread")
    assert len(children) >= 6
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {parent.info.run_id}
    assert_study_matches_runs(study_of(cluster, "spread"), children)
    assert parent.data.params["search.storage"] == cluster.storage()  # no password in it to mask

    nodes = {run.data.tags["medxp.node_id"] for run in children}
    assert nodes == {cluster.worker_node_id, *nodes} and len(nodes) == 2, nodes
    assert all(run.data.tags["medxp.cuda_visible_devices"] in {"0", "1"} for run in children)
    assert all(run.data.tags["medxp.ray_gpu_ids"] == run.data.tags["medxp.cuda_visible_devices"] for run in children)
    pairs = overlapping(children)
    assert pairs, "no two trials ran at the same time: the search did not run concurrently"
    for first, second in pairs:
        assert device_of(first) != device_of(second), (device_of(first), first.info.run_name, second.info.run_name)
    fingerprint = parent.data.tags["data.fingerprint"]
    assert {run.data.tags["data.fingerprint"] for run in children} == {fingerprint}


def test_credentials_are_never_recorded(cluster: Cluster, client: MlflowClient):
    secrets = {cluster.server.admin_password, cluster.postgres.password, cluster.token}
    runs = runs_of(client, "spread") + runs_of(client, "spread", children=False)
    assert runs
    for run in runs:
        recorded = " ".join([*run.data.params.values(), *run.data.tags.values()])
        assert not [secret for secret in secrets if secret in recorded], run.info.run_name
    parent = runs_of(client, "spread", children=False)[0]
    with tempfile.TemporaryDirectory() as folder:
        for run in (parent, runs_of(client, "spread")[0]):
            local = Path(client.download_artifacts(run.info.run_id, "", folder + f"/{run.info.run_id}"))
            texts = [path for path in local.rglob("*") if path.suffix in {".yaml", ".json", ".txt", ".md", ".csv"}]
            assert texts
            for path in texts:
                content = path.read_text(errors="replace")
                assert not [secret for secret in secrets if secret in content], path


def test_half_a_gpu_per_trial_packs_two_trials_on_a_device(cluster: Cluster, client: MlflowClient):
    done = cluster.run_search("packed", 5, **{"search.gpus_per_trial": 0.5, "search.max_concurrent": 5})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    children = runs_of(client, "packed")
    assert_study_matches_runs(study_of(cluster, "packed"), children)
    shared = [(a, b) for a, b in overlapping(children) if device_of(a) == device_of(b)]
    assert shared, f"no two trials shared a device: {[device_of(run) for run in children]}"
    for run in children:  # never more than two at a time on one device (2 x 0.5)
        at_once = [other for other in children if device_of(other) == device_of(run)
                   and other.info.start_time <= run.info.start_time < other.info.end_time]
        assert len(at_once) <= 2, [r.info.run_name for r in at_once]


# Runs as a driver of the cluster: node_data on this process (the driver's fingerprint), then on the node.
NODE_DATA_CHECK = """
import json, sys
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from medxp.config import load_project
from medxp.search.trial import TrialContext, node_data

node_id, settings, folders = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
ray.init(logging_level="ERROR", log_to_driver=False)
on_node = ray.remote(num_cpus=1, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))(
    lambda config, context: node_data(config, context, None).fingerprint)
found = []
for folder in folders:
    config = load_project("glaucoma", {**settings, "data_dir": folder, "data.demo": "never"}, experiment="small_cnn")
    driver = node_data(config, TrialContext("", "", "", "s", "val_roc_auc"), None).fingerprint
    context = TrialContext("", "", "", "s", "val_roc_auc", folder, driver)
    try:
        found.append({"driver": driver, "node": ray.get(on_node.remote(config, context)), "error": ""})
    except ray.exceptions.RayTaskError as error:
        found.append({"driver": driver, "node": "", "error": str(error)})
print(json.dumps(found))
"""


def test_a_node_with_other_data_fails_naming_node_path_and_fingerprints(cluster: Cluster):
    from tests.cluster.conftest import SEARCH_SETTINGS

    shared = cluster.data_dir.parent
    missing, intact = shared / "glaucoma-missing-there", shared / "glaucoma-intact"
    for copy in (missing, intact):
        subprocess.run(["cp", "-a", str(cluster.data_dir), str(copy)], check=True)
    altered = Path(tempfile.mkdtemp(prefix="medxp-altered-"))
    subprocess.run(["cp", "-a", f"{cluster.data_dir}/.", str(altered)], check=True)
    for image in altered.rglob("*.jpg"):  # each file a byte longer (JPEG ignores it): another copy of the data
        image.write_bytes(image.read_bytes() + b"\0")
    empty = Path(tempfile.mkdtemp(prefix="medxp-empty-"))
    # The node's own view of the shared folder: another copy at data_dir, nothing at the second path.
    mounts = f"mount --bind {altered} {cluster.data_dir} && mount --bind {empty} {missing} && exec \"$@\""
    node, node_id = cluster.start_worker("other-data", num_gpus=0, num_cpus=1,
                                         wrapper=["unshare", "-m", "--propagation", "private", "sh", "-c", mounts, "sh"])
    cluster.extra_nodes.append(node)
    try:
        settings = {key: value for key, value in SEARCH_SETTINGS.items() if not key.startswith("search.")}
        done = subprocess.run([sys.executable, "-c", NODE_DATA_CHECK, node_id, json.dumps(settings),
                               str(cluster.data_dir), str(missing), str(intact)],
                              env=cluster.driver_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        different, absent, same = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        node.stop()
        cluster.extra_nodes.remove(node)
    assert same == {"driver": same["driver"], "node": same["driver"], "error": ""}  # an intact copy passes there
    for found, folder, expected in ((different, cluster.data_dir, "has fingerprint"), (absent, missing, "cannot read")):
        assert expected in found["error"] and str(folder) in found["error"], found["error"][-2000:]
        assert found["driver"] in found["error"] and node_id[:12] in found["error"]
    assert different["driver"] != different["error"].split("has fingerprint ")[1].split(",")[0]


def test_a_killed_driver_resumes_by_name_against_the_same_server_and_database(cluster: Cluster,
                                                                           client: MlflowClient):
    settings = {"search.gpus_per_trial": 1, "search.max_concurrent": 3, "train.epochs": 4, "search.max_epochs": 4}
    driver = cluster.start_search("resume", 6, **settings)
    try:
        wait_for(lambda: _finished(cluster, "resume") >= 2 and _running(cluster, "resume") >= 1,
                 "two finished trials and one running", timeout=400)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)
    before = {t.number: (t.state, t.value) for t in study_of(cluster, "resume").get_trials()
              if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    interrupted = [t.number for t in study_of(cluster, "resume").get_trials() if t.state == TrialState.RUNNING]
    assert len(before) >= 2 and interrupted

    done = cluster.run_search("resume", 6, **settings)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    study = study_of(cluster, "resume")
    after = {t.number: t for t in study.get_trials()}
    assert {number: (after[number].state, after[number].value) for number in before} == before
    assert all(after[number].state == TrialState.FAIL for number in interrupted)
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in after.values()) == 6
    assert_study_matches_runs(study, runs_of(client, "resume"))
    assert len(runs_of(client, "resume", children=False)) == 2  # the killed search's parent and the resumed one


def test_a_dead_worker_node_fails_its_trial_and_the_search_finishes_on_the_head(cluster: Cluster,
                                                                           client: MlflowClient):
    settings = {"search.gpus_per_trial": 1, "search.max_concurrent": 3, "train.epochs": 6, "search.max_epochs": 6,
                "search.grace_period": 6}
    driver = cluster.start_search("fault", 6, **settings)
    try:
        victim = wait_for(lambda: _running_on(client, "fault", cluster.worker_node_id),
                          "a trial running on the worker node, before its first epoch", timeout=400, interval=0.25)
        cluster.worker.stop(signal.SIGKILL)  # the node dies: raylet and its workers at once
        killed_at = time.time() * 1000
        driver.wait(timeout=600)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    log = (cluster.root / "driver-fault" / "driver.log").read_text()
    assert driver.returncode == 0, log[-4000:]
    study = study_of(cluster, "fault")
    children = runs_of(client, "fault")
    assert_study_matches_runs(study, children)
    by_id = {run.info.run_id: run for run in children}
    assert by_id[victim].data.tags["medxp.trial_state"] == "failed"
    later = [run for run in children if run.info.start_time > killed_at + 1000]
    assert later, "no trial started after the worker died: the search did not go on"
    assert {run.data.tags["medxp.node_id"] for run in later} == {later[0].data.tags["medxp.node_id"]}
    assert later[0].data.tags["medxp.node_id"] != cluster.worker_node_id
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials()) >= 4


def _finished(cluster: Cluster, name: str) -> int:
    try:
        return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study_of(cluster, name).get_trials())
    except KeyError:  # the driver has not created the study yet
        return 0


def _running(cluster: Cluster, name: str) -> int:
    try:
        return sum(t.state == TrialState.RUNNING for t in study_of(cluster, name).get_trials())
    except KeyError:
        return 0


def _running_on(client: MlflowClient, name: str, node_id: str) -> str | None:
    """A trial running on the node that has not finished an epoch yet: all its epochs are still to come when the
    node is killed, so it cannot end between this look and the kill (a trial near its end could)."""
    if client.get_experiment_by_name("glaucoma") is None:
        return None
    for run in runs_of(client, name):
        if run.info.status == "RUNNING" and run.data.tags.get("medxp.node_id") == node_id \
                and "medxp.cuda_visible_devices" in run.data.tags and "val_loss" not in run.data.metrics:
            return run.info.run_id
    return None
