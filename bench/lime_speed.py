"""Seconds per LIME explanation at 224 px for each segmentation method (goal: <= 30 s on 2 CPU cores).

Explains one generated glaucoma fundus image with medxp's small_cnn (untrained: the
cost of a forward pass does not depend on the weights) wrapped in InferenceModel,
exactly as `medxp.explain.explain_image` does for a registered model. With
``--stock`` it also times lime's own perturbation loop (one image at a time, batches
of 10) on the same image, to show what the batched explainer saves.

Usage::

    python bench/lime_speed.py [--size 224] [--samples 1000] [--repeats 1] [--stock]

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
from medxp.explain import METHODS, create_segmenter, explain_image, make_classifier_fn
from medxp.explain.lime_images import default_batch_size, to_lime_image
from medxp.models import create_model
from medxp.pipeline import inference_model

GOAL_SECONDS = 30.0
RESULTS = Path(__file__).resolve().parent / "results" / "lime_speed.json"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--samples", type=int, default=1000, help="LIME perturbations per explanation")
    parser.add_argument("--repeats", type=int, default=1, help="explanations timed per method (median reported)")
    parser.add_argument("--stock", action="store_true", help="also time lime's unbatched loop (quickshift)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON output path")
    return parser.parse_args()


def demo_image(size: int) -> np.ndarray:
    """One generated fundus photograph as a (3, size, size) uint8 array."""
    with tempfile.TemporaryDirectory() as folder:
        root = generate_fundus_demo(Path(folder) / "demo", images_per_class=3, folds=3, image_size=size)
        return decode_image(sorted((root / POOL_DIR).glob("*.jpg"))[0], size, 3)


def time_method(model: Any, image: np.ndarray, method: str, samples: int, repeats: int) -> dict[str, Any]:
    """Median seconds of `repeats` explanations, and of the segmentation alone."""
    lime_image, _ = to_lime_image(image)
    segmenter = create_segmenter(method, image.shape[-1])
    started = time.perf_counter()
    segments = segmenter(lime_image)
    segmentation_seconds = time.perf_counter() - started
    seconds = [explain_image(model, image, method=method, num_samples=samples, seed=run).seconds
               for run in range(repeats)]
    median = statistics.median(seconds)
    return {"method": method, "superpixels": int(segments.max() + 1), "seconds": round(median, 2),
            "segmentation_seconds": round(segmentation_seconds, 3), "runs": [round(s, 2) for s in seconds],
            "meets_goal": median <= GOAL_SECONDS}


def time_stock_lime(model: Any, image: np.ndarray, samples: int) -> dict[str, Any]:
    """lime's own LimeImageExplainer (per-image masking loop, batches of 10) with quickshift."""
    from lime.lime_image import LimeImageExplainer

    lime_image, channels = to_lime_image(image)
    started = time.perf_counter()
    LimeImageExplainer(random_state=0).explain_instance(
        lime_image, make_classifier_fn(model, channels, batch_size=10), labels=(1,), top_labels=None,
        num_samples=samples, batch_size=10, segmentation_fn=create_segmenter("quickshift", image.shape[-1]))
    return {"method": "quickshift (stock lime loop, batch 10)", "seconds": round(time.perf_counter() - started, 2)}


def print_table(rows: list[dict[str, Any]], size: int, samples: int) -> None:
    print(f"\nLIME at {size} px, {samples} samples, {torch.get_num_threads()} torch threads, "
          f"{os.cpu_count()} CPUs (goal <= {GOAL_SECONDS:.0f} s)")
    print(f"{'method':<40} {'superpixels':>11} {'segment s':>10} {'seconds':>8}  goal")
    for row in rows:
        goal = "" if "meets_goal" not in row else ("ok" if row["meets_goal"] else "MISSED")
        print(f"{row['method']:<40} {row.get('superpixels', ''):>11} {row.get('segmentation_seconds', ''):>10} "
              f"{row['seconds']:>8.2f}  {goal}")


def main() -> None:
    args = parse_args()
    config = load_project("glaucoma", {"dataset.image_size": args.size})
    torch.manual_seed(0)
    model = inference_model(create_model(config.model, config.dataset), config)
    image = demo_image(args.size)
    rows = [time_method(model, image, method, args.samples, args.repeats) for method in METHODS]
    if args.stock:
        rows.append(time_stock_lime(model, image, args.samples))
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
