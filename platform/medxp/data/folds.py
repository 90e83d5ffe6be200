"""Reader for the folds layout of the glaucoma study: `FoldN/{train,valid,test}/<class>/*.jpg`.

The same code reads the real study's folders and the generated demo set. Class
folder names are matched to the spec case-insensitively.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from medxp.errors import MedxpError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
SPLIT_FOLDERS = {"train": ("train",), "valid": ("valid", "val", "validation"), "test": ("test",)}

LabelledFiles = list[tuple[Path, int]]


def read_folds_layout(root: Path, fold: int, class_names: Sequence[str]) -> dict[str, LabelledFiles]:
    """Lists the labelled image files of one fold.

    Args:
        root: The dataset folder holding Fold0, Fold1, ...
        fold: Which fold to read.
        class_names: The spec's classes; label i is class_names[i].

    Returns:
        `{"train": [(path, label), ...], "valid": [...], "test": [...]}`, sorted by path.

    Raises:
        MedxpError: a missing fold, split or class folder, an empty class folder, or
            a class folder the spec does not name.
    """
    fold_dir = _child_ci(root, f"Fold{fold}")
    if fold_dir is None:
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.lower().startswith("fold"))
        raise MedxpError(f"{root}: fold folder 'Fold{fold}' not found; found: {', '.join(found) or 'no FoldN folders'}")
    return {split: _read_split(fold_dir, split, class_names) for split in SPLIT_FOLDERS}


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_split(fold_dir: Path, split: str, class_names: Sequence[str]) -> LabelledFiles:
    split_dir = next((d for name in SPLIT_FOLDERS[split] if (d := _child_ci(fold_dir, name))), None)
    if split_dir is None:
        expected = " or ".join(SPLIT_FOLDERS[split])
        raise MedxpError(f"{fold_dir}: split folder '{expected}' not found")
    folders = {p.name.lower(): p for p in split_dir.iterdir() if p.is_dir()}
    wanted = {name.lower() for name in class_names}
    if set(folders) != wanted:
        raise MedxpError(
            f"{split_dir}: class folders {sorted(folders)} do not match the spec's class names "
            f"{list(class_names)} (missing: {sorted(wanted - set(folders))}, unexpected: {sorted(set(folders) - wanted)})"
        )
    files: LabelledFiles = []
    for label, name in enumerate(class_names):
        images = list_images(folders[name.lower()])
        if not images:
            raise MedxpError(f"{folders[name.lower()]}: class folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files.extend((path, label) for path in images)
    return files


def _child_ci(folder: Path, name: str) -> Path | None:
    """The sub-folder of `folder` called `name`, ignoring case."""
    for child in folder.iterdir():
        if child.is_dir() and child.name.lower() == name.lower():
            return child
    return None
