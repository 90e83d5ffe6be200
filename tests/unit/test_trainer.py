"""Early stopping, the trainer's loop, and one whole pipeline run into an in-memory tracker."""

from __future__ import annotations

import os
import sys

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


def scripted_validation(losses):
    """A stand-in for `Trainer._validate`: the given val_loss per epoch, whatever the model does."""
    remaining = iter(losses)

    def validate(trainer, loader, class_names):
        return {"val_loss": next(remaining), "val_accuracy": 0.5, "val_f1_macro": 0.5, "val_roc_auc": 0.5}

    return validate


class WeightsPerEpoch:
    """Callback: a copy of the model's weights at the end of every epoch."""

    def __init__(self) -> None:
        self.states = {}

    def on_epoch_end(self, trainer, epoch, metrics) -> None:
        self.states[epoch] = {key: value.clone() for key, value in trainer.model.state_dict().items()}


def same_weights(model, state) -> bool:
    return all(torch.equal(model.state_dict()[key], value) for key, value in state.items())


@pytest.mark.parametrize("restore_best, kept_epoch", [(True, 2), (False, 3)])
def test_restore_best_false_keeps_the_last_epochs_weights(tiny_config, monkeypatch, restore_best, kept_epoch):
    from medxp.data import create_datamodule
    from medxp.models import create_model
    from medxp.recording import record_fit

    monkeypatch.setattr(Trainer, "_validate", scripted_validation([0.5, 0.3, 0.9]))  # best is epoch 2, last is worse
    config = tiny_config.replace({"train.epochs": 3, "train.patience": 0, "train.restore_best": restore_best})
    model, weights = create_model(config.model, config.dataset), WeightsPerEpoch()
    result = Trainer(config.train, callbacks=[weights], progress=False).fit(model, create_datamodule(config))
    assert not same_weights(model, weights.states[2 if kept_epoch == 3 else 3])  # training changed the weights
    assert same_weights(model, weights.states[kept_epoch])
    assert result.best_epoch == 2 and result.best_value == 0.3 and result.restored_epoch == kept_epoch
    tracker = NullTracker()
    record_fit(tracker, result)
    assert tracker.latest("best_epoch") == 2 and tracker.latest("restored_epoch") == kept_epoch


@pytest.mark.parametrize("restore_best, kept_epoch", [(True, 3), (False, 4)])
def test_each_training_stage_hands_on_the_weights_restore_best_asks_for(tiny_config, monkeypatch, restore_best,
                                                                        kept_epoch):
    from medxp.data import create_datamodule
    from medxp.models import create_model
    from medxp.training.stages import fit_in_stages

    monkeypatch.setattr(Trainer, "_validate", scripted_validation([0.3, 0.9, 0.5, 0.8]))
    config = tiny_config.replace({"train.stage_unfrozen_layers": [-1, -1], "train.stage_epochs": [2, 2],
                                  "train.stage_lrs": [0.01, 0.01], "train.patience": 0,
                                  "train.restore_best": restore_best})
    model, weights = create_model(config.model, config.dataset), WeightsPerEpoch()
    fit, _ = fit_in_stages(model, create_datamodule(config), config, [weights], progress=False)
    assert same_weights(model, weights.states[kept_epoch]) and fit.restored_epoch == kept_epoch
    assert fit.best_epoch == 3


def test_covid_variants_without_early_stopping_keep_their_last_epoch():
    from medxp.config import experiment_names, load_project

    for name in experiment_names("covid_radiography"):
        train = load_project("covid_radiography", {}, name).train
        assert train.restore_best == (train.patience > 0), name


def test_no_progress_bars_outside_a_terminal_only_epoch_lines(tiny_config, capsys, caplog, monkeypatch):
    import logging
    import sys

    from medxp.data import create_datamodule
    from medxp.models import create_model

    data = create_datamodule(tiny_config)
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="medxp.training.trainer"):
        Trainer(tiny_config.train, progress=True).fit(create_model(tiny_config.model, tiny_config.dataset), data)
    assert "\r" not in capsys.readouterr().err  # pytest's capture is not a terminal
    assert [r.getMessage().split(":")[0] for r in caplog.records if r.getMessage().startswith("epoch")] == \
        ["epoch 1", "epoch 2"]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # the same fit in a terminal draws its bars
    Trainer(tiny_config.train, progress=True).fit(create_model(tiny_config.model, tiny_config.dataset), data)
    assert "\r" in capsys.readouterr().err


def test_library_bars_are_quiet_outside_a_terminal(monkeypatch):
    """Outside a terminal MLflow's artifact bars are switched off; a user's own setting is kept."""
    from medxp.console import quiet_library_bars

    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    quiet_library_bars()
    assert "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    quiet_library_bars()
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")
    quiet_library_bars()
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "true"
