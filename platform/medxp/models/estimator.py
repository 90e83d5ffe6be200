"""Networks fitted in one call on whole arrays (scikit-learn estimators), not by gradient steps.

An `EstimatorModel` is an `nn.Module` like every other medxp model: features in, logits out,
so evaluation, temperature scaling, `InferenceModel`, logging (the pickled PyTorch flavour
carries the fitted estimator inside) and loading treat it as any network. What differs is
training: `medxp.training.estimator` fits it once on the train split (`fit_arrays`), with
early stopping on the validation split, instead of running the epoch loop, and reads only the
`train.*` keys in `ESTIMATOR_TRAIN_KEYS`. A model registers itself with `trainer="estimator"`
in its `ModelInfo`, so search-space checks refuse a space that searches any other `train.*`
key for it.

One boosting iteration plays the part of an epoch: the curves, `best_epoch` and
`restored_epoch` count iterations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import nn

from medxp.errors import MedxpError

# The `train.*` keys an estimator fit reads (medxp.training.estimator); the others belong to the epoch loop.
ESTIMATOR_TRAIN_KEYS = ("class_weights", "patience", "monitor", "restore_best", "seed", "threads")
# The logit of a class the train split lacked (the estimator never saw it): probability ~0, finite.
ABSENT_CLASS_LOGIT = -1.0e4


@dataclass(frozen=True)
class EstimatorFit:
    """What training asks of one `fit_arrays` call (from the run's `train.*` keys).

    Attributes:
        seed: The estimator's random state (`train.seed`).
        class_weights: One weight per class (`train.class_weights` resolved), or None: unweighted.
        patience: Stop after this many iterations without improvement of `monitor` on the
            validation rows (`train.patience`); 0: no early stopping, every iteration is fitted.
        monitor: The validation metric early stopping watches (`train.monitor`).
        max_iterations: Fit exactly this many iterations without early stopping (the refit to
            the best iteration); None: the model's own budget.
    """

    seed: int = 0
    class_weights: tuple[float, ...] | None = None
    patience: int = 0
    monitor: str = "val_loss"
    max_iterations: int | None = None


class EstimatorModel(nn.Module):
    """Base of models fitted by `fit_arrays` rather than by the epoch loop.

    Subclasses implement `fit_arrays`, `raw_logits` and `staged_raw_logits` on numpy arrays
    (standardised features, as the data module gives them); `forward` wraps `raw_logits` for
    tensors. The fitted estimator is a plain attribute, so it is pickled with the module.

    Args:
        num_classes: The task's class count; logits always have one column per class.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    @property
    def fitted(self) -> bool:
        """Whether `fit_arrays` has run."""
        raise NotImplementedError

    @property
    def iterations(self) -> int:
        """The iterations the fitted estimator holds (its trees per class, for boosting)."""
        raise NotImplementedError

    @property
    def iteration_budget(self) -> int:
        """The most iterations one fit may take (early stopping may end it sooner)."""
        raise NotImplementedError

    def fit_arrays(self, features: np.ndarray, labels: np.ndarray, valid_features: np.ndarray | None,
                   valid_labels: np.ndarray | None, fit: EstimatorFit) -> None:
        """Fits on (N, F) float32 features and (N,) int labels; validation rows drive early stopping."""
        raise NotImplementedError

    def refit_arrays(self, features: np.ndarray, labels: np.ndarray) -> None:
        """Fits again on other rows (train + valid, `medxp.flows.refit`): the fitted estimator's settings
        (class weights and random state included) and its iteration count, no early stopping."""
        raise NotImplementedError

    def raw_logits(self, features: np.ndarray) -> np.ndarray:
        """(N, num_classes) float32 logits of the fitted estimator: softmax gives its probabilities."""
        raise NotImplementedError

    def staged_raw_logits(self, features: np.ndarray) -> Iterator[np.ndarray]:
        """The logits after each iteration, first to last (the learning curves)."""
        raise NotImplementedError

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            raise MedxpError(f"{type(self).__name__}: not fitted; it is fitted on a train split by "
                             "medxp.training.estimator (run_experiment does it), not by gradient steps")
        features = inputs.detach().float().reshape(len(inputs), -1).cpu().numpy()
        return torch.from_numpy(self.raw_logits(features)).to(inputs.device)

    def full_logits(self, known: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """(N, num_classes) logits from the columns of the classes the estimator saw (`classes`, sorted)."""
        if len(classes) == self.num_classes:
            return known.astype(np.float32, copy=False)
        logits = np.full((len(known), self.num_classes), ABSENT_CLASS_LOGIT, dtype=np.float32)
        logits[:, classes] = known
        return logits
