"""Calibration of predicted probabilities: ECE, Brier score, and temperature scaling.

A model is calibrated when, of the cases it gives probability p, a fraction p is right.
:func:`expected_calibration_error` and :func:`brier_score` measure how far it is;
:func:`fit_temperature` fits temperature scaling (Guo et al., "On Calibration of
Modern Neural Networks", ICML 2017) on the validation split: one scalar T > 0 that
divides the logits, chosen to minimise the negative log-likelihood. T leaves the
arg-max unchanged (and, for binary tasks, the ranking of cases, so ROC AUC too);
T > 1 softens over-confident probabilities.

The functions take probabilities, as medxp's evaluation holds them: the log of a
softmax output is the logits up to a per-row constant, which softmax ignores, so
``softmax(log(p) / T)`` equals ``softmax(logits / T)``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.metrics import brier_score_loss

from medxp.errors import MedxpError

ECE_BINS = 15
# Probabilities are clipped here before the log: a float32 softmax can round a class to exactly 0.
_SMALLEST_PROBABILITY = 1e-12
# Temperatures searched, as log T: 0.05 to 20 covers any network worth calibrating.
_LOG_TEMPERATURE_BOUNDS = (math.log(0.05), math.log(20.0))


def expected_calibration_error(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top-class confidence (Guo et al. 2017).

    Cases are binned by their highest probability into ``n_bins`` equal-width bins
    ``((m-1)/M, m/M]``; ECE = sum over bins of (bin size / N) x |accuracy in bin -
    mean confidence in bin|.

    Args:
        y_true: Integer labels, shape ``(N,)``.
        y_prob: Class probabilities, shape ``(N, C)``.
        n_bins: Number of equal-width confidence bins.

    Returns:
        The ECE, in [0, 1].
    """
    y_true, y_prob = _checked(y_true, y_prob)
    confidence = y_prob.max(axis=1)
    correct = (y_prob.argmax(axis=1) == y_true).astype(float)
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    sizes = np.bincount(bins, minlength=n_bins)
    gaps = np.bincount(bins, weights=correct - confidence, minlength=n_bins)
    # |sum(correct - confidence)| / N per bin is (size / N) x |accuracy - mean confidence|.
    return float(np.abs(gaps[sizes > 0]).sum() / len(y_true))


def brier_score(y_true: np.ndarray, y_prob: np.ndarray, positive_index: int | None = None) -> float:
    """Brier score: the mean squared error of the probabilities (lower is better).

    Binary tasks (``positive_index`` given): scikit-learn's ``brier_score_loss`` on the
    positive class's probability, mean of (p - 1[positive])^2, in [0, 1]. Multi-class:
    the mean over cases of the sum over classes of (p_k - 1[y = k])^2, in [0, 2] (for two
    classes that is twice the binary score).

    Args:
        y_true: Integer labels, shape ``(N,)``.
        y_prob: Class probabilities, shape ``(N, C)``.
        positive_index: Label of a binary task's positive class; None for the multi-class form.

    Returns:
        The Brier score.
    """
    y_true, y_prob = _checked(y_true, y_prob)
    if positive_index is not None:
        return float(brier_score_loss(y_true == positive_index, y_prob[:, positive_index], pos_label=True))
    one_hot = np.eye(y_prob.shape[1])[y_true]
    return float(((y_prob - one_hot) ** 2).sum(axis=1).mean())


def negative_log_likelihood(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes (probabilities clipped at 1e-12)."""
    y_true, y_prob = _checked(y_true, y_prob)
    return float(-np.log(np.clip(y_prob[np.arange(len(y_true)), y_true], _SMALLEST_PROBABILITY, 1.0)).mean())


def fit_temperature(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """The temperature T > 0 minimising the NLL of ``softmax(log(p) / T)`` on these cases.

    Fit it on the validation split, never on test. The search is over log T (bounded to
    T in [0.05, 20]) with ``scipy.optimize.minimize_scalar``.

    Args:
        y_true: Integer labels, shape ``(N,)``.
        y_prob: Uncalibrated class probabilities (softmax outputs), shape ``(N, C)``.

    Returns:
        T as a plain float; 1.0 leaves the probabilities as they are.
    """
    y_true, y_prob = _checked(y_true, y_prob)
    logits = _logits(y_prob)
    rows = np.arange(len(y_true))

    def nll(log_temperature: float) -> float:
        return float(-log_softmax(logits / math.exp(log_temperature), axis=1)[rows, y_true].mean())

    result = minimize_scalar(nll, bounds=_LOG_TEMPERATURE_BOUNDS, method="bounded")
    return float(math.exp(result.x))


def apply_temperature(y_prob: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(p) / T)``: the probabilities the network gives with its logits divided by T."""
    if not temperature > 0:
        raise MedxpError(f"temperature: expected a value > 0, got {temperature}")
    y_prob = np.asarray(y_prob, dtype=float)
    if temperature == 1.0:
        return y_prob
    return softmax(_logits(y_prob) / temperature, axis=1)


def _logits(y_prob: np.ndarray) -> np.ndarray:
    return np.log(np.clip(y_prob, _SMALLEST_PROBABILITY, 1.0))


def _checked(y_true: np.ndarray, y_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).astype(np.int64)
    y_prob = np.asarray(y_prob, dtype=float)
    if y_prob.ndim != 2 or y_prob.shape[0] != len(y_true) or len(y_true) == 0:
        raise MedxpError(f"y_prob: expected shape (N, C) for {len(y_true)} labels (N > 0), got {y_prob.shape}")
    if y_true.min() < 0 or y_true.max() >= y_prob.shape[1]:
        raise MedxpError(f"y_true: expected labels in 0..{y_prob.shape[1] - 1}, "
                         f"got values from {y_true.min()} to {y_true.max()}")
    return y_true, y_prob
