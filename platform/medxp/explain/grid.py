"""Grids of LIME explanations: a few test images per class, right and wrong, each method side by side.

`explanation_grid` picks the images, explains each with every segmentation method and
draws one figure (rows = images; columns = the original, then one overlay per method).
`method_figure` draws one method in more detail (original, overlay, heat map). Figures
are built with :class:`matplotlib.figure.Figure`, never pyplot, as in
:mod:`medxp.training.plots`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from medxp.errors import MedxpError
from medxp.explain.lime_images import Explanation, explain_image, predict_probabilities
from medxp.explain.segmentation import SEGMENTATIONS

CELL_INCHES = 2.1
HEATMAP_COLOURS = "RdYlGn"  # red opposes, green supports: the overlay's colours


@dataclass
class ExplanationRecord:
    """One explained image and method, with what the grid's cell says about it."""

    index: int
    true_label: int
    true_class: str
    predicted_label: int
    predicted_class: str
    probability: float
    method: str
    explanation: Explanation
    image_id: str = ""
    # Values the explanation checks (medxp.explanation_checks) measured on this image, by name.
    checks: dict[str, float | None] = field(default_factory=dict)

    @property
    def correct(self) -> bool:
        """Whether the model's predicted class is the true one."""
        return self.true_label == self.predicted_label

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no pixel arrays): prediction, explanation quality, strongest segments, checks."""
        weights = self.explanation.segment_weights
        order = np.argsort(-np.abs(weights))[:5]
        return {
            "index": self.index, "image_id": self.image_id, "method": self.method,
            "true_label": self.true_label, "true_class": self.true_class,
            "predicted_label": self.predicted_label, "predicted_class": self.predicted_class,
            "probability": round(self.probability, 6), "correct": self.correct,
            "explained_label": self.explanation.label, "num_segments": self.explanation.num_segments,
            "num_samples": self.explanation.num_samples, "local_model_r2": round(self.explanation.score, 6),
            "positive_weight_total": round(float(np.clip(weights, 0, None).sum()), 6),
            "top_segments": [{"segment": int(s), "weight": round(float(weights[s]), 6)} for s in order],
            **{name: _rounded(value) for name, value in self.checks.items()},
            "seconds": round(self.explanation.seconds, 3),
        }


def explanation_grid(model: Callable[[torch.Tensor], torch.Tensor], images: Any, labels: Any,
                     class_names: Sequence[str], *, per_class: int = 2, methods: Sequence[str] | None = None,
                     num_samples: int = 1000, seed: int = 0, batch_size: int | None = None,
                     image_ids: Sequence[str] | None = None, hide_color: float | None = None,
                     ) -> tuple[Figure, list[ExplanationRecord]]:
    """Explains a few images per class with every method and draws them in one grid.

    Per class it takes up to `per_class` images, alternating the most confidently
    correct and the most confidently wrong ones (wrong ones only where there are any).
    Each image is explained for the class the model predicted.

    Args:
        model: Takes (N, C, H, W) float32 in [0, 1], returns (N, classes) probabilities.
        images: (N, C, H, W) uint8 tensor or array.
        labels: (N,) true class indices.
        class_names: Name of each class index.
        per_class: Images to show per class.
        methods: Segmentations to compare; None: every registered one (quickshift, slic, kmeans).
        num_samples: LIME perturbations per explanation.
        seed: Seeds LIME and the segmentations.
        batch_size: Images per forward pass; None picks one from the image size.
        image_ids: Optional name of each image (its file stem), kept in the records.
        hide_color: See :func:`medxp.explain.lime_images.explain_image`.

    Returns:
        (figure, records): one record per image and method, in row order.

    Raises:
        MedxpError: mismatched images and labels, no methods, or a bad argument.
    """
    images, labels = _as_uint8_images(images), np.asarray(labels, dtype=np.int64).reshape(-1)
    methods = SEGMENTATIONS.in_registration_order() if methods is None else tuple(methods)
    _check_grid_inputs(images, labels, class_names, per_class, methods, image_ids)
    probabilities = predict_probabilities(model, torch.from_numpy(images).float() / 255.0, batch_size)
    if probabilities.shape[1] != len(class_names):
        raise MedxpError(f"explanation_grid: the model returns {probabilities.shape[1]} class probabilities but "
                         f"class_names has {len(class_names)} names; expected one name per class")
    predicted = probabilities.argmax(axis=1)
    records = []
    for index in select_examples(labels, probabilities, per_class):
        for method in methods:
            explanation = explain_image(model, images[index], method=method, num_samples=num_samples,
                                        label=int(predicted[index]), seed=seed, batch_size=batch_size,
                                        hide_color=hide_color)
            records.append(ExplanationRecord(
                index=int(index), true_label=int(labels[index]), true_class=class_names[labels[index]],
                predicted_label=int(predicted[index]), predicted_class=class_names[predicted[index]],
                probability=float(probabilities[index, predicted[index]]), method=method,
                explanation=explanation, image_id=image_ids[index] if image_ids is not None else ""))
    return grid_figure(records, methods), records


def select_examples(labels: np.ndarray, probabilities: np.ndarray, per_class: int) -> list[int]:
    """Up to `per_class` image indices per class: most confident correct, most confident wrong, alternating.

    Args:
        labels: (N,) true classes.
        probabilities: (N, classes) predicted probabilities.
        per_class: Images wanted per class.

    Returns:
        Indices grouped by class in class order; within a class, correct before wrong.
    """
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    chosen: list[int] = []
    for label in range(probabilities.shape[1]):
        members = np.flatnonzero(labels == label)
        members = members[np.argsort(-confidence[members], kind="stable")]
        correct = [int(i) for i in members if predicted[i] == label]
        wrong = [int(i) for i in members if predicted[i] != label]
        picks = _alternate(correct, wrong, per_class)
        chosen += [i for i in correct if i in picks] + [i for i in wrong if i in picks]
    return chosen


def grid_figure(records: Sequence[ExplanationRecord], methods: Sequence[str]) -> Figure:
    """Rows = images, columns = the original and one LIME overlay per method."""
    rows = _rows_by_image(records)
    figure = Figure(figsize=(CELL_INCHES * (1 + len(methods)), CELL_INCHES * 1.15 * max(1, len(rows))),
                    layout="constrained")
    axes = figure.subplots(max(1, len(rows)), 1 + len(methods), squeeze=False)
    for row_axes, row in zip(axes, rows):
        first = row[0]
        _show(row_axes[0], first.explanation.image, _image_title(first))
        by_method = {record.method: record for record in row}
        for column, method in enumerate(methods, start=1):
            record = by_method.get(method)
            if record is None:
                row_axes[column].set_axis_off()
                continue
            _show(row_axes[column], record.explanation.overlay, _overlay_title(record))
    figure.suptitle("LIME: green supports the predicted class, red opposes it (strongest superpixels)",
                    fontsize=9)
    return figure


def method_figure(records: Sequence[ExplanationRecord], method: str) -> Figure:
    """One method in detail: rows = images; columns = original, LIME overlay, superpixel weight heat map."""
    chosen = [record for record in records if record.method == method]
    if not chosen:
        raise MedxpError(f"method_figure: no explanations made with method '{method}'")
    figure = Figure(figsize=(CELL_INCHES * 3.3, CELL_INCHES * 1.15 * len(chosen)), layout="constrained")
    axes = figure.subplots(len(chosen), 3, squeeze=False)
    for row_axes, record in zip(axes, chosen):
        explanation = record.explanation
        _show(row_axes[0], explanation.image, _image_title(record))
        _show(row_axes[1], explanation.overlay, _overlay_title(record))
        limit = float(np.abs(explanation.heatmap).max()) or 1.0
        row_axes[2].imshow(explanation.image.mean(axis=2), cmap="gray", vmin=0, vmax=1)
        heat = row_axes[2].imshow(explanation.heatmap, cmap=HEATMAP_COLOURS, vmin=-limit, vmax=limit, alpha=0.65)
        row_axes[2].set_axis_off()
        row_axes[2].set_title(f"weights (R² {explanation.score:.2f})", fontsize=8)
        figure.colorbar(heat, ax=row_axes[2], fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    figure.suptitle(f"LIME ({method}): superpixel weights for the predicted class", fontsize=9)
    return figure


def _alternate(first: list[int], second: list[int], count: int) -> set[int]:
    """Takes from the two lists in turn (first, second, first, ...) until `count`, topping up from either."""
    picks: list[int] = []
    queues = [list(first), list(second)]
    turn = 0
    while len(picks) < count and (queues[0] or queues[1]):
        queue = queues[turn] if queues[turn] else queues[1 - turn]
        picks.append(queue.pop(0))
        turn = 1 - turn
    return set(picks)


def _rows_by_image(records: Sequence[ExplanationRecord]) -> list[list[ExplanationRecord]]:
    """Groups records into one row per image, keeping first-seen order."""
    rows: dict[int, list[ExplanationRecord]] = {}
    for record in records:
        rows.setdefault(record.index, []).append(record)
    return list(rows.values())


def _image_title(record: ExplanationRecord) -> str:
    verdict = "correct" if record.correct else "WRONG"
    name = record.image_id or f"#{record.index}"
    return (f"{name}\ntrue: {record.true_class}\n"
            f"pred: {record.predicted_class} {record.probability:.2f} ({verdict})")


def _overlay_title(record: ExplanationRecord) -> str:
    verdict = "correct" if record.correct else "WRONG"
    return (f"{record.method} ({record.explanation.num_segments} regions)\n"
            f"true {record.true_class}, pred {record.predicted_class}\n"
            f"p={record.probability:.2f} ({verdict})")


def _show(axes: Axes, image: np.ndarray, title: str) -> None:
    axes.imshow(np.clip(image, 0.0, 1.0), interpolation="nearest")
    axes.set_title(title, fontsize=7)
    axes.set_axis_off()


def _as_uint8_images(images: Any) -> np.ndarray:
    pixels = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if pixels.ndim != 4 or pixels.dtype != np.uint8:
        raise MedxpError(f"explanation_grid: images of shape {pixels.shape} and dtype {pixels.dtype}; "
                         "expected (N, C, H, W) uint8")
    return pixels


def _check_grid_inputs(images: np.ndarray, labels: np.ndarray, class_names: Sequence[str], per_class: int,
                       methods: Sequence[str], image_ids: Sequence[str] | None) -> None:
    if len(images) != len(labels):
        raise MedxpError(f"explanation_grid: {len(images)} images but {len(labels)} labels; expected one label each")
    if image_ids is not None and len(image_ids) != len(images):
        raise MedxpError(f"explanation_grid: {len(image_ids)} image_ids for {len(images)} images; expected one each")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise MedxpError(f"explanation_grid: labels outside 0..{len(class_names) - 1} (class_names has "
                         f"{len(class_names)} names)")
    if per_class < 1:
        raise MedxpError(f"explanation_grid: per_class = {per_class}; expected at least 1")
    if not methods:
        raise MedxpError("explanation_grid: methods is empty; expected some of "
                         + ", ".join(SEGMENTATIONS.in_registration_order()))


def _rounded(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 6)
