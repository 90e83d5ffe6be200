"""The trainer: epochs, validation, callbacks (early stopping, tracking, reporting), progress."""

from __future__ import annotations

import copy
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from medxp.config import TrainConfig
from medxp.data import DataModule
from medxp.errors import MedxpError
from medxp.training.loop import predict, train_one_epoch
from medxp.training.metrics import classification_metrics

log = logging.getLogger(__name__)

OPTIMIZERS = {
    "adam": lambda params, cfg: torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "adamw": lambda params, cfg: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "sgd": lambda params, cfg: torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                               weight_decay=cfg.weight_decay),
    "adadelta": lambda params, cfg: torch.optim.Adadelta(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "adagrad": lambda params, cfg: torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
    # `train.momentum` is SGD's; RMSprop keeps torch's default (no momentum).
    "rmsprop": lambda params, cfg: torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
}


class Callback(Protocol):
    """Called after every validated epoch; may set `trainer.should_stop`."""

    def on_epoch_end(self, trainer: "Trainer", epoch: int, metrics: dict[str, float]) -> None: ...


class EarlyStopping:
    """Stops after `patience` epochs without improvement of `monitor`; keeps the best weights.

    The classic algorithm: remember the parameters at the best validation score, stop
    once `patience` further evaluations have not beaten it, and hand back the best
    parameters. `patience=0` never stops early but still keeps the best weights.
    """

    def __init__(self, monitor: str, patience: int, min_delta: float = 0.0) -> None:
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.mode = "min" if monitor.endswith("loss") else "max"
        self.best_value: float | None = None
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0

    def improved(self, value: float) -> bool:
        """Whether `value` beats the best so far by more than `min_delta`."""
        if self.best_value is None:
            return np.isfinite(value)
        if self.mode == "min":
            return value < self.best_value - self.min_delta
        return value > self.best_value + self.min_delta

    def on_epoch_end(self, trainer: "Trainer", epoch: int, metrics: dict[str, float]) -> None:
        value = metrics[self.monitor]
        if self.improved(value):
            self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
            self.best_state = copy.deepcopy(trainer.model.state_dict())
            return
        self.bad_epochs += 1
        if self.patience and self.bad_epochs >= self.patience:
            trainer.should_stop = True


@dataclass
class FitResult:
    """What `Trainer.fit` hands back: per-epoch history and where the best epoch was."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_value: float | None = None
    stopped_early: bool = False


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch so that a run repeats."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MedxpError("train.device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


class Trainer:
    """Fits a model on a DataModule's train split, validating each epoch.

    Args:
        config: Optimiser, batch size, epochs, early stopping.
        callbacks: Extra callbacks (tracking, search reporting) run after early stopping.
        channels_last: Feed batches in channels-last memory format (faster for CNNs on CPU).
        progress: Show a progress bar per epoch.
    """

    def __init__(self, config: TrainConfig, callbacks: Sequence[Any] = (), channels_last: bool = False,
                 progress: bool = True) -> None:
        self.config = config
        self.early_stopping = EarlyStopping(config.monitor, config.patience)
        self.callbacks = [self.early_stopping, *callbacks]
        self.channels_last = channels_last
        self.progress = progress
        self.device = resolve_device(config.device)
        self.loss_fn = nn.CrossEntropyLoss()
        self.model: nn.Module | None = None
        self.should_stop = False

    def fit(self, model: nn.Module, data: DataModule) -> FitResult:
        """Trains up to `epochs`, stops early when told, restores the best weights."""
        self.model = model.to(self.device)
        optimizer = OPTIMIZERS[self.config.optimizer](model.parameters(), self.config)
        train_loader = data.loader("train", self.config.batch_size, shuffle=True, seed=self.config.seed)
        valid_loader = data.loader("valid", max(self.config.batch_size, 64))
        result = FitResult()
        for epoch in range(1, self.config.epochs + 1):
            metrics = {"epoch": epoch, **self._train_epoch(optimizer, train_loader, epoch)}
            metrics.update(self._validate(valid_loader, data.class_names))
            result.history.append(metrics)
            log.info("epoch %d: %s", epoch, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "epoch"))
            for callback in self.callbacks:
                callback.on_epoch_end(self, epoch, metrics)
            if self.should_stop:
                result.stopped_early = epoch < self.config.epochs
                break
        if self.early_stopping.best_state is not None:
            model.load_state_dict(self.early_stopping.best_state)
        result.best_epoch, result.best_value = self.early_stopping.best_epoch, self.early_stopping.best_value
        return result

    def _train_epoch(self, optimizer: torch.optim.Optimizer, loader, epoch: int) -> dict[str, float]:
        with tqdm(total=len(loader.dataset), desc=f"epoch {epoch}/{self.config.epochs}", unit="img",
                  disable=not self.progress, leave=False) as bar:
            return train_one_epoch(self.model, loader, optimizer, self.loss_fn, self.device,
                                   self.channels_last, on_batch=bar.update)

    def _validate(self, loader, class_names: Sequence[str]) -> dict[str, float]:
        y_true, y_prob, loss = predict(self.model, loader, self.device, self.channels_last, self.loss_fn)
        if not np.isfinite(y_prob).all():
            raise FloatingPointError("the model's validation outputs are NaN or infinite; lower the learning rate")
        scores = classification_metrics(y_true, y_prob, class_names)
        return {"val_loss": loss, "val_accuracy": scores["accuracy"], "val_f1_macro": scores["f1_macro"],
                "val_roc_auc": scores["roc_auc"]}
