"""The trainer: epochs, validation, callbacks (early stopping, tracking, reporting), progress.

Progress: in a terminal (or a notebook) a bar per epoch; elsewhere (`mlflow run` from a
script, CI, a log file) no bars, only the `epoch N: ...` log line each epoch, because a bar
redrawn with carriage returns per batch fills a log file with megabytes of them.
"""

from __future__ import annotations

import copy
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from medxp.config import TrainConfig
from medxp.data import DataModule
from medxp.console import progress_bars_wanted
from medxp.errors import MedxpError
from medxp.training.loop import predict, train_one_epoch
from medxp.training.metrics import classification_metrics
from medxp.training.optim import Schedule, create_loss, create_optimizer, create_schedule, oversampler, ratio_sampler

log = logging.getLogger(__name__)

class Callback(Protocol):
    """Called after every validated epoch; may set `trainer.should_stop`."""

    def on_epoch_end(self, trainer: "Trainer", epoch: int, metrics: dict[str, float]) -> None: ...


class EarlyStopping:
    """Stops after `patience` epochs without improvement of `monitor`; remembers the best weights.

    The classic algorithm: remember the parameters at the best validation score, stop
    once `patience` further evaluations have not beaten it, and hand back the best
    parameters (the trainer restores them unless `train.restore_best` is false).
    `patience=0` never stops early but still tracks the best epoch.
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
    """What `Trainer.fit` hands back: per-epoch history, where the best epoch was, whose weights the model holds.

    `best_epoch` is the epoch with the best `train.monitor` value; `restored_epoch` is the epoch
    whose weights the model holds after the fit: `best_epoch` with `train.restore_best`, else
    the last epoch trained.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_value: float | None = None
    stopped_early: bool = False
    restored_epoch: int = 0


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
        config: Optimiser, schedule, loss, batch size, epochs, early stopping, checkpoints.
        callbacks: Extra callbacks (tracking, search reporting) run after early stopping.
        channels_last: Feed batches in channels-last memory format (faster for CNNs on CPU).
        progress: Show a progress bar per epoch where it helps (a terminal or a notebook; see
            `progress_bars_wanted`); elsewhere each epoch is one log line.
        sampler: `none`, or `oversample` (every class drawn equally often in training).
        valid_sampler: `none`, or `test_ratio` (validation drawn in the test split's class ratio).
        epoch_offset: Added to epoch numbers in metrics and callbacks (a later fine-tuning stage).
    """

    def __init__(self, config: TrainConfig, callbacks: Sequence[Any] = (), channels_last: bool = False,
                 progress: bool = True, sampler: str = "none", valid_sampler: str = "none",
                 epoch_offset: int = 0) -> None:
        self.config = config
        self.epoch_offset = epoch_offset
        self.early_stopping = EarlyStopping(config.monitor, config.patience)
        self.callbacks = [self.early_stopping, *callbacks]
        self.channels_last = channels_last
        self.progress = progress and progress_bars_wanted()
        self.sampler, self.valid_sampler = sampler, valid_sampler
        self.device = resolve_device(config.device)
        self.loss_fn: nn.Module = nn.CrossEntropyLoss()
        self.model: nn.Module | None = None
        self.should_stop = False

    def fit(self, model: nn.Module, data: DataModule) -> FitResult:
        """Trains up to `epochs` (resuming from the checkpoint if asked), stops early when told, and
        restores the best epoch's weights unless `train.restore_best` is false (then keeps the last)."""
        self.model = model.to(self.device)
        train_labels = data.datasets["train"].labels.numpy()
        self.loss_fn = create_loss(self.config, train_labels, len(data.class_names)).to(self.device)
        optimizer = create_optimizer(model.parameters(), self.config)
        train_loader = self._train_loader(data, train_labels)
        schedule = create_schedule(optimizer, self.config, len(train_loader))
        scaler = torch.amp.GradScaler("cuda") if self.config.amp and self.device.type == "cuda" else None
        result = FitResult()
        first_epoch = self._resume(optimizer, schedule, result) + 1
        for epoch in range(first_epoch, self.config.epochs + 1):
            metrics = {"epoch": self.epoch_offset + epoch, **self._train_epoch(optimizer, train_loader, epoch, schedule, scaler),
                       "lr": optimizer.param_groups[0]["lr"]}
            metrics.update(self._validate(self._valid_loader(data), data.class_names))
            schedule.step_epoch(metrics[self.config.monitor])
            result.history.append(metrics)
            log.info("epoch %d: %s", epoch, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "epoch"))
            for callback in self.callbacks:
                callback.on_epoch_end(self, self.epoch_offset + epoch, metrics)
            self._save_checkpoint(epoch, optimizer, schedule, result)
            if self.should_stop:
                result.stopped_early = epoch < self.config.epochs
                break
        result.best_epoch, result.best_value = self.early_stopping.best_epoch, self.early_stopping.best_value
        result.restored_epoch = self._hand_back_weights(model, result)
        return result

    def _hand_back_weights(self, model: nn.Module, result: FitResult) -> int:
        """Loads the best epoch's weights if `train.restore_best` asks; returns the epoch whose weights `model` holds."""
        last_epoch = int(result.history[-1]["epoch"]) if result.history else self.epoch_offset
        if not self.config.restore_best or self.early_stopping.best_state is None:
            return last_epoch
        model.load_state_dict(self.early_stopping.best_state)
        return self.early_stopping.best_epoch

    def _train_loader(self, data: DataModule, labels: np.ndarray) -> DataLoader:
        if self.sampler != "oversample":
            return data.loader("train", self.config.batch_size, shuffle=True, seed=self.config.seed)
        return DataLoader(data.datasets["train"], batch_size=self.config.batch_size, num_workers=data.num_workers,
                          sampler=oversampler(labels, self.config.seed))

    def _valid_loader(self, data: DataModule) -> DataLoader:
        batch_size = max(self.config.batch_size, 64)
        if self.valid_sampler != "test_ratio":
            return data.loader("valid", batch_size)
        test_counts = np.bincount(data.datasets["test"].labels.numpy(), minlength=len(data.class_names))
        sampler = ratio_sampler(data.datasets["valid"].labels.numpy(), test_counts / test_counts.sum(),
                                self.config.seed)
        return DataLoader(data.datasets["valid"], batch_size=batch_size, sampler=sampler)

    def _train_epoch(self, optimizer: torch.optim.Optimizer, loader, epoch: int, schedule: Schedule,
                     scaler: torch.amp.GradScaler | None) -> dict[str, float]:
        with tqdm(total=len(loader.dataset), desc=f"epoch {epoch}/{self.config.epochs}", unit="img",
                  disable=not self.progress, leave=False) as bar:
            return train_one_epoch(self.model, loader, optimizer, self.loss_fn, self.device, self.channels_last,
                                   on_batch=bar.update, grad_clip_norm=self.config.grad_clip_norm, scaler=scaler,
                                   after_step=schedule.step_batch if schedule.per_batch else None)

    def _validate(self, loader, class_names: Sequence[str]) -> dict[str, float]:
        y_true, y_prob, loss = predict(self.model, loader, self.device, self.channels_last, self.loss_fn)
        if not np.isfinite(y_prob).all():
            raise FloatingPointError("the model's validation outputs are NaN or infinite; lower the learning rate")
        scores = classification_metrics(y_true, y_prob, class_names)
        return {"val_loss": loss, "val_accuracy": scores["accuracy"], "val_f1_macro": scores["f1_macro"],
                "val_roc_auc": scores["roc_auc"]}

    def _checkpoint_path(self) -> Path | None:
        return Path(self.config.checkpoint_dir) / "last.pt" if self.config.checkpoint_dir else None

    def _save_checkpoint(self, epoch: int, optimizer: torch.optim.Optimizer, schedule: Schedule,
                         result: FitResult) -> None:
        """Everything needed to continue after `epoch`, written atomically (a kill never leaves half a file)."""
        path = self._checkpoint_path()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        stopper = self.early_stopping
        state = {"epoch": epoch, "model": self.model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": schedule.scheduler.state_dict() if schedule.scheduler is not None else None,
                 "history": result.history, "rng": torch.get_rng_state(),
                 "early_stopping": {"best_value": stopper.best_value, "best_epoch": stopper.best_epoch,
                                    "best_state": stopper.best_state, "bad_epochs": stopper.bad_epochs}}
        partial = path.with_suffix(".partial")
        torch.save(state, partial)
        os.replace(partial, path)

    def _resume(self, optimizer: torch.optim.Optimizer, schedule: Schedule, result: FitResult) -> int:
        """Loads the checkpoint when `train.resume` is set; returns the last finished epoch (0 when fresh)."""
        path = self._checkpoint_path()
        if not self.config.resume or path is None or not path.exists():
            if self.config.resume:
                log.warning("train.resume is set but there is no checkpoint at %s; starting afresh", path)
            return 0
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if schedule.scheduler is not None and state["scheduler"] is not None:
            schedule.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        result.history.extend(state["history"])
        for key, value in state["early_stopping"].items():
            setattr(self.early_stopping, key, value)
        log.info("resumed from %s after epoch %d", path, state["epoch"])
        return int(state["epoch"])
