"""One real cluster per module, on loopback: PostgreSQL, `mlflow server` with basic-auth, two Ray nodes.

The head declares 2 GPUs and the worker 1 (Ray schedules on declared GPUs; torch finds no
CUDA here and trains on the CPU), 3 CPUs each (logical CPUs on this machine's two cores).
Searches run as a user runs them: `python -m medxp.cli search` with the cluster's
environment, in a working folder of the test's own.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from medxp.data.synthetic import generate_fundus_demo
from tests.cluster.services import (
    MlflowServer,
    Postgres,
    RayNode,
    loopback_namespace,
    tracking_stack,
    wait_for_nodes,
)
from tests.conftest import REPO, SMALL_CNN, TINY

pytestmark = pytest.mark.slow

# A search small enough for two CPU cores: every trial trains 3 epochs on 32 px images.
SEARCH_SETTINGS = {**TINY, "train.epochs": 3, "search.max_epochs": 3, "search.grace_period": 1,
                   "search.startup_trials": 3, "search.sampler": "random", "search.rerun_duplicates": True,
                   "search.cpus_per_trial": 1, "eval.bootstrap_resamples": 20}


@dataclass
class Cluster:
    """The running services and what a driver needs to use them."""

    root: Path
    postgres: Postgres
    server: MlflowServer
    token: str
    head: RayNode
    worker: RayNode
    data_dir: Path
    worker_node_id: str = ""
    extra_nodes: list[RayNode] = field(default_factory=list)

    def storage(self) -> str:
        """The Optuna study's database, without its password (the driver reads PGPASSWORD)."""
        return self.postgres.url("optuna", password=False)

    def driver_env(self, **extra: str) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("MLFLOW_", "RAY_")) or key == "RAY_TMPDIR"}
        env.update(self.server.client_env())
        env.update(self.head.ray_env())
        env.update({"RAY_ADDRESS": self.head.head_address, "MEDXP_SEARCH_STORAGE": self.storage(),
                    "PGPASSWORD": self.postgres.password, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1",
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
        env.update(extra)
        return env

    def search_command(self, name: str, n_trials: int, **settings) -> list[str]:
        overrides = {**SEARCH_SETTINGS, "data_dir": str(self.data_dir), "search.n_trials": n_trials, **settings}
        text = " ".join(f"{key}={_yaml(value)}" for key, value in overrides.items())
        return [sys.executable, "-m", "medxp.cli", "search", "--dataset", "glaucoma", "--experiment", SMALL_CNN,
                "--name", name,
                "--no-progress", "--set", text]

    def run_search(self, name: str, n_trials: int, timeout: float = 600, **settings) -> subprocess.CompletedProcess:
        workdir = self.root / f"driver-{name}"
        workdir.mkdir(exist_ok=True)
        return subprocess.run(self.search_command(name, n_trials, **settings), cwd=workdir, env=self.driver_env(),
                              capture_output=True, text=True, timeout=timeout)

    def run_main(self, name: str, n_trials: int, timeout: float = 900, **settings) -> subprocess.CompletedProcess:
        """The lab's command: `mlflow run <repo> -P dataset=glaucoma` (search, evaluate, explain, register).

        `mlflow run` runs the entry point in the repository, so with a tracking server the search's Ray Tune
        folder is the checkout's `ray_results/<name>`: removed afterwards unless it was there before.
        """
        tune_folder = REPO / "ray_results" / name
        made = not tune_folder.exists()
        overrides = {**SEARCH_SETTINGS, "search.n_trials": n_trials, **settings}
        text = " ".join(f"{key}={_yaml(value)}" for key, value in overrides.items())
        command = [str(Path(sys.executable).parent / "mlflow"), "run", str(REPO), "--env-manager", "local",
                   "-P", "dataset=glaucoma", "-P", f"experiment={SMALL_CNN}", "-P", f"data_dir={self.data_dir}",
                   "-P", f"search_name={name}",
                   "-P", f"overrides={text}"]
        try:
            return subprocess.run(command, cwd=self.root, env=self.driver_env(), capture_output=True, text=True,
                                  timeout=timeout)
        finally:
            if made:
                shutil.rmtree(tune_folder, ignore_errors=True)
                if tune_folder.parent.is_dir() and not any(tune_folder.parent.iterdir()):
                    tune_folder.parent.rmdir()

    def start_search(self, name: str, n_trials: int, **settings) -> subprocess.Popen:
        workdir = self.root / f"driver-{name}"
        workdir.mkdir(exist_ok=True)
        log = open(workdir / "driver.log", "w")  # noqa: SIM115 - the child owns it
        return subprocess.Popen(self.search_command(name, n_trials, **settings), cwd=workdir,
                                env=self.driver_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start_worker(self, name: str, num_gpus: int = 1, num_cpus: int = 3, wrapper: list[str] | None = None,
                     ) -> tuple[RayNode, str]:
        """Adds a worker node; returns it and its Ray node id."""
        before = {node["NodeID"] for node in wait_for_nodes(self.head.head_address, self.token, 1)}
        node = RayNode(self.root / "ray" / name, self.token, num_cpus=num_cpus, num_gpus=num_gpus,
                       address=self.head.head_address, wrapper=wrapper or []).start()
        nodes = wait_for_nodes(self.head.head_address, self.token, len(before) + 1)
        (node_id,) = {n["NodeID"] for n in nodes} - before
        return node, node_id


def _yaml(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, decoded_image_cache):
    root = tmp_path_factory.mktemp("cluster")
    token = secrets.token_hex(16)
    data_dir = root / "shared-data" / "glaucoma"  # the lab's shared mount: the same path on every node
    generate_fundus_demo(data_dir, images_per_class=TINY["data.demo_images_per_class"],
                         folds=TINY["data.demo_folds"], image_size=TINY["data.demo_image_size"])
    with loopback_namespace(), tracking_stack(root) as stack:
        head = stack.start(RayNode(root / "ray" / "head", token, num_cpus=3, num_gpus=2))
        wait_for_nodes(head.head_address, token, 1)
        cluster = Cluster(root, stack.postgres, stack.server, token, head, None, data_dir)  # type: ignore[arg-type]
        worker, worker_id = cluster.start_worker("worker-1")
        stack.started.append(worker)
        cluster.worker, cluster.worker_node_id = worker, worker_id
        try:
            yield cluster
        finally:  # nodes a test added stop first, then the rest of the stack in reverse order
            for node in reversed(cluster.extra_nodes):
                node.stop()


def wait_for(check, what: str, timeout: float = 300, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what}: not seen within {timeout:.0f} s")


__all__ = ["Cluster", "REPO", "SEARCH_SETTINGS", "wait_for"]
