"""Training-epoch throughput: medxp's Trainer (tracking on) against a minimal hand-written loop.

Same model, same decoded data, same batch size, same augmentation. Prints both
throughputs and the ratio (goal >= 0.95) and writes bench/results/trainer_overhead.json.

    python bench/trainer_overhead.py [--epochs 3] [--images-per-class 400]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from medxp.config import load_project
from medxp.data import create_datamodule
from medxp.models import create_model
from medxp.recording import EpochLogger
from medxp.tracking.mlflow_tracker import MlflowTracker
from medxp.training.trainer import Trainer, seed_everything

RESULTS = Path(__file__).parent / "results"


def hand_written_epochs(model, data, batch_size: int, epochs: int, channels_last: bool) -> float:
    """The loop a researcher writes in a notebook: no callbacks, no validation metrics, no logging."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    loader = data.loader("train", batch_size, shuffle=True)
    valid = data.loader("valid", max(batch_size, 64))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for images, labels in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(images.contiguous(memory_format=memory_format)), labels)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            for images, labels in valid:
                model(images.contiguous(memory_format=memory_format))
    return time.perf_counter() - start


def medxp_epochs(model, data, config, epochs: int) -> float:
    """medxp's Trainer with early stopping, validation metrics and MLflow logging of every epoch."""
    with MlflowTracker.start("bench-trainer-overhead", run_name="trainer-overhead") as tracker:
        train = dataclasses.replace(config.train, epochs=epochs, patience=0)
        trainer = Trainer(train, callbacks=[EpochLogger(tracker)], channels_last=config.model.channels_last, progress=False)
        start = time.perf_counter()
        trainer.fit(model, data)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images-per-class", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="medxp-bench-"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{workdir}/mlflow.db")
    config = load_project("glaucoma", {"data_dir": str(workdir / "data"),
                                       "data.demo_images_per_class": args.images_per_class}, experiment="small_cnn")
    data = create_datamodule(config)
    images = len(data.datasets["train"]) * args.epochs
    rows = []
    for repeat in range(args.repeats):
        for name in ("hand-written", "medxp"):
            seed_everything(repeat)
            model = create_model(config.model, config.dataset)
            seconds = (hand_written_epochs(model, data, config.train.batch_size, args.epochs, config.model.channels_last)
                       if name == "hand-written" else medxp_epochs(model, data, config, args.epochs))
            rows.append({"loop": name, "repeat": repeat, "seconds": seconds, "images_per_s": images / seconds})
    best = {name: max(r["images_per_s"] for r in rows if r["loop"] == name) for name in ("hand-written", "medxp")}
    ratio = best["medxp"] / best["hand-written"]
    print(f"{'loop':<14}{'best img/s':>12}")
    for name, value in best.items():
        print(f"{name:<14}{value:>12.1f}")
    print(f"ratio medxp / hand-written: {ratio:.3f} (goal >= 0.95); batch {config.train.batch_size}, "
          f"{len(data.datasets['train'])} train images, {args.epochs} epochs, threads {torch.get_num_threads()}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "trainer_overhead.json").write_text(json.dumps({"rows": rows, "best": best, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
