"""Optimizers, learning-rate schedules, losses and samplers, built from `TrainConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from torch.utils.data import WeightedRandomSampler

from medxp import choices
from medxp.config import TrainConfig
from medxp.named import Registry

# Each builder is `(trainable parameters, config) -> optimizer`; `train.optimizer` names one. The
# registries are created light in medxp.choices (which declares these names) for config validation.
OPTIMIZERS: Registry[Callable[[list[nn.Parameter], TrainConfig], torch.optim.Optimizer]] = choices.OPTIMIZERS
OPTIMIZERS.register("adam")(lambda params, cfg: torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay))
OPTIMIZERS.register("adamw")(lambda params, cfg: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay))
OPTIMIZERS.register("sgd")(lambda params, cfg: torch.optim.SGD(
    params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
    weight_decay=cfg.weight_decay))
OPTIMIZERS.register("adadelta")(lambda params, cfg: torch.optim.Adadelta(params, lr=cfg.lr,
                                                                          weight_decay=cfg.weight_decay))
OPTIMIZERS.register("adagrad")(lambda params, cfg: torch.optim.Adagrad(params, lr=cfg.lr,
                                                                        weight_decay=cfg.weight_decay))
# `train.momentum` is SGD's; RMSprop keeps torch's default (no momentum).
OPTIMIZERS.register("rmsprop")(lambda params, cfg: torch.optim.RMSprop(params, lr=cfg.lr,
                                                                        weight_decay=cfg.weight_decay))


def create_optimizer(parameters: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimizer over the trainable parameters only."""
    return OPTIMIZERS.get(config.optimizer)([p for p in parameters if p.requires_grad], config)


@dataclass
class Schedule:
    """A learning-rate scheduler and when it steps: after each batch, each epoch, or on a metric."""

    scheduler: object | None
    per_batch: bool = False
    on_metric: bool = False

    def step_batch(self) -> None:
        if self.scheduler is not None and self.per_batch:
            self.scheduler.step()

    def step_epoch(self, monitored: float) -> None:
        if self.scheduler is None or self.per_batch:
            return
        self.scheduler.step(monitored) if self.on_metric else self.scheduler.step()


# Each builder is `(optimizer, config, steps_per_epoch) -> Schedule`; `train.scheduler` names one.
SCHEDULERS: Registry[Callable[[torch.optim.Optimizer, TrainConfig, int], Schedule]] = choices.SCHEDULERS


def create_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> Schedule:
    """The registered `train.scheduler` (`none`, `cosine`, `onecycle`, `plateau`) over `optimizer`."""
    return SCHEDULERS.get(config.scheduler)(optimizer, config, steps_per_epoch)


@SCHEDULERS.register("none")
def constant_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> Schedule:
    """A constant lr, after a linear ramp over `train.warmup_epochs` when set."""
    return _after_warmup(optimizer, config, None)


@SCHEDULERS.register("cosine")
def cosine_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> Schedule:
    """Cosine annealing per epoch down to 0, after a linear ramp over `train.warmup_epochs` when set."""
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs - config.warmup_epochs)
    return _after_warmup(optimizer, config, cosine)


@SCHEDULERS.register("onecycle")
def one_cycle_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> Schedule:
    """One cycle per batch peaking at `train.lr`; the warmup epochs set its rising share (at least 5%)."""
    return Schedule(torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch,
        pct_start=max(config.warmup_epochs / config.epochs, 0.05)), per_batch=True)


@SCHEDULERS.register("plateau")
def plateau_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> Schedule:
    """Halves the lr when `train.monitor` stalls for half the patience (at least one epoch)."""
    mode = "min" if config.monitor.endswith("loss") else "max"
    return Schedule(torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode=mode, factor=0.5, patience=max(config.patience // 2, 1)), on_metric=True)


def _after_warmup(optimizer: torch.optim.Optimizer, config: TrainConfig, main: object | None) -> Schedule:
    """`main` (None: a constant lr) preceded by a linear ramp from 10% over `train.warmup_epochs`."""
    if not config.warmup_epochs:
        return Schedule(main)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=config.warmup_epochs)
    if main is None:
        return Schedule(warmup)
    return Schedule(torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, main],
                                                          milestones=[config.warmup_epochs]))


def class_weight_tensor(config: TrainConfig, train_labels: np.ndarray, num_classes: int) -> torch.Tensor | None:
    """Per-class loss weights: `balanced` (n / (classes * count), sklearn's rule), explicit, or None."""
    weights = config.class_weights
    if weights == "":
        return None
    if weights == "balanced":
        present = np.unique(train_labels)
        balanced = compute_class_weight("balanced", classes=present, y=train_labels)
        full = np.ones(num_classes)
        full[present] = balanced
        return torch.tensor(full, dtype=torch.float32)
    return torch.tensor(weights, dtype=torch.float32)


def create_loss(config: TrainConfig, train_labels: np.ndarray, num_classes: int) -> nn.CrossEntropyLoss:
    """Cross-entropy with the configured class weights and label smoothing."""
    return nn.CrossEntropyLoss(weight=class_weight_tensor(config, train_labels, num_classes),
                               label_smoothing=config.label_smoothing)


def oversampler(labels: np.ndarray, seed: int) -> WeightedRandomSampler:
    """Draws every class equally often (with replacement), one epoch = as many draws as images."""
    counts = np.bincount(labels)
    weights = 1.0 / counts[labels]
    return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), len(labels), replacement=True,
                                 generator=torch.Generator().manual_seed(seed))


def ratio_sampler(labels: np.ndarray, target_ratio: Sequence[float], seed: int) -> WeightedRandomSampler:
    """Draws validation images so that classes appear in `target_ratio` (the pneumonia study's
    validation that mimics the test set's class ratio); same draw every epoch for a fixed seed."""
    counts = np.bincount(labels, minlength=len(target_ratio)).astype(float)
    per_class = np.divide(np.asarray(target_ratio, dtype=float), counts, out=np.zeros_like(counts),
                          where=counts > 0)
    return WeightedRandomSampler(torch.as_tensor(per_class[labels], dtype=torch.double), len(labels),
                                 replacement=True, generator=torch.Generator().manual_seed(seed))
