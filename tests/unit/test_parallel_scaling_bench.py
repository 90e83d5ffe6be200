"""bench/parallel_scaling.py's breakdown of a search's wall time, read from the trial runs' own start and end
times: start-up, trial phase, wind-down, the trial runs' summed durations and how busy the lanes were."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from tests.conftest import bench_script


@pytest.fixture(scope="module")
def scaling():
    return bench_script("parallel_scaling")


def test_phases_split_the_wall_time_and_measure_the_lanes(scaling, mlflow_store, tmp_path):
    client = MlflowClient()
    experiment = client.create_experiment("scaling", artifact_location=(tmp_path / "mlruns").as_uri())
    started = 1_000_000.0  # the search's start, in seconds; runs are stored in milliseconds
    parent = client.create_run(experiment, start_time=int(started * 1000))
    # Two lanes from 10 s to 40 s: lane 1 runs two trials (10-20, 20-40), lane 2 one (12-30); one trial
    # that never closed (no end time) is left out.
    for start, end in ((10, 20), (20, 40), (12, 30), (25, None)):
        run = client.create_run(experiment, start_time=int((started + start) * 1000),
                                tags={MLFLOW_PARENT_RUN_ID: parent.info.run_id})
        if end is not None:
            client.set_terminated(run.info.run_id, end_time=int((started + end) * 1000))
    figures = scaling.phases(parent.info.run_id, started, wall=45.0, concurrent=2)
    assert figures["startup_s"] == pytest.approx(10.0)
    assert figures["trials_s"] == pytest.approx(30.0)
    assert figures["wind_down_s"] == pytest.approx(5.0)
    assert figures["run_s"] == pytest.approx(10.0 + 20.0 + 18.0)
    assert figures["lanes_busy"] == pytest.approx(48.0 / 60.0)
