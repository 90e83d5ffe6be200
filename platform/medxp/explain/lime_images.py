"""LIME explanations of one image: which superpixels push a medxp model towards a class.

`explain_image` runs lime's ``LimeImageExplainer`` on a uint8 (C, H, W) image and a
model that takes [0, 1] float32 (N, C, H, W) tensors and returns class probabilities
(a :class:`medxp.models.InferenceModel`, or what ``mlflow.pytorch.load_model`` gives
back). The result holds the segments, one weight per segment, a heat map and the
usual green/red overlay. What a heat map says about a data set's own ground truth
(the fundus demo's optic disc) is an explanation check (medxp.explanation_checks).

lime 0.2.0.1 builds its perturbed images one at a time with a Python loop over the
switched-off segments; `BatchedLimeImageExplainer` builds a whole batch with one
array operation (same random draws, same images). The forward passes dominate the
cost, so the batch size matters more (see `default_batch_size`).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from lime.lime_image import ImageExplanation, LimeImageExplainer
from skimage.segmentation import mark_boundaries
from torch import nn

from medxp.errors import MedxpError
from medxp.explain.segmentation import create_segmenter

log = logging.getLogger(__name__)

ClassifierFn = Callable[[np.ndarray], np.ndarray]
# Pixels per forward pass when no batch size is given: 64 images at 64 px, 5 at 224 px.
# On 2 CPU cores small_cnn ran fastest per image with batches of about 0.25 Mpixel, whose
# activations stay in cache: 256 images at 64 px, or 40 at 224 px, were 2x slower.
BATCH_PIXEL_BUDGET = 2**18
MAX_BATCH_SIZE = 256
# Superpixels drawn on the overlay: the strongest ones by |weight|, and none weaker than
# this fraction of the strongest, so a flat explanation does not paint the whole image.
OVERLAY_SEGMENTS = 8
OVERLAY_MIN_RELATIVE_WEIGHT = 0.1
# The overlay is drawn at least this many pixels wide so superpixel borders stay thin.
OVERLAY_MIN_SIDE = 256
OVERLAY_TINT = 0.5
SUPPORT_COLOUR = (0.0, 1.0, 0.0)
OPPOSE_COLOUR = (1.0, 0.0, 0.0)
BOUNDARY_COLOUR = (1.0, 1.0, 0.0)
FEW_SEGMENTS = 4  # fewer superpixels than this makes an explanation nearly meaningless: warn


@dataclass
class Explanation:
    """One LIME explanation of one image for one class.

    Attributes:
        image: The image as LIME saw it, (H, W, 3) float32 in [0, 1] (grey repeated).
        segments: (H, W) int superpixel of every pixel, numbered 0..n-1.
        segment_weights: (n,) weight of each superpixel for `label`: the change in the
            class probability the local linear model attributes to showing it.
        label: The explained class index.
        probability: The model's probability of `label` on the unperturbed image.
        probabilities: The model's probabilities of every class on the unperturbed image.
        heatmap: (H, W) float, each pixel carrying the weight of its superpixel.
        overlay: (H*f, W*f, 3) float in [0, 1], f the smallest whole factor that makes it
            at least 256 px wide: the image in grey with the strongest supporting
            superpixels tinted green, opposing ones red, their borders yellow.
        method: The segmentation ("quickshift", "slic" or "kmeans").
        score: R^2 of the local linear model on the perturbations (how faithful it is).
        intercept: The local model's intercept.
        num_samples: Number of perturbed images the model scored.
        seconds: Wall time of the explanation.
    """

    image: np.ndarray
    segments: np.ndarray
    segment_weights: np.ndarray
    label: int
    probability: float
    probabilities: np.ndarray
    heatmap: np.ndarray
    overlay: np.ndarray
    method: str
    score: float
    intercept: float
    num_samples: int
    seconds: float

    @property
    def num_segments(self) -> int:
        """Number of superpixels."""
        return int(len(self.segment_weights))


class BatchedLimeImageExplainer(LimeImageExplainer):
    """lime's ``LimeImageExplainer`` with perturbed images built a batch at a time.

    `data_labels` draws the on/off matrix exactly as lime does (same random state,
    same order, first row all on) and produces the same images, but masks a whole
    batch with one ``np.where`` instead of a per-image loop over segments. It
    requires segments numbered 0..n-1, which `create_segmenter` guarantees.
    """

    def data_labels(self, image: np.ndarray, fudged_image: np.ndarray, segments: np.ndarray,
                    classifier_fn: ClassifierFn, num_samples: int,
                    batch_size: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Perturbs `image` `num_samples` times and scores the perturbations.

        Returns:
            (data, labels): the (num_samples, n_segments) 0/1 matrix of shown segments
            and the (num_samples, n_classes) probabilities.
        """
        n_features = np.unique(segments).shape[0]
        data = self.random_state.randint(0, 2, num_samples * n_features).reshape((num_samples, n_features))
        data[0, :] = 1
        predictions = []
        for start in range(0, num_samples, batch_size):
            hidden = data[start:start + batch_size][:, segments] == 0  # (batch, H, W)
            predictions.append(classifier_fn(np.where(hidden[..., None], fudged_image, image)))
        return data, np.concatenate(predictions)


def make_classifier_fn(model: Callable[[torch.Tensor], torch.Tensor], channels: int,
                       batch_size: int | None = None) -> ClassifierFn:
    """Wraps a pixels-in, probabilities-out model as LIME's ``classifier_fn``.

    Args:
        model: Takes (N, C, H, W) float32 in [0, 1], returns (N, classes) probabilities.
        channels: The model's input channels: 1 (grey) or 3 (RGB). LIME works on RGB;
            for a grey model the three channels are averaged back into one.
        batch_size: Images per forward pass; None picks one from the image size
            (see `default_batch_size`).

    Returns:
        A function (N, H, W, 3) float images -> (N, classes) float64 probabilities.
    """
    if channels not in (1, 3):
        raise MedxpError(f"LIME classifier: channels = {channels}; expected 1 (grey) or 3 (RGB)")
    _check_batch_size(batch_size)

    def classify(images: np.ndarray) -> np.ndarray:
        return predict_probabilities(model, hwc_to_nchw(images, channels), batch_size)

    return classify


def hwc_to_nchw(images: np.ndarray, channels: int) -> torch.Tensor:
    """(N, H, W, 3), (N, H, W, 1) or (N, H, W) images -> (N, channels, H, W) float32 tensor.

    The result is a permuted view in channels-last memory order, not a copy: medxp's
    networks run channels-last, so a contiguous NCHW copy would only be undone.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise MedxpError(f"LIME classifier: images of shape {images.shape}; expected (N, H, W, 3) or (N, H, W, 1)")
    if channels == 1:
        images = images.mean(axis=-1, keepdims=True)
    elif images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)


def default_batch_size(height: int, width: int) -> int:
    """Images per forward pass for images of this size: about 0.25 Mpixel, at most 256 images."""
    return int(np.clip(BATCH_PIXEL_BUDGET // max(1, height * width), 1, MAX_BATCH_SIZE))


def predict_probabilities(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                          batch_size: int | None = None) -> np.ndarray:
    """Runs the model in evaluation mode without gradients, `batch_size` images at a time.

    Args:
        model: Takes (N, C, H, W) float32 in [0, 1], returns (N, classes) probabilities.
        images: (N, C, H, W) float32 in [0, 1].
        batch_size: Images per forward pass; None picks one from the image size.

    Returns:
        (N, classes) float64 probabilities.
    """
    batch_size = batch_size or default_batch_size(*images.shape[-2:])
    device = _device_of(model)
    with _evaluation_mode(model):
        outputs = [model(batch.to(device)).float().cpu() for batch in images.split(batch_size)]
    return torch.cat(outputs).numpy().astype(np.float64)


def explain_image(model: Callable[[torch.Tensor], torch.Tensor], image_uint8_chw: Any, *, method: str = "quickshift",
                  num_samples: int = 1000, label: int | None = None, seed: int = 0,
                  batch_size: int | None = None, hide_color: float | None = None,
                  segmentation_params: Mapping[str, Any] | None = None) -> Explanation:
    """Explains the model's probability of one class on one image with LIME.

    Args:
        model: Takes (N, C, H, W) float32 in [0, 1], returns (N, classes) probabilities.
        image_uint8_chw: (C, H, W) uint8 tensor or array, C = 1 or 3, as in
            ``DataModule.datasets[split].images[i]``.
        method: Superpixel segmentation: "quickshift", "slic" or "kmeans".
        num_samples: Perturbed images to score; more gives steadier weights.
        label: Class to explain; the predicted class when None.
        seed: Seeds the perturbations and the segmentation.
        batch_size: Perturbed images per forward pass; None picks one from the image size.
        hide_color: What a switched-off superpixel becomes: None for its own mean
            colour (lime's default), or a grey level in [0, 1] (0 = black).
        segmentation_params: Overrides of the segmentation's parameters
            (see :func:`medxp.explain.segmentation.create_segmenter`).

    Returns:
        The explanation.

    Raises:
        MedxpError: a bad image shape, label, method or parameter.
    """
    started = time.perf_counter()
    image, channels = to_lime_image(image_uint8_chw)
    classifier_fn = make_classifier_fn(model, channels, batch_size)
    probabilities = classifier_fn(image[None])[0]
    label = _checked_label(label, probabilities)
    batch_size = batch_size or default_batch_size(*image.shape[:2])
    if num_samples < 2:
        raise MedxpError(f"explain_image: num_samples = {num_samples}; expected at least 2 perturbations")
    segmenter = create_segmenter(method, max(image.shape[:2]), seed=seed, **dict(segmentation_params or {}))
    explainer = BatchedLimeImageExplainer(random_state=seed)
    lime_explanation = explainer.explain_instance(image, classifier_fn, labels=(label,), top_labels=None,
                                                  hide_color=hide_color, num_samples=num_samples,
                                                  batch_size=batch_size, segmentation_fn=segmenter,
                                                  random_seed=seed)
    weights = _segment_weights(lime_explanation, label)
    if len(weights) < FEW_SEGMENTS:
        log.warning("LIME: segmentation '%s' made only %d superpixels of a %dx%d image; the explanation says "
                    "little (pass segmentation_params for finer regions)", method, len(weights), *image.shape[:2])
    return Explanation(
        image=image, segments=lime_explanation.segments, segment_weights=weights, label=label,
        probability=float(probabilities[label]), probabilities=probabilities,
        heatmap=weights[lime_explanation.segments], overlay=render_overlay(lime_explanation, label, weights),
        method=method, score=float(lime_explanation.score), intercept=float(lime_explanation.intercept[label]),
        num_samples=num_samples, seconds=time.perf_counter() - started)


def to_lime_image(image_uint8_chw: Any) -> tuple[np.ndarray, int]:
    """A (C, H, W) uint8 image -> ((H, W, 3) float32 in [0, 1], C); grey is repeated to RGB.

    float32, not float64: every perturbed image is built from this one, and at 224 px
    moving half the bytes is a measurable part of an explanation.
    """
    pixels = image_uint8_chw.numpy() if isinstance(image_uint8_chw, torch.Tensor) else np.asarray(image_uint8_chw)
    if pixels.ndim != 3 or pixels.shape[0] not in (1, 3):
        raise MedxpError(f"explain_image: image of shape {pixels.shape}; expected (C, H, W) with C = 1 or 3")
    if pixels.dtype != np.uint8:
        raise MedxpError(f"explain_image: image of dtype {pixels.dtype}; expected uint8 pixels (0-255)")
    channels = pixels.shape[0]
    image = pixels.transpose(1, 2, 0).astype(np.float32) / np.float32(255.0)
    return (np.repeat(image, 3, axis=2) if channels == 1 else image), channels


def render_overlay(lime_explanation: ImageExplanation, label: int, weights: np.ndarray) -> np.ndarray:
    """The strongest superpixels tinted on a grey copy of the image, with yellow borders.

    lime's ``get_image_and_mask`` picks the superpixels (+1 supporting, -1 opposing).
    Its own picture sets the red or green channel to the maximum, which on a reddish
    fundus photograph leaves opposing regions looking like the background; tinting a
    grey copy keeps both colours readable. The picture is enlarged by a whole factor
    before ``mark_boundaries`` so the borders stay one thin line on a small image.
    """
    strongest = float(np.abs(weights).max()) if len(weights) else 0.0
    _, mask = lime_explanation.get_image_and_mask(
        label, positive_only=False, negative_only=False, hide_rest=False, num_features=OVERLAY_SEGMENTS,
        min_weight=OVERLAY_MIN_RELATIVE_WEIGHT * strongest)
    grey = np.repeat(lime_explanation.image.mean(axis=2, keepdims=True), 3, axis=2)
    tinted = grey.copy()
    for sign, colour in ((1, SUPPORT_COLOUR), (-1, OPPOSE_COLOUR)):
        tinted[mask == sign] = (1 - OVERLAY_TINT) * grey[mask == sign] + OVERLAY_TINT * np.array(colour)
    factor = max(1, -(-OVERLAY_MIN_SIDE // max(mask.shape)))
    enlarged = np.kron(tinted, np.ones((factor, factor, 1)))
    enlarged_mask = np.kron(mask, np.ones((factor, factor), dtype=mask.dtype))
    return np.clip(mark_boundaries(enlarged, enlarged_mask, color=BOUNDARY_COLOUR), 0.0, 1.0)


def _check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and batch_size <= 0:
        raise MedxpError(f"LIME classifier: batch_size = {batch_size}; expected a positive number of images or None")


def _segment_weights(lime_explanation: ImageExplanation, label: int) -> np.ndarray:
    """The local model's weight of every superpixel, indexed by superpixel number."""
    weights = np.zeros(int(lime_explanation.segments.max()) + 1)
    for segment, weight in lime_explanation.local_exp[label]:
        weights[segment] = weight
    return weights


def _checked_label(label: int | None, probabilities: np.ndarray) -> int:
    """The label to explain: the given one if it is a valid class index, else the predicted class."""
    if label is None:
        return int(np.argmax(probabilities))
    if not 0 <= int(label) < len(probabilities):
        raise MedxpError(f"explain_image: label = {label}; expected a class index in 0..{len(probabilities) - 1}")
    return int(label)


def _device_of(model: Any) -> torch.device:
    """Where the model's weights live (CPU for a model without any)."""
    if isinstance(model, nn.Module):
        for tensor in (*model.parameters(), *model.buffers()):
            return tensor.device
    return torch.device("cpu")


@contextmanager
def _evaluation_mode(model: Any) -> Iterator[None]:
    """No gradients, and a module in eval mode (dropout off), restored to its mode afterwards."""
    was_training = isinstance(model, nn.Module) and model.training
    if was_training:
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training:
            model.train()
