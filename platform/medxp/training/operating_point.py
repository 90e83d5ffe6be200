"""The decision rule a classifier is reported and deployed with: positive class, threshold, temperature.

A binary classifier's arg-max is the threshold 0.5 on the positive class's probability,
rarely the point a clinic wants. :func:`choose_threshold` picks the threshold on the
validation split (never test) by the rule ``eval.operating_point`` names:

* ``youden``: the maximum of Youden's J = sensitivity + specificity - 1;
* ``sensitivity@0.95``: the threshold with the best specificity among those reaching a
  sensitivity of at least 0.95 on validation;
* ``specificity@0.90``: the best sensitivity among those reaching specificity >= 0.90.

The candidates are the thresholds of ``sklearn.metrics.roc_curve`` (every distinct
validation score); a case is positive when its score is ``>= threshold``. Multi-class
tasks have no operating point: they keep the arg-max (:class:`PredictionRule` with no
threshold).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_curve

from medxp.config import parse_operating_point
from medxp.errors import MedxpError

ARGMAX = "argmax"
# Slack when comparing a rate with its target: 19/20 must count as reaching 0.95.
_TOLERANCE = 1e-12


@dataclass(frozen=True)
class PredictionRule:
    """How a model's probabilities become the reported probabilities and labels.

    Attributes:
        positive_index: Label of the positive class of a binary task; None for multi-class.
        temperature: The logits are divided by it before the softmax (1.0: not calibrated).
        threshold: Positive where p(positive) >= threshold; None: the arg-max.
        operating_point: The rule that chose the threshold (``youden``, ``sensitivity@0.95``),
            or ``argmax`` when there is none.
        chosen_on: The split the threshold and temperature were fitted on.
    """

    positive_index: int | None = None
    temperature: float = 1.0
    threshold: float | None = None
    operating_point: str = ARGMAX
    chosen_on: str = "valid"


def positive_index(class_names: Sequence[str], positive_class: str) -> int | None:
    """The label of ``dataset.positive_class`` for a binary task; None for a multi-class one.

    Raises:
        MedxpError: a binary task whose positive class is empty or not one of its class names.
    """
    if len(class_names) != 2:
        return None
    names = [str(name) for name in class_names]
    if positive_class not in names:
        raise MedxpError(f"'dataset.positive_class' = {positive_class!r}: expected one of {names}; "
                         "a binary task's sensitivity, PPV, ROC and threshold are of its positive class")
    return names.index(positive_class)


def choose_threshold(is_positive: np.ndarray, scores: np.ndarray, rule: str) -> float | None:
    """The decision threshold the rule picks on these (validation) cases.

    Args:
        is_positive: True for the positive cases, shape ``(N,)``.
        scores: The positive class's probability of each case, shape ``(N,)``.
        rule: ``youden``, ``sensitivity@<target>`` or ``specificity@<target>``.

    Returns:
        The threshold (one of the scores, or just above the highest when the rule wants no
        positive prediction); None when the cases hold a single class, so no ROC curve exists.
        Ties go to the highest threshold.

    Raises:
        MedxpError: an unknown rule.
    """
    kind, target = parse_operating_point(rule)
    is_positive = np.asarray(is_positive, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    if is_positive.all() or not is_positive.any():
        return None
    false_pos_rate, true_pos_rate, thresholds = roc_curve(is_positive, scores, drop_intermediate=False)
    # roc_curve's first threshold is +inf (nothing positive); keep it finite for logging and storage.
    thresholds[~np.isfinite(thresholds)] = np.nextafter(scores.max(), np.inf)
    if kind == "youden":
        return float(thresholds[np.argmax(true_pos_rate - false_pos_rate)])
    sensitivity, specificity = true_pos_rate, 1 - false_pos_rate
    achieved, other = (sensitivity, specificity) if kind == "sensitivity" else (specificity, sensitivity)
    reaching = np.flatnonzero(achieved >= target - _TOLERANCE)  # never empty: the curve spans 0 to 1
    # The best other value; among equals the best achieved value; then the highest threshold (stable sort).
    best = reaching[np.lexsort((-achieved[reaching], -other[reaching]))[0]]
    return float(thresholds[best])
