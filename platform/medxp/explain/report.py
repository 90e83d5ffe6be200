"""LIME artifacts of a trained model: grids, per-image records and, on demo data, the optic disc check.

`explain_model` is what the `explain` stage runs after training or on a registered
model: it explains a few images of one split, logs the figures and records through
the tracker and, on medxp's generated glaucoma data, measures how much of the
supporting evidence lies on the optic disc (where the label is drawn) against the
disc's share of the image. A share well above the area share means the model looks
where it should.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from medxp.config import ExperimentConfig
from medxp.data import DataModule
from medxp.data.synthetic import GEOMETRY_FILE, read_geometry
from medxp.errors import MedxpError
from medxp.explain.grid import ExplanationRecord, explanation_grid, method_figure
from medxp.explain.lime_images import disc_weight_share
from medxp.explain.segmentation import SEGMENTATIONS
from medxp.tracking.base import Tracker

log = logging.getLogger(__name__)

ARTIFACT_DIR = "explanations"
DiscCircle = tuple[float, float, float]  # column, row, radius in pixels of the explained image


@dataclass
class ExplainSummary:
    """What `explain_model` produced.

    Attributes:
        split: The explained split.
        methods: The segmentations used.
        records: One record per explained image and method.
        artifacts: Paths of everything logged, relative to the run's artifact root.
        disc_weight_share: Mean share of positive LIME weight inside the optic disc
            (None without demo geometry).
        disc_area_share: Mean share of the image the disc covers (None without geometry).
        disc_weight_share_by_method: The mean weight share of each method.
        seconds: Wall time.
    """

    split: str
    methods: tuple[str, ...]
    records: list[ExplanationRecord]
    artifacts: list[str] = field(default_factory=list)
    disc_weight_share: float | None = None
    disc_area_share: float | None = None
    disc_weight_share_by_method: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def explain_model(model: Callable[[torch.Tensor], torch.Tensor], data: DataModule, config: ExperimentConfig,
                  tracker: Tracker, *, split: str = "test", per_class: int = 2, num_samples: int = 1000,
                  methods: Sequence[str] | None = None, seed: int | None = None,
                  batch_size: int | None = None) -> ExplainSummary:
    """Explains a few images of one split with LIME and logs the results.

    Logs ``explanations/lime_grid.png`` (all methods side by side),
    ``explanations/lime_<method>.png`` (one method with its heat maps) and
    ``explanations/lime_records.json``; on generated demo data with its geometry
    sidecar also the metrics ``lime_disc_weight_share`` and ``lime_disc_area_share``
    (means over every explained image and method) and ``lime_disc_weight_share_<method>``.

    Args:
        model: Takes (N, C, H, W) float32 in [0, 1], returns (N, classes) probabilities
            (a :class:`medxp.models.InferenceModel` or a loaded logged model).
        data: The data module the images come from.
        config: The run's config (class names; ``train.seed`` when `seed` is None).
        tracker: Where the figures, records and metrics go.
        split: Which split's images to explain.
        per_class: Images per class (correct and wrong ones where there are both).
        num_samples: LIME perturbations per explanation.
        methods: Segmentations to compare; None: every registered one.
        seed: Seeds LIME; ``config.train.seed`` when None.
        batch_size: Images per forward pass; None picks one from the image size.

    Returns:
        The summary.

    Raises:
        MedxpError: an unknown split or method, or a bad argument.
    """
    started = time.perf_counter()
    if split not in data.datasets:
        raise MedxpError(f"explain_model: split '{split}' not in the data; expected one of {', '.join(data.datasets)}")
    dataset = data.datasets[split]
    methods = SEGMENTATIONS.in_registration_order() if methods is None else tuple(methods)
    image_ids = [path.stem for path, _ in data.files.get(split, [])] or None
    grid, records = explanation_grid(model, dataset.images, dataset.labels, config.dataset.class_names,
                                     per_class=per_class, methods=methods, num_samples=num_samples,
                                     seed=config.train.seed if seed is None else seed, batch_size=batch_size,
                                     image_ids=image_ids)
    summary = ExplainSummary(split, tuple(methods), records)
    _log_figure(tracker, summary, grid, "lime_grid.png")
    for method in methods:
        _log_figure(tracker, summary, method_figure(records, method), f"lime_{method}.png")
    circles = disc_circles(data, split, image_size=dataset.images.shape[-1])
    if circles:
        _measure_disc_shares(records, circles, summary)
        tracker.log_metrics(_disc_metrics(summary))
    _log_records(tracker, summary)
    summary.seconds = time.perf_counter() - started
    log.info("LIME: %d explanations of %s in %.1f s", len(records), split, summary.seconds)
    return summary


def disc_circles(data: DataModule, split: str, image_size: int) -> dict[str, DiscCircle]:
    """The optic disc of every image of a split, in pixels of the decoded images.

    Only generated demo data has a geometry sidecar; for any other data the result is
    empty. The sidecar's coordinates are in pixels of the generated image and are
    rescaled the way the decoder resized it (pixel centres on integer coordinates).

    Args:
        data: The data module.
        split: The split whose image ids (file stems) are looked up.
        image_size: Side of the decoded (square) images.

    Returns:
        ``{image_id: (column, row, radius)}``.
    """
    if not data.synthetic or not (Path(data.root) / GEOMETRY_FILE).is_file():
        return {}
    wanted = {path.stem for path, _ in data.files.get(split, [])}
    circles = {}
    for row in read_geometry(data.root).itertuples(index=False):
        if str(row.image_id) in wanted:
            scale = image_size / float(row.image_size)
            circles[str(row.image_id)] = ((row.disc_x + 0.5) * scale - 0.5, (row.disc_y + 0.5) * scale - 0.5,
                                          row.disc_radius * scale)
    return circles


def _measure_disc_shares(records: Sequence[ExplanationRecord], circles: dict[str, DiscCircle],
                         summary: ExplainSummary) -> None:
    """Fills each record's disc shares and the summary's means (NaN shares, no positive weight, are skipped)."""
    for record in records:
        if record.image_id in circles:
            record.disc_weight_share, record.disc_area_share = disc_weight_share(record.explanation,
                                                                                 *circles[record.image_id])
    measured = [r for r in records if r.disc_area_share is not None]
    summary.disc_weight_share = _finite_mean([r.disc_weight_share for r in measured])
    summary.disc_area_share = _finite_mean([r.disc_area_share for r in measured])
    for method in summary.methods:
        share = _finite_mean([r.disc_weight_share for r in measured if r.method == method])
        if share is not None:
            summary.disc_weight_share_by_method[method] = share


def _disc_metrics(summary: ExplainSummary) -> dict[str, float]:
    metrics = {f"lime_disc_weight_share_{method}": share
               for method, share in summary.disc_weight_share_by_method.items()}
    if summary.disc_weight_share is not None:
        metrics["lime_disc_weight_share"] = summary.disc_weight_share
    if summary.disc_area_share is not None:
        metrics["lime_disc_area_share"] = summary.disc_area_share
    return metrics


def _log_figure(tracker: Tracker, summary: ExplainSummary, figure: Any, name: str) -> None:
    path = f"{ARTIFACT_DIR}/{name}"
    tracker.log_figure(figure, path)
    summary.artifacts.append(path)


def _log_records(tracker: Tracker, summary: ExplainSummary) -> None:
    path = f"{ARTIFACT_DIR}/lime_records.json"
    tracker.log_dict({
        "split": summary.split,
        "methods": list(summary.methods),
        "disc_weight_share": summary.disc_weight_share,
        "disc_area_share": summary.disc_area_share,
        "disc_weight_share_by_method": summary.disc_weight_share_by_method,
        "records": [record.as_dict() for record in summary.records],
    }, path)
    summary.artifacts.append(path)


def _finite_mean(values: Sequence[float | None]) -> float | None:
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None
