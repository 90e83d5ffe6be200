"""scikit-learn's histogram gradient boosting as a medxp model for tabular data (`hist_gradient_boosting`).

`HistGradientBoostingClassifier` inside an `EstimatorModel`: fitted once on the train split
(medxp.training.estimator), with early stopping on the validation split, and logged, loaded
and evaluated like every network. Its logits are the estimator's raw decision values (one
per class; binary tasks `[0, raw]`), so softmax gives exactly `predict_proba` and temperature
scaling divides them as it divides a network's.

The `model.gb_*` keys are the estimator's hyper-parameters under medxp names:
`gb_learning_rate`, `gb_max_iter` (the iteration budget; early stopping may end sooner),
`gb_max_leaf_nodes`, `gb_max_depth` (0: no limit), `gb_min_samples_leaf`,
`gb_l2_regularization` and `gb_max_features` (the share of features each split considers).
From `train.*` it reads `ESTIMATOR_TRAIN_KEYS`: `seed` is its `random_state`,
`class_weights` its `class_weight`, `patience` its `n_iter_no_change` (0: no early stopping),
`monitor` its early-stopping `scoring`. Trees split on thresholds, so the data module's
standardisation changes nothing for it but is kept: the logged model takes raw features
like every tabular model.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingClassifier

from medxp.config import DatasetSpec, ModelConfig
from medxp.errors import MedxpError
from medxp.models.estimator import EstimatorFit, EstimatorModel
from medxp.models.factory import register_model

# The `model.*` keys it reads, in the estimator's parameter order.
GB_KEYS = ("gb_learning_rate", "gb_max_iter", "gb_max_leaf_nodes", "gb_max_depth", "gb_min_samples_leaf",
           "gb_l2_regularization", "gb_max_features")
# `train.monitor` -> the scikit-learn scoring its early stopping watches on the validation rows.
SCORING = {"val_loss": "loss", "val_accuracy": "accuracy", "val_f1_macro": "f1_macro", "val_roc_auc": "roc_auc_ovr"}


def estimator_settings(model: ModelConfig) -> dict[str, Any]:
    """The `HistGradientBoostingClassifier` arguments of the `model.gb_*` keys."""
    return {"learning_rate": model.gb_learning_rate, "max_iter": model.gb_max_iter,
            "max_leaf_nodes": model.gb_max_leaf_nodes, "max_depth": model.gb_max_depth or None,
            "min_samples_leaf": model.gb_min_samples_leaf, "l2_regularization": model.gb_l2_regularization,
            "max_features": model.gb_max_features}


class HistGradientBoosting(EstimatorModel):
    """`HistGradientBoostingClassifier` with `settings`, fitted by `fit_arrays`.

    Args:
        num_classes: The task's class count.
        settings: Its constructor arguments (`estimator_settings`).
    """

    def __init__(self, num_classes: int, settings: dict[str, Any]) -> None:
        super().__init__(num_classes)
        self.settings = dict(settings)
        self.estimator: HistGradientBoostingClassifier | None = None

    @property
    def fitted(self) -> bool:
        return self.estimator is not None

    @property
    def iterations(self) -> int:
        return int(self.estimator.n_iter_) if self.estimator is not None else 0

    @property
    def iteration_budget(self) -> int:
        return int(self.settings["max_iter"])

    def fit_arrays(self, features: np.ndarray, labels: np.ndarray, valid_features: np.ndarray | None,
                   valid_labels: np.ndarray | None, fit: EstimatorFit) -> None:
        weights = None if fit.class_weights is None else dict(enumerate(fit.class_weights))
        early_stopping = (fit.max_iterations is None and fit.patience > 0 and valid_features is not None
                          and len(valid_features) > 0)
        settings = {**self.settings, "max_iter": fit.max_iterations or self.settings["max_iter"]}
        estimator = HistGradientBoostingClassifier(
            **settings, early_stopping=early_stopping, scoring=SCORING[fit.monitor],
            n_iter_no_change=max(fit.patience, 1), class_weight=weights, random_state=fit.seed)
        if not early_stopping:
            estimator.fit(features, labels)
        else:
            # The loss on validation is weighted like the train loss (and like the epoch loop's val_loss);
            # the other scores are plain, as the trainer's validation metrics are.
            valid_weights = (np.asarray(fit.class_weights, dtype=np.float64)[valid_labels]
                             if fit.class_weights is not None and fit.monitor == "val_loss" else None)
            estimator.fit(features, labels, X_val=valid_features, y_val=valid_labels,
                          sample_weight_val=valid_weights)
        self.estimator = estimator

    def refit_arrays(self, features: np.ndarray, labels: np.ndarray) -> None:
        if self.estimator is None:
            raise MedxpError("hist_gradient_boosting: not fitted; a refit repeats a fitted model's settings and "
                             "iterations on other rows, expected a model fitted by medxp.training.estimator")
        estimator = clone(self.estimator).set_params(max_iter=self.iterations, early_stopping=False)
        self.estimator = estimator.fit(features, labels)

    def learned_values(self) -> int:
        """Tree nodes of the fitted estimator (each holds a learned split or leaf value): its parameter count."""
        if self.estimator is None:
            return 0
        return int(sum(len(predictor.nodes) for per_iteration in self.estimator._predictors
                       for predictor in per_iteration))

    def raw_logits(self, features: np.ndarray) -> np.ndarray:
        return self._logits(self.estimator.decision_function(features))

    def staged_raw_logits(self, features: np.ndarray) -> Iterator[np.ndarray]:
        for raw in self.estimator.staged_decision_function(features):
            yield self._logits(raw)

    def _logits(self, raw: np.ndarray) -> np.ndarray:
        # Two classes seen: one raw score r per row, p(second) = sigmoid(r) = softmax([0, r]).
        known = np.stack([np.zeros_like(raw), raw], axis=1) if raw.ndim == 1 else raw
        return self.full_logits(known, self.estimator.classes_)

    def extra_repr(self) -> str:
        state = f"fitted, {self.iterations} iterations" if self.fitted else "not fitted"
        return f"num_classes={self.num_classes}, {state}, " + ", ".join(f"{k}={v}" for k, v in self.settings.items())


@register_model("hist_gradient_boosting", modalities=("tabular",), default_input_size=0, family="tabular",
                accepts=GB_KEYS, trainer="estimator")
def hist_gradient_boosting(model: ModelConfig, spec: DatasetSpec) -> HistGradientBoosting:
    """scikit-learn's `HistGradientBoostingClassifier` with the `model.gb_*` settings."""
    return HistGradientBoosting(len(spec.class_names), estimator_settings(model))
