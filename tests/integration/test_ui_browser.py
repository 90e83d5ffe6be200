"""What a researcher sees in the MLflow UI after a search, checked in a real headless browser.

A tiny search-and-register (`medxp main`) and `medxp promote` fill a store; `mlflow ui` serves it on
loopback and Debian's chromium, driven by Playwright, looks at it the way a person would: the
experiment's runs table lists the search's parent run and, expanded, its trials; the parent run's
page shows the search's description; its artifacts hold `search/trials.csv` and the plots; the
trials compare side by side; the registered model carries the `champion` alias.

Screenshots go to the test's tmp folder and are copied to `$MEDXP_TEST_ARTIFACTS/ui/` (default
`test-artifacts/ui/` in the checkout, git-ignored); the test prints where.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import mlflow
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

from medxp.cli import main
from tests.conftest import REPO, SMALL_CNN

pytestmark = pytest.mark.slow

MODEL = "glaucoma-classifier-demo"
# Three trials of two epochs on 32 px demo images, one at a time.
TINY_SEARCH = ("data.demo_images_per_class=24 data.demo_folds=3 data.demo_image_size=48 dataset.image_size=32 "
               "model.channels=[8,16] search.n_trials=3 search.max_epochs=2 search.grace_period=1 "
               "search.startup_trials=2 search.max_concurrent=1 eval.bootstrap_resamples=100")
INSTALL_CHROMIUM = ("Debian's chromium is not installed (no `chromium` on PATH): the browser test needs it. "
                    "Install it with `apt-get install -y --no-install-recommends chromium fonts-dejavu-core` "
                    "(as root; `make system-deps` does it), then run the test again")
# The UI's two faces (the toggle at its top left): the model-training one lists runs and the registry.
TRAINING_VIEW = "workflowType=machine_learning"
WAIT_MS = 120_000  # the first page of a cold `mlflow ui` can take most of a minute on a busy machine
SCREENSHOTS = ("1-experiment-runs-with-trials.png", "2-search-run-description.png", "3-search-trials-csv.png",
               "4-search-plot.png", "5-trials-compared.png", "6-registered-model-champion.png")


def test_the_ui_shows_the_search_its_trials_artifacts_and_the_champion(tmp_path, mlflow_store, monkeypatch, capsys):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail(INSTALL_CHROMIUM)

    monkeypatch.chdir(tmp_path)  # the runs' artifacts land in tmp_path/mlruns
    data_dir = f"data_dir={tmp_path / 'data'}"
    assert main(["main", "--dataset", "glaucoma", "--experiment", SMALL_CNN, "--no-progress", "--explain-samples",
                 "50", "--set", data_dir, "--set", TINY_SEARCH]) == 0
    assert main(["promote", "--dataset", "glaucoma", "--set", data_dir]) == 0
    capsys.readouterr()

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("glaucoma").experiment_id
    [parent] = client.search_runs([experiment], "tags.`medxp.kind` = 'search'")
    trials = sorted(run.info.run_name for run in client.search_runs([experiment], "tags.`medxp.trial_number` != ''"))
    assert parent.info.run_name == "main-glaucoma"
    assert trials == ["glaucoma-small_cnn-trial-000", "glaucoma-small_cnn-trial-001", "glaucoma-small_cnn-trial-002"]

    shots = tmp_path / "ui-screenshots"
    shots.mkdir()
    with mlflow_ui(mlflow_store, tmp_path) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            runs_table_lists_the_search_and_its_trials(page, base, experiment, trials, shots)
            run_page_describes_the_search(page, base, experiment, parent.info.run_id, shots)
            artifacts_hold_the_trials_table_and_the_plots(page, base, experiment, parent.info.run_id, shots)
            trials_compare_side_by_side(page, base, experiment, trials, shots)
            registered_model_shows_the_champion(page, base, shots)
        finally:
            browser.close()
    saved = keep_screenshots(shots)
    with capsys.disabled():
        print(f"\nMLflow UI screenshots in {saved}: {', '.join(sorted(p.name for p in saved.glob('*.png')))}")
    assert sorted(p.name for p in saved.glob("*.png")) == sorted(SCREENSHOTS)


def runs_table_lists_the_search_and_its_trials(page, base: str, experiment: str, trials: list[str], shots: Path):
    """The experiment's runs table: the parent run, and its trials once it is expanded."""
    page.goto(f"{base}/#/experiments/{experiment}/runs?{TRAINING_VIEW}")
    parent_cell = page.get_by_role("gridcell").filter(has_text="main-glaucoma")
    parent_cell.wait_for()
    close_assistant(page, wait_ms=30_000)
    for trial in trials:  # nested runs are folded under their parent until it is expanded
        assert not page.get_by_role("gridcell").filter(has_text=trial).count(), trial
    parent_cell.get_by_role("button").click()  # the expander beside the run name
    for trial in trials:
        page.get_by_role("gridcell").filter(has_text=trial).wait_for()
    page.screenshot(path=shots / SCREENSHOTS[0])


def run_page_describes_the_search(page, base: str, experiment: str, run_id: str, shots: Path):
    """The parent run's overview: its description says what was searched and what was found."""
    page.goto(f"{base}/#/experiments/{experiment}/runs/{run_id}?{TRAINING_VIEW}")
    page.get_by_text("Hyper-parameter search", exact=False).first.wait_for()
    close_assistant(page)
    text = page.inner_text("body")
    for shown in ("Outcome", "Best: trial", "validation accuracy", "search/trials.csv", "search/plots/",
                  "Sampler", "ASHA", "glaucoma-small_cnn-trial-", "train.lr"):
        assert shown in text, f"the run's description does not show {shown!r}"
    page.get_by_text("Child runs", exact=True).wait_for()
    for trial in ("glaucoma-small_cnn-trial-000", "glaucoma-small_cnn-trial-002"):  # links under "Child runs"
        page.get_by_role("link", name=re.compile(re.escape(trial))).first.wait_for()
    more = page.get_by_text("Show more", exact=True)
    if more.count():  # the UI folds a long description after a few lines
        more.first.click()
    page.get_by_text("Description", exact=True).first.evaluate("heading => heading.scrollIntoView()")
    page.screenshot(path=shots / SCREENSHOTS[1])


def artifacts_hold_the_trials_table_and_the_plots(page, base: str, experiment: str, run_id: str, shots: Path):
    """The parent run's artifacts: `search/trials.csv` previews as a table, and the plots as pictures."""
    page.goto(f"{base}/#/experiments/{experiment}/runs/{run_id}/artifacts?{TRAINING_VIEW}")
    page.get_by_text("search", exact=True).first.click()
    page.get_by_text("trials.csv", exact=True).click()
    page.get_by_text("Previewing the first 3 rows").wait_for()  # one row per trial
    close_assistant(page)
    for column in ("number", "state", "lr", "optimizer", "value", "mlflow_run_id"):
        assert page.get_by_text(column, exact=True).count(), f"search/trials.csv has no column {column!r}"
    page.screenshot(path=shots / SCREENSHOTS[2])
    page.get_by_text("plots", exact=True).click()
    for plot in ("optimization_history", "intermediate_values", "parallel_coordinate"):
        page.get_by_text(f"{plot}.png", exact=True).wait_for()
        page.get_by_text(f"{plot}.html", exact=True).wait_for()
    page.get_by_text("optimization_history.png", exact=True).click()
    picture = page.get_by_alt_text("search/plots/optimization_history.png")
    picture.wait_for()
    page.wait_for_function("image => image.complete && image.naturalWidth > 0", arg=picture.element_handle())
    page.screenshot(path=shots / SCREENSHOTS[3])


def trials_compare_side_by_side(page, base: str, experiment: str, trials: list[str], shots: Path):
    """Selecting the trials and pressing Compare puts their searched params and metrics side by side."""
    page.goto(f"{base}/#/experiments/{experiment}/runs?{TRAINING_VIEW}")
    parent_cell = page.get_by_role("gridcell").filter(has_text="main-glaucoma")
    parent_cell.wait_for()
    close_assistant(page)
    if not page.get_by_role("gridcell").filter(has_text=trials[0]).count():
        parent_cell.get_by_role("button").click()
    for trial in trials:
        page.get_by_role("row").filter(has_text=trial).get_by_role("checkbox").check()
    page.get_by_role("button", name="Compare").click()
    page.get_by_text("Run details").wait_for()
    for trial in trials:
        page.get_by_text(trial, exact=True).first.wait_for()
    close_assistant(page)
    page.get_by_role("switch", name="Parameters - Show diff only").click()  # leaves what the trials varied
    for searched in ("train.lr", "train.optimizer", "train.weight_decay", "model.dropout"):
        page.get_by_role("rowheader", name=searched, exact=True).wait_for()
    unsearched = page.get_by_role("rowheader", name="dataset.name", exact=True)
    assert not unsearched.is_visible(), "a param the search did not vary is left among the differences"
    # The trials' metrics, the cost every run logs among them (the list is long: valid_* sit below the fold).
    page.get_by_text("infer_ms", exact=True).first.wait_for()
    page.get_by_text("Run details").evaluate("heading => heading.scrollIntoView()")  # names, then the params
    page.screenshot(path=shots / SCREENSHOTS[4])


def registered_model_shows_the_champion(page, base: str, shots: Path):
    """The registered model's page: version 1 carries the alias `champion` that `medxp promote` set."""
    page.goto(f"{base}/#/models/{MODEL}?{TRAINING_VIEW}")
    page.get_by_role("link", name="Version 1").wait_for()
    close_assistant(page)
    page.get_by_text(re.compile(r"^@\s*champion$")).wait_for()  # the alias tag in the versions table
    page.screenshot(path=shots / SCREENSHOTS[5])


def close_assistant(page, wait_ms: int = 0) -> None:
    """Closes the MLflow Assistant side panel (it opens by itself on the UI's first page; once closed, it stays
    closed in this browser), so that the screenshots show the page."""
    close = page.get_by_role("button", name="Close")
    with contextlib.suppress(PlaywrightTimeout):
        close.last.wait_for(timeout=wait_ms or 1)
        close.last.click()


def keep_screenshots(shots: Path) -> Path:
    """Copies the screenshots to `$MEDXP_TEST_ARTIFACTS/ui/` (default `test-artifacts/ui/` in the checkout)."""
    target = Path(os.environ.get("MEDXP_TEST_ARTIFACTS") or REPO / "test-artifacts") / "ui"
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("*.png"):
        old.unlink()
    for shot in shots.glob("*.png"):
        shutil.copy2(shot, target / shot.name)
    return target


@contextlib.contextmanager
def mlflow_ui(store_uri: str, folder: Path) -> Iterator[str]:
    """`mlflow ui` on the store, bound to 127.0.0.1 on a free port; yields its address, stops it after."""
    port = free_port()
    log = (folder / "mlflow-ui.log").open("w")
    command = [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", store_uri,
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    server = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(server, base, folder / "mlflow-ui.log")
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)  # the server and its workers: its own process group
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()


def wait_until_up(server: subprocess.Popen, base: str, log: Path, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow ui exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            if opener.open(f"{base}/health", timeout=5).status == 200:
                return
        time.sleep(1)
    pytest.fail(f"mlflow ui did not answer on {base} within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
