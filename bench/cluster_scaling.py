"""Cluster throughput: trials per hour on one Ray node against two, logging to one `mlflow server`.

The services are the real ones the cluster tests use (tests/cluster/services.py), inside a
network namespace that has only loopback (needs root): PostgreSQL, `mlflow server` on it
with basic-auth and proxied artifacts, started once; then for each configuration a fresh
Ray cluster (a new head, so no worker process or object store carries over from the run
before), `--num-cpus=1` per node:

    one node:  the head
    two nodes: the head plus one worker

Each configuration runs `python -m medxp.cli search` as a lab would (driver joined by
`RAY_ADDRESS`, study in PostgreSQL, trials into the server), with its own study name and
the same settings: the glaucoma demo shrunk, every trial trained for all its epochs
(grace period = max epochs, so ASHA stops none), seeded random sampler, 2 trials at a time.
The timing runs from the driver's start to its exit; the decoded-image cache is fresh for
each configuration, so both pay the same decoding.

Both nodes share this machine's cores: with two cores the ratio can reach ~2 only if the
driver, the tracking server and PostgreSQL take little CPU; it measures the platform's
scheduling across nodes, not a second machine's extra cores.

    python bench/cluster_scaling.py              # 8 trials x 4 epochs
    python bench/cluster_scaling.py --trials 4   # shorter
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))  # the services of tests/cluster/

from tests.cluster.conftest import Cluster  # noqa: E402
from tests.cluster.services import (  # noqa: E402
    MlflowServer, Postgres, RayNode, loopback_namespace, tracking_stack, wait_for_nodes)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--images-per-class", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--workdir", default="", help="keeps the logs there (default: a new temporary folder)")
    return parser.parse_args()


def search_settings(args: argparse.Namespace) -> dict:
    """On top of the cluster tests' SEARCH_SETTINGS: a little heavier, and every trial trains fully."""
    return {"data.demo_images_per_class": args.images_per_class, "data.demo_image_size": max(args.image_size, 48),
            "dataset.image_size": args.image_size, "train.epochs": args.epochs, "train.patience": 0,
            "search.max_epochs": args.epochs, "search.grace_period": args.epochs, "search.sampler": "random",
            "search.rerun_duplicates": True, "search.cpus_per_trial": 1, "search.gpus_per_trial": 0,
            "search.max_concurrent": 2}


def prepare_data(data_dir: Path, settings: dict) -> None:
    """Generates the demo data before any timing (the driver would otherwise do it in the first run only)."""
    from medxp.config import load_project
    from medxp.data.datamodule import ensure_data
    from tests.cluster.conftest import SEARCH_SETTINGS

    data_keys = {key: value for key, value in {**SEARCH_SETTINGS, **settings}.items() if key.startswith("data.")}
    ensure_data(load_project("glaucoma", {**data_keys, "data.data_dir": str(data_dir)}))


def start_nodes(folder: Path, token: str, count: int) -> list[RayNode]:
    """A fresh head (and `count - 1` workers), one CPU each, sharing the driver's `$MEDXP_CACHE_DIR`."""
    env = {"MEDXP_CACHE_DIR": os.environ["MEDXP_CACHE_DIR"]}
    nodes = [RayNode(folder / "ray" / "head", token, num_cpus=1, env=env).start()]
    try:
        wait_for_nodes(nodes[0].head_address, token, 1)
        for index in range(1, count):
            nodes.append(RayNode(folder / "ray" / f"worker-{index}", token, num_cpus=1,
                                 address=nodes[0].head_address, env=env).start())
        wait_for_nodes(nodes[0].head_address, token, count)
    except BaseException:
        stop_nodes(nodes)
        raise
    return nodes


def stop_nodes(nodes: list[RayNode]) -> None:
    for node in reversed(nodes):
        node.stop()


def measure(root: Path, postgres: Postgres, server: MlflowServer, data_dir: Path, settings: dict,
            args: argparse.Namespace, node_count: int) -> dict:
    """Runs one search on a fresh cluster of `node_count` nodes; returns its timing and what it trained."""
    folder = root / f"{node_count}-node"
    os.environ["MEDXP_CACHE_DIR"] = str(folder / "cache")  # the driver's and the nodes' cache, fresh each time
    token = secrets.token_hex(16)
    nodes = start_nodes(folder, token, node_count)
    try:
        cluster = Cluster(folder, postgres, server, token, nodes[0], nodes[-1], data_dir)
        name = f"scaling-{node_count}node-{int(time.time())}"
        load_before = os.getloadavg()[0]
        started = time.monotonic()
        done = cluster.run_search(name, args.trials, timeout=3600, **settings)
        wall = time.monotonic() - started
        (folder / f"driver-{name}" / "driver.log").write_text(done.stdout + done.stderr)
    finally:
        stop_nodes(nodes)
    if done.returncode:
        raise RuntimeError(f"the {node_count}-node search failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    trained, nodes_used, search_s = read_back(server, name)
    return {"nodes": node_count, "study": name, "trials_trained": trained, "nodes_used": nodes_used,
            "wall_s": wall, "search_run_s": search_s, "trials_per_hour": 3600 * trained / wall,
            "load_1min_before": load_before, "load_1min_after": os.getloadavg()[0]}


def read_back(server: MlflowServer, study: str) -> tuple[int, int, float]:
    """Trials that trained to the end, distinct Ray nodes they ran on, and the parent run's duration (s)."""
    from mlflow.tracking import MlflowClient

    os.environ.update(server.client_env())
    client = MlflowClient(tracking_uri=server.uri)
    experiment = client.get_experiment_by_name("glaucoma")
    runs = client.search_runs([experiment.experiment_id], f"tags.`medxp.study` = '{study}'", max_results=1000)
    children = [run for run in runs if "medxp.trial_number" in run.data.tags]
    finished = [run for run in children if run.data.tags.get("medxp.trial_state") == "finished"]
    parents = [run for run in runs if "medxp.trial_number" not in run.data.tags]
    search_s = (parents[0].info.end_time - parents[0].info.start_time) / 1000 if parents else float("nan")
    return len(finished), len({run.data.tags.get("medxp.node_id") for run in finished}), search_s


def report(rows: list[dict], args: argparse.Namespace, settings: dict, loads: dict) -> Path:
    ratio = rows[1]["trials_per_hour"] / rows[0]["trials_per_hour"]
    print(f"\n{'Ray nodes':>9} {'trials':>7} {'on nodes':>9} {'wall s':>8} {'search s':>9} {'trials/h':>9}")
    for row in rows:
        print(f"{row['nodes']:>9} {row['trials_trained']:>7} {row['nodes_used']:>9} {row['wall_s']:>8.0f} "
              f"{row['search_run_s']:>9.0f} {row['trials_per_hour']:>9.1f}")
    cpus = os.cpu_count()
    print(f"two nodes / one node: {ratio:.2f}x  (1 CPU per node; both nodes, the driver, the tracking server and "
          f"PostgreSQL share this machine's {cpus} logical CPUs; 1-min load {loads['before']:.1f} before, "
          f"{loads['after']:.1f} after)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "cluster_scaling.json"
    out.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "workdir"},
                               "settings": settings, "cpu_count": cpus, "ray_nodes": "fresh head per configuration",
                               "load_1min": loads, "rows": rows, "ratio_two_over_one": ratio}, indent=2))
    print(f"wrote {out}")
    return out


def main() -> None:
    args = parse_args()
    if os.geteuid() != 0:
        sys.exit("cluster_scaling: needs root (a network namespace with only loopback, PostgreSQL run as `postgres`)")
    root = Path(args.workdir or tempfile.mkdtemp(prefix="medxp-cluster-bench-")).resolve()
    settings = search_settings(args)
    data_dir = root / "shared-data" / "glaucoma"
    prepare_data(data_dir, settings)
    loads = {"before": os.getloadavg()[0]}
    with loopback_namespace(), tracking_stack(root) as stack:
        rows = [measure(root, stack.postgres, stack.server, data_dir, settings, args, count) for count in (1, 2)]
    loads["after"] = os.getloadavg()[0]
    report(rows, args, settings, loads)
    print(f"logs under {root}")


if __name__ == "__main__":
    main()
