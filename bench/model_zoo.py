"""Training images/s and inference ms per batch of every zoo model on CPU, NCHW vs channels-last.

Each model runs at its default input size (its paper's, or its pretrained weights'; the
tabular MLP on 21 features) with random weights (speed does not depend on them). Per
memory format: one warm-up step, then timed steps until `--budget` seconds or
`--repeats` steps, median reported. Training is forward + backward + an SGD step in
train mode at `--train-batch`; inference is a no-grad forward in eval mode at `--batch`
(16 by default, the pneumonia study's comparison of VGG16DWSep and its plain twin).

Usage::

    python bench/model_zoo.py                        # every registered model (slow: hours for B7 at 600 px)
    python bench/model_zoo.py --models vgg16_dwsep vgg16_plain resnet18
    python bench/model_zoo.py --quick                # the seed models and a few light backbones

On a machine shared with other work, pass `--threads 1`: with every core busy, torch's
intra-op thread barriers make small models 10-100x slower (lenet: 115 ms per batch with 2
threads vs 1.3 ms with 1 on a loaded 2-core machine), which measures the neighbours, not the model.

Prints a table and writes bench/results/model_zoo.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from medxp.config import load_project
from medxp.models import create_model, model_names
from medxp.models.factory import model_info

RESULTS = Path(__file__).resolve().parent / "results" / "model_zoo.json"
QUICK = ("small_cnn", "covid_cnn", "lenet", "lenet_big", "mlp", "vgg16_dwsep", "vgg16_plain", "resnet18",
         "tf_efficientnet_lite0", "mobilenetv2_100", "mobilenetv3_small_100")
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="model names (default: every registered model)")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--batch", type=int, default=16, help="inference batch size")
    parser.add_argument("--train-batch", type=int, default=16, help="training batch size")
    parser.add_argument("--repeats", type=int, default=5, help="most timed steps per measurement")
    parser.add_argument("--budget", type=float, default=10.0, help="seconds per measurement after the first step")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON output path")
    return parser.parse_args()


def build(name: str) -> tuple[nn.Module, Callable[[int], torch.Tensor], int]:
    """The model for a 3-class RGB (or the tabular project's) spec at its default size, and an input maker."""
    info = model_info(name)
    if "image" not in info.modalities:
        raise ValueError(name)
    if info.family == "tabular":
        config = load_project("fetal_health", {"model": name})
        spec = config.dataset
        return create_model(config.model, spec), lambda n: torch.randn(n, len(spec.feature_columns)), 0
    config = load_project("glaucoma", {"model": name, "model.channels_last": False})
    spec = dataclasses.replace(config.dataset, image_size=info.default_input_size, class_names=("a", "b", "c"))
    return create_model(config.model, spec), lambda n: torch.rand(n, 3, spec.image_size, spec.image_size), \
        spec.image_size


def timed(step: Callable[[], None], repeats: int, budget: float) -> float:
    """Median seconds of `step` after one warm-up call."""
    step()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - started < budget):
        begin = time.perf_counter()
        step()
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def measure(model: nn.Module, make_input: Callable[[int], torch.Tensor], memory_format, args) -> dict[str, float]:
    """Training images/s and inference ms per batch in one memory format."""
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    train_inputs = make_input(args.train_batch)
    if train_inputs.ndim == 4:
        train_inputs = train_inputs.contiguous(memory_format=memory_format)
    labels = torch.randint(0, 3, (args.train_batch,))

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(train_inputs), labels).backward()
        optimizer.step()

    inputs = make_input(args.batch)
    if inputs.ndim == 4:
        inputs = inputs.contiguous(memory_format=memory_format)

    def infer_step() -> None:
        with torch.inference_mode():
            model(inputs)

    model.train()
    train_seconds = timed(train_step, args.repeats, args.budget)
    model.eval()
    infer_seconds = timed(infer_step, args.repeats, args.budget)
    return {"train_images_per_s": args.train_batch / train_seconds, "inference_ms_per_batch": 1000 * infer_seconds}


def bench_model(name: str, args) -> dict[str, Any]:
    torch.manual_seed(0)
    model, make_input, size = build(name)
    row: dict[str, Any] = {"model": name, "family": model_info(name).family, "input_size": size,
                           "parameters": sum(p.numel() for p in model.parameters())}
    formats = FORMATS if size else {"nchw": torch.contiguous_format}
    for label, memory_format in formats.items():
        row[label] = measure(model, make_input, memory_format, args)
    return row


def print_table(rows: list[dict[str, Any]], batch: int) -> None:
    header = (f"{'model':<24}{'size':>5}{'params (M)':>11}{'train img/s NCHW':>18}{'CL':>8}"
              f"{f'infer ms/{batch} NCHW':>20}{'CL':>9}")
    print(header)
    print("-" * len(header))
    for row in rows:
        nchw, last = row["nchw"], row.get("channels_last", {})
        print(f"{row['model']:<24}{row['input_size'] or '-':>5}{row['parameters'] / 1e6:>11.2f}"
              f"{nchw['train_images_per_s']:>18.1f}{last.get('train_images_per_s', float('nan')):>8.1f}"
              f"{nchw['inference_ms_per_batch']:>20.1f}{last.get('inference_ms_per_batch', float('nan')):>9.1f}")


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.models or (list(QUICK) if args.quick else model_names())
    # Training throughput is the epoch loop's: models fitted in one call (hist_gradient_boosting) have none.
    names = [name for name in names if model_info(name).trainer == "gradient"]
    rows = []
    for name in names:
        print(f"... {name}", flush=True)
        rows.append(bench_model(name, args))
    print_table(rows, args.batch)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "settings": {"batch": args.batch, "train_batch": args.train_batch, "repeats": args.repeats,
                     "budget_s": args.budget},
        "results": rows,
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
