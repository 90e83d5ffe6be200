"""The one orchestrator: data -> model -> training -> evaluation -> tracking.

The CLI, the MLproject entry points and every search trial call `run_experiment`. The
steps every run shares are here too, for the flows (`medxp.flows`) and the CLI to compose:
`prepare` (the data, its context recorded), `open_logged_model` (then a tag and the logged
model loaded) and `evaluate_and_record`. This module imports no flow.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from medxp.config import ExperimentConfig
from medxp.data import DataModule, create_datamodule
from medxp.data.datamodule import PriorAudit
from medxp.hashing import state_dict_sha256
from medxp.models import InferenceModel, create_model
from medxp.models.cost import INFER_BATCH, INFER_REPEATS, inference_ms, parameter_count
from medxp.models.backbones import pretrained_input
from medxp.recording import EpochLogger, record_context, record_evaluation, record_fit
from medxp.tracking.base import Tracker
from medxp.training.evaluate import Evaluation, evaluate_predictions, evaluate_splits, stored_rule
from medxp.training.operating_point import PredictionRule
from medxp.training.stages import fit_in_stages
from medxp.training.trainer import FitResult, seed_everything

log = logging.getLogger(__name__)


@dataclass
class ExperimentResult:
    """What a run produced; `objective` is the validation value of the primary metric."""

    objective: float
    evaluations: dict[str, Evaluation]
    fit: FitResult
    model: nn.Module
    data: DataModule
    model_uri: str | None
    # What the model costs and took (`model_params`, `infer_ms`, `train_seconds`, also logged as metrics).
    cost: dict[str, float] = field(default_factory=dict)
    # The SHA-256 of the state dict training started from (tag `model.init_sha256`).
    initial_weights_sha256: str = ""


# Called with the freshly created network before training (a series gives variants that share an
# architecture the same initial weights through it).
Initialiser = Callable[[nn.Module], None]


def run_experiment(config: ExperimentConfig, tracker: Tracker, callbacks: Sequence[Any] = (),
                   log_model: bool = True, progress: bool = True,
                   data: DataModule | None = None, prior_audit: PriorAudit | None = None,
                   splits: Sequence[str] = ("valid", "test"),
                   initialise: Initialiser | None = None) -> ExperimentResult:
    """Trains and evaluates one configuration, logging everything through `tracker`.

    Args:
        config: The resolved experiment config.
        tracker: Where params, curves, evaluations and the model go.
        callbacks: Extra trainer callbacks (a search trial's reporter).
        log_model: Store the trained model with the tracker.
        progress: Show progress bars.
        data: The splits to use instead of `create_datamodule(config)` (a stratified CV fold).
        prior_audit: The data's audit made once before (a search's driver), used instead of auditing again.
        splits: The splits scored after training; `valid` always (it fits the decision rule). A search
            trial scores `valid` alone: the test split is scored once, on the model the search chooses.
            `train` is scored without augmentation (`DataModule.evaluation_loader`).
        initialise: Called with the new network before training (e.g. to load shared initial weights).

    Returns:
        The result, whose `objective` is `val_<eval.primary_metric>` of the weights training handed back
        (the best epoch's, or the last epoch's with `train.restore_best: false`).
    """
    config = pretrained_input(config)  # pretrained backbones expect their own normalisation
    seed_everything(config.train.seed)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    data = prepare(config, tracker, data, prior_audit)
    model = create_model(config.model, config.dataset)
    if initialise is not None:
        initialise(model)
    initial_sha256 = state_dict_sha256(model)
    tracker.set_tags({"model.weights_source": getattr(model, "weights_source", "random-init"),
                      "model.weights_sha256": getattr(model, "weights_sha256", ""),
                      "model.init_sha256": initial_sha256})
    started = time.perf_counter()
    fit, trainer = fit_in_stages(model, data, config, [EpochLogger(tracker), *callbacks], progress)
    train_seconds = time.perf_counter() - started
    record_fit(tracker, fit)
    # The threshold and temperature are fitted on valid and applied unchanged to test.
    scored = ("valid", *(split for split in splits if split != "valid"))
    evaluations = evaluate_splits(model, {split: data.evaluation_loader(split, 128) for split in scored},
                                  data.class_names, config.dataset.positive_class, config.eval, trainer.device,
                                  config.model.channels_last)
    for evaluation in evaluations.values():
        record_evaluation(tracker, evaluation)
    logged = inference_model(model, config, data, evaluations["valid"].rule)
    cost = record_cost(tracker, logged, data, train_seconds)
    model_uri = tracker.log_model(logged, example_batch(data)) if log_model else None
    objective = evaluations["valid"].metrics[config.eval.primary_metric]
    for split in scored[1:]:
        log.info("%s %s = %.4f", split, config.eval.primary_metric, evaluations[split].metrics[config.eval.primary_metric])
    return ExperimentResult(objective, evaluations, fit, model, data, model_uri, cost, initial_sha256)


def record_cost(tracker: Tracker, model: InferenceModel, data: DataModule, train_seconds: float) -> dict[str, float]:
    """Logs and returns what the model costs: `model_params`, `infer_ms` (median CPU milliseconds of one
    batch of 16 through the model as logged, `medxp.models.cost`) and `train_seconds` (wall time of the fit)."""
    cost = {"model_params": float(parameter_count(model)),
            "infer_ms": inference_ms(model, model_inputs(data, "valid")),
            "train_seconds": float(train_seconds)}
    tracker.log_metrics(cost)
    tracker.set_tags({"cost.infer": f"CPU, batch of {INFER_BATCH}, {torch.get_num_threads()} thread(s), median "
                                    f"of {INFER_REPEATS} passes after a warm-up"})
    return cost


def inference_model(model: nn.Module, config: ExperimentConfig, data: DataModule,
                    rule: PredictionRule | None = None) -> InferenceModel:
    """The trained network wrapped to take [0, 1] pixels (or raw features) and return probabilities.

    `rule` (fitted on validation) gives the model its temperature, and for binary tasks its
    threshold and positive class, which its `predict_label` uses.
    """
    rule = rule or PredictionRule()
    decision = {"temperature": rule.temperature, "threshold": rule.threshold, "operating_point": rule.operating_point,
                "positive_index": rule.positive_index if rule.threshold is not None else None,
                "threshold_split": rule.chosen_on}
    mean, std = data.input_statistics(config.dataset)  # per channel, or per feature fitted on train
    # What serving reads files by (class names, one input's shape), so a registered model needs no project config.
    described = {"class_names": data.class_names, "input_shape": tuple(data.datasets["valid"].images.shape[1:]),
                 "modality": config.dataset.modality, "feature_names": config.dataset.feature_columns}
    return InferenceModel(model.cpu().eval(), mean, std, **decision, **described).eval()


def model_inputs(data: DataModule, split: str) -> torch.Tensor:
    """A split as the logged model takes it: [0, 1] float pixels, or raw float features."""
    stored = data.datasets[split].images
    return stored.float() if stored.dtype.is_floating_point else stored.float() / 255.0


def example_batch(data: DataModule, size: int = 2) -> Any:
    """A few validation inputs as float32 numpy, the logged model's input example."""
    return model_inputs(data, "valid")[:size].numpy()


def prepare(config: ExperimentConfig, tracker: Tracker, data: DataModule | None = None,
            prior_audit: PriorAudit | None = None) -> DataModule:
    """The run's data, with its context recorded (tags, resolved config, provenance): every run's first step.

    Args:
        config: The resolved experiment config.
        tracker: The run that records the context.
        data: Splits made elsewhere (a CV fold) to use instead of `create_datamodule(config)`.
        prior_audit: The data's audit made once before (a search's driver), used instead of auditing again.
    """
    data = data if data is not None else create_datamodule(config, prior_audit)
    record_context(tracker, config, data)
    return data


def open_logged_model(config: ExperimentConfig, model_uri: str, tracker: Tracker,
                      tags: dict[str, str]) -> tuple[DataModule, nn.Module]:
    """The data (context recorded), the run tagged with `tags`, and the logged model at `model_uri` loaded.

    The first steps of every run that works on a logged or registered model (evaluate, explain,
    the main flow's best trial).
    """
    from medxp.models.loading import load_inference_model  # imports MLflow's pyfunc: only runs that load need it

    data = prepare(config, tracker)
    tracker.set_tags(tags)
    return data, load_inference_model(model_uri)


def evaluate_and_record(model: nn.Module, data: DataModule, split: str, config: ExperimentConfig,
                        tracker: Tracker) -> Evaluation:
    """Scores an inference model on one split (`evaluate_inference_model`) and records the evaluation."""
    evaluation = evaluate_inference_model(model, data, split, config)
    record_evaluation(tracker, evaluation)
    return evaluation


def evaluate_logged_model(config: ExperimentConfig, model_uri: str, tracker: Tracker,
                          split: str = "test") -> Evaluation:
    """Scores a logged or registered medxp model (pixels in, probabilities out) on one split."""
    data, model = open_logged_model(config, model_uri, tracker, {"evaluated_model": model_uri})
    return evaluate_and_record(model, data, split, config, tracker)


def evaluate_inference_model(model: nn.Module, data: DataModule, split: str, config: ExperimentConfig) -> Evaluation:
    """Scores a model that takes what medxp logs (pixels or features) and returns probabilities, on one split.

    A model that carries a threshold (an `InferenceModel` logged by `run_experiment`) is also
    scored at that threshold; its outputs already include its temperature.
    """
    with torch.no_grad():
        y_prob = torch.cat([model(batch) for batch in model_inputs(data, split).split(256)]).numpy()
    rule = stored_rule(model, data.class_names, config.dataset.positive_class)
    return evaluate_predictions(split, data.datasets[split].labels.numpy(), y_prob, data.class_names, config.eval,
                                rule=rule, calibrated=True)
