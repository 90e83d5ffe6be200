"""Serving latency per image: single-image requests to `mlflow models serve` over loopback.

Trains a tiny demo model (the glaucoma project on GENERATED demo fundus images, one epoch) in a
temporary MLflow store, registers it, makes it champion, serves `models:/<name>@champion` with
`mlflow models serve --env-manager local` on 127.0.0.1, then times `--requests` POSTs of one
base64 JPEG each (`dataframe_split`, after a few warm-up requests) and, for comparison, the same
file through the in-process pyfunc. Prints the median (and p90) per image and writes
bench/results/serving_latency.json. The numbers are latency, not quality: the model is barely trained.

    python bench/serving_latency.py [--requests 50] [--experiment small_cnn|default]
    python bench/serving_latency.py --model-uri models:/glaucoma-classifier@champion --image fundus.jpg
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.model_server: the same server start as the test
from tests.model_server import free_port, start_model_server, stop_model_server  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def train_demo_champion(workdir: Path, experiment: str) -> tuple[str, Path, str]:
    """(champion URI, one demo test image, what was trained) in a fresh store under `workdir`."""
    import mlflow

    from medxp.config import load_project
    from medxp.pipeline import run_experiment
    from medxp.promotion import champion_uri, register_model
    from medxp.tracking.mlflow_tracker import MlflowTracker

    overrides = {"data_dir": str(workdir / "data"), "data.demo_images_per_class": 24, "data.demo_folds": 3,
                 "eval.bootstrap_resamples": 50}
    if experiment == "default":
        config = load_project("glaucoma", {**overrides, "train.stage_epochs": [1, 1, 1]})
    else:
        config = load_project("glaucoma", {**overrides, "train.epochs": 1}, experiment=experiment)
    with MlflowTracker.start("glaucoma", run_name="serving-latency") as tracker:
        result = run_experiment(config, tracker, progress=False)
    version = register_model(tracker.run_id, result.model_uri, config, synthetic=True)
    mlflow.MlflowClient().set_registered_model_alias(version.name, "champion", version.version)
    image = sorted((workdir / "data" / "Fold0" / "test" / "abnormal").glob("*.jpg"))[0]
    described = (f"{config.model.name}, {config.dataset.channels}x{config.dataset.image_size}x"
                 f"{config.dataset.image_size} input, GENERATED demo data")
    return champion_uri("glaucoma", synthetic=True), image, described


def post(port: int, body: bytes) -> float:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    elapsed = time.perf_counter() - start
    if answer["predictions"][0]["error"]:
        raise SystemExit(f"the server could not read the image: {answer['predictions'][0]['error']}")
    return elapsed


def summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"median_ms": 1000 * statistics.median(ordered), "p90_ms": 1000 * ordered[int(0.9 * (len(ordered) - 1))],
            "min_ms": 1000 * ordered[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--experiment", default="small_cnn", help="glaucoma experiment, or 'default' (the recipe's)")
    parser.add_argument("--model-uri", help="serve this model instead of training a demo one")
    parser.add_argument("--image", type=Path, help="the image file to send (with --model-uri)")
    args = parser.parse_args()
    image_given = args.image.resolve() if args.image else None
    workdir = Path(tempfile.mkdtemp(prefix="medxp-bench-serving-"))
    os.chdir(workdir)  # MLflow's default artifact root, ./mlruns, lands here
    if args.model_uri:
        if not image_given:
            raise SystemExit("--model-uri needs --image (a file the model reads)")
        model_uri, image, described = args.model_uri, image_given, args.model_uri
    else:
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{workdir}/mlflow.db")
        model_uri, image, described = train_demo_champion(workdir, args.experiment)

    import mlflow
    import pandas as pd

    from medxp.serving import encode_file

    encoded = encode_file(image)
    body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[encoded]]}}).encode()
    port = free_port()
    server = start_model_server(model_uri, workdir, port)
    try:
        for _ in range(args.warmup):
            post(port, body)
        http = [post(port, body) for _ in range(args.requests)]
    finally:
        stop_model_server(server)
    local = mlflow.pyfunc.load_model(model_uri)
    frame = pd.DataFrame({"image": [encoded]})
    for _ in range(args.warmup):
        local.predict(frame)
    in_process = []
    for _ in range(args.requests):
        start = time.perf_counter()
        local.predict(frame)
        in_process.append(time.perf_counter() - start)

    rows = {"http (mlflow models serve, loopback)": summary(http), "in-process pyfunc": summary(in_process)}
    print(f"model: {described}; image: {image.name} ({image.stat().st_size} bytes); "
          f"{args.requests} single-image requests after {args.warmup} warm-up")
    print(f"{'path':40s} {'median ms':>10s} {'p90 ms':>8s} {'min ms':>8s}")
    for name, row in rows.items():
        print(f"{name:40s} {row['median_ms']:10.1f} {row['p90_ms']:8.1f} {row['min_ms']:8.1f}")
    RESULTS.mkdir(exist_ok=True)
    record = {"model": described, "model_uri": model_uri, "image_bytes": image.stat().st_size,
              "requests": args.requests, "cpu_count": os.cpu_count(), "machine": platform.machine(), **rows}
    (RESULTS / "serving_latency.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
