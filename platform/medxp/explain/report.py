"""LIME artifacts of a trained model: grids, per-image records, and the explanation checks that apply.

`explain_model` is what the `explain` stage runs after training or on a registered
model: it explains a few images of one split, logs the figures and records through
the tracker, and runs every registered explanation check (medxp.explanation_checks)
that applies to the data, logging what each measured as `lime_<metric>`. The checks
are plug-ins of the data they know: on medxp's generated glaucoma data, the demo
generator's `optic_disc` check measures how much of the supporting evidence lies on
the optic disc against the disc's share of the image.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from medxp.config import ExperimentConfig
from medxp.data import DataModule  # importing medxp.data registers its checks (medxp.data.synthetic)
from medxp.errors import MedxpError
from medxp.explain.grid import ExplanationRecord, explanation_grid, method_figure
from medxp.explain.segmentation import SEGMENTATIONS
from medxp.explanation_checks import ExplainedImage, run_checks
from medxp.tracking.base import Tracker

log = logging.getLogger(__name__)

ARTIFACT_DIR = "explanations"
METRIC_PREFIX = "lime_"  # the checks' metrics are logged as lime_<name>


@dataclass
class ExplainSummary:
    """What `explain_model` produced.

    Attributes:
        split: The explained split.
        methods: The segmentations used.
        records: One record per explained image and method.
        artifacts: Paths of everything logged, relative to the run's artifact root.
        explain_metrics: What the explanation checks that apply to the data measured, by the
            metric name logged (``lime_disc_weight_share`` on the fundus demo); empty when
            no check applies.
        seconds: Wall time.
    """

    split: str
    methods: tuple[str, ...]
    records: list[ExplanationRecord]
    artifacts: list[str] = field(default_factory=list)
    explain_metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def explain_model(model: Callable[[torch.Tensor], torch.Tensor], data: DataModule, config: ExperimentConfig,
                  tracker: Tracker, *, split: str = "test", per_class: int = 2, num_samples: int = 1000,
                  methods: Sequence[str] | None = None, seed: int | None = None,
                  batch_size: int | None = None) -> ExplainSummary:
    """Explains a few images of one split with LIME and logs the results.

    Logs ``explanations/lime_grid.png`` (all methods side by side),
    ``explanations/lime_<method>.png`` (one method with its heat maps) and
    ``explanations/lime_records.json``, and the metrics of every explanation check that
    applies to the data as ``lime_<name>`` (on the fundus demo ``lime_disc_weight_share``
    and ``lime_disc_area_share``, means over every explained image and method, and
    ``lime_disc_weight_share_<method>``).

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
    _run_checks(data, split, summary)
    if summary.explain_metrics:
        tracker.log_metrics(summary.explain_metrics)
    _log_records(tracker, summary)
    summary.seconds = time.perf_counter() - started
    log.info("LIME: %d explanations of %s in %.1f s", len(records), split, summary.seconds)
    return summary


def _run_checks(data: DataModule, split: str, summary: ExplainSummary) -> None:
    """Runs the explanation checks that apply: their per-image values go on the records, their metrics
    (prefixed ``lime_``) into the summary."""
    explained = [ExplainedImage(record.image_id, record.method, record.explanation.heatmap)
                 for record in summary.records]
    for result in run_checks(data, split, explained).values():
        for record, values in zip(summary.records, result.per_image):
            record.checks.update(values)
        summary.explain_metrics.update({METRIC_PREFIX + name: value for name, value in result.metrics.items()})


def _log_figure(tracker: Tracker, summary: ExplainSummary, figure: Any, name: str) -> None:
    path = f"{ARTIFACT_DIR}/{name}"
    tracker.log_figure(figure, path)
    summary.artifacts.append(path)


def _log_records(tracker: Tracker, summary: ExplainSummary) -> None:
    path = f"{ARTIFACT_DIR}/lime_records.json"
    tracker.log_dict({
        "split": summary.split,
        "methods": list(summary.methods),
        "explain_metrics": summary.explain_metrics,
        "records": [record.as_dict() for record in summary.records],
    }, path)
    summary.artifacts.append(path)

