"""Inspecting every image once for the dataset audit: content hash, perceptual hash, size, mode, decode errors.

Files are read once: the bytes give the content hash (sha1), then the same bytes are
decoded in full so that a truncated file is caught, and the decoded picture gives the
perceptual hash (the DCT pHash of the `imagehash` package, 16 x 16 = 256 bits: the
usual 8 x 8 = 64 bits cannot tell apart distinct pictures of one acquisition type, such
as fundus photographs that share the round field of view). Array sources
(MedMNIST npz) are hashed from their rows the same way. Work runs on a small thread
pool: Pillow releases the GIL while it decodes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import imagehash
import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError
from tqdm.auto import tqdm

from medxp.console import progress_bars_wanted
from medxp.errors import MedxpError

# The pHash is HASH_SIZE x HASH_SIZE bits.
HASH_SIZE = 16
HASH_BYTES = HASH_SIZE * HASH_SIZE // 8
# Larger pictures are shrunk by an integer factor to at least this side before hashing.
_HASH_WORKING_SIZE = 256
# Below this many images a progress bar is noise.
PROGRESS_THRESHOLD = 300
# Pillow modes whose pixels do not fit in 8 bits (16-bit PNG/TIFF scans are common in medicine).
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class ImageRecord:
    """What the audit learnt about one image of one split.

    Attributes:
        split: The split the image belongs to (`train`, `valid`, `test`, ...).
        index: Its position in that split's list (or array rows).
        label: Its class index.
        source: The file path, or `split[index]` for an array row.
        sha1: Hex digest of the file bytes (or the array row bytes); "" when unreadable.
        phash: The perceptual hash (HASH_BYTES bytes); None when the image could not be decoded.
        width: Width in pixels (0 when unknown).
        height: Height in pixels (0 when unknown).
        mode: The Pillow mode (`L`, `RGB`, `RGBA`, `I;16`, ...) or "" when unknown.
        problem: "" for a good image, else `unreadable`, `truncated` or `undecodable`.
        error: The decoder's message when there is a problem.
    """

    split: str
    index: int
    label: int
    source: str
    sha1: str = ""
    phash: bytes | None = None
    width: int = 0
    height: int = 0
    mode: str = ""
    problem: str = ""
    error: str = ""

    @property
    def readable(self) -> bool:
        """True when the image decoded in full."""
        return not self.problem


def perceptual_hash(image: Image.Image) -> bytes:
    """The 256-bit DCT perceptual hash (imagehash.phash, hash_size 16) of a picture, as bytes."""
    image = _stretch_to_8_bits(image) if image.mode in _WIDE_MODES else image.convert("L")
    factor = min(image.size) // _HASH_WORKING_SIZE
    if factor >= 2:
        # A box-average shrink first: Lanczos from megapixels down to 64 x 64 costs ten times the decode.
        image = image.reduce(factor)
    bits = imagehash.phash(image, hash_size=HASH_SIZE).hash.ravel()
    return np.packbits(bits).tobytes()


def scan_files(files: Mapping[str, Sequence[tuple[Path, int]]], workers: int = 0) -> list[ImageRecord]:
    """Inspects every labelled file of every split.

    Args:
        files: `{"train": [(path, label), ...], ...}` as the layouts return them.
        workers: Threads decoding in parallel; 0 picks from the CPU count.

    Returns:
        One record per file, in split order then list order.
    """
    jobs = [(split, index, Path(path), int(label))
            for split, labelled in files.items() for index, (path, label) in enumerate(labelled)]
    with _strict_decoding():
        return _run_parallel(lambda job: inspect_file(*job), jobs, workers, "auditing files")


def scan_arrays(arrays: Mapping[str, tuple[np.ndarray, np.ndarray]], workers: int = 0) -> list[ImageRecord]:
    """Inspects every row of decoded (N, C, H, W) uint8 arrays, split by split.

    Args:
        arrays: `{"train": (images, labels), ...}`; labels shaped (N,) or (N, 1).
        workers: Threads hashing in parallel; 0 picks from the CPU count.

    Returns:
        One record per row, in split order then row order.

    Raises:
        MedxpError: images that are not uint8 (N, C, H, W) with C of 1 or 3, or labels of another length.
    """
    checked = {split: check_arrays(split, images, labels) for split, (images, labels) in arrays.items()}
    jobs = [(split, index, images, labels) for split, (images, labels) in checked.items()
            for index in range(len(labels))]
    return _run_parallel(lambda job: inspect_array_row(*job), jobs, workers, "auditing arrays")


def check_arrays(split: str, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validates one split's arrays; returns them with labels flattened to (N,)."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise MedxpError(f"arrays['{split}']: images have dtype {images.dtype} and shape {images.shape}; "
                         f"expected uint8 (N, C, H, W) with C = 1 or 3")
    labels = labels.reshape(len(labels), -1)[:, 0] if labels.ndim > 1 else labels
    if len(labels) != len(images):
        raise MedxpError(f"arrays['{split}']: {len(images)} images but {len(labels)} labels; expected one label "
                         f"per image")
    return images, labels


def inspect_file(split: str, index: int, path: Path, label: int) -> ImageRecord:
    """Hashes and fully decodes one file; a failure becomes the record's problem, never an exception."""
    base = ImageRecord(split, index, label, str(path))
    try:
        data = path.read_bytes()
    except OSError as error:
        return _with_problem(base, "unreadable", error.strerror or str(error))
    base = replace(base, sha1=hashlib.sha1(data).hexdigest())
    try:
        image = Image.open(io.BytesIO(data))
    except _DECODE_ERRORS as error:
        return _with_problem(base, "unreadable", str(error))
    base = replace(base, width=image.width, height=image.height, mode=image.mode)
    try:
        image.load()
    except _DECODE_ERRORS as error:
        kind = "truncated" if "truncat" in str(error).lower() else "undecodable"
        return _with_problem(base, kind, str(error))
    return replace(base, phash=perceptual_hash(image))


def inspect_array_row(split: str, index: int, images: np.ndarray, labels: np.ndarray) -> ImageRecord:
    """Hashes one (C, H, W) uint8 row of a split's images."""
    pixels = np.ascontiguousarray(images[index])
    image = array_to_image(pixels)
    return ImageRecord(split, index, int(labels[index]), f"{split}[{index}]", sha1=hashlib.sha1(pixels).hexdigest(),
                       phash=perceptual_hash(image), width=image.width, height=image.height, mode=image.mode)


def array_to_image(pixels: np.ndarray) -> Image.Image:
    """A (C, H, W) uint8 array with C of 1 or 3 as a Pillow image (`L` or `RGB`)."""
    return Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))


@contextlib.contextmanager
def _strict_decoding() -> Iterator[None]:
    """Makes Pillow raise on truncated files while the audit runs, whatever the process had set."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _run_parallel(work: Callable, jobs: list, workers: int, desc: str) -> list[ImageRecord]:
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(work, jobs)
        return list(tqdm(results, total=len(jobs), desc=desc, leave=False, disable=len(jobs) < PROGRESS_THRESHOLD or not progress_bars_wanted()))


def _stretch_to_8_bits(image: Image.Image) -> Image.Image:
    """A wide-range grey image rescaled to 0..255 by its own minimum and maximum."""
    pixels = np.asarray(image, dtype=np.float64)
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
    return Image.fromarray(scaled.astype(np.uint8))


def _with_problem(record: ImageRecord, problem: str, error: str) -> ImageRecord:
    return replace(record, problem=problem, error=error)
