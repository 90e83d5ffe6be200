"""What a search trial tells Tune each epoch: the value of the weights it would hand back if stopped there."""

from __future__ import annotations

import types

import pytest

from medxp.config import load_project
from medxp.search import trial as trial_module
from medxp.search.trial import TuneReporter, handed_back_value, trained_epochs
from medxp.training.trainer import EarlyStopping, FitResult


class FakeTrainer:
    """The face of `Trainer` the reporter reads, with the real early stopping run before the reporter."""

    def __init__(self, restore_best: bool = True) -> None:
        self.config = types.SimpleNamespace(restore_best=restore_best, epochs=5)
        self.early_stopping = EarlyStopping("val_loss", patience=0)
        self.should_stop = False
        self.model = types.SimpleNamespace(state_dict=lambda: {})


# Epoch 2 has the lowest loss; epoch 3's accuracy dips, epoch 4's is its highest but its loss is worse.
EPOCHS = [{"val_loss": 0.50, "val_accuracy": 0.80}, {"val_loss": 0.30, "val_accuracy": 0.90},
          {"val_loss": 0.90, "val_accuracy": 0.60}, {"val_loss": 0.40, "val_accuracy": 0.95},
          {"val_loss": 0.20, "val_accuracy": 0.93}]


def reported(monkeypatch, trainer: FakeTrainer, last_epoch: int = 5) -> list[dict]:
    sent: list[dict] = []
    monkeypatch.setattr(trial_module.tune, "report", sent.append)
    reporter = TuneReporter("val_accuracy", "run-1", last_epoch)
    for epoch, metrics in enumerate(EPOCHS, start=1):
        trainer.early_stopping.on_epoch_end(trainer, epoch, metrics)  # the trainer runs it first
        reporter.on_epoch_end(trainer, epoch, metrics)
    return sent


def test_each_epoch_reports_the_best_monitored_epochs_metric_not_its_own(monkeypatch):
    sent = reported(monkeypatch, FakeTrainer())
    assert [(r["epoch"], r["objective"]) for r in sent] == [(1, 0.80), (2, 0.90), (3, 0.90), (4, 0.90)]
    assert all(r["mlflow_run_id"] == "run-1" for r in sent)  # the last epoch goes with the final result


def test_without_restore_best_each_epoch_reports_its_own_value(monkeypatch):
    sent = reported(monkeypatch, FakeTrainer(restore_best=False))
    assert [r["objective"] for r in sent] == [0.80, 0.90, 0.60, 0.95]


def test_the_last_epoch_of_all_stages_is_left_to_the_final_result(monkeypatch):
    # A later stage numbers its epochs after the earlier stages': epoch 4 of 5 is still reported.
    sent = reported(monkeypatch, FakeTrainer(), last_epoch=4)
    assert [r["epoch"] for r in sent] == [1, 2, 3]


def test_the_final_per_epoch_value_is_the_handed_back_epochs():
    fit = FitResult(history=[{"epoch": i, **row} for i, row in enumerate(EPOCHS, start=1)], restored_epoch=2)
    assert handed_back_value(fit, "val_accuracy") == 0.90
    assert handed_back_value(FitResult(), "val_accuracy") != handed_back_value(FitResult(), "val_accuracy")  # NaN


def test_a_staged_trial_trains_every_stages_epochs():
    staged = load_project("glaucoma")
    assert staged.train.stage_epochs, "the glaucoma default is the staged ImageNet fine-tune"
    assert trained_epochs(staged) == sum(staged.train.stage_epochs)
    plain = load_project("glaucoma", {"epochs": 7}, experiment="small_cnn")
    assert trained_epochs(plain) == 7


@pytest.mark.parametrize("epoch, expected", [(1, 0.80), (3, 0.90)])
def test_handed_back_reads_the_stoppers_best_epoch(epoch, expected):
    trainer, reporter = FakeTrainer(), TuneReporter("val_accuracy", "run-1", 5)
    for number, metrics in enumerate(EPOCHS[:epoch], start=1):
        trainer.early_stopping.on_epoch_end(trainer, number, metrics)
        reporter.values[number] = metrics["val_accuracy"]
    assert reporter.handed_back(trainer, epoch) == expected


def test_a_staged_trial_reports_every_stages_epochs_but_the_last(tiny_config, monkeypatch):
    """A later stage's trainer numbers its epochs after the earlier stages' and has a budget of its own: the
    reporter counts against the trial's whole budget, so ASHA sees stage 2's and 3's epochs too."""
    from medxp.data import create_datamodule
    from medxp.models import create_model
    from medxp.training.stages import fit_in_stages

    config = tiny_config.replace({"train.stage_unfrozen_layers": [0, 1, -1], "train.stage_epochs": [2, 2, 1],
                                  "train.stage_lrs": [0.01, 0.001, 0.0001], "train.patience": 0})
    sent: list[dict] = []
    monkeypatch.setattr(trial_module.tune, "report", sent.append)
    reporter = TuneReporter("val_accuracy", "run-1", trained_epochs(config))
    fit, _ = fit_in_stages(create_model(config.model, config.dataset), create_datamodule(config), config, [reporter],
                           progress=False)
    assert [int(row["epoch"]) for row in fit.history] == [1, 2, 3, 4, 5]
    assert [r["epoch"] for r in sent] == [1, 2, 3, 4]
    assert set(reporter.values) == {1, 2, 3, 4, 5}
