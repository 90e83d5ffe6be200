"""Early stopping, the trainer's loop, and one whole pipeline run into an in-memory tracker."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medxp.config import TrainConfig
from medxp.pipeline import run_experiment
from medxp.tracking import NullTracker
from medxp.training.trainer import EarlyStopping, Trainer


class FakeTrainer:
    """Just what EarlyStopping touches: a model and the stop flag."""

    def __init__(self) -> None:
        self.model = nn.Linear(1, 1)
        self.should_stop = False


def run_early_stopping(values, patience, monitor="val_loss"):
    stopper, trainer, epochs = EarlyStopping(monitor, patience), FakeTrainer(), 0
    for epoch, value in enumerate(values, start=1):
        with torch.no_grad():
            trainer.model.weight.fill_(epoch)  # the weights "are" the epoch number
        stopper.on_epoch_end(trainer, epoch, {monitor: value})
        epochs = epoch
        if trainer.should_stop:
            break
    return stopper, trainer, epochs


def test_stops_after_patience_epochs_without_improvement_and_keeps_best_weights():
    stopper, trainer, epochs = run_early_stopping([0.9, 0.5, 0.6, 0.7, 0.4, 0.3], patience=2)
    assert epochs == 4 and trainer.should_stop
    assert stopper.best_epoch == 2 and stopper.best_value == 0.5
    assert float(stopper.best_state["weight"]) == 2.0


def test_maximises_accuracy_like_metrics():
    stopper, trainer, epochs = run_early_stopping([0.5, 0.7, 0.6, 0.65], patience=3, monitor="val_accuracy")
    assert not trainer.should_stop and epochs == 4 and stopper.best_epoch == 2


def test_patience_zero_never_stops_but_tracks_best():
    stopper, trainer, epochs = run_early_stopping([0.5, 0.6, 0.7, 0.8], patience=0)
    assert epochs == 4 and not trainer.should_stop and stopper.best_epoch == 1


def test_fit_restores_the_best_epochs_weights(tiny_config):
    from medxp.data import create_datamodule
    from medxp.models import create_model

    config = tiny_config.replace({"train.epochs": 4, "train.patience": 0})
    data = create_datamodule(config)
    model = create_model(config.model, config.dataset)
    trainer = Trainer(config.train, progress=False)
    result = trainer.fit(model, data)
    assert len(result.history) == 4
    best = min(result.history, key=lambda row: row["val_loss"])
    assert result.best_epoch == best["epoch"]
    for key, value in trainer.early_stopping.best_state.items():
        assert torch.equal(model.state_dict()[key], value)


def test_nan_loss_is_a_clear_failure(tiny_config):
    config = tiny_config.replace({"train.lr": 1e6, "train.optimizer": "sgd", "train.epochs": 3,
                                  "model.batch_norm": False})
    with pytest.raises(FloatingPointError, match="learning rate"):
        run_experiment(config, NullTracker(), log_model=False, progress=False)


def test_pipeline_logs_curves_evaluations_and_provenance(tiny_config):
    tracker = NullTracker()
    result = run_experiment(tiny_config, tracker, progress=False)
    assert tracker.tags["data.synthetic"] == "true"
    assert len(tracker.tags["data.fingerprint"]) == 16
    assert tracker.params["train.lr"] == tiny_config.train.lr
    steps = [step for name, _, step in tracker.metrics if name == "val_loss"]
    assert steps == [1, 2]
    for key in ("test_accuracy", "test_roc_auc", "test_sensitivity", "test_specificity", "test_accuracy_ci_low"):
        assert 0.0 <= tracker.latest(key) <= 1.0
    assert tracker.latest("test_accuracy_ci_low") <= tracker.latest("test_accuracy") <= tracker.latest("test_accuracy_ci_high")
    for artifact in ("plots/curves.png", "evaluation/test_confusion_matrix.png", "evaluation/test_confusion_matrix.json",
                     "evaluation/test_classification_report.txt", "config/resolved.yaml"):
        assert artifact in tracker.artifacts
    matrix = tracker.artifacts["evaluation/test_confusion_matrix.json"]["matrix"]
    assert sum(map(sum, matrix)) == len(result.data.datasets["test"])
    assert result.objective == result.evaluations["valid"].metrics["accuracy"]
    assert "model" in tracker.models
