"""The clinical evaluation of classifiers: positive class, operating point, calibration, the logged decision rule.

Hand-checked numpy cases; the models are one-layer stand-ins, no training.
"""

from __future__ import annotations

import math
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.special import softmax
from torch import nn

from medxp.config import EvalConfig, load, load_project, project_names
from medxp.errors import MedxpError
from medxp.models import InferenceModel
from medxp.pipeline import evaluate_inference_model, inference_model
from medxp.recording import record_evaluation
from medxp.tracking.null import NullTracker
from medxp.training.calibration import (
    apply_temperature,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)
from medxp.training.evaluate import evaluate_predictions, fit_prediction_rule
from medxp.training.operating_point import PredictionRule, choose_threshold

NAMES = ("malignant", "normal_benign")  # BreastMNIST's order: the positive class is label 0
FEW_RESAMPLES = EvalConfig(bootstrap_resamples=50)

# Validation scores p(malignant); the positives (malignant) and negatives:
#   threshold  0.9   0.8   0.4   0.35  0.3   0.2   0.1
#   TPR        1/3   2/3   2/3   1     1     1     1
#   FPR        0     0     1/4   1/4   1/2   3/4   1
#   Youden J   .33   .67   .42   .75   .5    .25   0     -> youden picks 0.35
VALID_POSITIVE_SCORES = [0.9, 0.8, 0.35]
VALID_NEGATIVE_SCORES = [0.4, 0.3, 0.2, 0.1]


def binary_split(positive_scores, negative_scores, positive_index=0):
    """Labels and (N, 2) probabilities whose positive-class column holds the given scores."""
    scores = np.array([*positive_scores, *negative_scores], dtype=float)
    labels = np.array([positive_index] * len(positive_scores) + [1 - positive_index] * len(negative_scores))
    probabilities = np.empty((len(scores), 2))
    probabilities[:, positive_index], probabilities[:, 1 - positive_index] = scores, 1 - scores
    return labels, probabilities


def valid_split():
    return binary_split(VALID_POSITIVE_SCORES, VALID_NEGATIVE_SCORES)


# ---------------------------------------------------------------- operating point


@pytest.mark.parametrize(("rule", "expected"), [
    ("youden", 0.35),
    ("sensitivity@0.95", 0.35),  # TPR 1 first at 0.35, with the lowest FPR (1/4)
    ("sensitivity@0.6", 0.8),  # TPR 2/3 at 0.8 with FPR 0 beats 0.4 (FPR 1/4)
    ("specificity@0.9", 0.8),  # FPR 0: the best TPR is 2/3, at 0.8
    ("specificity@0.75", 0.35),  # FPR <= 1/4: TPR 1 at 0.35
])
def test_choose_threshold_follows_the_rule(rule, expected):
    labels, probabilities = valid_split()
    assert choose_threshold(labels == 0, probabilities[:, 0], rule) == pytest.approx(expected)


def test_target_ties_go_to_the_better_other_value_then_the_achieved_one():
    # sensitivity@0.5: 0.9 (TPR 1/2) and 0.8 (TPR 1) both have specificity 1; 0.8 gives more sensitivity.
    assert choose_threshold(np.array([True, True, False]), np.array([0.9, 0.8, 0.1]), "sensitivity@0.5") == 0.8


def test_a_rule_wanting_no_positive_gets_a_finite_threshold_above_every_score():
    # Specificity 1 is reached only by predicting no case positive (a negative has the top score).
    threshold = choose_threshold(np.array([True, False, False]), np.array([0.2, 0.9, 0.1]), "specificity@1.0")
    assert math.isfinite(threshold) and threshold > 0.9


def test_no_threshold_when_the_split_has_one_class():
    assert choose_threshold(np.array([True, True]), np.array([0.2, 0.9]), "youden") is None


def test_youden_threshold_is_chosen_on_valid_and_applied_on_test():
    rule = fit_prediction_rule(*valid_split(), NAMES, "malignant", EvalConfig(operating_point="youden"))
    assert (rule.positive_index, rule.threshold, rule.chosen_on) == (0, pytest.approx(0.35), "valid")
    # Test: p(malignant) 0.36 0.5 0.2 for malignant, 0.34 0.1 for benign. At 0.35: TP 2, FN 1, FP 0, TN 2.
    # (Chosen on test, Youden would pick 0.2: TPR 1, FPR 0.)
    test_labels, test_probabilities = binary_split([0.36, 0.5, 0.2], [0.34, 0.1])
    evaluation = evaluate_predictions("test", test_labels, test_probabilities, NAMES, FEW_RESAMPLES, rule=rule)
    assert evaluation.metrics["op_sensitivity"] == pytest.approx(2 / 3)
    assert evaluation.metrics["op_specificity"] == pytest.approx(1.0)
    assert evaluation.metrics["op_ppv"] == pytest.approx(1.0)
    assert evaluation.metrics["op_npv"] == pytest.approx(2 / 3)
    assert evaluation.metrics["op_f1"] == pytest.approx(4 / 5)
    assert evaluation.operating_confusion["matrix"] == [[2, 1], [0, 2]]
    low, high = evaluation.intervals["op_sensitivity"]
    assert low <= 2 / 3 <= high
    assert "test_op_sensitivity_ci_low" in evaluation.prefixed()
    # At the arg-max only the 0.5 case (a tie, which the arg-max gives to label 0) is called malignant.
    assert evaluation.metrics["sensitivity"] == pytest.approx(1 / 3)
    assert "p(malignant) >= 0.3500 (youden, threshold chosen on valid), on test" in evaluation.report
    assert "Positive class: malignant (label 0)" in evaluation.report


def test_multiclass_has_no_operating_point_but_is_calibrated():
    generator = np.random.default_rng(0)
    labels = generator.integers(0, 3, 90)
    probabilities = softmax(generator.normal(size=(90, 3)) + 2 * np.eye(3)[labels], axis=1)
    rule = fit_prediction_rule(labels, probabilities, ("a", "b", "c"), "a", EvalConfig(calibration="temperature"))
    assert rule.threshold is None and rule.positive_index is None and rule.temperature != 1.0
    evaluation = evaluate_predictions("test", labels, probabilities, ("a", "b", "c"), FEW_RESAMPLES, rule=rule)
    assert not any(name.startswith("op_") or name == "sensitivity" for name in evaluation.metrics)
    assert {"ece", "brier", "ece_calibrated", "brier_calibrated"} <= set(evaluation.metrics)
    assert evaluation.operating_confusion is None


def test_a_binary_evaluation_needs_the_positive_class():
    labels, probabilities = valid_split()
    with pytest.raises(MedxpError, match="positive class"):
        evaluate_predictions("test", labels, probabilities, NAMES, FEW_RESAMPLES)
    with pytest.raises(MedxpError, match="dataset.positive_class"):
        fit_prediction_rule(labels, probabilities, NAMES, "", EvalConfig())


# ---------------------------------------------------------------- calibration


def test_ece_matches_a_hand_computed_case():
    # Top-class confidences, away from the bin edges (k / 15):
    #   bin (14/15, 1]:    0.95 right, 0.97 wrong -> accuracy 1/2, confidence 0.96, gap 0.46, weight 2/5
    #   bin (11/15, 12/15]: 0.75 right             -> gap 0.25, weight 1/5
    #   bin (9/15, 10/15]:  0.62 right, 0.62 wrong -> gap 0.12, weight 2/5
    probabilities = np.array([[0.95, 0.03, 0.02], [0.01, 0.02, 0.97], [0.15, 0.75, 0.10],
                              [0.62, 0.20, 0.18], [0.20, 0.62, 0.18]])
    labels = np.array([0, 1, 1, 0, 0])
    assert expected_calibration_error(labels, probabilities) == pytest.approx(0.4 * 0.46 + 0.2 * 0.25 + 0.4 * 0.12)
    # One bin: |accuracy - mean confidence| = |3/5 - 0.782|.
    assert expected_calibration_error(labels, probabilities, n_bins=1) == pytest.approx(abs(0.6 - 0.782))


def test_brier_is_binary_on_the_positive_class_and_summed_over_classes_otherwise():
    labels = np.array([0, 1])
    probabilities = np.array([[0.8, 0.2], [0.4, 0.6]])
    # Positive class 0: (0.8 - 1)^2 and (0.4 - 0)^2 -> mean 0.1. Multi-class form: twice that.
    assert brier_score(labels, probabilities, positive_index=0) == pytest.approx(0.1)
    assert brier_score(labels, probabilities) == pytest.approx(0.2)


def test_temperature_scaling_softens_an_over_confident_model():
    # Labels drawn from softmax(logits), so those probabilities are calibrated; the model reports softmax(3 logits).
    generator = np.random.default_rng(1)
    honest_logits = 2.0 * generator.normal(size=(2000, 3))
    honest = softmax(honest_logits, axis=1)
    labels = (generator.random((2000, 1)) > honest.cumsum(axis=1)).sum(axis=1)
    over_confident = softmax(3.0 * honest_logits, axis=1)
    valid, test = slice(0, 1000), slice(1000, None)
    temperature = fit_temperature(labels[valid], over_confident[valid])
    assert 2.5 < temperature < 3.5
    calibrated = apply_temperature(over_confident[test], temperature)
    assert negative_log_likelihood(labels[test], calibrated) < negative_log_likelihood(labels[test],
                                                                                       over_confident[test])
    assert expected_calibration_error(labels[test], calibrated) < expected_calibration_error(labels[test],
                                                                                             over_confident[test])
    assert (calibrated.argmax(1) == over_confident[test].argmax(1)).all()


def test_apply_temperature_equals_dividing_the_logits():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
    probabilities = torch.softmax(logits, dim=1).numpy()
    expected = torch.softmax(logits / 2.5, dim=1).numpy()
    assert apply_temperature(probabilities, 2.5) == pytest.approx(expected, abs=1e-6)


# ---------------------------------------------------------------- the logged model carries the rule


def identity_model(**decision) -> InferenceModel:
    """Two raw features in, taken as the logits: p = softmax(features / T)."""
    return InferenceModel(nn.Identity(), [0.0, 0.0], [1.0, 1.0], **decision).eval()


def test_inference_model_predicts_labels_at_its_stored_threshold():
    # Logits giving p(class 0) = 0.4 and 0.2: arg-max says class 1 for both; threshold 0.3 on class 0 says 0, 1.
    features = torch.log(torch.tensor([[0.4, 0.6], [0.2, 0.8]]))
    model = identity_model(threshold=0.3, positive_index=0, operating_point="youden")
    assert model(features).argmax(1).tolist() == [1, 1]
    assert model.predict_label(features).tolist() == [0, 1]
    restored = pickle.loads(pickle.dumps(model))  # mlflow logs medxp models pickled
    assert restored.predict_label(features).tolist() == [0, 1]
    assert float(restored.threshold) == 0.3 and int(restored.positive_index) == 0
    assert identity_model().predict_label(features).tolist() == [1, 1]  # no threshold: the arg-max


def test_inference_model_applies_its_temperature_in_forward():
    features = torch.tensor([[2.0, 0.0]])
    model = identity_model(temperature=2.0)
    assert model(features) == pytest.approx(torch.softmax(features / 2.0, dim=1))


def test_pipeline_wraps_the_network_with_the_rule_fitted_on_valid():
    config = load_project("breastmnist")
    rule = PredictionRule(positive_index=0, temperature=1.5, threshold=0.42, operating_point="sensitivity@0.95")
    data = SimpleNamespace(input_statistics=lambda spec: (spec.mean, spec.std),  # an image module's statistics
                           class_names=config.dataset.class_names,
                           datasets={"valid": SimpleNamespace(images=torch.zeros(4, 1, 28, 28, dtype=torch.uint8))})
    model = inference_model(nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 2)), config, data, rule)
    assert (float(model.threshold), int(model.positive_index), float(model.temperature)) == (0.42, 0, 1.5)
    assert model.operating_point == "sensitivity@0.95"
    # What serving reads files by travels with the model: class names and one input's shape.
    assert model.class_names == tuple(config.dataset.class_names) and model.input_shape == (1, 28, 28)


def test_evaluating_a_logged_model_uses_its_stored_threshold():
    config = load_project("breastmnist", {"eval.bootstrap_resamples": 20})
    labels, probabilities = binary_split([0.36, 0.5, 0.2], [0.34, 0.1])
    features = torch.log(torch.as_tensor(probabilities, dtype=torch.float32))
    data = SimpleNamespace(class_names=NAMES,
                           datasets={"test": SimpleNamespace(images=features, labels=torch.as_tensor(labels))})
    model = identity_model(threshold=0.35, positive_index=0, operating_point="youden")
    evaluation = evaluate_inference_model(model, data, "test", config)
    assert evaluation.rule.threshold == pytest.approx(0.35) and evaluation.rule.operating_point == "youden"
    assert evaluation.metrics["op_sensitivity"] == pytest.approx(2 / 3)
    wrong_project = load_project("pneumoniamnist", {"eval.bootstrap_resamples": 20})  # positive class is label 1
    data.class_names = ("normal", "pneumonia")
    with pytest.raises(MedxpError, match="positive class is label 0"):
        evaluate_inference_model(model, data, "test", wrong_project)


def test_record_evaluation_tags_the_positive_class_and_logs_both_confusion_matrices():
    rule = fit_prediction_rule(*valid_split(), NAMES, "malignant", EvalConfig())
    evaluation = evaluate_predictions("test", *binary_split([0.36, 0.5, 0.2], [0.34, 0.1]), NAMES,
                                      FEW_RESAMPLES, rule=rule)
    tracker = NullTracker()
    record_evaluation(tracker, evaluation)
    assert tracker.tags["eval.positive_class"] == "malignant"
    assert tracker.tags["eval.operating_point"] == "youden"
    assert tracker.latest("operating_threshold") == pytest.approx(0.35)
    assert tracker.latest("test_op_sensitivity") == pytest.approx(2 / 3)
    assert tracker.artifacts["evaluation/test_confusion_matrix_operating_point.json"]["matrix"] == [[2, 1], [0, 2]]
    title = tracker.artifacts["evaluation/test_confusion_matrix_operating_point.png"].axes[0].get_title()
    assert "test" in title and "p(malignant) >= 0.350" in title and "chosen on valid" in title
    assert "positive malignant" in tracker.artifacts["evaluation/test_roc.png"].axes[0].get_title()
    assert "evaluation/test_reliability.png" in tracker.artifacts


# ---------------------------------------------------------------- configuration


def test_a_binary_project_without_positive_class_is_a_config_error(tmp_path):
    path = tmp_path / "project.yaml"
    path.write_text("dataset: {name: toy, class_names: [healthy, sick]}\n")
    with pytest.raises(MedxpError, match=r"project.yaml: 'dataset.positive_class' = '': expected one of"):
        load(path)
    path.write_text("dataset: {name: toy, class_names: [a, b, c]}\n")
    assert load(path).dataset.positive_class == ""  # multi-class tasks need none


def test_every_binary_project_names_its_positive_class():
    expected = {"breastmnist": "malignant", "pneumoniamnist": "pneumonia", "chest_xray_pneumonia": "pneumonia",
                "glaucoma": "abnormal", "covid_radiography": "covid"}
    for name in project_names():
        spec = load_project(name).dataset
        assert spec.positive_class == expected.get(name, spec.positive_class), name
        assert len(spec.class_names) != 2 or spec.positive_class in spec.class_names, name


@pytest.mark.parametrize("value", ["sensitivity@95", "recall@0.9", "youden@0.5", "specificity@"])
def test_bad_operating_point_names_the_key(value):
    with pytest.raises(MedxpError, match="eval.operating_point"):
        load_project("glaucoma", {"eval.operating_point": value})
