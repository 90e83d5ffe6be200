"""Unit tests of medxp.training.metrics and medxp.training.plots: hand-checked cases and edge cases."""

from __future__ import annotations

import json
import math

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from medxp.errors import MedxpError
from medxp.training import metrics, plots
from medxp.training.metrics import (
    bootstrap_ci,
    classification_metrics,
    confusion,
    predict_at_threshold,
    report_dict,
    report_text,
    threshold_metrics,
)

BINARY_NAMES = ["normal", "abnormal"]
THREE_NAMES = ["benign", "malignant", "normal"]

# Binary case, class 1 = abnormal (positive):
#   case     0    1    2    3    4
#   true     0    0    1    1    1
#   p(1)    0.1  0.6  0.8  0.7  0.4
#   pred     0    1    1    1    0
#            TN   FP   TP   TP   FN     -> TP=2, FN=1, TN=1, FP=1
BINARY_TRUE = np.array([0, 0, 1, 1, 1])
BINARY_PROB_POSITIVE = np.array([0.1, 0.6, 0.8, 0.7, 0.4])
BINARY_PROB = np.column_stack([1 - BINARY_PROB_POSITIVE, BINARY_PROB_POSITIVE])

# Three-class case (supports 6, 2, 2):
#   true  0 0 0 0 0 0 1 1 2 2
#   pred  0 0 0 0 0 1 1 2 2 2
#   class 0: TP=5 FP=0 FN=1 -> P=1,   R=5/6, F1=10/11
#   class 1: TP=1 FP=1 FN=1 -> P=1/2, R=1/2, F1=1/2
#   class 2: TP=2 FP=1 FN=0 -> P=2/3, R=1,   F1=4/5
THREE_TRUE = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 2])
THREE_PRED = np.array([0, 0, 0, 0, 0, 1, 1, 2, 2, 2])


def one_hot_probabilities(predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities whose arg-max is ``predictions``: 0.8 on the predicted class, the rest shared."""
    probabilities = np.full((len(predictions), n_classes), 0.2 / (n_classes - 1))
    probabilities[np.arange(len(predictions)), predictions] = 0.8
    return probabilities


def noisy_task(n_cases: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax probabilities of a classifier that is right more often than chance."""
    generator = np.random.default_rng(seed)
    labels = generator.integers(0, n_classes, n_cases)
    logits = generator.normal(size=(n_cases, n_classes))
    logits[np.arange(n_cases), labels] += 1.0
    probabilities = np.exp(logits)
    return labels, probabilities / probabilities.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------- classification_metrics


def test_binary_metrics_match_hand_counts():
    result = classification_metrics(BINARY_TRUE, BINARY_PROB, BINARY_NAMES)
    expected = {
        "accuracy": 3 / 5,  # (TP + TN) / N
        "sensitivity": 2 / 3,  # TP / (TP + FN)
        "specificity": 1 / 2,  # TN / (TN + FP)
        # precision: class 1 TP/(TP+FP) = 2/3, class 0 TN/(TN+FN) = 1/2
        "precision_macro": (1 / 2 + 2 / 3) / 2,
        "precision_weighted": (2 * 1 / 2 + 3 * 2 / 3) / 5,  # supports 2 and 3
        "recall_macro": (1 / 2 + 2 / 3) / 2,  # (specificity + sensitivity) / 2
        "recall_weighted": 3 / 5,  # weighted recall is accuracy
        "f1_macro": (1 / 2 + 2 / 3) / 2,  # F1 class 0 = 1/2, class 1 = 2/3
        "f1_weighted": (2 * 1 / 2 + 3 * 2 / 3) / 5,
        # positive/negative pairs (6): 0.8 and 0.7 beat both negatives, 0.4 beats only 0.1
        "roc_auc": 5 / 6,
        "ppv": 2 / 3,  # TP / (TP + FP)
        "npv": 1 / 2,  # TN / (TN + FN)
        "f1": 2 / 3,  # 2TP / (2TP + FP + FN) = 4 / 6
        # scores high to low: 0.8 P, 0.7 P, 0.6 N, 0.4 P, 0.1 N -> (1 + 1 + 3/4) / 3
        "pr_auc": 11 / 12,
    }
    assert set(result) == set(expected)
    for name, value in expected.items():
        assert result[name] == pytest.approx(value), name
    assert all(type(value) is float for value in result.values())


def test_binary_metrics_are_of_the_positive_class_when_it_is_label_0():
    # BreastMNIST's order: label 0 malignant (positive), label 1 normal_benign. Same cases as above,
    # now with class 0 positive: TP = case 0, FN = case 1 (predicted 1), FP = case 4, TN = cases 2, 3.
    names = ["malignant", "normal_benign"]
    result = classification_metrics(BINARY_TRUE, BINARY_PROB, names, positive_index=0)
    assert result["sensitivity"] == pytest.approx(1 / 2)  # TP / (TP + FN) of malignant, not 2/3
    assert result["specificity"] == pytest.approx(2 / 3)
    assert result["ppv"] == pytest.approx(1 / 2) and result["npv"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(1 / 2)
    # p(malignant) high to low: 0.9 P, 0.6 N, 0.4 P, 0.3 N, 0.2 N -> (1 + 2/3) / 2
    assert result["pr_auc"] == pytest.approx(5 / 6)
    assert result["roc_auc"] == pytest.approx(5 / 6)  # the AUC does not depend on which class is positive
    from sklearn.metrics import recall_score

    assert result["sensitivity"] == pytest.approx(recall_score(BINARY_TRUE, BINARY_PROB.argmax(1), pos_label=0))


def test_bootstrap_sensitivity_of_label_0_is_the_specificity_of_label_1():
    labels, probabilities = noisy_task(150, 2, seed=11)
    as_label_0 = bootstrap_ci(labels, probabilities, BINARY_NAMES, n_resamples=200, positive_index=0)
    as_label_1 = bootstrap_ci(labels, probabilities, BINARY_NAMES, n_resamples=200, positive_index=1)
    assert as_label_0["sensitivity"] == as_label_1["specificity"]
    assert as_label_0["specificity"] == as_label_1["sensitivity"]
    assert as_label_0["pr_auc"] != as_label_1["pr_auc"]


def test_threshold_metrics_decide_positive_at_or_above_the_threshold():
    # p(abnormal) 0.1 0.6 0.8 0.7 0.4 at threshold 0.4: predicted 0 1 1 1 1 -> TP 3, FN 0, FP 1, TN 1.
    result = threshold_metrics(BINARY_TRUE, BINARY_PROB, positive_index=1, threshold=0.4)
    assert result == pytest.approx({"sensitivity": 1.0, "specificity": 0.5, "ppv": 3 / 4, "npv": 1.0, "f1": 6 / 7})
    assert predict_at_threshold(BINARY_PROB, 0, 0.85).tolist() == [0, 1, 1, 1, 1]  # only p(normal) 0.9 >= 0.85


def test_multiclass_macro_and_weighted_match_hand_counts():
    result = classification_metrics(THREE_TRUE, one_hot_probabilities(THREE_PRED, 3), THREE_NAMES)
    assert result["accuracy"] == pytest.approx(8 / 10)
    assert result["precision_macro"] == pytest.approx((1 + 1 / 2 + 2 / 3) / 3)
    assert result["precision_weighted"] == pytest.approx((6 * 1 + 2 * 1 / 2 + 2 * 2 / 3) / 10)
    assert result["recall_macro"] == pytest.approx((5 / 6 + 1 / 2 + 1) / 3)
    assert result["recall_weighted"] == pytest.approx(8 / 10)
    assert result["f1_macro"] == pytest.approx((10 / 11 + 1 / 2 + 4 / 5) / 3)
    assert result["f1_weighted"] == pytest.approx((6 * 10 / 11 + 2 * 1 / 2 + 2 * 4 / 5) / 10)
    assert "sensitivity" not in result and "specificity" not in result


def test_multiclass_roc_auc_is_sklearn_one_vs_rest_macro():
    from sklearn.metrics import roc_auc_score

    labels, probabilities = noisy_task(300, 4, seed=3)
    result = classification_metrics(labels, probabilities, ["a", "b", "c", "d"])
    assert result["roc_auc"] == pytest.approx(roc_auc_score(labels, probabilities, multi_class="ovr"))


@pytest.mark.parametrize("n_classes", [2, 3])
def test_roc_auc_is_nan_with_one_class_present(n_classes):
    labels = np.zeros(6, dtype=int)
    probabilities = one_hot_probabilities(np.array([0, 1, 0, 1, 0, 0]), n_classes)
    result = classification_metrics(labels, probabilities, [f"class{i}" for i in range(n_classes)])
    assert math.isnan(result["roc_auc"])
    assert result["accuracy"] == pytest.approx(4 / 6)


def test_multiclass_roc_auc_averages_only_present_classes():
    # Class 2 has no case: its one-vs-rest AUC is undefined, the other two are perfect.
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]])
    assert classification_metrics(labels, probabilities, THREE_NAMES)["roc_auc"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("labels", "probabilities", "message"),
    [
        ([0, 1, 2], np.full((3, 2), 0.5), "labels in 0..1"),
        ([0, 1], np.full((3, 2), 0.5), "expected shape"),
        ([0, 1, 1], np.full((3, 3), 1 / 3), "expected shape"),
        (["a", "b"], np.full((2, 2), 0.5), "integer labels"),
        ([], np.zeros((0, 2)), "non-empty"),
    ],
)
def test_bad_input_raises_a_clear_error(labels, probabilities, message):
    with pytest.raises(MedxpError, match=message):
        classification_metrics(labels, probabilities, BINARY_NAMES)


# ---------------------------------------------------------------- bootstrap_ci


def test_bootstrap_interval_contains_point_estimate():
    labels, probabilities = noisy_task(400, 2, seed=0)
    point = classification_metrics(labels, probabilities, BINARY_NAMES)
    intervals = bootstrap_ci(labels, probabilities, BINARY_NAMES, n_resamples=500)
    assert set(intervals) == {"accuracy", "f1_macro", "roc_auc", "pr_auc", "sensitivity", "specificity"}
    for name, (lower, upper) in intervals.items():
        assert lower <= point[name] <= upper, name
        assert type(lower) is float and type(upper) is float


def test_bootstrap_interval_narrows_with_more_data():
    small = bootstrap_ci(*noisy_task(100, 2, seed=1), BINARY_NAMES, n_resamples=400)
    large = bootstrap_ci(*noisy_task(3000, 2, seed=1), BINARY_NAMES, n_resamples=400)
    for name in small:
        assert large[name][1] - large[name][0] < small[name][1] - small[name][0], name


def test_bootstrap_is_deterministic_for_a_seed():
    labels, probabilities = noisy_task(200, 3, seed=2)
    first = bootstrap_ci(labels, probabilities, THREE_NAMES, n_resamples=200, seed=7)
    again = bootstrap_ci(labels, probabilities, THREE_NAMES, n_resamples=200, seed=7)
    other_seed = bootstrap_ci(labels, probabilities, THREE_NAMES, n_resamples=200, seed=8)
    assert first == again
    assert first != other_seed


def test_bootstrap_skips_binary_only_metrics_for_multiclass():
    intervals = bootstrap_ci(*noisy_task(100, 3, seed=0), THREE_NAMES, n_resamples=50)
    assert set(intervals) == {"accuracy", "f1_macro", "roc_auc"}


def test_bootstrap_wider_confidence_gives_wider_interval():
    labels, probabilities = noisy_task(200, 2, seed=4)
    narrow = bootstrap_ci(labels, probabilities, BINARY_NAMES, confidence=0.5, metrics=["accuracy"])
    wide = bootstrap_ci(labels, probabilities, BINARY_NAMES, confidence=0.99, metrics=["accuracy"])
    assert wide["accuracy"][0] < narrow["accuracy"][0] <= narrow["accuracy"][1] < wide["accuracy"][1]


def test_bootstrap_drops_undefined_resamples():
    # One positive in twenty cases: about a third of resamples have none, so no AUC or sensitivity.
    labels = np.array([1] + [0] * 19)
    probabilities = np.column_stack([np.linspace(0.9, 0.1, 20), np.linspace(0.1, 0.9, 20)])
    probabilities[0] = [0.05, 0.95]
    intervals = bootstrap_ci(labels, probabilities, BINARY_NAMES, n_resamples=300)
    assert all(not math.isnan(bound) for bounds in intervals.values() for bound in bounds)


def test_bootstrap_with_one_class_gives_nan_interval_for_auc():
    labels = np.zeros(10, dtype=int)
    intervals = bootstrap_ci(labels, one_hot_probabilities(labels, 2), BINARY_NAMES, n_resamples=20)
    assert all(math.isnan(bound) for bound in intervals["roc_auc"])
    assert all(math.isnan(bound) for bound in intervals["sensitivity"])
    assert intervals["accuracy"] == (1.0, 1.0)


@pytest.mark.parametrize(("n_classes", "positive_index"), [(2, 1), (2, 0), (3, 1), (5, 1)])
def test_vectorised_resample_metrics_equal_sklearn(n_classes, positive_index):
    labels, probabilities = noisy_task(60, n_classes, seed=n_classes)
    probabilities = np.round(probabilities, 1)  # ties in the scores, which AUC counts as half
    probabilities[:, 0] = 1 - probabilities[:, 1:].sum(axis=1)
    class_names = [f"class{i}" for i in range(n_classes)]
    binary = ["sensitivity", "specificity", "ppv", "npv", "f1", "pr_auc"]
    names = ["accuracy", "f1_macro", "roc_auc"] + (binary if n_classes == 2 else [])
    indices = np.random.default_rng(0).integers(0, len(labels), size=(40, len(labels)))
    distributions = metrics._bootstrap_distributions(labels, probabilities, indices, names, positive_index)
    for resample, rows in enumerate(indices):
        expected = classification_metrics(labels[rows], probabilities[rows], class_names, positive_index)
        for name in names:
            value = distributions[name][resample]
            if not math.isnan(value):  # NaN where sklearn applies zero_division or AUC is undefined
                assert value == pytest.approx(expected[name]), (name, resample)
            elif name in ("roc_auc", "pr_auc"):
                assert math.isnan(expected[name])


def test_bootstrap_at_a_threshold_counts_predictions_made_at_it():
    labels, probabilities = noisy_task(60, 2, seed=12)
    indices = np.random.default_rng(1).integers(0, len(labels), size=(30, len(labels)))
    y_pred = predict_at_threshold(probabilities, 0, 0.3)
    names = list(metrics.THRESHOLD_METRICS)
    distributions = metrics._bootstrap_distributions(labels, probabilities, indices, names, 0, y_pred)
    for resample, rows in enumerate(indices):
        expected = threshold_metrics(labels[rows], probabilities[rows], positive_index=0, threshold=0.3)
        for name in names:
            value = distributions[name][resample]
            assert math.isnan(value) or value == pytest.approx(expected[name]), (name, resample)
    intervals = bootstrap_ci(labels, probabilities, BINARY_NAMES, n_resamples=200, metrics=names,
                             positive_index=0, threshold=0.3)
    point = threshold_metrics(labels, probabilities, 0, 0.3)
    assert all(intervals[name][0] <= point[name] <= intervals[name][1] for name in names)
    with pytest.raises(MedxpError, match="do not depend on the threshold"):
        bootstrap_ci(labels, probabilities, BINARY_NAMES, metrics=["roc_auc"], threshold=0.3)


def test_bootstrap_in_chunks_is_deterministic_and_complete(monkeypatch):
    monkeypatch.setattr(metrics, "_MAX_CHUNK_ELEMENTS", 7 * 50)  # 7 resamples per chunk of 50 cases
    labels, probabilities = noisy_task(50, 2, seed=9)
    distributions = metrics._bootstrap_in_chunks(labels, probabilities, ["accuracy"], 30, seed=3)
    assert distributions["accuracy"].shape == (30,)
    assert bootstrap_ci(labels, probabilities, BINARY_NAMES, n_resamples=30, seed=3) == bootstrap_ci(
        labels, probabilities, BINARY_NAMES, n_resamples=30, seed=3
    )


def test_bootstrap_accepts_any_classification_metric():
    labels, probabilities = noisy_task(80, 2, seed=5)
    intervals = bootstrap_ci(labels, probabilities, BINARY_NAMES, n_resamples=30, metrics=["precision_macro"])
    point = classification_metrics(labels, probabilities, BINARY_NAMES)["precision_macro"]
    assert intervals["precision_macro"][0] <= point <= intervals["precision_macro"][1]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"metrics": ["acuracy"]}, "unknown \\['acuracy'\\]; valid names"),
        ({"metrics": "accuracy"}, "sequence of names"),
        ({"n_resamples": 0}, "at least 1"),
        ({"confidence": 95}, "in \\(0, 1\\)"),
    ],
)
def test_bootstrap_rejects_bad_settings(settings, message):
    with pytest.raises(MedxpError, match=message):
        bootstrap_ci(BINARY_TRUE, BINARY_PROB, BINARY_NAMES, **settings)


# ---------------------------------------------------------------- confusion and reports


def test_confusion_rows_are_true_classes():
    # Two true-normal cases predicted abnormal: they belong in row 0 (true), column 1 (predicted).
    result = confusion([0, 0, 0, 1], [1, 1, 0, 1], BINARY_NAMES)
    assert result == {"class_names": BINARY_NAMES, "matrix": [[1, 2], [0, 1]]}
    assert json.loads(json.dumps(result)) == result


def test_confusion_keeps_absent_classes():
    result = confusion(THREE_TRUE[:6], THREE_PRED[:6], THREE_NAMES)
    assert result["matrix"] == [[5, 1, 0], [0, 0, 0], [0, 0, 0]]


def test_reports_name_classes_and_are_json_ready():
    text = report_text(THREE_TRUE, THREE_PRED, THREE_NAMES)
    assert all(name in text for name in THREE_NAMES)
    assert "0.8333" in text  # class 0 recall 5/6, four digits
    report = report_dict(THREE_TRUE, THREE_PRED, THREE_NAMES)
    assert report["malignant"]["precision"] == pytest.approx(1 / 2)
    assert report["normal"]["support"] == 2 and type(report["normal"]["support"]) is int
    assert report["accuracy"] == pytest.approx(0.8)
    json.dumps(report)


# ---------------------------------------------------------------- figures


def saved_png(figure: Figure, path) -> bytes:
    figure.savefig(path)
    return path.read_bytes()[:8]


@pytest.mark.parametrize("n_classes", [2, 3, 10])
def test_confusion_matrix_figure_writes_every_cell(n_classes, tmp_path):
    matrix = np.arange(n_classes * n_classes).reshape(n_classes, n_classes).tolist()
    class_names = [f"class {i}" for i in range(n_classes)]
    figure = plots.confusion_matrix_figure(matrix, class_names)
    matrix_axes = figure.axes[0]
    assert len(figure.axes) == 2  # the matrix and its colour bar
    assert len(matrix_axes.texts) == n_classes * n_classes
    assert matrix_axes.texts[1].get_text() == f"1\n({100 / sum(range(n_classes)):.1f}%)"
    assert (matrix_axes.get_xlabel(), matrix_axes.get_ylabel()) == ("Predicted", "True")
    assert saved_png(figure, tmp_path / "cm.png") == b"\x89PNG\r\n\x1a\n"


def test_confusion_matrix_figure_normalized_shows_percent_first():
    figure = plots.confusion_matrix_figure([[3, 1], [0, 0]], BINARY_NAMES, normalize=True, title="Test set")
    texts = [text.get_text() for text in figure.axes[0].texts]
    assert texts == ["75.0%\n(3)", "25.0%\n(1)", "0.0%\n(0)", "0.0%\n(0)"]
    assert figure.axes[0].get_title() == "Test set"


def test_confusion_matrix_figure_rejects_mismatched_names():
    with pytest.raises(MedxpError, match="expected shape \\(3, 3\\)"):
        plots.confusion_matrix_figure([[1, 2], [3, 4]], THREE_NAMES)


def test_curves_figure_splits_losses_from_metrics(tmp_path):
    history = [
        {"epoch": epoch, "train_loss": 1 / epoch, "val_loss": 1.2 / epoch, "train_accuracy": 0.5 + epoch / 20,
         "val_accuracy": 0.45 + epoch / 20, "val_f1_macro": 0.4 + epoch / 20, "lr": 1e-3}
        for epoch in range(1, 6)
    ]
    figure = plots.curves_figure(history, best_epoch=4)
    loss_axes, metric_axes = figure.axes
    assert [line.get_label() for line in loss_axes.lines] == ["train_loss", "val_loss", "best epoch (4)"]
    assert [line.get_label() for line in metric_axes.lines] == [
        "train_accuracy", "val_accuracy", "val_f1_macro", "best epoch (4)"
    ]
    assert list(metric_axes.lines[-1].get_xdata()) == [4, 4]
    assert saved_png(figure, tmp_path / "curves.png") == b"\x89PNG\r\n\x1a\n"


def test_curves_figure_handles_gaps_and_empty_history():
    history = [{"epoch": 1, "train_loss": 0.9}, {"epoch": 2, "train_loss": 0.8, "val_loss": 0.85}]
    loss_axes, metric_axes = plots.curves_figure(history).axes
    assert len(loss_axes.lines) == 2 and len(metric_axes.lines) == 0
    assert list(loss_axes.lines[1].get_xdata()) == [2.0]
    assert [text.get_text() for text in metric_axes.texts] == ["no values recorded"]
    empty = plots.curves_figure([], best_epoch=None)
    assert len(empty.axes) == 2


def test_roc_figure_binary_draws_one_curve_with_auc(tmp_path):
    figure = plots.roc_figure(BINARY_TRUE, BINARY_PROB, BINARY_NAMES)
    (axes,) = figure.axes
    labels = [text.get_text() for text in axes.get_legend().get_texts()]
    assert labels == ["abnormal vs normal (AUC = 0.833)", "chance"]
    assert saved_png(figure, tmp_path / "roc.png") == b"\x89PNG\r\n\x1a\n"


def test_roc_figure_binary_is_of_the_positive_class_and_marks_the_threshold():
    figure = plots.roc_figure(BINARY_TRUE, BINARY_PROB, BINARY_NAMES, positive_index=0, threshold=0.5,
                              title="ROC (test), positive normal")
    (axes,) = figure.axes
    labels = [text.get_text() for text in axes.get_legend().get_texts()]
    # p(normal) >= 0.5 on cases 0 and 4: one of two normals (sens 0.5), two of three abnormals negative (spec 0.67).
    assert labels == ["normal vs abnormal (AUC = 0.833)", "threshold 0.500: sens 0.50, spec 0.67", "chance"]
    assert axes.get_title() == "ROC (test), positive normal"


@pytest.mark.parametrize("positive_index", [None, 0])
def test_reliability_figure_draws_before_and_after(positive_index, tmp_path):
    labels, probabilities = noisy_task(200, 2 if positive_index is not None else 3, seed=13)
    names = BINARY_NAMES if positive_index is not None else THREE_NAMES
    sharper = probabilities ** 3 / (probabilities ** 3).sum(axis=1, keepdims=True)
    figure = plots.reliability_figure(labels, probabilities, names, positive_index=positive_index,
                                      uncalibrated_prob=sharper, title="Reliability (test)")
    curve_axes, count_axes = figure.axes
    assert [line.get_label() for line in curve_axes.lines] == ["before calibration", "calibrated",
                                                               "perfectly calibrated"]
    expected_label = "predicted p(normal)" if positive_index == 0 else "top-class confidence"
    assert count_axes.get_xlabel() == expected_label
    assert saved_png(figure, tmp_path / "reliability.png") == b"\x89PNG\r\n\x1a\n"


def test_roc_figure_multiclass_draws_one_curve_per_class():
    labels, probabilities = noisy_task(120, 3, seed=6)
    (axes,) = plots.roc_figure(labels, probabilities, THREE_NAMES).axes
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert len(legend) == 4 and legend[-1] == "chance"
    assert all(f"{name} vs rest (AUC = " in entry for name, entry in zip(THREE_NAMES, legend))


def test_roc_figure_names_a_class_without_cases():
    labels = np.array([0, 0, 1, 1])
    probabilities = one_hot_probabilities(np.array([0, 1, 1, 1]), 3)
    (axes,) = plots.roc_figure(labels, probabilities, THREE_NAMES).axes
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert legend[2] == "normal vs rest (no curve: one outcome only)"


def test_confusion_matrix_text_is_light_on_dark_cells_on_a_scale_from_zero():
    # Large counts only: every cell is dark on the 0..max scale, so every text is light (a midpoint rule
    # between the smallest and largest count would write dark text on the two darkish cells).
    figure = plots.confusion_matrix_figure([[100, 90], [95, 98]], BINARY_NAMES)
    (matrix_axes, _) = figure.axes
    colours = {tuple(np.round(text.get_color(), 3)) for text in matrix_axes.texts}
    light = tuple(np.round(matplotlib.colormaps["Blues"](0.0), 3))
    assert colours == {light}
    dark_and_light = plots.confusion_matrix_figure([[40, 10], [5, 45]], BINARY_NAMES).axes[0].texts
    assert [tuple(np.round(text.get_color(), 3)) == light for text in dark_and_light] == [True, False, False, True]


def test_confusion_matrix_figure_is_wide_enough_for_a_long_title():
    title = "Confusion matrix (test): p(glaucoma) >= 0.420 and then some more words"
    width, _ = plots.confusion_matrix_figure([[1, 0], [0, 1]], BINARY_NAMES, title=title).get_size_inches()
    assert width >= 0.075 * len(title) + 2.0
    assert plots.confusion_matrix_figure([[1, 0], [0, 1]], BINARY_NAMES).get_size_inches()[0] == 5.5


def test_roc_figure_curve_is_scikit_learns_roc_curve():
    (axes,) = plots.roc_figure(BINARY_TRUE, BINARY_PROB, BINARY_NAMES).axes
    false_positive_rate, true_positive_rate, _ = roc_curve(BINARY_TRUE == 1, BINARY_PROB_POSITIVE)
    curve = axes.lines[0]
    assert np.allclose(curve.get_xdata(), false_positive_rate) and np.allclose(curve.get_ydata(), true_positive_rate)
    assert axes.get_xlabel() == "false positive rate (1 - specificity)" and axes.get_xlim() == (0, 1)
