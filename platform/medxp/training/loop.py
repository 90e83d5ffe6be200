"""The bare epoch loop: forward, loss, backward, step. No tracking, no printing."""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn


def train_one_epoch(model: nn.Module, batches: Iterable, optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
                    device: torch.device, channels_last: bool = False,
                    on_batch: Callable[[float], None] | None = None, *, grad_clip_norm: float = 0.0,
                    scaler: torch.amp.GradScaler | None = None,
                    after_step: Callable[[], None] | None = None) -> dict[str, float]:
    """One pass over `batches`; returns mean `train_loss` and `train_accuracy`.

    Args:
        grad_clip_norm: Clip the gradients' global norm to this (0: no clipping).
        scaler: Mixed precision (CUDA): forward under float16 autocast, scaled backward.
        after_step: Called after every optimizer step (a per-batch lr schedule).

    Raises:
        FloatingPointError: the loss became NaN or infinite (the run cannot continue).
    """
    model.train()
    loss_sum, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device), 0
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for images, labels in batches:
        images = images.to(device, memory_format=memory_format, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=scaler is not None):
            logits = model(images)
            loss = loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        _step(loss, model, optimizer, grad_clip_norm, scaler)
        if after_step is not None:
            after_step()
        # Accumulate on the device; one sync at the end keeps GPU pipelines full.
        loss_sum += loss.detach() * len(labels)
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += len(labels)
        if on_batch is not None:
            on_batch(len(labels))
    mean_loss = float(loss_sum) / max(seen, 1)
    if not np.isfinite(mean_loss):
        raise FloatingPointError(f"training loss is {mean_loss}; lower the learning rate")
    return {"train_loss": mean_loss, "train_accuracy": float(correct) / max(seen, 1)}


def _step(loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer, grad_clip_norm: float,
          scaler: torch.amp.GradScaler | None) -> None:
    """Backward, optional clipping, optimizer step (through the scaler under mixed precision)."""
    if scaler is None:
        loss.backward()
        if grad_clip_norm:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
        optimizer.step()
        return
    scaler.scale(loss).backward()
    if grad_clip_norm:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
    scaler.step(optimizer)
    scaler.update()


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable, device: torch.device, channels_last: bool = False,
            loss_fn: nn.Module | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Class probabilities for every batch: `(y_true, y_prob, mean_loss)` (loss NaN without `loss_fn`)."""
    model.eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    labels_all, probs_all, loss_sum, seen = [], [], 0.0, 0
    for images, labels in batches:
        logits = model(images.to(device, memory_format=memory_format))
        if loss_fn is not None:
            loss_sum += float(loss_fn(logits, labels.to(device))) * len(labels)
        probs_all.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        labels_all.append(labels.numpy())
        seen += len(labels)
    mean_loss = loss_sum / seen if loss_fn is not None and seen else float("nan")
    return np.concatenate(labels_all), np.concatenate(probs_all), mean_loss
