"""The decoded-image cache: decode and resize once, then memory-map for every trial on the machine.

Each split's pixels are one uint8 `.npy` file (N, channels, size, size) under
`data.cache_dir`, else `$MEDXP_CACHE_DIR`, else `~/.cache/medxp`. The file name carries a
key of the data fingerprint, a hash of every file's size and modification time, the image
size, the channels and the split's item list, so changed files, another size or another
split get a new file and a stale one is never read.

Writers decode into a temporary file and rename it into place (atomic on one file
system), under an exclusive lock so that trials starting together decode only once; a
reader sees either no file or a complete one. Readers map the file copy-on-write: the
file is opened read-only and its pages are shared between processes through the page
cache, and an in-place write by a careless transform changes a private copy, never the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import uuid
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from medxp.config import ExperimentConfig
from medxp.data.sources import SourceData
from medxp.errors import MedxpError

log = logging.getLogger(__name__)

CACHE_DIR_ENV = "MEDXP_CACHE_DIR"
CACHE_VERSION = 1  # bump when the decoding itself changes (resampling, colour conversion)


def cache_dir(config: ExperimentConfig) -> Path:
    """`data.cache_dir`, else `$MEDXP_CACHE_DIR`, else `~/.cache/medxp`."""
    chosen = config.data.cache_dir or os.environ.get(CACHE_DIR_ENV) or "~/.cache/medxp"
    return Path(chosen).expanduser()


def split_images(source: SourceData, split: str, config: ExperimentConfig) -> np.ndarray:
    """One split's decoded images (N, channels, size, size) uint8: from the cache, or decoded now.

    With `data.cache: false` the images are decoded into memory every time.
    """
    spec, part = config.dataset, source.splits[split]
    shape = (len(part.labels), spec.channels, spec.image_size, spec.image_size)

    def fill(out: np.ndarray) -> np.ndarray:
        return part.decode(spec.image_size, spec.channels, out)

    if not config.data.cache or shape[0] == 0:
        return fill(np.empty(shape, dtype=np.uint8))
    return cached_array(cache_file(source, split, config), shape, fill)


def cache_file(source: SourceData, split: str, config: ExperimentConfig) -> Path:
    """Where one split's decoded images live; the name changes whenever their content would."""
    spec = config.dataset
    digest = hashlib.sha256()
    for part in (CACHE_VERSION, source.fingerprint, source.change_key, source.split_hash, split,
                 spec.image_size, spec.channels):
        digest.update(f"{part}\n".encode())
    digest.update("\n".join(source.splits[split].item_names).encode())  # row order
    name = f"{split}-{spec.image_size}px-{spec.channels}ch-{digest.hexdigest()[:20]}.npy"
    return cache_dir(config) / (spec.name or "data") / name


def cached_array(path: Path, shape: tuple[int, ...], fill: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The array in `path`, written first by `fill(out)` when absent; memory-mapped copy-on-write.

    Raises:
        MedxpError: the cache folder cannot be written.
    """
    cached = _open(path, shape)
    if cached is not None:
        log.info("decoded-image cache hit: %s", path)
        return cached
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(path.parent / ".lock"):
            cached = _open(path, shape)  # another process may have written it while we waited
            if cached is None:
                log.info("decoding into the cache: %s", path)
                _write_atomically(path, shape, fill)
                cached = _open(path, shape)
    except PermissionError as error:
        raise MedxpError(f"{path.parent}: cannot write the decoded-image cache ({error.strerror}); expected a "
                         f"writable folder: set data.cache_dir or ${CACHE_DIR_ENV}, or data.cache=false") from None
    return cached


def _open(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The mapped array, or None when the file is absent or not what the key promised."""
    if not path.is_file():
        return None
    try:
        array = np.load(path, mmap_mode="c")
    except (OSError, ValueError) as error:
        log.warning("ignoring unreadable cache file %s (%s); decoding again", path, error)
        return None
    if array.shape != shape or array.dtype != np.uint8:
        log.warning("ignoring cache file %s: shape %s, expected %s; decoding again", path, array.shape, shape)
        return None
    return array


def _write_atomically(path: Path, shape: tuple[int, ...], fill: Callable[[np.ndarray], np.ndarray]) -> None:
    """Decodes into a temporary file beside `path`, then renames it into place."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        out = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=shape)
        fill(out)
        out.flush()
        del out
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    """An advisory lock across processes (POSIX); elsewhere the atomic rename alone keeps readers safe."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
