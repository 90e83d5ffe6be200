"""Explanation checks: plug-ins that measure where an explanation's evidence lies, for the data they know.

A check is registered in `EXPLANATION_CHECKS` by the data it applies to (medxp's generated
fundus demo registers `optic_disc` in medxp.data.synthetic: the share of positive LIME weight
inside the optic disc against the disc's share of the image). `medxp.explain.report` runs
every registered check on the explained images; a check looks at the data module and its
metadata and returns None where it does not apply.

This module sits at the bottom of the layers (beside config and medxp.named) so that the
data that defines a check can register it without importing the explainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from medxp.named import Registry


@dataclass(frozen=True)
class ExplainedImage:
    """One explained image as a check sees it.

    Attributes:
        image_id: The image's id (its file stem; empty for array sources).
        method: The segmentation the explanation used.
        heatmap: (H, W) weight of every pixel of the explained image (positive: supports
            the explained class).
    """

    image_id: str
    method: str
    heatmap: np.ndarray


@dataclass
class CheckResult:
    """What a check measured.

    Attributes:
        metrics: Run metrics, named without the explainer's prefix (the LIME report logs
            `disc_area_share` as `lime_disc_area_share`); only finite values.
        per_image: One dict per explained image, in the order given: values recorded with
            that image's explanation record (None where not measured).
    """

    metrics: dict[str, float] = field(default_factory=dict)
    per_image: list[dict[str, float | None]] = field(default_factory=list)


# (data module, split, explained images) -> CheckResult, or None where the check does not apply.
ExplanationCheck = Callable[[Any, str, Sequence[ExplainedImage]], "CheckResult | None"]

EXPLANATION_CHECKS: Registry[ExplanationCheck] = Registry("explanation check")


def run_checks(data: Any, split: str, explained: Sequence[ExplainedImage]) -> dict[str, CheckResult]:
    """Runs every registered check that applies to `data`.

    Args:
        data: The data module the images come from (a medxp.data.DataModule).
        split: The explained split.
        explained: The explained images.

    Returns:
        ``{check name: result}`` of the checks that applied, in registration order.
    """
    results = {}
    for name in EXPLANATION_CHECKS.in_registration_order():
        result = EXPLANATION_CHECKS.get(name)(data, split, explained)
        if result is not None:
            results[name] = result
    return results


def finite_mean(values: Sequence[float | None]) -> float | None:
    """The mean of the finite values, None when there is none (a check's summary of per-image values)."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None
