"""Evaluation of a trained model on one split: metrics, confidence intervals, calibration, confusion, report.

Binary metrics are of ``dataset.positive_class``. The decision rule (temperature and
threshold, :class:`~medxp.training.operating_point.PredictionRule`) is fitted on the
validation split by :func:`fit_prediction_rule` and applied unchanged to every split;
:func:`evaluate_splits` does both for a freshly trained network.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from medxp.config import EvalConfig
from medxp.errors import MedxpError
from medxp.training.calibration import (
    apply_temperature,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)
from medxp.training.loop import predict
from medxp.training.metrics import (
    THRESHOLD_METRICS,
    bootstrap_ci,
    classification_metrics,
    confusion,
    predict_at_threshold,
    report_dict,
    report_text,
    threshold_metrics,
)
from medxp.training.operating_point import ARGMAX, PredictionRule, choose_threshold, positive_index

log = logging.getLogger(__name__)
OPERATING_PREFIX = "op_"


@dataclass
class Evaluation:
    """Everything measured on one split.

    ``y_prob`` are the probabilities as the logged model gives them (after the rule's
    temperature); ``uncalibrated_prob`` those before it, when a temperature was applied
    here. ``operating_confusion`` is the confusion matrix at the rule's threshold
    (None without one); ``confusion`` is always the arg-max's.
    """

    split: str
    class_names: tuple[str, ...]
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    confusion: dict
    report: str
    report_table: dict
    y_true: np.ndarray
    y_prob: np.ndarray
    rule: PredictionRule = field(default_factory=PredictionRule)
    operating_confusion: dict | None = None
    uncalibrated_prob: np.ndarray | None = None

    def prefixed(self) -> dict[str, float]:
        """`{"test_accuracy": ..., "test_accuracy_ci_low": ..., "test_op_sensitivity": ...}` for the tracker."""
        out = {f"{self.split}_{k}": v for k, v in self.metrics.items()}
        for key, (low, high) in self.intervals.items():
            out[f"{self.split}_{key}_ci_low"], out[f"{self.split}_{key}_ci_high"] = low, high
        return out

    @property
    def positive_class(self) -> str | None:
        """The positive class's name (binary tasks), else None."""
        index = self.rule.positive_index
        return None if index is None else self.class_names[index]


def fit_prediction_rule(y_true: np.ndarray, y_prob: np.ndarray, class_names: Sequence[str], positive_class: str,
                        config: EvalConfig, split: str = "valid") -> PredictionRule:
    """Fits the temperature (``eval.calibration``) and threshold (``eval.operating_point``) on one split.

    The threshold is chosen on the calibrated probabilities, so the logged model (which
    applies the temperature) and its threshold agree. Multi-class tasks get no threshold;
    a split with one class only gets none either (a warning says so).

    Args:
        y_true: Labels of the fitting split (validation).
        y_prob: The network's softmax probabilities on it.
        class_names: The task's classes.
        positive_class: ``dataset.positive_class`` (required for binary tasks).
        config: The evaluation settings.
        split: Name of the fitting split, recorded in the rule.

    Returns:
        The rule to score every split with and to store with the model.
    """
    positive = positive_index(class_names, positive_class)
    temperature = fit_temperature(y_true, y_prob) if config.calibration == "temperature" else 1.0
    if positive is None:
        return PredictionRule(None, temperature, chosen_on=split)
    calibrated = apply_temperature(y_prob, temperature)
    threshold = choose_threshold(np.asarray(y_true) == positive, calibrated[:, positive], config.operating_point)
    if threshold is None:
        log.warning("the %s split holds one class only: no operating point, predictions stay the arg-max", split)
        return PredictionRule(positive, temperature, chosen_on=split)
    return PredictionRule(positive, temperature, threshold, config.operating_point, split)


def evaluate_predictions(split: str, y_true: np.ndarray, y_prob: np.ndarray, class_names: Sequence[str],
                         config: EvalConfig, with_intervals: bool = True, rule: PredictionRule | None = None,
                         calibrated: bool = False) -> Evaluation:
    """Scores predictions already made (by a network, a logged model or an ensemble).

    Args:
        split: Name of the split, the prefix of the metric names.
        y_true: Integer labels, shape ``(N,)``.
        y_prob: Class probabilities, shape ``(N, C)``.
        class_names: The ``C`` class names.
        config: Bootstrap settings.
        with_intervals: Compute bootstrap confidence intervals.
        rule: Positive class, temperature and threshold; required for binary tasks
            (their metrics are of the positive class). None: multi-class arg-max.
        calibrated: ``y_prob`` already has the rule's temperature applied (a logged model's output).

    Returns:
        The evaluation. Metrics: those of
        :func:`~medxp.training.metrics.classification_metrics` (at the arg-max), ``ece``,
        ``brier`` and ``nll`` (``*_calibrated`` too when a temperature is applied here) and,
        with a threshold, ``op_sensitivity``, ``op_specificity``, ``op_ppv``, ``op_npv``,
        ``op_f1`` at it.

    Raises:
        MedxpError: a binary task without a rule naming its positive class.
    """
    rule = _checked_rule(rule, class_names)
    y_prob = np.asarray(y_prob, dtype=float)
    probabilities = y_prob if calibrated else apply_temperature(y_prob, rule.temperature)
    uncalibrated = None if calibrated or rule.temperature == 1.0 else y_prob
    positive = 1 if rule.positive_index is None else rule.positive_index
    metrics = classification_metrics(y_true, probabilities, class_names, positive)
    metrics.update(calibration_metrics(y_true, probabilities, uncalibrated, rule.positive_index))
    intervals = (bootstrap_ci(y_true, probabilities, class_names, n_resamples=config.bootstrap_resamples,
                              confidence=config.confidence, positive_index=positive) if with_intervals else {})
    operating_confusion = None
    if rule.threshold is not None:
        operating_metrics, operating_intervals, operating_confusion = _at_operating_point(
            y_true, probabilities, class_names, rule, config, with_intervals)
        metrics.update(operating_metrics)
        intervals.update(operating_intervals)
    y_pred = probabilities.argmax(1)
    evaluation = Evaluation(split, tuple(class_names), metrics, intervals, confusion(y_true, y_pred, class_names),
                            "", report_dict(y_true, y_pred, class_names), np.asarray(y_true), probabilities, rule,
                            operating_confusion, uncalibrated)
    evaluation.report = evaluation_text(evaluation)
    return evaluation


def calibration_metrics(y_true: np.ndarray, y_prob: np.ndarray, uncalibrated: np.ndarray | None,
                        positive_index: int | None) -> dict[str, float]:
    """``ece``, ``brier`` and ``nll``; with ``uncalibrated`` given, those are of it and ``*_calibrated`` of ``y_prob``.

    The Brier score is binary (positive class) when ``positive_index`` is given, else multi-class.
    """
    def scores(probabilities: np.ndarray) -> dict[str, float]:
        return {"ece": expected_calibration_error(y_true, probabilities),
                "brier": brier_score(y_true, probabilities, positive_index),
                "nll": negative_log_likelihood(y_true, probabilities)}

    if uncalibrated is None:
        return scores(y_prob)
    return {**scores(uncalibrated), **{f"{name}_calibrated": value for name, value in scores(y_prob).items()}}


def _at_operating_point(y_true: np.ndarray, y_prob: np.ndarray, class_names: Sequence[str], rule: PredictionRule,
                        config: EvalConfig, with_intervals: bool) -> tuple[dict, dict, dict]:
    """The binary metrics, their intervals and the confusion matrix at the rule's threshold, keys prefixed `op_`."""
    positive, threshold = rule.positive_index, rule.threshold
    point = threshold_metrics(y_true, y_prob, positive, threshold)
    intervals = (bootstrap_ci(y_true, y_prob, class_names, n_resamples=config.bootstrap_resamples,
                              confidence=config.confidence, metrics=THRESHOLD_METRICS, positive_index=positive,
                              threshold=threshold) if with_intervals else {})
    matrix = confusion(y_true, predict_at_threshold(y_prob, positive, threshold), class_names)
    matrix.update(positive_class=class_names[positive], threshold=threshold, operating_point=rule.operating_point,
                  chosen_on=rule.chosen_on)
    return ({OPERATING_PREFIX + name: value for name, value in point.items()},
            {OPERATING_PREFIX + name: value for name, value in intervals.items()}, matrix)


def _checked_rule(rule: PredictionRule | None, class_names: Sequence[str]) -> PredictionRule:
    if rule is None and len(class_names) == 2:
        raise MedxpError("evaluate_predictions: a binary task needs a PredictionRule naming its positive class "
                         "(dataset.positive_class); got none")
    rule = rule or PredictionRule()
    if len(class_names) == 2 and rule.positive_index not in (0, 1):
        raise MedxpError(f"evaluate_predictions: expected the positive class's label 0 or 1, "
                         f"got {rule.positive_index!r}")
    return rule


def evaluation_text(evaluation: Evaluation) -> str:
    """The text report: split and positive class, the per-class report (arg-max), the operating point, calibration."""
    rule = evaluation.rule
    lines = [f"Split: {evaluation.split}"]
    if evaluation.positive_class is not None:
        lines.append(f"Positive class: {evaluation.positive_class} (label {rule.positive_index})")
    lines += ["", "At the arg-max:", report_text_of(evaluation)]
    if rule.threshold is not None:
        lines += _operating_point_lines(evaluation)
    lines += _calibration_lines(evaluation)
    return "\n".join(lines) + "\n"


def report_text_of(evaluation: Evaluation) -> str:
    """scikit-learn's per-class report of the evaluation's arg-max predictions."""
    return report_text(evaluation.y_true, evaluation.y_prob.argmax(1), evaluation.class_names)


def _operating_point_lines(evaluation: Evaluation) -> list[str]:
    rule, metrics, intervals = evaluation.rule, evaluation.metrics, evaluation.intervals
    lines = ["", f"At the operating point: p({evaluation.positive_class}) >= {rule.threshold:.4f} "
                 f"({rule.operating_point}, threshold chosen on {rule.chosen_on}), on {evaluation.split}:"]
    for name in THRESHOLD_METRICS:
        key = OPERATING_PREFIX + name
        low, high = intervals.get(key, (math.nan, math.nan))
        interval = f"  (95% CI {low:.4f} to {high:.4f})" if key in intervals else ""
        lines.append(f"  {name:<12} {metrics[key]:.4f}{interval}")
    names, matrix = evaluation.class_names, evaluation.operating_confusion["matrix"]
    width, cell = max(len(name) for name in (*names, "true")) + 2, max(6, *(len(name) for name in names))
    lines.append("  confusion at the operating point (rows true, columns predicted):")
    lines.append(f"  {'true':<{width}}" + " ".join(f"{name:>{cell}}" for name in names))
    lines += [f"  {name:<{width}}" + " ".join(f"{count:>{cell}}" for count in row) for name, row in zip(names, matrix)]
    return lines


def _calibration_lines(evaluation: Evaluation) -> list[str]:
    metrics = evaluation.metrics
    lines = ["", f"Calibration on {evaluation.split}: ECE {metrics['ece']:.4f} (15 bins), "
                 f"Brier {metrics['brier']:.4f}, NLL {metrics['nll']:.4f}"]
    if "ece_calibrated" in metrics:
        lines.append(f"After temperature scaling (T = {evaluation.rule.temperature:.4f}, fitted on "
                     f"{evaluation.rule.chosen_on}): ECE {metrics['ece_calibrated']:.4f}, "
                     f"Brier {metrics['brier_calibrated']:.4f}, NLL {metrics['nll_calibrated']:.4f}")
    return lines


def evaluate_splits(model: nn.Module, loaders: Mapping[str, Iterable], class_names: Sequence[str],
                    positive_class: str, config: EvalConfig, device: torch.device,
                    channels_last: bool = False, with_intervals: bool = True) -> dict[str, Evaluation]:
    """Predicts every split, fits the prediction rule on ``valid``, and scores each split with it.

    Args:
        model: The trained network (returns logits).
        loaders: ``{split: batches}``; must include ``valid``.
        class_names: The task's classes.
        positive_class: ``dataset.positive_class``.
        config: The evaluation settings.
        device: Where the model runs.
        channels_last: Feed images in channels-last memory format.
        with_intervals: Compute bootstrap confidence intervals (``eval.bootstrap_resamples``).

    Returns:
        ``{split: Evaluation}``, each carrying the same rule (``evaluations["valid"].rule``).
    """
    predictions = {split: predict(model, batches, device, channels_last)[:2] for split, batches in loaders.items()}
    rule = fit_prediction_rule(*predictions["valid"], class_names, positive_class, config)
    return {split: evaluate_predictions(split, y_true, y_prob, class_names, config, with_intervals, rule=rule)
            for split, (y_true, y_prob) in predictions.items()}


def stored_rule(model: nn.Module, class_names: Sequence[str], positive_class: str) -> PredictionRule:
    """The rule a logged model carries (threshold, positive class, temperature), else the config's positive class.

    The model's temperature is already inside its outputs; the rule records it for the report.

    Raises:
        MedxpError: the model's positive class differs from ``dataset.positive_class``.
    """
    positive = positive_index(class_names, positive_class)
    threshold = _scalar(getattr(model, "threshold", None))
    stored_positive = _scalar(getattr(model, "positive_index", None))
    temperature = _scalar(getattr(model, "temperature", None)) or 1.0
    if positive is None or threshold is None or stored_positive is None or stored_positive < 0:
        return PredictionRule(positive, temperature)
    if int(stored_positive) != positive:
        raise MedxpError(f"the model's positive class is label {int(stored_positive)} but 'dataset.positive_class' = "
                         f"{positive_class!r} is label {positive}; expected the project the model was trained on")
    return PredictionRule(positive, temperature, threshold, str(getattr(model, "operating_point", ARGMAX)),
                          str(getattr(model, "threshold_split", "valid")))


def _scalar(value) -> float | None:
    """A tensor or number as a float; None for None or NaN."""
    if value is None:
        return None
    number = float(value.item() if isinstance(value, torch.Tensor) else value)
    return None if math.isnan(number) else number
