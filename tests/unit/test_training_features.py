"""Training features: class weights, samplers, schedules, clipping, augmentation presets, checkpoint resume."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from medxp.config import load_project
from medxp.data import create_datamodule
from medxp.data.transforms import create_transforms
from medxp.errors import MedxpError
from medxp.models import create_model
from medxp.training.optim import SCHEDULERS, class_weight_tensor, create_loss, create_optimizer, create_schedule, \
    oversampler, ratio_sampler
from medxp.training.trainer import Trainer

IMBALANCED = np.array([0] * 90 + [1] * 10)


def test_balanced_class_weights_follow_inverse_frequency():
    config = load_project("glaucoma", {"train.class_weights": "balanced"}).train
    weights = class_weight_tensor(config, IMBALANCED, 2)
    # n / (classes * count): 100 / (2 * 90) and 100 / (2 * 10)
    assert torch.allclose(weights, torch.tensor([100 / 180, 100 / 20]))


def test_class_weights_change_the_loss_as_expected():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    labels = torch.tensor([0, 1, 1])  # the third case is wrong
    plain = create_loss(load_project("glaucoma").train, IMBALANCED, 2)(logits, labels)
    weighted = create_loss(load_project("glaucoma", {"train.class_weights": "[1, 9]"}).train, IMBALANCED, 2)
    per_case = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    expected = (per_case * torch.tensor([1.0, 9.0, 9.0])).sum() / 19.0
    assert torch.isclose(weighted(logits, labels), expected)
    assert weighted(logits, labels) > plain  # the wrong case belongs to the up-weighted class


def test_oversampler_draws_classes_equally_often():
    drawn = IMBALANCED[list(oversampler(IMBALANCED, seed=0))]
    assert len(drawn) == len(IMBALANCED) * 1
    many = np.concatenate([IMBALANCED[list(oversampler(IMBALANCED, seed=s))] for s in range(50)])
    assert abs(many.mean() - 0.5) < 0.03  # 10% positives in the data, ~50% in the draws


def test_ratio_sampler_mimics_the_target_ratio_and_repeats():
    labels = np.array([0] * 50 + [1] * 50)
    first = list(ratio_sampler(labels, [0.375, 0.625], seed=3))
    assert first == list(ratio_sampler(labels, [0.375, 0.625], seed=3))
    many = np.concatenate([labels[list(ratio_sampler(labels, [0.375, 0.625], seed=s))] for s in range(50)])
    assert abs(many.mean() - 0.625) < 0.03


@pytest.mark.parametrize("scheduler, warmup", [("cosine", 0), ("cosine", 2), ("onecycle", 1), ("plateau", 0),
                                               ("none", 2)])
def test_schedules_step_and_change_the_learning_rate(scheduler, warmup):
    config = load_project("glaucoma", {"train.scheduler": scheduler, "train.warmup_epochs": warmup,
                                       "train.epochs": 6}).train
    model = torch.nn.Linear(2, 2)
    optimizer = create_optimizer(model.parameters(), config)
    schedule = create_schedule(optimizer, config, steps_per_epoch=3)
    rates = []
    for epoch in range(6):
        for _ in range(3):
            optimizer.step()
            schedule.step_batch()
        schedule.step_epoch(1.0)  # a flat monitored value: plateau must cut the lr
        rates.append(optimizer.param_groups[0]["lr"])
    assert len(set(np.round(rates, 12))) > 1


def test_schedules_are_the_scheduler_registry_and_a_miss_lists_them():
    assert SCHEDULERS.names() == ["cosine", "none", "onecycle", "plateau"]
    config = dataclasses.replace(load_project("glaucoma").train, scheduler="step")  # past config validation
    optimizer = create_optimizer(torch.nn.Linear(2, 2).parameters(), config)
    with pytest.raises(MedxpError, match="unknown scheduler 'step'; valid: cosine, none, onecycle, plateau"):
        create_schedule(optimizer, config, steps_per_epoch=3)


def test_frozen_parameters_are_not_given_to_the_optimizer():
    config = load_project("glaucoma", {"unfrozen_layers": 0})
    model = create_model(config.model, config.dataset)
    optimizer = create_optimizer(model.parameters(), config.train)
    assert sum(p.numel() for group in optimizer.param_groups for p in group["params"]) == \
        sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_augmentation_presets_compose_and_unknown_names_are_errors():
    spec = load_project("glaucoma").dataset
    image = torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8)
    for preset in ("light", "flip+rotate30+brightness+erasing", "perspective", "randaugment", "trivialaugment"):
        out = create_transforms(spec, train=True, augment=True, preset=preset)(image)
        assert out.dtype == torch.float32 and out.shape == (3, 32, 32)
    evaluation = create_transforms(spec, train=False, augment=True, preset="randaugment")
    assert torch.equal(evaluation(image), evaluation(image))  # no randomness outside training
    with pytest.raises(MedxpError, match="unknown augmentation 'rotate45'.*rotate30"):
        create_transforms(spec, train=True, augment=True, preset="flip+rotate45")


class Interrupt(Exception):
    pass


class InterruptAfter:
    def __init__(self, epoch: int) -> None:
        self.epoch, self.seen = epoch, []

    def on_epoch_end(self, trainer, epoch, metrics) -> None:
        self.seen.append(epoch)
        if epoch == self.epoch:
            raise Interrupt


def test_interrupted_run_resumes_from_its_checkpoint(tiny_config, tmp_path):
    config = tiny_config.replace({"train.epochs": 4, "train.patience": 0, "train.checkpoint_dir": str(tmp_path),
                                  "train.scheduler": "cosine", "train.grad_clip_norm": 1.0})
    data = create_datamodule(config)
    interrupted = InterruptAfter(3)  # killed while finishing epoch 3: its checkpoint is not written
    with pytest.raises(Interrupt):
        Trainer(config.train, callbacks=[interrupted], progress=False).fit(
            create_model(config.model, config.dataset), data)
    saved = torch.load(tmp_path / "last.pt", weights_only=False)
    assert saved["epoch"] == 2

    watcher = InterruptAfter(-1)
    resumed = config.replace({"train.resume": True})
    result = Trainer(resumed.train, callbacks=[watcher], progress=False).fit(
        create_model(config.model, config.dataset), data)
    assert watcher.seen == [3, 4]  # epochs 1-2 were not trained again
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4]
    assert result.history[:2] == saved["history"]


def test_oversampling_and_test_ratio_validation_run_end_to_end(tiny_config):
    from medxp.pipeline import run_experiment
    from medxp.tracking import NullTracker

    config = tiny_config.replace({"data.sampler": "oversample", "data.valid_sampler": "test_ratio",
                                  "train.class_weights": "balanced", "train.label_smoothing": 0.1})
    result = run_experiment(config, NullTracker(), log_model=False, progress=False)
    assert len(result.fit.history) == config.train.epochs


def test_staged_fine_tuning_continues_epochs_and_unfreezes_per_stage(tiny_config):
    from medxp.data import create_datamodule
    from medxp.training.stages import fit_in_stages

    config = tiny_config.replace({"train.stage_unfrozen_layers": [0, 1, -1], "train.stage_epochs": [1, 2, 1],
                                  "train.stage_lrs": [0.01, 0.001, 0.0001], "train.patience": 0})
    model = create_model(config.model, config.dataset)
    trainable_per_epoch = []

    class Count:
        def on_epoch_end(self, trainer, epoch, metrics):
            trainable_per_epoch.append((epoch, sum(p.numel() for p in model.parameters() if p.requires_grad),
                                        metrics["lr"]))

    fit, _ = fit_in_stages(model, create_datamodule(config), config, [Count()], progress=False)
    assert [row["epoch"] for row in fit.history] == [1, 2, 3, 4]
    epochs, trainable, rates = zip(*trainable_per_epoch)
    assert trainable[0] < trainable[1] == trainable[2] < trainable[3] == sum(p.numel() for p in model.parameters())
    assert rates[0] == 0.01 and rates[3] == 0.0001


def test_stage_lists_of_different_lengths_are_an_error():
    with pytest.raises(MedxpError, match="train.stage_epochs"):
        load_project("glaucoma", {"train.stage_unfrozen_layers": "[0, -1]", "train.stage_epochs": "[1]",
                                  "train.stage_lrs": "[0.1, 0.01]"})
