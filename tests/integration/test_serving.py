"""A registered champion answers image files through `mlflow models serve` as it does in-process.

One tiny model is trained on the generated glaucoma demo, registered and made champion; a real
`mlflow models serve` subprocess (loopback only) then gets PNG, JPEG and greyscale PNG files in both
JSON formats, a corrupt file and an empty request.
"""

from __future__ import annotations

import base64
import json
import math
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medxp.cli import main
from medxp.data.images import decode_image
from medxp.pipeline import run_experiment
from medxp.promotion import register_model
from medxp.serving import OUTPUT_COLUMNS, encode_file
from medxp.tracking.mlflow_tracker import MlflowTracker
from tests.model_server import free_port, start_model_server, stop_model_server

pytestmark = pytest.mark.slow

NAME = "glaucoma-classifier-demo"
CHAMPION = f"models:/{NAME}@champion"
CLASSES = ("normal", "abnormal")
PROBABILITIES = [f"prob_{name}" for name in CLASSES]


def post(port: int, body: dict) -> tuple[int, dict]:
    """POST /invocations; (status, JSON body) also for 4xx answers. NaN is valid here: MLflow writes it."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def request_files(demo_root: Path, folder: Path) -> dict[str, Path]:
    """A demo fundus JPEG, the same picture as PNG, and a greyscale PNG, for the RGB model."""
    jpeg = sorted((demo_root / "Fold0" / "test" / "abnormal").glob("*.jpg"))[0]
    other = sorted((demo_root / "Fold0" / "test" / "normal").glob("*.jpg"))[0]
    png, grey = folder / "fundus.png", folder / "fundus_grey.png"
    with Image.open(other) as image:
        image.save(png)
        image.convert("L").save(grey)
    return {"jpeg": jpeg, "png": png, "grey": grey}


def records(table: pd.DataFrame) -> list[dict]:
    return table.to_dict(orient="records")


def assert_same_answers(served: list[dict], expected: pd.DataFrame) -> None:
    assert len(served) == len(expected)
    got = pd.DataFrame(served)
    assert list(got.columns) == [*PROBABILITIES, *OUTPUT_COLUMNS]
    np.testing.assert_allclose(got[PROBABILITIES].to_numpy(float), expected[PROBABILITIES].to_numpy(float),
                               rtol=1e-5, atol=1e-6)
    assert got["label"].tolist() == expected["label"].tolist()
    assert got["error"].tolist() == [""] * len(expected)


def test_the_champion_answers_image_files_over_http_as_in_process(tiny_config, demo_root, mlflow_store, tmp_path,
                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root, ./mlruns, lands in tmp_path
    with MlflowTracker.start("glaucoma", run_name="served") as tracker:
        result = run_experiment(tiny_config, tracker, progress=False)
    version = register_model(tracker.run_id, result.model_uri, tiny_config, synthetic=True)
    mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", version.version)

    # The tensor face is unchanged: mlflow.pytorch.load_model gives the module, which takes [0, 1] pixels.
    module = mlflow.pytorch.load_model(CHAMPION, map_location="cpu").eval()
    files = request_files(demo_root, tmp_path)
    pixels = torch.stack([torch.tensor(decode_image(path, 32, 3)).float() / 255.0 for path in files.values()])
    with torch.no_grad():
        evaluated = module(pixels).numpy()

    served_in_process = mlflow.pyfunc.load_model(CHAMPION)
    images = [encode_file(path) for path in files.values()]
    table = served_in_process.predict(pd.DataFrame({"image": images}))
    assert list(table.columns) == [*PROBABILITIES, *OUTPUT_COLUMNS]
    # The file path decodes exactly as evaluation does: same probabilities as the module on evaluation's pixels.
    np.testing.assert_allclose(table[PROBABILITIES].to_numpy(float), evaluated, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(table[PROBABILITIES].sum(axis=1), 1.0, rtol=1e-5)
    assert set(table["label"]) <= set(CLASSES) and table["error"].tolist() == ["", "", ""]
    assert table["model_name"].unique().tolist() == [NAME] and table["model_version"].unique().tolist() == ["1"]
    threshold = float(module.threshold)  # the binary demo's operating point, chosen on valid
    assert threshold == pytest.approx(mlflow.get_run(tracker.run_id).data.metrics["operating_threshold"])
    assert table["threshold"].unique().tolist() == pytest.approx([threshold])
    assert table["label"].tolist() == [CLASSES[1] if p >= threshold else CLASSES[0] for p in table["prob_abnormal"]]
    np.testing.assert_allclose(served_in_process.predict(pixels.numpy()), evaluated, rtol=1e-5, atol=1e-6)

    # `medxp predict` on the same files (the champion, by default) writes the same numbers and labels.
    csv_path = tmp_path / "predicted.csv"
    assert main(["predict", "--dataset", "glaucoma", "--no-progress", "--set", f"data_dir={demo_root}",
                 "--output", str(csv_path), *map(str, files.values())]) == 0
    predicted = pd.read_csv(csv_path, keep_default_na=False)
    assert predicted["path"].tolist() == [str(path) for path in files.values()]
    np.testing.assert_allclose(predicted[PROBABILITIES].to_numpy(float), table[PROBABILITIES].to_numpy(float),
                               rtol=1e-6, atol=1e-7)
    assert predicted["label"].tolist() == table["label"].tolist()
    assert predicted["model_version"].astype(str).unique().tolist() == ["1"]

    port = free_port()
    server = start_model_server(CHAMPION, tmp_path, port)
    try:
        status, split = post(port, {"dataframe_split": {"columns": ["image"], "data": [[image] for image in images]}})
        assert status == 200, split
        assert_same_answers(split["predictions"], table)
        status, columns = post(port, {"inputs": {"image": images}})
        assert status == 200, columns
        assert_same_answers(columns["predictions"], table)
        assert pd.DataFrame(columns["predictions"])["model_version"].unique().tolist() == ["1"]

        status, tensor = post(port, {"inputs": pixels.numpy().tolist()})
        assert status == 200, tensor
        np.testing.assert_allclose(tensor["predictions"], evaluated, rtol=1e-5, atol=1e-6)

        corrupt = base64.b64encode(files["png"].read_bytes()[:200]).decode()
        status, answered = post(port, {"dataframe_split": {"columns": ["image"], "data": [[corrupt], [images[0]]]}})
        assert status == 200, answered
        broken, fine = answered["predictions"]
        assert "unreadable image" in broken["error"] and broken["label"] == ""
        assert all(math.isnan(broken[column]) for column in PROBABILITIES)
        assert fine["error"] == "" and fine["prob_abnormal"] == pytest.approx(table.loc[0, "prob_abnormal"], abs=1e-6)
        status, again = post(port, {"inputs": {"image": images[1:2]}})  # the server still answers after it
        assert status == 200 and again["predictions"][0]["label"] == table.loc[1, "label"]

        for empty in ({"dataframe_split": {"columns": ["image"], "data": []}}, {"inputs": {"image": []}}):
            status, refused = post(port, empty)
            assert status == 400, refused
            assert refused["error_code"] == "INVALID_PARAMETER_VALUE"
            assert "empty request" in refused["message"] and "expected at least one row" in refused["message"]
    finally:
        stop_model_server(server)
