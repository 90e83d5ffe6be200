"""Staged fine-tuning as one run: head only, then the last N backbone layers, then everything.

Each stage starts from the weights the previous stage handed back (its best epoch's, which
the trainer restores, or with `train.restore_best: false` its last epoch's), has
its own learning rate and epoch budget, and continues the run's epoch numbering so the
curves in MLflow read as one training. A model fitted in one call
(`models.estimator.EstimatorModel`) has no stages: `fit_in_stages` hands it to
`training.estimator.EstimatorTrainer`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

from torch import nn

from medxp.config import ExperimentConfig
from medxp.data import DataModule
from medxp.models.estimator import EstimatorModel
from medxp.models.factory import freeze_backbone
from medxp.training.estimator import EstimatorTrainer, check_estimator_config
from medxp.training.trainer import FitResult, Trainer

log = logging.getLogger(__name__)


def training_stages(config: ExperimentConfig) -> list[tuple[int | None, int, float]]:
    """(unfrozen layers or None to keep the model as built, epochs, lr) for each stage."""
    train = config.train
    if not train.stage_epochs:
        return [(None, train.epochs, train.lr)]
    return list(zip(train.stage_unfrozen_layers, train.stage_epochs, train.stage_lrs))


def fit_in_stages(model: nn.Module, data: DataModule, config: ExperimentConfig, callbacks: Sequence[Any] = (),
                  progress: bool = True) -> tuple[FitResult, Trainer | EstimatorTrainer]:
    """Trains through every stage; returns the combined history and the last stage's trainer.

    A model fitted in one call (`EstimatorModel`) takes `EstimatorTrainer` instead: one fit, no stages.
    """
    if isinstance(model, EstimatorModel):
        check_estimator_config(config)
        trainer = EstimatorTrainer(config.train, callbacks=callbacks)
        return trainer.fit(model, data), trainer
    combined, trainer, offset = FitResult(), None, 0
    stages = training_stages(config)
    for index, (unfrozen_layers, epochs, lr) in enumerate(stages, start=1):
        if unfrozen_layers is not None:
            freeze_backbone(model, unfrozen_layers)
            log.info("stage %d/%d: unfrozen_layers=%d, %d epoch(s), lr %g", index, len(stages), unfrozen_layers,
                     epochs, lr)
        stage = dataclasses.replace(config.train, epochs=epochs, lr=lr)
        trainer = Trainer(stage, callbacks=callbacks, channels_last=config.model.channels_last, progress=progress,
                          sampler=config.data.sampler, valid_sampler=config.data.valid_sampler, epoch_offset=offset)
        result = trainer.fit(model, data)
        combined.history.extend(result.history)
        combined.best_epoch, combined.best_value = result.best_epoch, result.best_value
        combined.stopped_early, combined.restored_epoch = result.stopped_early, result.restored_epoch
        offset += len(result.history)
    return combined, trainer
