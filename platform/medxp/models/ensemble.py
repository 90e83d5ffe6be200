"""The ensemble network: the mean of N medxp models' class probabilities, as one `nn.Module`.

A member is any model medxp logs: (N, C, H, W) float32 pixels in [0, 1] in, class
probabilities out (`medxp.models.InferenceModel`). Members must agree on class names and
input shape; a mismatch is an error naming the members. A model trained at another image size joins
as `Resized`: it takes the ensemble's images and resizes them to its own size first. Loading members from MLflow is
`medxp.models.loading`; building, logging and registering an ensemble is `medxp.flows.ensemble`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medxp.errors import MedxpError

# What an ensemble's decision holds: the attributes an `InferenceModel` carries for its rule.
DECISION_KEYS = ("threshold", "positive_index", "operating_point", "threshold_split")


@dataclass(frozen=True)
class MemberInfo:
    """What must agree between ensemble members; empty fields are unknown and not compared.

    Attributes:
        source: Where the member came from (its model URI), named in errors.
        class_names: The classes of its output columns, in order.
        input_shape: One input's shape without the batch axis, e.g. (3, 64, 64).
    """

    source: str
    class_names: tuple[str, ...] = ()
    input_shape: tuple[int, ...] = ()


class EnsembleModel(nn.Module):
    """Averages the class probabilities of its members: pixels in [0, 1] in, probabilities out."""

    def __init__(self, models: Sequence[nn.Module], members: Sequence[MemberInfo] | None = None,
                 decision: dict | None = None) -> None:
        """Builds the ensemble.

        Args:
            models: Medxp inference models (each returns probabilities).
            members: One description per model; checked for agreement. None: `member 0`, ... unchecked.
            decision: A binary task's operating point fitted on validation (`threshold`, `positive_index`,
                `operating_point`, `threshold_split`), read like an `InferenceModel`'s; None: arg-max.

        Raises:
            MedxpError: no model, a description count that differs, or members that disagree.
        """
        super().__init__()
        if not models:
            raise MedxpError("ensemble: no member models; expected at least one model URI")
        members = tuple(members) if members is not None else tuple(MemberInfo(f"member {i}")
                                                                      for i in range(len(models)))
        if len(members) != len(models):
            raise MedxpError(f"ensemble: {len(models)} models but {len(members)} member descriptions; "
                             "expected one description per model")
        self.class_names, self.input_shape = check_members(members)
        self.member_info = members
        self.members = nn.ModuleList(models)
        self.set_decision(decision)

    def set_decision(self, decision: dict | None) -> None:
        """Stores the operating point (see `__init__`); `medxp.training.evaluate.stored_rule` reads it back."""
        self.decision = dict(decision or {})
        for key in DECISION_KEYS:
            setattr(self, key, self.decision.get(key))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        probabilities = [member(inputs) for member in self.members]
        widths = [p.shape[-1] for p in probabilities]
        if len(set(widths)) > 1:
            described = ", ".join(f"{info.source}: {width}" for info, width in zip(self.member_info, widths))
            raise MedxpError(f"ensemble: members return different numbers of classes ({described}); "
                             "expected members trained on the same classes")
        return torch.stack(probabilities).mean(dim=0)


class Resized(nn.Module):
    """A medxp model fed images of another size: bilinear resize to the size it was trained at, then the model.

    The data module resizes an image file to `dataset.image_size` with PIL's bilinear filter (pixel
    centres at half-integers); `F.interpolate(..., mode="bilinear", align_corners=False)` samples the same
    points, with antialiasing when it shrinks. It carries what an ensemble member describes: the model's
    `class_names`, and `input_shape` (C, H, W) at the size it is fed, so it joins an ensemble of that size.
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int]) -> None:
        super().__init__()
        trained = tuple(int(size) for size in getattr(model, "input_shape", ()) or ())
        if len(trained) != 3 or len(input_shape) != 3 or trained[0] != int(input_shape[0]):
            raise MedxpError(f"Resized: a model trained on images of shape {list(trained) or 'unknown'} cannot take "
                             f"images of shape {list(input_shape)}; expected (channels, height, width) with the "
                             "same channels")
        self.model = model
        self.size = trained[1:]
        self.input_shape = tuple(int(size) for size in input_shape)
        self.class_names = tuple(getattr(model, "class_names", ()) or ())

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if tuple(inputs.shape[-2:]) != self.size:
            shrinking = inputs.shape[-1] > self.size[1] or inputs.shape[-2] > self.size[0]
            inputs = F.interpolate(inputs, size=self.size, mode="bilinear", align_corners=False, antialias=shrinking)
        return self.model(inputs)


def check_members(members: Sequence[MemberInfo]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The members' common (class names, input shape); unknown fields are skipped.

    Raises:
        MedxpError: two members with different class names or input shapes, naming every member.
    """
    agreed = []
    for field, what in (("class_names", "class names"), ("input_shape", "input shape")):
        known = {getattr(info, field) for info in members if getattr(info, field)}
        if len(known) > 1:
            described = "; ".join(f"{info.source}: {list(getattr(info, field)) or 'unknown'}" for info in members)
            raise MedxpError(f"ensemble members disagree on {what} ({described}); "
                             f"expected every member to have the same {what}")
        agreed.append(known.pop() if known else ())
    return agreed[0], agreed[1]
