"""Explanations of trained models: LIME over superpixels (quickshift, SLIC, k-means).

`explain_image` explains one image, `explanation_grid` compares methods on a few
right and wrong test images, `explain_model` logs grids, records and the metrics of
the explanation checks that apply to the data (plug-ins the data registers in
medxp.explanation_checks) through a tracker. See ``lime_images``, ``segmentation``,
``grid`` and ``report``.
"""

from medxp.explain.grid import ExplanationRecord, explanation_grid, method_figure, select_examples
from medxp.explain.lime_images import (
    BatchedLimeImageExplainer,
    Explanation,
    explain_image,
    make_classifier_fn,
    predict_probabilities,
)
from medxp.explain.report import ExplainSummary, explain_model
from medxp.explain.segmentation import SEGMENTATIONS, create_segmenter, kmeans_segments

__all__ = [
    "SEGMENTATIONS",
    "BatchedLimeImageExplainer",
    "ExplainSummary",
    "Explanation",
    "ExplanationRecord",
    "create_segmenter",
    "explain_image",
    "explain_model",
    "explanation_grid",
    "kmeans_segments",
    "make_classifier_fn",
    "method_figure",
    "predict_probabilities",
    "select_examples",
]
