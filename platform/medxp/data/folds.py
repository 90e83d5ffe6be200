"""Reader for the folds layout of the glaucoma study: `FoldN/{train,valid,test}/<class>/*.jpg`.

The same code reads the real study's folders and the generated demo set. Class
folder names are matched to the spec as in every layout (ignoring case; aliases allowed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from medxp.config import DatasetSpec
from medxp.errors import MedxpError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
LabelledFiles = list[tuple[Path, int]]


def read_folds_layout(root: Path, fold: int, class_names: Sequence[str],
                      spec: DatasetSpec | None = None) -> dict[str, LabelledFiles]:
    """Lists the labelled image files of one fold.

    Args:
        root: The dataset folder holding Fold0, Fold1, ...
        fold: Which fold to read.
        class_names: The spec's classes; label i is class_names[i].
        spec: The full dataset spec (for class aliases); default: one with just `class_names`.

    Returns:
        `{"train": [(path, label), ...], "valid": [...], "test": [...]}`, sorted by class then path.

    Raises:
        MedxpError: a missing fold, split or class folder, an empty class folder, or
            a class folder the spec does not name.
    """
    # Each split of a fold is an ordinary folder of class folders, read like every other layout's.
    from medxp.data.sources import read_class_folders, split_folder

    fold_dir = child_folder(root, f"Fold{fold}")
    if fold_dir is None:
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.lower().startswith("fold"))
        raise MedxpError(f"{root}: fold folder 'Fold{fold}' not found; found: {', '.join(found) or 'no FoldN folders'}")
    spec = spec or DatasetSpec(class_names=tuple(class_names))
    return {split: read_class_folders(split_folder(fold_dir, split), spec) for split in ("train", "valid", "test")}


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def child_folder(folder: Path, name: str) -> Path | None:
    """The sub-folder of `folder` called `name`, ignoring case."""
    return next((child for child in folder.iterdir() if child.is_dir() and child.name.lower() == name.lower()), None)
