"""Per-sample augmentation cost on the intra-op thread pool vs on one thread, and a training epoch's loading.

medxp transforms each image on its own (torchvision v2, per sample) and runs a batch's
samples on one intra-op thread (`ArrayDataset.__getitems__`). This prints why: each
augmentation preset's milliseconds per image at 28 px (MedMNIST) and 224 px (fundus, X-ray) with
torch's default thread count and with one thread, and the time to fetch one epoch of 4,096
28 px images through a medxp DataLoader with the `light` preset. Writes
bench/results/augmentation_threads.json.

    python bench/augmentation_threads.py [--repeats 200]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from medxp.config import DatasetSpec
from medxp.data.datamodule import ArrayDataset
from medxp.data.transforms import AUGMENTATIONS, create_transforms

RESULTS = Path(__file__).resolve().parent / "results"


def per_image_ms(transform, image: torch.Tensor, repeats: int) -> float:
    transform(image)
    started = time.perf_counter()
    for _ in range(repeats):
        transform(image)
    return (time.perf_counter() - started) / repeats * 1e3


class OneByOne(torch.utils.data.Dataset):
    """The same samples without `__getitems__`: the DataLoader fetches them one at a time."""

    def __init__(self, dataset: ArrayDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index]


def epoch_s(dataset: ArrayDataset, batch_items: bool) -> float:
    """One pass of a shuffled DataLoader; with `batch_items` false, samples are fetched one by one."""
    if not batch_items:
        dataset = OneByOne(dataset)
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True)
    started = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    rows = []
    print(f"{'preset':<16} {'size':>5} {f'{default_threads} threads ms':>13} {'1 thread ms':>12} {'ratio':>6}")
    for size in (28, 224):
        spec = DatasetSpec(name="bench", class_names=("a", "b"), image_size=size, channels=3,
                           mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
        image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8)
        for preset in AUGMENTATIONS.names():
            transform = create_transforms(spec, train=True, augment=True, preset=preset)
            torch.set_num_threads(default_threads)
            pooled = per_image_ms(transform, image, args.repeats if size == 28 else args.repeats // 4)
            torch.set_num_threads(1)
            single = per_image_ms(transform, image, args.repeats if size == 28 else args.repeats // 4)
            torch.set_num_threads(default_threads)
            rows.append({"preset": preset, "size": size, "pool_ms": pooled, "one_thread_ms": single})
            print(f"{preset:<16} {size:>5} {pooled:>13.3f} {single:>12.3f} {pooled / single:>6.1f}")
    spec = DatasetSpec(name="bench", class_names=("a", "b"), image_size=28, channels=1, mean=(0.5,), std=(0.25,))
    images = np.random.default_rng(0).integers(0, 256, (4096, 1, 28, 28), dtype=np.uint8)
    dataset = ArrayDataset(images, np.zeros(4096, dtype=np.int64), create_transforms(spec, train=True, augment=True))
    epochs = {"per_sample_pool_s": epoch_s(dataset, batch_items=False), "batch_one_thread_s": epoch_s(dataset, True)}
    print(f"\none epoch, 4,096 images at 28 px, preset light: {epochs['per_sample_pool_s']:.2f} s fetched one by one "
          f"on {default_threads} threads, {epochs['batch_one_thread_s']:.2f} s as medxp fetches a batch (one thread)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "augmentation_threads.json"
    out.write_text(json.dumps({"threads": default_threads, "presets": rows, "epoch": epochs}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
