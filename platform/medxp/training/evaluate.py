"""Evaluation of a trained model on one split: metrics, confidence intervals, confusion, report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from medxp.config import EvalConfig
from medxp.training.loop import predict
from medxp.training.metrics import bootstrap_ci, classification_metrics, confusion, report_dict, report_text


@dataclass
class Evaluation:
    """Everything measured on one split."""

    split: str
    class_names: tuple[str, ...]
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    confusion: dict
    report: str
    report_table: dict
    y_true: np.ndarray
    y_prob: np.ndarray

    def prefixed(self) -> dict[str, float]:
        """`{"test_accuracy": ..., "test_accuracy_ci_low": ..., ...}` for the tracker."""
        out = {f"{self.split}_{k}": v for k, v in self.metrics.items()}
        for key, (low, high) in self.intervals.items():
            out[f"{self.split}_{key}_ci_low"], out[f"{self.split}_{key}_ci_high"] = low, high
        return out


def evaluate_predictions(split: str, y_true: np.ndarray, y_prob: np.ndarray, class_names: Sequence[str],
                         config: EvalConfig, with_intervals: bool = True) -> Evaluation:
    """Scores predictions already made (by a network, a logged model or an ensemble)."""
    y_pred = y_prob.argmax(1)
    intervals = (bootstrap_ci(y_true, y_prob, class_names, n_resamples=config.bootstrap_resamples,
                              confidence=config.confidence) if with_intervals else {})
    return Evaluation(split, tuple(class_names), classification_metrics(y_true, y_prob, class_names), intervals,
                      confusion(y_true, y_pred, class_names), report_text(y_true, y_pred, class_names),
                      report_dict(y_true, y_pred, class_names), y_true, y_prob)


def evaluate_model(model: nn.Module, batches, split: str, class_names: Sequence[str], config: EvalConfig,
                   device: torch.device, channels_last: bool = False, with_intervals: bool = True) -> Evaluation:
    """Predicts `batches` with `model` (which returns logits) and scores them."""
    y_true, y_prob, _ = predict(model, batches, device, channels_last)
    return evaluate_predictions(split, y_true, y_prob, class_names, config, with_intervals)
