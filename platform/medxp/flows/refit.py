"""The refit (`search.refit`): the main flow fits the chosen model again on train + valid before the test split.

A search ranked by K-fold means over the train + valid pool (`search.cv_folds`) chose its configuration
without leaning on the validation split alone, but each trial's logged model was fitted on train only
(72% of the rows under fetal_health's 72/8/20 split). With `search.refit` the main flow fits the model it
chose (the best trial's, or each member of the top-K ensemble) again on every train + valid row, as
scikit-learn's searches refit their best estimator: the member's own fitted settings (hyper-parameters,
class weights, random state) and its iteration count, no early stopping
(`medxp.models.estimator.EstimatorModel.refit_arrays`). The test split then scores the refitted model
once, and it is what the flow explains and registers. Its validation rows are training rows now, so no
validation score is recorded for it: what chose it is the search's record.

Only models fitted in one call qualify, with the arg-max rule (multi-class, `eval.calibration: none`,
checked with the config): a threshold or a temperature would need held-out rows the refit has taken.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
from torch import nn

from medxp.data import DataModule
from medxp.errors import MedxpError
from medxp.models.ensemble import EnsembleModel
from medxp.models.estimator import EstimatorModel
from medxp.models.factory import InferenceModel
from medxp.pipeline import example_batch
from medxp.tracking.mlflow_tracker import MlflowTracker

log = logging.getLogger(__name__)

REFIT_TAG = "medxp.refit"


def refit_on_pool(model: nn.Module, data: DataModule) -> nn.Module:
    """A copy of `model` whose estimators are fitted again on `data`'s train + valid rows; `model` is unchanged.

    Args:
        model: A logged medxp model (`InferenceModel`) or an ensemble of them, each wrapping an
            `EstimatorModel`; the inputs' standardisation it carries stays (a tree model splits on
            thresholds, which a per-feature affine map leaves in the same order).
        data: The data module the search used: its train and valid splits are the pool.

    Raises:
        MedxpError: a member that is not a fitted estimator model, or that carries a threshold or a
            temperature (fitted on the validation rows the refit trains on).
    """
    from medxp.training.estimator import split_arrays

    refitted = copy.deepcopy(model)
    members = _members(refitted)
    for index, member in enumerate(members):
        _check_refittable(member, index if len(members) > 1 else None)
    (train, train_labels), (valid, valid_labels) = (split_arrays(data, split) for split in ("train", "valid"))
    features, labels = np.concatenate([train, valid]), np.concatenate([train_labels, valid_labels])
    for member in members:
        member.network.refit_arrays(features, labels)
    return refitted


def refit_selected(model: nn.Module, data: DataModule, tracker: MlflowTracker, chosen: str) -> tuple[nn.Module, str]:
    """Refits the model the main flow chose (`refit_on_pool`), logs it into `tracker`'s run and returns it with its URI.

    Args:
        chosen: What the model is, for the tag and the log (`trial 5`, `ensemble of trials 5, 2, 9`).

    The run gets the tag `medxp.refit` (what was refitted, on how many rows, with how many iterations)
    and the metric `refit_rows`.
    """
    from medxp.flows.ensemble import log_ensemble

    refitted = refit_on_pool(model, data)
    rows = {split: len(data.datasets[split]) for split in ("train", "valid")}
    iterations = ", ".join(str(member.network.iterations) for member in _members(refitted))
    if isinstance(refitted, EnsembleModel):
        uri = log_ensemble(refitted, tracker, example_batch(data), name="refit")
    else:
        uri = tracker.log_model(refitted, example_batch(data), name="refit")
    description = (f"{chosen} fitted again on train + valid ({rows['train'] + rows['valid']} rows: {rows['train']} "
                   f"train, {rows['valid']} valid) with its settings and iteration count ({iterations}); its "
                   "validation rows are training rows now, the test split is its held-out score (search.refit)")
    tracker.set_tags({REFIT_TAG: description})
    tracker.log_metrics({"refit_rows": float(rows["train"] + rows["valid"])})
    log.info("refit: %s", description)
    return refitted, uri


def _members(model: nn.Module) -> list[nn.Module]:
    """An ensemble's member models, or the model alone."""
    return list(model.members) if isinstance(model, EnsembleModel) else [model]


def _check_refittable(member: nn.Module, index: int | None) -> None:
    """Raises MedxpError unless `member` is an `InferenceModel` of a fitted estimator with the arg-max rule."""
    which = f"ensemble member {index}" if index is not None else "the chosen model"
    network = getattr(member, "network", None)
    if not isinstance(member, InferenceModel) or not isinstance(network, EstimatorModel) or not network.fitted:
        raise MedxpError(f"'search.refit': {which} is {type(network or member).__name__}, not a fitted model of "
                         "a kind fitted in one call (e.g. hist_gradient_boosting); expected search.refit: false")
    if not np.isnan(float(member.threshold)) or float(member.temperature) != 1.0:
        raise MedxpError(f"'search.refit': {which} carries a decision threshold or temperature fitted on the "
                         "validation split, which the refit would train on; expected a multi-class task with "
                         "eval.calibration: none, or search.refit: false")
