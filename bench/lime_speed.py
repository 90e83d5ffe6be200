"""Seconds per LIME explanation at 224 px for each segmentation method (goal: <= 30 s on 2 CPU cores).

Explains one generated glaucoma fundus image with medxp's small_cnn (untrained: the
cost of a forward pass does not depend on the weights) wrapped in InferenceModel,
exactly as `medxp.explain.explain_image` does for a registered model. With
``--stock`` it also times lime's own perturbation loop (one image at a time, batches
of 10, and at medxp's batch size) on the same image, to show what the batched
explainer and the batch size each save.

Usage::

    python bench/lime_speed.py [--size 224] [--samples 1000] [--repeats 3] [--stock]

Prints a table and writes bench/results/lime_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medxp.config import load_project
from medxp.data.images import decode_image
from medxp.data.synthetic import POOL_DIR, generate_fundus_demo
from medxp.explain import SEGMENTATIONS, create_segmenter, explain_image, make_classifier_fn
from medxp.explain.lime_images import default_batch_size, to_lime_image
from medxp.models import InferenceModel, create_model

GOAL_SECONDS = 30.0
STOCK = "quickshift, lime's own loop"
RESULTS = Path(__file__).resolve().parent / "results" / "lime_speed.json"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--samples", type=int, default=1000, help="LIME perturbations per explanation")
    parser.add_argument("--repeats", type=int, default=3, help="explanations timed per method (median reported)")
    parser.add_argument("--stock", action="store_true", help="also time lime's unbatched loop (quickshift)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON output path")
    return parser.parse_args()


def demo_image(size: int) -> np.ndarray:
    """One generated fundus photograph as a (3, size, size) uint8 array."""
    with tempfile.TemporaryDirectory() as folder:
        root = generate_fundus_demo(Path(folder) / "demo", images_per_class=3, folds=3, image_size=size)
        return decode_image(sorted((root / POOL_DIR).glob("*.jpg"))[0], size, 3)


def segmentation_facts(image: np.ndarray, method: str) -> dict[str, Any]:
    """Superpixel count and seconds of the segmentation alone."""
    lime_image, _ = to_lime_image(image)
    started = time.perf_counter()
    segments = create_segmenter(method, image.shape[-1])(lime_image)
    return {"superpixels": int(segments.max() + 1), "segmentation_seconds": round(time.perf_counter() - started, 3)}


def time_medxp(model: Any, image: np.ndarray, method: str, samples: int, seed: int) -> float:
    """Seconds of one `explain_image` call."""
    return explain_image(model, image, method=method, num_samples=samples, seed=seed).seconds


def time_stock_lime(model: Any, image: np.ndarray, samples: int, seed: int, batch_size: int) -> float:
    """Seconds of lime's own LimeImageExplainer (per-image masking loop) with quickshift."""
    from lime.lime_image import LimeImageExplainer

    lime_image, channels = to_lime_image(image)
    started = time.perf_counter()
    LimeImageExplainer(random_state=seed).explain_instance(
        lime_image, make_classifier_fn(model, channels, batch_size=batch_size), labels=(1,), top_labels=None,
        num_samples=samples, batch_size=batch_size,
        segmentation_fn=create_segmenter("quickshift", image.shape[-1]))
    return time.perf_counter() - started


def run_rounds(model: Any, image: np.ndarray, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Times every variant once per round, rounds interleaved so a busy spell hits all alike."""
    variants = {method: (lambda seed, m=method: time_medxp(model, image, m, args.samples, seed))
                for method in SEGMENTATIONS.in_registration_order()}
    if args.stock:
        for batch_size in (10, default_batch_size(*image.shape[-2:])):
            variants[f"{STOCK} (batch {batch_size})"] = (
                lambda seed, size=batch_size: time_stock_lime(model, image, args.samples, seed, size))
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for seed in range(args.repeats):
        for name, timed in variants.items():
            runs[name].append(timed(seed))
    rows = []
    for name, seconds in runs.items():
        median = statistics.median(seconds)
        facts = segmentation_facts(image, name) if name in SEGMENTATIONS else {}
        rows.append({"method": name, **facts, "seconds": round(median, 2), "runs": [round(s, 2) for s in seconds],
                     "meets_goal": median <= GOAL_SECONDS})
    return rows


def print_table(rows: list[dict[str, Any]], size: int, samples: int) -> None:
    print(f"\nLIME at {size} px, {samples} samples, {torch.get_num_threads()} torch threads, "
          f"{os.cpu_count()} CPUs (goal <= {GOAL_SECONDS:.0f} s)")
    print(f"{'method':<40} {'superpixels':>11} {'segment s':>10} {'seconds':>8}  goal")
    for row in rows:
        goal = "ok" if row["meets_goal"] else "MISSED"
        print(f"{row['method']:<40} {row.get('superpixels', ''):>11} {row.get('segmentation_seconds', ''):>10} "
              f"{row['seconds']:>8.2f}  {goal}")


def main() -> None:
    args = parse_args()
    config = load_project("glaucoma", {"dataset.image_size": args.size}, experiment="small_cnn")
    torch.manual_seed(0)
    model = InferenceModel(create_model(config.model, config.dataset).eval(), config.dataset.mean,
                           config.dataset.std).eval()
    image = demo_image(args.size)
    rows = run_rounds(model, image, args)
    print_table(rows, args.size, args.samples)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "lime_speed", "image_size": args.size, "num_samples": args.samples,
        "batch_size": default_batch_size(args.size, args.size), "model": config.model.name,
        "goal_seconds": GOAL_SECONDS, "results": rows,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version(), "load_average": list(os.getloadavg())},
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
