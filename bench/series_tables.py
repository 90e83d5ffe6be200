"""The seed studies' comparisons as series, on GENERATED data: the COVID ablation's table and the VGG16 pair's cost.

Writes two generated data sets (GENERATED_DEMO_DATA.txt marker: every run is tagged
`data.synthetic=true`; these are drawn pictures, not patients):

- a COVID-19 Radiography layout (`<Class>/images/*.png`, four classes, grey): a chest-like
  field whose class adds a drawn pattern (covid: peripheral haze in both lungs; lung opacity:
  one dense blob; viral pneumonia: fine interstitial texture; normal: none), with noise;
- a Kermany layout (`{train,val,test}/{NORMAL,PNEUMONIA}`, patient-named files) for the
  VGG16 pair, whose table is about cost: parameters and CPU inference ms per batch of 16.

Then runs `projects/covid_radiography/series/ablation.yaml` and
`projects/chest_xray_pneumonia/series/vgg16_pair.yaml` through `medxp.flows.series.run_series`
in a throw-away MLflow store, and prints each comparison table (Markdown).

Usage::

    python bench/series_tables.py [--per-class 60] [--epochs 10] [--vgg-epochs 1] [--only covid|vgg]

Writes bench/results/series_tables.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
from PIL import Image

from medxp.data.synthetic import generate_demo_folder
from medxp.flows.series import SUMMARY_COLUMNS, markdown_table, run_series
from medxp.tracking.mlflow_tracker import MlflowTracker

COVID_FOLDERS = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
RESULTS = Path(__file__).resolve().parent / "results" / "series_tables.json"


def chest(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """A drawn chest-like grey picture: two dark lung fields in a lighter body, and the class's pattern."""
    y, x = np.mgrid[0:size, 0:size] / size
    image = 0.75 - 0.1 * np.abs(x - 0.5)
    lungs = np.zeros_like(image)
    for centre in (0.3, 0.7):
        lungs += (((x - centre) / 0.16) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1).astype(float)
    image -= 0.45 * lungs
    if kind == "COVID":  # peripheral, bilateral ground glass
        image += 0.22 * lungs * (np.abs(x - 0.5) > 0.25 + rng.normal(0, 0.02)) * rng.uniform(0.7, 1.0)
    elif kind == "Lung_Opacity":  # one dense consolidation
        cx, cy = rng.choice([0.3, 0.7]) + rng.normal(0, 0.03), rng.uniform(0.4, 0.65)
        image += 0.35 * np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / 0.006))
    elif kind == "Viral Pneumonia":  # fine interstitial texture
        image += 0.12 * lungs * (np.sin(x * size * 0.9 + rng.uniform(0, 6)) * np.sin(y * size * 0.9) > 0.3)
    image += rng.normal(0, 0.05, image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def write_covid(staging: Path, arguments: dict[str, int]) -> None:
    rng = np.random.default_rng(arguments["seed"])
    for kind in COVID_FOLDERS:
        folder = staging / kind / "images"
        folder.mkdir(parents=True)
        for index in range(arguments["per_class"]):
            Image.fromarray(chest(rng, arguments["size"], kind)).save(folder / f"{kind}-{index + 1}.png")


def write_kermany(staging: Path, arguments: dict[str, int]) -> None:
    rng = np.random.default_rng(arguments["seed"])
    counts = {"train": arguments["per_class"], "val": max(arguments["per_class"] // 5, 4),
              "test": max(arguments["per_class"] // 4, 4)}
    for split, count in counts.items():
        for index in range(count):
            patient = {"train": 0, "val": 5000, "test": 9000}[split] + index
            for folder, kind, name in (("NORMAL", "Normal", f"IM-{patient:04d}-0001.jpeg"),
                                       ("PNEUMONIA", "Lung_Opacity", f"person{patient}_bacteria_1.jpeg")):
                path = staging / split / folder / name
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(chest(rng, arguments["size"], kind)).save(path, format="JPEG", quality=92)


def generated(root: Path, write, arguments: dict[str, int], what: str) -> Path:
    return generate_demo_folder(root, arguments, write, contents="drawn chest-like pictures",
                                description=f"GENERATED for bench/series_tables.py: {what}; not patient data.")


def run(dataset: str, name: str, overrides: dict[str, str]) -> dict:
    started = time.perf_counter()
    with MlflowTracker.start(dataset, run_name=f"series-{name}", tags={"medxp.kind": "series"}) as tracker:
        result = run_series(dataset, name, tracker, overrides, progress=False)
    seconds = time.perf_counter() - started
    print(f"\n## {dataset} series {name} (GENERATED data), {seconds:.0f} s\n")
    print(markdown_table(result.table, SUMMARY_COLUMNS))
    costs = ["epochs_trained", "train_seconds", "model_params", "infer_ms"]
    metrics = [c for c in result.table.columns if c.startswith(("train_", "valid_", "test_")) and c not in costs]
    columns = ["label", "status", *metrics, *costs, "init_from"]
    return {"seconds": seconds, "rows": result.table[columns].to_dict(orient="records")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=60, help="COVID images per class")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of each ablation variant")
    parser.add_argument("--vgg-epochs", type=int, default=1)
    parser.add_argument("--vgg-patients", type=int, default=24, help="train patients per class (Kermany layout)")
    parser.add_argument("--only", choices=("covid", "vgg"), default=None)
    args = parser.parse_args()
    figures: dict = {"machine": platform.processor() or platform.machine(), "generated_data": True}
    with tempfile.TemporaryDirectory(prefix="medxp-series-bench-") as scratch:
        mlflow.set_tracking_uri(f"sqlite:///{scratch}/mlflow.db")
        if args.only in (None, "covid"):
            covid = generated(Path(scratch) / "covid", write_covid,
                              {"per_class": args.per_class, "size": 128, "seed": 0}, "COVID Radiography layout")
            figures["covid_ablation"] = run("covid_radiography", "ablation", {
                "data.data_dir": str(covid), "train.epochs": str(args.epochs), "eval.bootstrap_resamples": "200"})
        if args.only in (None, "vgg"):
            kermany = generated(Path(scratch) / "kermany", write_kermany,
                                {"per_class": args.vgg_patients, "size": 160, "seed": 1}, "Kermany layout")
            figures["vgg16_pair"] = run("chest_xray_pneumonia", "vgg16_pair", {
                "data.data_dir": str(kermany), "train.epochs": str(args.vgg_epochs), "eval.bootstrap_resamples": "200"})
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2, default=float))
    print(f"\nwritten {RESULTS}")


if __name__ == "__main__":
    main()
