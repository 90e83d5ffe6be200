"""Superpixel segmentations that LIME switches on and off: quickshift, SLIC and k-means.

LIME explains a prediction in terms of image regions ("superpixels"); which regions
exist is decided here. quickshift and SLIC are scikit-image's algorithms wrapped in
lime's own ``SegmentationAlgorithm``, with parameters scaled to the image size so a
64 px and a 224 px image get regions of a similar share of the picture. ``kmeans``
is the variant of the pneumonia study: pixels clustered on (column, row, intensity)
with scikit-learn's KMeans, which gives compact regions that follow bright and dark
structures.

Every segmenter takes an (H, W, 3) float image in [0, 1] and returns an (H, W) int
label image numbered 0..n-1 without gaps: lime counts superpixels with
``np.unique`` and indexes them by number, so a gap (SLIC numbers from 1 by
default) would silently leave a region never switched off.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from lime.wrappers.scikit_image import SegmentationAlgorithm
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from medxp.errors import MedxpError
from medxp.named import Registry

Segmenter = Callable[[np.ndarray], np.ndarray]
SegmenterBuilder = Callable[..., Segmenter]
SEGMENTATIONS: Registry[SegmenterBuilder] = Registry("LIME segmentation")

# The reference size the defaults below were tuned at; other sizes scale from it.
_REFERENCE_SIZE = 64


def create_segmenter(method: str, image_size: int, *, seed: int = 0, **params: Any) -> Segmenter:
    """Builds the registered segmentation `method` for square-ish images of `image_size` pixels.

    Args:
        method: "quickshift", "slic" or "kmeans".
        image_size: Side of the images in pixels; sets the default region size.
        seed: Seed of any random choice the algorithm makes.
        **params: Overrides of the algorithm's parameters (e.g. ``n_segments=80`` for SLIC,
            ``n_clusters=20`` for kmeans, ``kernel_size=3`` for quickshift).

    Returns:
        A function (H, W, 3) float image -> (H, W) int64 labels numbered 0..n-1.

    Raises:
        MedxpError: unknown method (the message lists the valid ones) or a bad parameter.
    """
    if image_size <= 0:
        raise MedxpError(f"LIME segmentation: image_size = {image_size}; expected a positive pixel count")
    segment = SEGMENTATIONS.get(method)(image_size, seed, **params)
    return lambda image: contiguous_labels(segment(image))


def contiguous_labels(labels: np.ndarray) -> np.ndarray:
    """Renumbers a label image to 0..n-1 in order of the original labels, keeping its shape."""
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.int64)


def _lime_algorithm(algorithm: str, **params: Any) -> Segmenter:
    """lime's wrapper around a scikit-image algorithm; a parameter it does not take is an error."""
    try:
        wrapper = SegmentationAlgorithm(algorithm, **params)
        wrapper.set_params(**params)  # lime drops unknown names silently; this makes them an error
    except ValueError as error:
        raise MedxpError(f"LIME segmentation '{algorithm}': {error} for skimage.segmentation.{algorithm}") from None
    return wrapper


@SEGMENTATIONS.register("quickshift")
def quickshift_segmenter(image_size: int, seed: int, **params: Any) -> Segmenter:
    """Quickshift mode seeking in (colour, position) space.

    Defaults: kernel_size grows a little slower than the image (1.5 at 64 px, 3 at
    224 px), max_dist four times the kernel, ratio 0.5 (colour and position weighted
    alike), and a Gaussian pre-smoothing of 2/3 of the kernel: about 30-60 regions
    on a fundus photograph at either size. Without the smoothing, sensor noise
    shatters a noisy image into hundreds of specks.
    """
    scale = image_size / _REFERENCE_SIZE
    kernel_size = max(1.0, 1.5 * scale**0.55)
    defaults = {"kernel_size": kernel_size, "max_dist": 4.0 * kernel_size, "ratio": 0.5,
                "sigma": 2.0 * kernel_size / 3.0, "rng": seed}
    return _lime_algorithm("quickshift", **{**defaults, **params})


@SEGMENTATIONS.register("slic")
def slic_segmenter(image_size: int, seed: int, **params: Any) -> Segmenter:
    """SLIC k-means in (Lab colour, position) space, numbered from 0.

    Defaults: 50 requested regions at 64 px rising to 100 at 224 px (SLIC returns
    somewhat fewer, about 40 and 80), compactness 10 (Lab units), and a Gaussian
    pre-smoothing of 1 px at 64 px (scaled with the image): without it a noisy image
    breaks into specks that the connectivity step merges into a handful of regions.
    SLIC is deterministic, so `seed` is unused.
    """
    n_segments = int(round(50 + 50 * np.clip((image_size - 64) / 160, 0.0, 1.0)))
    defaults = {"n_segments": n_segments, "compactness": 10.0, "sigma": image_size / _REFERENCE_SIZE,
                "start_label": 0}
    return _lime_algorithm("slic", **{**defaults, **params})


@SEGMENTATIONS.register("kmeans")
def kmeans_segmenter(image_size: int, seed: int, *, n_clusters: int = 30, intensity_weight: float = 1.0,
                     n_init: int = 2, max_fit_pixels: int = 8192) -> Segmenter:
    """The pneumonia study's segmentation: KMeans on (column, row, intensity) of every pixel."""
    if n_clusters < 2:
        raise MedxpError(f"LIME segmentation 'kmeans': n_clusters = {n_clusters}; expected at least 2")
    return lambda image: kmeans_segments(image, n_clusters, intensity_weight=intensity_weight, seed=seed,
                                         n_init=n_init, max_fit_pixels=max_fit_pixels)


def kmeans_segments(image: np.ndarray, n_clusters: int, *, intensity_weight: float = 1.0, seed: int = 0,
                    n_init: int = 2, max_fit_pixels: int = 8192) -> np.ndarray:
    """Clusters pixels on (column, row, intensity) and returns the cluster of each pixel.

    Column and row are divided by the image side and intensity (the channel mean) lies
    in [0, 1], so with ``intensity_weight=1`` one image width counts as much as the whole
    grey range. Clusters are compact but need not be connected.

    Args:
        image: (H, W) or (H, W, C) image with values in [0, 1].
        n_clusters: Number of clusters (regions) to make.
        intensity_weight: How much intensity counts against position.
        seed: KMeans's random state.
        n_init: KMeans restarts; the best of them is kept.
        max_fit_pixels: The centres are fitted on a random sample of at most this many
            pixels (all of a 64 px image), then every pixel goes to its nearest centre:
            a 224 px image costs little more than a 90 px one.

    Returns:
        (H, W) int64 label image with values 0..n_clusters-1.

    Raises:
        MedxpError: the image is not 2-D or 3-D, or has fewer pixels than clusters.
    """
    if image.ndim not in (2, 3):
        raise MedxpError(f"kmeans segmentation: image of shape {image.shape}; expected (H, W) or (H, W, C)")
    height, width = image.shape[:2]
    if height * width < n_clusters:
        raise MedxpError(f"kmeans segmentation: {height}x{width} image has fewer pixels than n_clusters={n_clusters}")
    intensity = image.mean(axis=2) if image.ndim == 3 else image
    rows, columns = np.mgrid[0:height, 0:width]
    side = float(max(height, width))
    features = np.stack([columns.ravel() / side, rows.ravel() / side, intensity_weight * intensity.ravel()], axis=1)
    rng = np.random.default_rng(seed)
    sample = features if len(features) <= max_fit_pixels else features[rng.choice(len(features), max_fit_pixels,
                                                                                  replace=False)]
    # One thread: a problem this small gains nothing from OpenMP, and on a busy machine
    # its spinning worker threads made a 64 px image take seconds instead of ~0.1 s.
    with threadpool_limits(limits=1, user_api="openmp"):
        kmeans = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit(sample)
        clusters = kmeans.predict(features)
    return contiguous_labels(clusters.reshape(height, width))
