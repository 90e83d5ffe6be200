"""The MedMNIST source: any 2D flag and size, read from its npz as published, no image files.

An npz holds `train_images`, `train_labels`, `val_images`, `val_labels`, `test_images`,
`test_labels` (uint8). Images are (N, H, W) grey or (N, H, W, 3) RGB; labels (N, 1) in the
official files, (N,) in some copies. Only labels and array headers are read up front; the
images are decompressed when the decoded-image cache asks for them (once per size and channels).
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from medxp.config import ExperimentConfig
from medxp.data.images import pixels_for_spec
from medxp.data.sources import ARRAY_SOURCES, SourceData, SplitData
from medxp.errors import MedxpError
from medxp.hashing import file_sha256

log = logging.getLogger(__name__)

# medxp split -> npz key prefix.
SPLIT_PREFIXES = {"train": "train", "valid": "val", "test": "test"}
SIZES = (28, 64, 128, 224)


def npz_file_names(flag: str, image_size: int) -> list[str]:
    """The file names MedMNIST publishes a flag under, the one matching `image_size` first."""
    sized = [f"{flag}_{image_size}.npz"] if image_size in SIZES and image_size != 28 else []
    return [*sized, f"{flag}.npz", *(f"{flag}_{size}.npz" for size in SIZES if size != image_size and size != 28)]


def find_npz(root: Path, flag: str, image_size: int) -> Path:
    """`root` itself when it is a file, else the flag's npz inside it."""
    if root.is_file():
        return root
    names = npz_file_names(flag, image_size)
    for name in names:
        if (root / name).is_file():
            return root / name
    raise MedxpError(f"{root}: no MedMNIST file for '{flag}'; expected one of {', '.join(names)} "
                     f"(or data_dir pointing at the .npz itself)")


@ARRAY_SOURCES.register("medmnist")
def read_medmnist(root: Path, config: ExperimentConfig) -> SourceData:
    """Reads the flag `dataset.source_id` (default: the dataset name) from `root` (a folder or the npz)."""
    spec = config.dataset
    path = find_npz(root, spec.source_id or spec.name, spec.image_size)
    shapes = array_shapes(path)
    splits = {split: _read_split(path, prefix, shapes, len(spec.class_names))
              for split, prefix in SPLIT_PREFIXES.items()}
    _check_classes_present(path, splits, spec.class_names)
    fingerprint = file_sha256(path)[:16]  # the data fingerprint of an array file
    status = path.stat()
    return SourceData(splits, fingerprint, f"{fingerprint}-{status.st_size}-{status.st_mtime_ns}")


def array_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shape of every array in an npz, read from the headers without decompressing the data."""
    shapes = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                with archive.open(member) as stream:
                    version = np.lib.format.read_magic(stream)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shapes[member.removesuffix(".npy")] = read_header(stream)[0]
    except (OSError, zipfile.BadZipFile, ValueError) as error:
        raise MedxpError(f"{path}: unreadable npz ({error}); expected a MedMNIST .npz file") from None
    _check_keys(path, shapes)
    return shapes


def _check_keys(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    expected = [f"{prefix}_{kind}" for prefix in SPLIT_PREFIXES.values() for kind in ("images", "labels")]
    missing = [key for key in expected if key not in shapes]
    if missing:
        raise MedxpError(f"{path}: missing arrays {missing}; expected keys {', '.join(expected)} "
                         f"(found: {', '.join(sorted(shapes)) or 'none'})")


def _read_split(path: Path, prefix: str, shapes: dict[str, tuple[int, ...]], class_count: int) -> SplitData:
    image_key, label_key = f"{prefix}_images", f"{prefix}_labels"
    image_shape = shapes[image_key]
    if len(image_shape) not in (3, 4) or (len(image_shape) == 4 and image_shape[3] not in (1, 3)):
        raise MedxpError(f"{path}: '{image_key}' has shape {image_shape}; expected 2D images (N, H, W) or "
                         f"(N, H, W, 3) (3D MedMNIST flags are not supported)")
    labels = _read_labels(path, label_key, class_count)
    if len(labels) != image_shape[0]:
        raise MedxpError(f"{path}: '{image_key}' has {image_shape[0]} images but '{label_key}' has "
                         f"{len(labels)} labels; expected one label per image")
    names = [f"{path.name}:{image_key}[{index}]" for index in range(len(labels))]
    return SplitData(labels, names, _array_decoder(path, image_key))


def _check_classes_present(path: Path, splits: dict[str, SplitData], class_names: tuple[str, ...]) -> None:
    """Warns when classes of dataset.class_names have no image at all: the file may be another flag's."""
    present = set(np.unique(np.concatenate([part.labels for part in splits.values()])).tolist())
    absent = [name for index, name in enumerate(class_names) if index not in present]
    if absent:
        log.warning("%s: no image of %d of the %d classes of dataset.class_names (%s); expected labels 0..%d, "
                    "as MedMNIST's file of this flag holds", path, len(absent), len(class_names),
                    ", ".join(absent), len(class_names) - 1)


def _read_labels(path: Path, key: str, class_count: int) -> np.ndarray:
    with np.load(path) as archive:
        labels = archive[key]
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise MedxpError(f"{path}: '{key}' has shape {labels.shape}; expected one label per image, (N,) or "
                         f"(N, 1) (multi-label flags such as chestmnist are not supported)")
    if len(labels) and (labels.min() < 0 or labels.max() >= class_count):
        raise MedxpError(f"{path}: '{key}' holds labels {int(labels.min())}..{int(labels.max())}; expected "
                         f"0..{class_count - 1} for the {class_count} classes of dataset.class_names")
    return labels.astype(np.int64)


def _array_decoder(path: Path, key: str):
    def decode(image_size: int, channels: int, out: np.ndarray) -> np.ndarray:
        with np.load(path) as archive:
            images = archive[key]
        return convert_images(images, image_size, channels, out)

    return decode


def convert_images(images: np.ndarray, image_size: int, channels: int, out: np.ndarray) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) uint8 -> `out` (N, channels, size, size), converted like decoded files."""
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[1:3] == (image_size, image_size) and images.shape[3] == channels:
        out[:] = images.transpose(0, 3, 1, 2)
        return out
    for index, image in enumerate(images):
        pil = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
        out[index] = pixels_for_spec(pil, image_size, channels)
    return out
