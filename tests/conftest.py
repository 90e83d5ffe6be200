"""Shared fixtures: tiny generated demo data and an MLflow store in tmp_path, never the user's."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import types
from pathlib import Path
from typing import Iterator

import mlflow
import pytest

from medxp.config import ExperimentConfig, load_project

REPO = Path(__file__).resolve().parents[1]
# model.pretrained = auto never tries the hub in tests: offline sources only (packages, caches).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The glaucoma project's small CNN (projects/glaucoma/experiments/small_cnn.yaml): what the tests train,
# in seconds, instead of the project's default ImageNet EfficientNet (recipes/imagenet_staged.yaml).
SMALL_CNN = "small_cnn"
# Shrinks the real glaucoma project to seconds: few images, 3 folds, 32 px.
TINY = {
    "data.demo_images_per_class": 24,
    "data.demo_folds": 3,
    "data.demo_image_size": 48,
    "dataset.image_size": 32,
    "model.channels": [8, 16],
    "train.epochs": 2,
    "train.batch_size": 16,
    "eval.bootstrap_resamples": 100,
}


def bench_script(name: str) -> types.ModuleType:
    """`bench/<name>.py` loaded as a module (the benches are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_bench", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session", autouse=True)
def decoded_image_cache(tmp_path_factory):
    """The decoded-image cache of every test (and its subprocesses) lives in tmp, never in ~/.cache/medxp."""
    patch = pytest.MonkeyPatch()
    folder = tmp_path_factory.mktemp("medxp-cache")
    patch.setenv("MEDXP_CACHE_DIR", str(folder))
    yield folder
    patch.undo()


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """One tiny generated demo set shared by the session's tests (generation is deterministic)."""
    from medxp.data.synthetic import generate_fundus_demo

    root = tmp_path_factory.mktemp("demo") / "glaucoma"
    generate_fundus_demo(root, images_per_class=TINY["data.demo_images_per_class"],
                         folds=TINY["data.demo_folds"], image_size=TINY["data.demo_image_size"])
    return root


@pytest.fixture
def tiny_config(demo_root) -> ExperimentConfig:
    """The glaucoma project's small CNN, shrunk, reading the shared tiny demo set."""
    return load_project("glaucoma", {**TINY, "data.data_dir": str(demo_root)}, experiment=SMALL_CNN)


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """A fresh SQLite tracking store in tmp_path, for this process and its children."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)  # medxp would put the runs there
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


@contextlib.contextmanager
def tracking_store(folder: Path) -> Iterator[str]:
    """For a module-scoped fixture: a fresh SQLite tracking store in `folder` (environment, for Ray's workers,
    and this process's client), the URI reset on exit."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.delenv("MLFLOW_RUN_ID", raising=False)
        mlflow.set_tracking_uri(uri)
        try:
            yield uri
        finally:
            mlflow.set_tracking_uri(None)


@contextlib.contextmanager
def local_ray(cpus: int = 2) -> Iterator[None]:
    """A local Ray for the searches inside the block (started after the tracking store), shut down after."""
    import ray

    from medxp.search.runner import start_ray

    start_ray(cpus)
    try:
        yield
    finally:
        ray.shutdown()
