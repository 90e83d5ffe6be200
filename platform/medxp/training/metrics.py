"""Classification metrics for medxp runs: point estimates, bootstrap intervals, confusion matrices, reports.

scikit-learn computes the metrics. This module fixes the conventions every stage
shares, so training, evaluation and promotion read the same numbers:

* labels are the integers ``0..C-1`` in the order of ``class_names``;
  predictions are the arg-max of the probabilities;
* ``zero_division=0`` everywhere;
* binary tasks name their positive class by its label, ``positive_index`` (medxp passes
  the index of ``dataset.positive_class``; BreastMNIST's positive class, malignant, is label 0).
  ``sensitivity``, ``specificity``, ``ppv``, ``npv``, ``f1``, ``roc_auc`` and ``pr_auc``
  (average precision) are all of that class; the default ``positive_index=1`` is only for
  callers that know label 1 is positive;
* a prediction at a decision threshold is positive when the positive class's probability is
  ``>= threshold`` (:func:`predict_at_threshold`, the convention of ``sklearn.metrics.roc_curve``);
* ``roc_auc`` and ``pr_auc`` are NaN, never an exception, when they are undefined (one class
  in ``y_true``; for ``pr_auc``, no positive case).

The bootstrap resamples cases with replacement. Calling scikit-learn once per
resample is too slow for the default metrics (``roc_auc_score`` alone takes
about 1.5 ms a call on 1,000 cases, times C for one-vs-rest), so accuracy,
F1 (macro), the binary rates (sensitivity, specificity, PPV, NPV, F1), ROC AUC and
PR AUC are computed for all resamples at once in numpy, from a batch of confusion matrices and from case weights
(a resample is the original cases, each weighted by how often it was drawn).
The unit tests check these values against scikit-learn resample by resample.
Any other metric falls back to scikit-learn per resample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)
from sklearn.preprocessing import label_binarize

from medxp.errors import MedxpError

DEFAULT_BOOTSTRAP_METRICS = ("accuracy", "f1_macro", "roc_auc", "pr_auc", "sensitivity", "specificity")
# The binary metrics of a decision (counts of the positive class), at arg-max or at a threshold.
THRESHOLD_METRICS = ("sensitivity", "specificity", "ppv", "npv", "f1")
_BINARY_ONLY_METRICS = frozenset({*THRESHOLD_METRICS, "pr_auc"})
_COUNT_METRICS = frozenset({"accuracy", "f1_macro", *THRESHOLD_METRICS})
# Bootstrap work arrays hold at most about this many (resample, case) entries: ~16 MB as int64.
_MAX_CHUNK_ELEMENTS = 2_000_000


def classification_metrics(
    y_true: np.ndarray, y_prob: np.ndarray, class_names: Sequence[str], positive_index: int = 1
) -> dict[str, float]:
    """Computes the standard metrics of a classifier from its predicted probabilities.

    Args:
        y_true: Integer labels, shape ``(N,)``, each in ``0..C-1``.
        y_prob: Class probabilities, shape ``(N, C)``; the prediction is the arg-max of a row.
        class_names: The ``C`` class names; their order defines the labels.
        positive_index: Label of the positive class of a binary task (ignored for C > 2).

    Returns:
        Plain floats keyed ``accuracy``, ``precision_macro``, ``recall_macro``,
        ``f1_macro``, ``precision_weighted``, ``recall_weighted``, ``f1_weighted``,
        ``roc_auc`` and, for binary tasks, ``sensitivity`` (recall of the positive class),
        ``specificity`` (recall of the other class), ``ppv`` and ``npv`` (predictive
        values), ``f1`` (of the positive class), all at the arg-max, and ``pr_auc``
        (average precision of the positive class's probability). ``roc_auc`` is NaN
        when ``y_true`` holds a single class, ``pr_auc`` when it holds no positive case.

    Raises:
        MedxpError: If the shapes disagree, a label is outside ``0..C-1`` or
            ``positive_index`` is not 0 or 1 on a binary task.
    """
    y_true, y_prob = _checked_inputs(y_true, y_prob, class_names)
    if len(class_names) == 2:
        _check_positive_index(positive_index)
    y_pred = y_prob.argmax(axis=1)
    labels = list(range(len(class_names)))
    metrics = {"accuracy": float(accuracy_score(y_true, y_pred))}
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=average, zero_division=0
        )
        metrics[f"precision_{average}"] = float(precision)
        metrics[f"recall_{average}"] = float(recall)
        metrics[f"f1_{average}"] = float(f1)
    metrics["roc_auc"] = _roc_auc(y_true, y_prob, positive_index)
    if len(class_names) == 2:
        metrics.update(_decision_metrics(y_true, y_pred, positive_index))
        metrics["pr_auc"] = _pr_auc(y_true, y_prob, positive_index)
    return metrics


def threshold_metrics(
    y_true: np.ndarray, y_prob: np.ndarray, positive_index: int, threshold: float
) -> dict[str, float]:
    """Sensitivity, specificity, PPV, NPV and F1 of a binary classifier at a decision threshold.

    Args:
        y_true: Integer labels 0 or 1, shape ``(N,)``.
        y_prob: Class probabilities, shape ``(N, 2)``.
        positive_index: Label of the positive class.
        threshold: A case is predicted positive when its positive-class probability is ``>= threshold``.

    Returns:
        Plain floats keyed as :data:`THRESHOLD_METRICS`; a ratio with an empty
        denominator is 0 (``zero_division=0``, as :func:`classification_metrics`).
    """
    y_true, y_prob = _checked_inputs(y_true, y_prob, ("negative", "positive"))
    _check_positive_index(positive_index)
    return _decision_metrics(y_true, predict_at_threshold(y_prob, positive_index, threshold), positive_index)


def predict_at_threshold(y_prob: np.ndarray, positive_index: int, threshold: float) -> np.ndarray:
    """Labels of a binary task decided at a threshold: positive where ``p(positive) >= threshold``.

    Args:
        y_prob: Class probabilities, shape ``(N, 2)``.
        positive_index: Label of the positive class (0 or 1).
        threshold: The decision threshold on the positive class's probability.

    Returns:
        Integer labels, shape ``(N,)``.
    """
    is_positive = np.asarray(y_prob)[:, positive_index] >= threshold
    return np.where(is_positive, positive_index, 1 - positive_index).astype(np.int64)


def _decision_metrics(y_true: np.ndarray, y_pred: np.ndarray, positive_index: int) -> dict[str, float]:
    """The binary rates of one set of predictions, 0 where a denominator is empty."""
    counts = confusion_matrix(y_true, y_pred, labels=[0, 1])[None]
    return {name: float(values[0]) for name, values in _binary_rates(counts, positive_index, 0.0).items()}


def _pr_auc(y_true: np.ndarray, y_prob: np.ndarray, positive_index: int) -> float:
    """Average precision of the positive class's probability; NaN without a positive case."""
    is_positive = y_true == positive_index
    if not is_positive.any():
        return math.nan
    return float(average_precision_score(is_positive, y_prob[:, positive_index]))


def _roc_auc(y_true: np.ndarray, y_prob: np.ndarray, positive_index: int = 1) -> float:
    """Area under the ROC curve; NaN instead of an exception when it is undefined.

    Binary tasks score the probability of the positive class. Multi-class tasks take the
    one-vs-rest macro average over the classes present in ``y_true`` (a class
    with no cases has no ROC curve); with every class present this equals
    ``roc_auc_score(..., multi_class="ovr", average="macro")``.

    Args:
        y_true: Integer labels, shape ``(N,)``.
        y_prob: Class probabilities, shape ``(N, C)``.
        positive_index: Label of the positive class of a binary task.

    Returns:
        The AUC, or NaN when ``y_true`` holds fewer than two classes.
    """
    present_classes = np.unique(y_true)
    if len(present_classes) < 2:
        return math.nan
    n_classes = y_prob.shape[1]
    if n_classes == 2:
        return float(roc_auc_score(y_true == positive_index, y_prob[:, positive_index]))
    # The one-vs-rest indicator path skips sklearn's check that rows sum to 1,
    # which float32 softmax outputs can fail by rounding.
    one_vs_rest = label_binarize(y_true, classes=list(range(n_classes)))
    return float(
        roc_auc_score(one_vs_rest[:, present_classes], y_prob[:, present_classes], average="macro")
    )


def bootstrap_ci(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    class_names: Sequence[str],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    metrics: Sequence[str] = DEFAULT_BOOTSTRAP_METRICS,
    positive_index: int = 1,
    threshold: float | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap confidence intervals, resampling cases with replacement.

    Resamples on which a metric is undefined (ROC AUC with one class, sensitivity
    with no positive case, specificity with no negative case, PPV with no predicted
    positive, ...) are dropped for that metric. Metrics that do not apply to the task
    (the binary metrics on a multi-class task) are left out of the result. Names
    other than the vectorised ones may be any key of :func:`classification_metrics`;
    those are computed with scikit-learn one resample at a time, which is slower.

    Args:
        y_true: Integer labels, shape ``(N,)``.
        y_prob: Class probabilities, shape ``(N, C)``.
        class_names: The ``C`` class names.
        n_resamples: Number of bootstrap resamples.
        confidence: Two-sided coverage of the interval, in ``(0, 1)``.
        seed: Seed of the resampling; the same seed gives the same intervals.
        metrics: Names of the metrics to bound.
        positive_index: Label of the positive class of a binary task.
        threshold: Binary tasks only: decide the predictions of the count metrics
            (:data:`THRESHOLD_METRICS`, ``accuracy``, ``f1_macro``) at this threshold on the
            positive class's probability instead of the arg-max; other metrics are then refused.

    Returns:
        ``{metric: (lower, upper)}`` as plain floats; ``(nan, nan)`` when no
        resample defined the metric.

    Raises:
        MedxpError: On bad shapes or labels, an unknown metric name, ``n_resamples < 1``,
            ``confidence`` outside ``(0, 1)``, or a threshold with a multi-class task or a
            metric that is not a count metric.
    """
    y_true, y_prob = _checked_inputs(y_true, y_prob, class_names)
    _check_bootstrap_settings(n_resamples, confidence, metrics, len(class_names))
    _check_threshold_settings(threshold, metrics, len(class_names), positive_index)
    applicable = [name for name in metrics if len(class_names) == 2 or name not in _BINARY_ONLY_METRICS]
    y_pred = y_prob.argmax(axis=1) if threshold is None else predict_at_threshold(y_prob, positive_index, threshold)
    distributions = _bootstrap_in_chunks(y_true, y_prob, applicable, n_resamples, seed,
                                         positive_index=positive_index, y_pred=y_pred)
    return {name: _percentile_interval(values, confidence) for name, values in distributions.items()}


def paired_bootstrap_difference(
    y_true: np.ndarray,
    y_prob_a: np.ndarray,
    y_prob_b: np.ndarray,
    class_names: Sequence[str],
    metric: str,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    positive_index: int = 1,
) -> tuple[float, tuple[float, float]]:
    """Metric of model A minus metric of model B on the same cases, with a paired bootstrap interval.

    Each resample draws the cases once and scores both models on that draw, so the
    interval is that of the difference between the models on cases like these, not of
    two independent test sets (the per-model intervals overlap far more than the paired
    one, and cannot tell whether A beats B).

    Args:
        y_true: Integer labels, shape ``(N,)``.
        y_prob_a: Model A's class probabilities (the candidate), shape ``(N, C)``.
        y_prob_b: Model B's (the champion), same shape and cases in the same order.
        class_names: The ``C`` class names.
        metric: A name :func:`bootstrap_ci` accepts, e.g. ``accuracy`` or ``roc_auc``.
        n_resamples: Number of bootstrap resamples.
        confidence: Two-sided coverage of the interval, in ``(0, 1)``.
        seed: Seed of the resampling.
        positive_index: Label of the positive class of a binary task.

    Returns:
        ``(difference on all cases, (lower, upper))``; the bounds are NaN when no resample
        defined the metric for both models.

    Raises:
        MedxpError: On bad shapes or labels, an unknown metric, or bad resampling settings.
    """
    y_true, y_prob_a = _checked_inputs(y_true, y_prob_a, class_names)
    _, y_prob_b = _checked_inputs(y_true, y_prob_b, class_names)
    _check_bootstrap_settings(n_resamples, confidence, [metric], len(class_names))
    point = (classification_metrics(y_true, y_prob_a, class_names, positive_index)[metric]
             - classification_metrics(y_true, y_prob_b, class_names, positive_index)[metric])
    differences = [
        _bootstrap_distributions(y_true, y_prob_a, indices, [metric], positive_index)[metric]
        - _bootstrap_distributions(y_true, y_prob_b, indices, [metric], positive_index)[metric]
        for indices in _resample_chunks(len(y_true), n_resamples, seed)
    ]
    return float(point), _percentile_interval(np.concatenate(differences), confidence)


def confusion(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> dict:
    """The confusion matrix as a JSON-ready dict.

    Args:
        y_true: Integer labels, shape ``(N,)``.
        y_pred: Integer predictions, shape ``(N,)``.
        class_names: The ``C`` class names.

    Returns:
        ``{"class_names": [...], "matrix": [[...]]}`` with plain ints; rows are the
        true class, columns the predicted class, both in ``class_names`` order.
    """
    y_true, y_pred = _checked_label_pair(y_true, y_pred, class_names)
    matrix = confusion_matrix(y_true, y_pred, labels=list(range(len(class_names))))
    return {"class_names": [str(name) for name in class_names], "matrix": matrix.tolist()}


def report_text(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> str:
    """scikit-learn's per-class classification report as text (4 digits).

    Args:
        y_true: Integer labels, shape ``(N,)``.
        y_pred: Integer predictions, shape ``(N,)``.
        class_names: The ``C`` class names.

    Returns:
        The report; classes with no cases still get a row.
    """
    y_true, y_pred = _checked_label_pair(y_true, y_pred, class_names)
    return classification_report(
        y_true,
        y_pred,
        labels=list(range(len(class_names))),
        target_names=[str(name) for name in class_names],
        digits=4,
        zero_division=0,
    )


def report_dict(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> dict:
    """scikit-learn's per-class classification report as a JSON-ready dict.

    Args:
        y_true: Integer labels, shape ``(N,)``.
        y_pred: Integer predictions, shape ``(N,)``.
        class_names: The ``C`` class names.

    Returns:
        ``{class_name: {"precision", "recall", "f1-score", "support"}, ..., "macro avg": ...,
        "weighted avg": ...}`` plus ``"accuracy"`` (or ``"micro avg"`` where
        scikit-learn reports that instead), with plain Python floats and ``support``
        as an int (recent scikit-learn versions give it as a float).
    """
    y_true, y_pred = _checked_label_pair(y_true, y_pred, class_names)
    report = classification_report(
        y_true,
        y_pred,
        labels=list(range(len(class_names))),
        target_names=[str(name) for name in class_names],
        zero_division=0,
        output_dict=True,
    )
    return _plain_numbers(report)


# ---------------------------------------------------------------- bootstrap internals


def _bootstrap_in_chunks(
    y_true: np.ndarray, y_prob: np.ndarray, metric_names: Sequence[str], n_resamples: int, seed: int,
    positive_index: int = 1, y_pred: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Draws the resamples a chunk at a time and computes the metrics on each chunk.

    The work arrays are (resamples x cases); chunking keeps them near
    ``_MAX_CHUNK_ELEMENTS`` so a test set of 100,000 cases does not need gigabytes.
    The chunk size depends only on the number of cases, so a seed gives the same
    resamples every time.
    """
    chunks = [_bootstrap_distributions(y_true, y_prob, indices, metric_names, positive_index, y_pred)
              for indices in _resample_chunks(len(y_true), n_resamples, seed)]
    return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in metric_names}


def _resample_chunks(n_cases: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """The resample indices, ``(chunk, n_cases)`` arrays of at most about ``_MAX_CHUNK_ELEMENTS`` entries."""
    resamples_per_chunk = max(1, _MAX_CHUNK_ELEMENTS // n_cases)
    generator = np.random.default_rng(seed)
    for start in range(0, n_resamples, resamples_per_chunk):
        chunk_size = min(resamples_per_chunk, n_resamples - start)
        yield generator.integers(0, n_cases, size=(chunk_size, n_cases))


def _bootstrap_distributions(
    y_true: np.ndarray, y_prob: np.ndarray, indices: np.ndarray, metric_names: Sequence[str],
    positive_index: int = 1, y_pred: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Computes each named metric on every resample.

    Args:
        y_true: Integer labels, shape ``(N,)`` (already checked).
        y_prob: Class probabilities, shape ``(N, C)`` (already checked).
        indices: Resample indices, shape ``(R, N)``; row ``r`` lists the cases of resample ``r``.
        metric_names: Metrics to compute.
        positive_index: Label of the positive class of a binary task.
        y_pred: Predictions of the count metrics; None: the arg-max of ``y_prob``.

    Returns:
        ``{metric: values}`` with one float per resample, NaN where undefined.
    """
    n_classes = y_prob.shape[1]
    y_pred = y_prob.argmax(axis=1) if y_pred is None else y_pred
    counts = _resample_confusion_counts(y_true[indices], y_pred[indices], n_classes)
    rates = _binary_rates(counts, positive_index, math.nan) if n_classes == 2 else {}
    distributions = {}
    for name in metric_names:
        if name in rates:
            distributions[name] = rates[name]
        elif name in _METRICS_FROM_COUNTS:
            distributions[name] = _METRICS_FROM_COUNTS[name](counts)
        elif name in ("roc_auc", "pr_auc"):
            from_weights = _roc_auc_from_weights if name == "roc_auc" else _pr_auc_from_weights
            distributions[name] = from_weights(y_true, y_prob, _resample_case_weights(indices), positive_index)
        else:
            distributions[name] = _metric_per_resample(name, y_true, y_prob, indices, positive_index)
    return distributions


def _resample_confusion_counts(true_samples: np.ndarray, pred_samples: np.ndarray, n_classes: int) -> np.ndarray:
    """One confusion matrix per resample, shape ``(R, C, C)``, rows = true class."""
    n_resamples = true_samples.shape[0]
    # Give every (resample, true, predicted) triple its own bin so one bincount fills all matrices.
    resample_offsets = np.arange(n_resamples)[:, None] * n_classes * n_classes
    bins = resample_offsets + true_samples * n_classes + pred_samples
    counts = np.bincount(bins.ravel(), minlength=n_resamples * n_classes * n_classes)
    return counts.reshape(n_resamples, n_classes, n_classes)


def _accuracy_from_counts(counts: np.ndarray) -> np.ndarray:
    correct = np.trace(counts, axis1=1, axis2=2)
    return correct / counts.sum(axis=(1, 2))


def _f1_macro_from_counts(counts: np.ndarray) -> np.ndarray:
    """Macro F1 over all classes with zero_division=0, as sklearn with ``labels=range(C)``."""
    true_positives = np.diagonal(counts, axis1=1, axis2=2)
    true_totals = counts.sum(axis=2)
    predicted_totals = counts.sum(axis=1)
    denominators = true_totals + predicted_totals
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (true total + predicted total); 0 when both totals are 0.
    per_class = np.divide(
        2 * true_positives, denominators, out=np.zeros(true_positives.shape), where=denominators > 0
    )
    return per_class.mean(axis=1)


def _binary_rates(counts: np.ndarray, positive_index: int, undefined: float) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV, NPV and F1 of the positive class from ``(R, 2, 2)`` counts.

    ``undefined`` fills a ratio whose denominator is 0: NaN in the bootstrap (the
    resample is dropped for that metric), 0 for point estimates (``zero_division=0``).
    """
    positive, negative = positive_index, 1 - positive_index
    true_pos, false_neg = counts[:, positive, positive], counts[:, positive, negative]
    false_pos, true_neg = counts[:, negative, positive], counts[:, negative, negative]

    def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
        return np.divide(numerator, denominator, out=np.full(numerator.shape, undefined, dtype=float),
                         where=denominator > 0)

    return {
        "sensitivity": ratio(true_pos, true_pos + false_neg),
        "specificity": ratio(true_neg, true_neg + false_pos),
        "ppv": ratio(true_pos, true_pos + false_pos),
        "npv": ratio(true_neg, true_neg + false_neg),
        "f1": ratio(2 * true_pos, 2 * true_pos + false_pos + false_neg),
    }


def _resample_case_weights(indices: np.ndarray) -> np.ndarray:
    """How many times each case was drawn in each resample, shape ``(R, N)``."""
    n_resamples, n_cases = indices.shape
    bins = np.arange(n_resamples)[:, None] * n_cases + indices
    return np.bincount(bins.ravel(), minlength=n_resamples * n_cases).reshape(n_resamples, n_cases)


def _roc_auc_from_weights(
    y_true: np.ndarray, y_prob: np.ndarray, case_weights: np.ndarray, positive_index: int = 1
) -> np.ndarray:
    """ROC AUC of every resample, with the conventions of :func:`_roc_auc` (binary: the positive
    class; multi-class: one-vs-rest macro over the classes present; NaN with one class)."""
    n_classes = y_prob.shape[1]
    if n_classes == 2:
        return _binary_auc_from_weights(y_true == positive_index, y_prob[:, positive_index], case_weights)
    per_class = np.stack(
        [_binary_auc_from_weights(y_true == label, y_prob[:, label], case_weights) for label in range(n_classes)]
    )
    # A class absent from a resample has no AUC (NaN); average over the others, NaN if none is left.
    defined = ~np.isnan(per_class)
    n_defined = defined.sum(axis=0)
    totals = np.where(defined, per_class, 0.0).sum(axis=0)
    return np.divide(totals, n_defined, out=np.full(totals.shape, np.nan), where=n_defined > 0)


def _binary_auc_from_weights(is_positive: np.ndarray, scores: np.ndarray, case_weights: np.ndarray) -> np.ndarray:
    """Weighted Mann-Whitney AUC per resample: the chance a positive outscores a negative, ties counting half.

    This is the area under the ROC curve that ``roc_auc_score`` integrates; NaN where
    a resample has no positive or no negative case.
    """
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    # Cases with equal scores form one group: they share a threshold on the ROC curve.
    group_starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    sorted_weights = case_weights[:, order].astype(float)
    sorted_positive = is_positive[order]
    positives = np.add.reduceat(sorted_weights * sorted_positive, group_starts, axis=1)
    negatives = np.add.reduceat(sorted_weights * ~sorted_positive, group_starts, axis=1)
    negatives_below = np.cumsum(negatives, axis=1) - negatives
    concordant = (positives * (negatives_below + 0.5 * negatives)).sum(axis=1)
    pairs = positives.sum(axis=1) * negatives.sum(axis=1)
    return np.divide(concordant, pairs, out=np.full(pairs.shape, np.nan), where=pairs > 0)


def _pr_auc_from_weights(
    y_true: np.ndarray, y_prob: np.ndarray, case_weights: np.ndarray, positive_index: int
) -> np.ndarray:
    """Weighted average precision of the positive class per resample, as ``average_precision_score``.

    AP = sum over distinct scores, highest first, of (recall gained) x (precision there);
    cases with equal scores share one threshold. NaN where a resample has no positive case.
    """
    is_positive = y_true == positive_index
    scores = y_prob[:, positive_index]
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    group_starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    sorted_weights = case_weights[:, order].astype(float)
    positives = np.add.reduceat(sorted_weights * is_positive[order], group_starts, axis=1)
    negatives = np.add.reduceat(sorted_weights * ~is_positive[order], group_starts, axis=1)
    true_pos = np.cumsum(positives, axis=1)
    predicted_pos = true_pos + np.cumsum(negatives, axis=1)
    precision = np.divide(true_pos, predicted_pos, out=np.zeros(true_pos.shape), where=predicted_pos > 0)
    total_pos = positives.sum(axis=1)
    weighted = (positives * precision).sum(axis=1)
    return np.divide(weighted, total_pos, out=np.full(total_pos.shape, np.nan), where=total_pos > 0)


_METRICS_FROM_COUNTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "accuracy": _accuracy_from_counts,
    "f1_macro": _f1_macro_from_counts,
}


def _metric_per_resample(
    name: str, y_true: np.ndarray, y_prob: np.ndarray, indices: np.ndarray, positive_index: int = 1
) -> np.ndarray:
    """Slow path: any classification_metrics key, computed by scikit-learn on each resample."""
    class_names = [str(label) for label in range(y_prob.shape[1])]
    return np.array([
        classification_metrics(y_true[rows], y_prob[rows], class_names, positive_index)[name] for rows in indices
    ])


def _percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    defined = values[~np.isnan(values)]
    if defined.size == 0:
        return (math.nan, math.nan)
    tail = (1.0 - confidence) / 2.0
    lower, upper = np.quantile(defined, [tail, 1.0 - tail])
    return (float(lower), float(upper))


def _check_bootstrap_settings(
    n_resamples: int, confidence: float, metrics: Sequence[str], n_classes: int
) -> None:
    if isinstance(metrics, str):
        raise MedxpError(f"bootstrap_ci metrics: expected a sequence of names, got the string {metrics!r}")
    if n_resamples < 1:
        raise MedxpError(f"bootstrap_ci n_resamples: expected at least 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise MedxpError(f"bootstrap_ci confidence: expected a value in (0, 1), got {confidence}")
    valid_names = set(_METRICS_FROM_COUNTS) | set(_metric_names(n_classes)) | _BINARY_ONLY_METRICS
    unknown = [name for name in metrics if name not in valid_names]
    if unknown:
        raise MedxpError(f"bootstrap_ci metrics: unknown {unknown}; valid names are {sorted(valid_names)}")


def _check_threshold_settings(
    threshold: float | None, metrics: Sequence[str], n_classes: int, positive_index: int
) -> None:
    if n_classes == 2:
        _check_positive_index(positive_index)
    if threshold is None:
        return
    if n_classes != 2:
        raise MedxpError(f"bootstrap_ci threshold: a decision threshold needs a binary task, got {n_classes} classes")
    not_counts = [name for name in metrics if name not in _COUNT_METRICS]
    if not_counts:
        raise MedxpError(f"bootstrap_ci threshold: {not_counts} do not depend on the threshold; "
                         f"expected only {sorted(_COUNT_METRICS)}")


def _check_positive_index(positive_index: int) -> None:
    if positive_index not in (0, 1):
        raise MedxpError(f"positive_index: expected the label 0 or 1 of a binary task's positive class, "
                         f"got {positive_index!r}")


def _metric_names(n_classes: int) -> list[str]:
    """The keys classification_metrics returns for a task with ``n_classes`` classes."""
    names = ["accuracy", "roc_auc"]
    names += [f"{kind}_{average}" for average in ("macro", "weighted") for kind in ("precision", "recall", "f1")]
    if n_classes == 2:
        names += [*THRESHOLD_METRICS, "pr_auc"]
    return names


# ---------------------------------------------------------------- input checks


def _checked_inputs(
    y_true: np.ndarray, y_prob: np.ndarray, class_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Labels as an int vector and probabilities as a float matrix, or a MedxpError saying what is wrong."""
    y_true = _checked_labels(y_true, len(class_names), "y_true")
    y_prob = np.asarray(y_prob, dtype=float)
    expected_shape = (len(y_true), len(class_names))
    if y_prob.shape != expected_shape:
        raise MedxpError(
            f"y_prob: expected shape (N, C) = {expected_shape} for {len(y_true)} labels and "
            f"{len(class_names)} class names, got {y_prob.shape}"
        )
    return y_true, y_prob


def _checked_label_pair(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    y_true = _checked_labels(y_true, len(class_names), "y_true")
    y_pred = _checked_labels(y_pred, len(class_names), "y_pred")
    if len(y_true) != len(y_pred):
        raise MedxpError(f"y_pred: expected {len(y_true)} predictions (one per label), got {len(y_pred)}")
    return y_true, y_pred


def _checked_labels(labels: np.ndarray, n_classes: int, what: str) -> np.ndarray:
    if n_classes < 2:
        raise MedxpError(f"class_names: expected at least 2 classes, got {n_classes}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise MedxpError(f"{what}: expected a non-empty 1-D array of integer labels, got shape {labels.shape}")
    # Whole-number floats (labels read back from CSV or a float tensor) are accepted as integers.
    is_whole_float = labels.dtype.kind == "f" and bool(np.all(np.mod(labels, 1) == 0))
    if labels.dtype.kind not in "biu" and not is_whole_float:
        raise MedxpError(f"{what}: expected integer labels 0..{n_classes - 1}, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise MedxpError(
            f"{what}: expected labels in 0..{n_classes - 1} (one per class name), "
            f"got values from {labels.min()} to {labels.max()}"
        )
    return labels.astype(np.int64, copy=False)


def _plain_numbers(value, key: str = ""):
    """Converts numpy scalars inside nested dicts to Python numbers, so json.dumps accepts them.

    A ``support`` (a count of cases) becomes an int.
    """
    if isinstance(value, dict):
        return {item_key: _plain_numbers(item, item_key) for item_key, item in value.items()}
    if key == "support":
        return int(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value
