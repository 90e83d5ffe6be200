"""What a model costs: its parameter count and its measured inference time per batch.

Every run records both (`model_params`, `infer_ms`), so that any comparison (a series' table,
a multi-objective search) can weigh cost beside accuracy. The time is measured, not
estimated: the logged model as it serves (pixels or raw features in, probabilities out) on
the CPU of the machine that trained it, one batch of `INFER_BATCH` inputs, the median of
`INFER_REPEATS` timed passes after a warm-up pass, with the run's torch thread count.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

INFER_BATCH = 16
INFER_REPEATS = 7


def parameter_count(model: nn.Module) -> int:
    """The model's learned parameters: a network's tensor elements, or what an estimator says it learned
    (`learned_values()`: a fitted gradient-boosting model's tree nodes)."""
    counted = [module.learned_values() for module in model.modules() if hasattr(module, "learned_values")]
    return int(sum(p.numel() for p in model.parameters()) + sum(counted))


def batch_of(inputs: torch.Tensor, size: int = INFER_BATCH) -> torch.Tensor:
    """`size` inputs from `inputs` (repeated in order when there are fewer)."""
    if len(inputs) == 0:
        raise ValueError("no inputs to time the model on")
    rows = np.resize(np.arange(len(inputs)), size)
    return inputs[torch.from_numpy(rows)]


def inference_ms(model: nn.Module, inputs: torch.Tensor, batch: int = INFER_BATCH,
                 repeats: int = INFER_REPEATS) -> float:
    """Median milliseconds of one forward pass of `model` on a batch of `batch` inputs, on the CPU.

    Args:
        model: The model as it serves (an `InferenceModel`), on the CPU.
        inputs: What it takes (at least one input; repeated to fill the batch).
        batch: Inputs per pass.
        repeats: Timed passes, after one untimed warm-up pass.
    """
    was_training = model.training
    model.eval()
    examples = batch_of(inputs, batch)
    timings = []
    with torch.inference_mode():
        model(examples)  # warm-up: first-call allocations and kernel selection
        for _ in range(repeats):
            started = time.perf_counter()
            model(examples)
            timings.append(time.perf_counter() - started)
    model.train(was_training)
    return float(np.median(timings) * 1000.0)
