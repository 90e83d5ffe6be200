"""Decoding image files into one uint8 array, once per run.

Every epoch then reads decoded pixels from memory instead of decoding JPEGs again.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from medxp.console import progress_bars_wanted
from medxp.errors import MedxpError


def decode_image(path: Path, image_size: int, channels: int) -> np.ndarray:
    """One image as a (channels, size, size) uint8 array; grey and RGB are converted to `channels`."""
    try:
        with Image.open(path) as image:
            return pixels_for_spec(image, image_size, channels)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise MedxpError(f"{path}: unreadable image ({error}); expected a readable JPEG/PNG file") from None


def pixels_for_spec(image: Image.Image, image_size: int, channels: int) -> np.ndarray:
    """A PIL image converted to `channels` (1: grey, 3: RGB), resized, as (channels, size, size) uint8."""
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def decode_images(paths: Sequence[Path], image_size: int, channels: int, desc: str = "decoding",
                  out: np.ndarray | None = None) -> np.ndarray:
    """All images as one (N, channels, size, size) uint8 array, decoded on a small thread pool.

    Args:
        paths: The image files, in the order of the rows.
        image_size: Side of the square output.
        channels: 1 (grey) or 3 (RGB).
        desc: Progress bar label.
        out: Where to write (a memory-mapped cache file); default: a new array.
    """
    if out is None:
        out = np.empty((len(paths), channels, image_size, image_size), dtype=np.uint8)

    def work(index: int) -> None:
        out[index] = decode_image(paths[index], image_size, channels)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for _ in tqdm(pool.map(work, range(len(paths))), total=len(paths), desc=desc, leave=False,
                      disable=len(paths) < 500 or not progress_bars_wanted()):
            pass
    return out


def fingerprint_files(paths: Sequence[Path], root: Path) -> str:
    """A short hash of the relative file list and file sizes: equal for the same data on disk."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(f"{path.relative_to(root).as_posix()}\t{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]
