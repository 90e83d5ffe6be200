"""Data-loading epoch time: decoding JPEGs every epoch against medxp's decoded-image cache.

A folder of generated JPEGs (default 3000 at 256 px, two classes) is read two ways, with the
same resize to 64 px and the same augmentation and normalisation (medxp's training transforms):

- torchvision `ImageFolder` + `DataLoader`, decoding and resizing every image every epoch,
  at each `num_workers` in --workers (the best one is the baseline);
- medxp's `create_datamodule` (class_folders layout), which decodes once into the on-disk
  cache and memory-maps it; its DataLoader iterates the cached uint8 arrays, at the same
  `num_workers` choices (augmentation still runs per sample, so workers can help here too).

Only the input pipeline is timed (every batch is fetched, no model). Goal: medxp >= 5x faster
from the second epoch. Prints a table and writes bench/results/data_cache.json.

    python bench/data_cache.py [--images 3000] [--source-size 256] [--image-size 64] [--epochs 3] [--output NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torch.utils.data import ConcatDataset, DataLoader
from torchvision import datasets
from torchvision.transforms import v2

from medxp.config import load_project
from medxp.data import create_datamodule
from medxp.data.transforms import create_transforms

RESULTS = Path(__file__).parent / "results"
CLASSES = ("class_a", "class_b")
BATCH_SIZE = 64


def generate_jpegs(root: Path, images: int, size: int, seed: int = 0) -> None:
    """Smooth random colour images (photograph-like JPEG sizes), half per class."""
    rng = np.random.default_rng(seed)
    for index in range(images):
        folder = root / CLASSES[index % 2]
        folder.mkdir(parents=True, exist_ok=True)
        noise = rng.standard_normal((size // 8, size // 8, 3)).astype(np.float32)
        field = ndimage.zoom(noise, (8, 8, 1), order=1) + 0.2 * rng.standard_normal((size, size, 3))
        pixels = np.clip(128 + 50 * field, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:05d}.jpg", quality=90)


def bench_config(root: Path, image_size: int, cache_dir: Path):
    """The covid_radiography project (class_folders layout) re-pointed at the generated folder."""
    return load_project("covid_radiography", {
        "dataset.name": "bench_data_cache", "dataset.class_names": list(CLASSES), "dataset.channels": 3,
        "dataset.mean": [0.5] * 3, "dataset.std": [0.25] * 3, "dataset.image_size": image_size,
        "data.data_dir": str(root), "data.cache_dir": str(cache_dir), "data.cache": True,
    })


def time_epochs(loader: DataLoader, epochs: int) -> list[float]:
    """Seconds per full pass over the loader."""
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for _images, _labels in loader:
            pass
        times.append(time.perf_counter() - start)
    return times


def image_folder_loader(root: Path, config, workers: int) -> DataLoader:
    """torchvision's way: decode, resize, augment per sample, every epoch."""
    transform = v2.Compose([v2.Resize((config.dataset.image_size,) * 2), v2.PILToTensor(),
                            create_transforms(config.dataset, train=True, augment=True)])
    dataset = datasets.ImageFolder(str(root), transform=transform)
    return DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=workers,
                      persistent_workers=workers > 0)


def medxp_loader(config, workers: int = 0) -> tuple[DataLoader, float]:
    """medxp's data module over every split, with the training transform; returns it and its load time."""
    start = time.perf_counter()
    data = create_datamodule(config)
    load_seconds = time.perf_counter() - start
    for dataset in data.datasets.values():
        dataset.transform = create_transforms(config.dataset, train=True, augment=True)
    everything = ConcatDataset(list(data.datasets.values()))
    loader = DataLoader(everything, batch_size=BATCH_SIZE, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0)
    return loader, load_seconds


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)  # per-sample transforms; the DataLoader workers are the parallelism
    with tempfile.TemporaryDirectory() as scratch:
        root, cache_dir = Path(scratch) / "jpegs", Path(scratch) / "cache"
        generate_jpegs(root, args.images, args.source_size)
        config = bench_config(root, args.image_size, cache_dir)
        baseline = {workers: time_epochs(image_folder_loader(root, config, workers), args.epochs)
                    for workers in args.workers}
        _, first_load = medxp_loader(config)  # decodes into the cache
        _, second_load = medxp_loader(config)  # a cache hit: what every later trial pays
        cached = {workers: time_epochs(medxp_loader(config, workers)[0], args.epochs) for workers in args.workers}
    return summarise(args, baseline, first_load, second_load, cached)


def summarise(args, baseline: dict[int, list[float]], first_load: float, second_load: float,
              cached: dict[int, list[float]]) -> dict:
    baseline_workers, baseline_steady = best_steady(baseline)
    medxp_workers, medxp_steady = best_steady(cached)
    return {
        "images": args.images, "source_size": args.source_size, "image_size": args.image_size,
        "epochs": args.epochs, "batch_size": BATCH_SIZE, "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2), "machine": platform.machine(), "torch": torch.__version__,
        "image_folder_epoch_s": rounded(baseline), "image_folder_best_workers": baseline_workers,
        "image_folder_steady_epoch_s": round(baseline_steady, 3),
        "medxp_first_load_s": round(first_load, 3), "medxp_cache_hit_load_s": round(second_load, 3),
        "medxp_epoch_s": rounded(cached), "medxp_best_workers": medxp_workers,
        "medxp_steady_epoch_s": round(medxp_steady, 3),
        "speedup_from_second_epoch": round(baseline_steady / medxp_steady, 2),
        "goal": ">= 5x from the second epoch",
    }


def steady(times: list[float]) -> float:
    """Mean epoch time from the second epoch on (the first warms up workers and the page cache)."""
    return float(np.mean(times[1:] if len(times) > 1 else times))


def best_steady(by_workers: dict[int, list[float]]) -> tuple[int, float]:
    """(num_workers, steady epoch seconds) of the fastest setting."""
    workers = min(by_workers, key=lambda w: steady(by_workers[w]))
    return workers, steady(by_workers[workers])


def rounded(by_workers: dict[int, list[float]]) -> dict[str, list[float]]:
    return {str(workers): [round(t, 3) for t in times] for workers, times in by_workers.items()}


def print_table(result: dict) -> None:
    print(f"{result['images']} JPEGs {result['source_size']} px -> {result['image_size']} px, batch {BATCH_SIZE}, "
          f"{result['cpu_count']} CPUs (load average {result['load_average_1min']})")
    print(f"{'pipeline':<34} {'epoch times (s)':<28} {'steady epoch (s)':>16}")
    for name, key in (("ImageFolder", "image_folder_epoch_s"), ("medxp cache", "medxp_epoch_s")):
        for workers, times in result[key].items():
            print(f"{name + ', num_workers=' + workers:<34} {str(times):<28} {steady(times):>16.3f}")
    print(f"medxp first load (decode into the cache) {result['medxp_first_load_s']} s, cache-hit load "
          f"{result['medxp_cache_hit_load_s']} s")
    print(f"speed-up from the second epoch, best against best (ImageFolder num_workers="
          f"{result['image_folder_best_workers']}, medxp num_workers={result['medxp_best_workers']}): "
          f"{result['speedup_from_second_epoch']}x (goal >= 5x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--source-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=lambda text: [int(w) for w in text.split(",")], default=[0, 1, 2])
    parser.add_argument("--output", default="data_cache.json", help="file name under bench/results/")
    args = parser.parse_args()
    result = run(args)
    print_table(result)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
