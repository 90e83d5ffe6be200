"""Training a model fitted in one call (`models.estimator.EstimatorModel`): the trainer's other path.

`EstimatorTrainer.fit` is what `Trainer.fit` is for a network, for a scikit-learn estimator:

- one fit on the train split, as the data module feeds it (standardised features), with early
  stopping on the validation split: after `train.patience` iterations without improvement of
  `train.monitor` (0: every iteration of the budget is fitted);
- the learning curves afterwards, one row per boosting iteration with the epoch loop's keys
  (`train_loss`, `train_accuracy`, `val_loss`, `val_accuracy`, `val_f1_macro`, `val_roc_auc`;
  losses weighted by the class weights, as the epoch loop's are); an iteration counts as an epoch
  in `best_epoch`, `restored_epoch` and the curves;
- with `train.restore_best` (the default) the model is refitted to its best validation iteration,
  as the epoch loop hands back its best epoch's weights (same seed, same trees: the refit repeats
  the first iterations exactly);
- callbacks see every row once the fit is over, with `should_stop` already true: they record
  (per-iteration metrics in MLflow), nothing can stop a finished fit, and a search trial reports
  only its final result.

`train.seed` is the estimator's random state, `train.class_weights` its class weights (the
same numbers the epoch loop weighs its loss with), `train.threads` its OpenMP threads. The
other `train.*` keys (optimizer, lr, batch size, epochs, schedule, ...) and `data.sampler`
mean nothing to it: set away from their defaults they are logged as unused; staged fine-tuning
(`train.stage_epochs`) is refused. It runs on the CPU whatever `train.device` says.

`cross_validate` scores one configuration by stratified K-fold over the train + valid pool
(`search.cv_folds`, a search trial's objective): a fit in one call takes seconds, and on a small
table K held-out folds judge a configuration far less noisily than one small validation split.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from medxp.config import DataConfig, ExperimentConfig, TrainConfig
from medxp.data import DataModule
from medxp.errors import MedxpError
from medxp.models.estimator import ESTIMATOR_TRAIN_KEYS, EstimatorFit, EstimatorModel
from medxp.training.evaluate import evaluate_splits
from medxp.training.metrics import classification_metrics
from medxp.training.optim import class_weight_tensor
from medxp.training.trainer import FitResult

log = logging.getLogger(__name__)

# `data.*` keys that steer the epoch loop's batches only.
_LOOP_DATA_KEYS = ("sampler", "valid_sampler")


def unused_train_settings(config: ExperimentConfig) -> dict[str, Any]:
    """`{key: value}` of the `train.*` and batch-sampling `data.*` keys set away from their defaults
    that an estimator fit does not read."""
    unused = {}
    for item in dataclasses.fields(TrainConfig):
        value = getattr(config.train, item.name)
        if item.name not in ESTIMATOR_TRAIN_KEYS and value != item.default:
            unused[f"train.{item.name}"] = value
    defaults = DataConfig()
    for name in _LOOP_DATA_KEYS:
        if getattr(config.data, name) != getattr(defaults, name):
            unused[f"data.{name}"] = getattr(config.data, name)
    return unused


def check_estimator_config(config: ExperimentConfig) -> None:
    """Refuses what an estimator cannot do (staged fine-tuning); logs the keys it leaves unused.

    Raises:
        MedxpError: `train.stage_epochs` set, naming the model.
    """
    if config.train.stage_epochs:
        raise MedxpError(f"train.stage_epochs = {list(config.train.stage_epochs)}: model '{config.model.name}' is "
                         "fitted in one call, not by gradient steps, so it has no stages to fine-tune; leave "
                         "train.stage_epochs, train.stage_lrs and train.stage_unfrozen_layers empty")
    unused = unused_train_settings(config)
    if unused:
        log.info("model '%s' is fitted in one call and does not use %s", config.model.name,
                 ", ".join(f"{key}={value}" for key, value in unused.items()))


class EstimatorTrainer:
    """Fits an `EstimatorModel` on a DataModule's train split, early-stopped on its validation split.

    It has the trainer's face that the pipeline and callbacks use: `config`, `device` (the CPU),
    `model`, `should_stop`, `fit(model, data) -> FitResult`.

    Args:
        config: The run's `train.*` keys (those of `ESTIMATOR_TRAIN_KEYS` are read).
        callbacks: Called with every iteration's metrics once the fit is over (tracking).
    """

    def __init__(self, config: TrainConfig, callbacks: Sequence[Any] = ()) -> None:
        self.config = config
        self.callbacks = list(callbacks)
        self.device = torch.device("cpu")
        self.model: EstimatorModel | None = None
        self.should_stop = False

    def fit(self, model: EstimatorModel, data: DataModule) -> FitResult:
        """Fits, records the per-iteration curves, refits to the best iteration with `train.restore_best`."""
        self.model = model
        features, labels = split_arrays(data, "train")
        valid_features, valid_labels = split_arrays(data, "valid")
        weights = class_weight_tensor(self.config, labels, len(data.class_names))
        fit = EstimatorFit(seed=self.config.seed, class_weights=None if weights is None else tuple(weights.tolist()),
                           patience=self.config.patience, monitor=self.config.monitor)
        with _thread_limit(self.config.threads):
            model.fit_arrays(features, labels, valid_features, valid_labels, fit)
            fitted = model.iterations
            history = list(iteration_history(model, (features, labels), (valid_features, valid_labels),
                                             data.class_names, fit.class_weights))
            best_epoch, best_value = best_iteration(history, self.config.monitor)
            restored = fitted
            if self.config.restore_best and 0 < best_epoch < fitted:
                model.fit_arrays(features, labels, valid_features, valid_labels,
                                 dataclasses.replace(fit, max_iterations=best_epoch))
                restored = model.iterations
        result = FitResult(history=history, best_epoch=best_epoch, best_value=best_value,
                           stopped_early=fitted < model.iteration_budget, restored_epoch=restored)
        log.info("fitted %d of %d iteration(s)%s; best %s %s at iteration %d; the model keeps %d", fitted,
                 model.iteration_budget, " (stopped early)" if result.stopped_early else "", self.config.monitor,
                 "n/a" if best_value is None else f"{best_value:.4g}", best_epoch, restored)
        self.should_stop = True  # the fit is over: callbacks record, they cannot stop it
        for row in history:
            for callback in self.callbacks:
                callback.on_epoch_end(self, int(row["epoch"]), row)
        return result


def cross_validate(config: ExperimentConfig, data: DataModule, folds: int, metric: str) -> list[float]:
    """`metric` of `config`'s model on each held-out fold of stratified K-fold over `data`'s train + valid pool.

    Each fold fits a new model exactly as `EstimatorTrainer.fit` fits the run's (early stopping and
    the best-iteration refit on the held-out part, as the run's are on valid) and scores the
    held-out part as the run scores valid: the prediction rule (`eval.operating_point`) fitted on it,
    no bootstrap. Folds come from `medxp.data.pooled_folds`, seeded by `data.split_seed`; the test
    split is not read.

    Raises:
        MedxpError: a model trained by gradient steps (`check_cv_model`), or too few rows per class for
            `folds` folds.
    """
    from medxp.data.pooled_folds import fold_datamodule, pool_folds
    from medxp.models import create_model

    check_cv_model(config.model.name, folds)
    scores = []
    for train, held_out in pool_folds(data, folds, config, key="search.cv_folds"):
        fold = fold_datamodule(data, train, held_out)
        model = create_model(config.model, config.dataset)
        EstimatorTrainer(config.train).fit(model, fold)
        evaluation = evaluate_splits(model, {"valid": fold.evaluation_loader("valid", 4096)}, data.class_names,
                                     config.dataset.positive_class, config.eval, torch.device("cpu"),
                                     with_intervals=False)["valid"]
        scores.append(float(evaluation.metrics[metric]))
    return scores


def check_cv_model(model_name: str, folds: int, origin: str = "", refit: bool = False) -> None:
    """Refuses `search.cv_folds` = `folds` (>= 2) for a model trained by gradient steps.

    Raises:
        MedxpError: naming `origin` (a config's source), the key, the model and what is expected
            (with `refit`, `search.refit: false` too, which `cv_folds: 0` requires).
    """
    from medxp.models.factory import model_info

    if folds and model_info(model_name).trainer != "estimator":
        raise MedxpError(f"{origin + ': ' if origin else ''}'search.cv_folds' = {folds}: model '{model_name}' trains "
                         "by gradient steps, and K refits of each trial would multiply the search's time by K; a "
                         "K-fold objective is for models fitted in one call (e.g. hist_gradient_boosting); "
                         f"expected search.cv_folds: 0{' and search.refit: false' if refit else ''}")


def split_arrays(data: DataModule, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split as the data module feeds a network (standardised features): (N, F) float32, (N,) int64."""
    batches = list(data.loader(split, 4096))
    if not batches:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64)
    features = torch.cat([inputs.reshape(len(inputs), -1) for inputs, _ in batches]).float().numpy()
    return features, torch.cat([labels for _, labels in batches]).numpy()


def iteration_history(model: EstimatorModel, train: tuple[np.ndarray, np.ndarray],
                      valid: tuple[np.ndarray, np.ndarray], class_names: Sequence[str],
                      class_weights: Sequence[float] | None) -> Iterator[dict[str, float]]:
    """One row per fitted iteration: the epoch loop's train and validation metrics after it."""
    (features, labels), (valid_features, valid_labels) = train, valid
    weights = None if class_weights is None else np.asarray(class_weights, dtype=np.float64)
    staged = zip(model.staged_raw_logits(features), model.staged_raw_logits(valid_features))
    for iteration, (logits, valid_logits) in enumerate(staged, start=1):
        row = {"epoch": iteration, "train_loss": cross_entropy(logits, labels, weights),
               "train_accuracy": float((logits.argmax(axis=1) == labels).mean())}
        scores = classification_metrics(valid_labels, softmax(valid_logits), class_names)
        row.update({"val_loss": cross_entropy(valid_logits, valid_labels, weights),
                    "val_accuracy": scores["accuracy"], "val_f1_macro": scores["f1_macro"],
                    "val_roc_auc": scores["roc_auc"]})
        yield row


def best_iteration(history: Sequence[dict[str, float]], monitor: str) -> tuple[int, float | None]:
    """(iteration, value) of the best finite `monitor` (lowest loss, else highest; the first on ties); (0, None)
    when none is finite."""
    values = np.array([row[monitor] for row in history], dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return 0, None
    ranked = np.where(finite, values if monitor.endswith("loss") else -values, np.inf)
    index = int(np.argmin(ranked))
    return int(history[index]["epoch"]), float(values[index])


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def cross_entropy(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean negative log-likelihood, weighted per class like `torch.nn.CrossEntropyLoss(weight=...)`."""
    if not len(labels):
        return float("nan")
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    log_prob = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    losses = -log_prob[np.arange(len(labels)), labels]
    if weights is None:
        return float(losses.mean())
    case_weights = weights[labels]
    return float((case_weights * losses).sum() / case_weights.sum())


@contextlib.contextmanager
def _thread_limit(threads: int):
    """At most `threads` OpenMP threads for the estimator (`train.threads`; 0: the library's default)."""
    if threads <= 0:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads, user_api="openmp"):
        yield
