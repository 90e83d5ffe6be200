"""Data sources: each reads one publisher's layout as it ships and says which image goes to which split.

Three string-keyed registries, all selected by `dataset.layout`. They are created in medxp.choices,
which declares the names medxp registers, so config validation knows them without importing this module:

- `LAYOUTS`: folder layouts; `(root, config) -> {"train": [(path, label), ...], "valid": ..., "test": ...}`.
- `ARRAY_SOURCES`: sources whose pixels are already arrays (MedMNIST npz); `(root, config) -> SourceData`.
- `TABLE_LAYOUTS`: a `TableLayout`, where a tabular data set's one file lies and its name (`csv`,
  medxp.data.tabular).

`read_source` turns either into a `SourceData`: per split the labels, stable item names
(for the split hash) and a `decode` function that the decoded-image cache calls at most
once per (data, size, channels). Class folders are matched to the spec's class names
ignoring case, spaces and hyphens, through `dataset.class_aliases` where the names differ.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from medxp import choices
from medxp.config import DatasetSpec, ExperimentConfig
from medxp.data.folds import IMAGE_SUFFIXES, LabelledFiles, child_folder, list_images, read_folds_layout
from medxp.data.images import decode_images, fingerprint_files
from medxp.data.splits import carve, patient_ids, split_hash, split_three, take
from medxp.errors import MedxpError
from medxp.named import Registry

SPLITS = ("train", "valid", "test")
SPLIT_FOLDER_NAMES = {"train": ("train", "training"), "valid": ("val", "valid", "validation"),
                      "test": ("test", "testing")}

# decode(image_size, channels, out) fills `out` (N, channels, size, size) uint8 and returns it.
Decoder = Callable[[int, int, np.ndarray], np.ndarray]


@dataclass
class SplitData:
    """One split as a source found it: labels, item names in row order, and how to decode the pixels."""

    labels: np.ndarray
    item_names: list[str]
    decode: Decoder
    files: LabelledFiles = field(default_factory=list)


@dataclass
class SourceData:
    """Every split of a data set, the data fingerprint, and a key that changes when the files do."""

    splits: dict[str, SplitData]
    fingerprint: str
    change_key: str

    @property
    def split_hash(self) -> str:
        """Hash of which item went to which split (order-independent)."""
        return split_hash({name: part.item_names for name, part in self.splits.items()})


@dataclass(frozen=True)
class TableLayout:
    """Where a tabular data set's one file lies.

    Attributes:
        find: `(root, spec) -> Path`: the file under `root` (or `root` itself when it is the file).
        file_name: `spec -> name` of the file, for someone who puts it there by hand.
    """

    find: Callable[[Path, DatasetSpec], Path]
    file_name: Callable[[DatasetSpec], str]


LAYOUTS: Registry[Callable[[Path, ExperimentConfig], dict[str, LabelledFiles]]] = choices.LAYOUTS
ARRAY_SOURCES: Registry[Callable[[Path, ExperimentConfig], SourceData]] = choices.ARRAY_SOURCES
TABLE_LAYOUTS: Registry[TableLayout] = choices.TABLE_LAYOUTS


def read_source(root: Path, config: ExperimentConfig) -> SourceData:
    """Reads `root` with the source `dataset.layout` names; folder layouts are decoded from their files."""
    layout = config.dataset.layout
    if layout in ARRAY_SOURCES:
        return ARRAY_SOURCES.get(layout)(root, config)
    return files_source(root, LAYOUTS.get(layout)(root, config))


def files_source(root: Path, files: Mapping[str, LabelledFiles]) -> SourceData:
    """A SourceData over labelled image files; decoding reads and resizes each file."""
    splits = {}
    for split, labelled in files.items():
        paths = [path for path, _ in labelled]
        splits[split] = SplitData(
            labels=np.array([label for _, label in labelled], dtype=np.int64),
            item_names=[path.relative_to(root).as_posix() for path in paths],
            decode=_file_decoder(paths, f"decoding {split}"),
            files=list(labelled),
        )
    every_file = [path for labelled in files.values() for path, _ in labelled]
    return SourceData(splits, fingerprint_files(every_file, root), change_key(every_file, root))


def change_key(paths: Sequence[Path], root: Path) -> str:
    """Hash of relative path, size and modification time of every file: any edit changes it."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        status = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}\t{status.st_size}\t{status.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _file_decoder(paths: list[Path], desc: str) -> Decoder:
    def decode(image_size: int, channels: int, out: np.ndarray) -> np.ndarray:
        return decode_images(paths, image_size, channels, desc=desc, out=out)

    return decode


# ----------------------------------------------------------------------------- class folders


def normalise_name(name: str) -> str:
    """`Viral Pneumonia` -> `viral_pneumonia`: folder and class names compare in this form."""
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def class_folders(folder: Path, spec: DatasetSpec) -> dict[int, Path]:
    """Maps each class label to its sub-folder of `folder`.

    Raises:
        MedxpError: a folder that is no class of the spec, two folders for one class, or a class without one.
    """
    labels = _label_lookup(spec)
    found: dict[int, Path] = {}
    for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))):
        label = labels.get(normalise_name(child.name))
        if label is None:
            raise MedxpError(f"{child}: folder '{child.name}' is not a class of the spec; expected class folders "
                             f"named {list(spec.class_names)} (or a name mapped in dataset.class_aliases)")
        if label in found:
            raise MedxpError(f"{folder}: folders '{found[label].name}' and '{child.name}' both map to class "
                             f"'{spec.class_names[label]}'; expected one folder per class")
        found[label] = child
    missing = [name for label, name in enumerate(spec.class_names) if label not in found]
    if missing:
        raise MedxpError(f"{folder}: class folder(s) {missing} not found; expected one folder per class of "
                         f"{list(spec.class_names)}, found {sorted(p.name for p in found.values())}")
    return found


def _label_lookup(spec: DatasetSpec) -> dict[str, int]:
    labels = {normalise_name(name): label for label, name in enumerate(spec.class_names)}
    for alias, class_name in spec.class_aliases.items():
        if normalise_name(class_name) not in labels:
            raise MedxpError(f"dataset.class_aliases: '{alias}' maps to '{class_name}', which is not one of "
                             f"dataset.class_names {list(spec.class_names)}")
        labels[normalise_name(alias)] = labels[normalise_name(class_name)]
    return labels


def read_class_folders(folder: Path, spec: DatasetSpec, images_subfolder: str = "") -> LabelledFiles:
    """Every image of every class under `folder`, sorted by class then path.

    Args:
        folder: Holds one sub-folder per class.
        spec: The class names (label i is `spec.class_names[i]`) and aliases.
        images_subfolder: Read `<class>/<images_subfolder>/` where it exists (beside it, e.g.
            `masks/`, is ignored), else the class folder itself.
    """
    files: LabelledFiles = []
    for label, class_dir in sorted(class_folders(folder, spec).items()):
        image_dir = child_folder(class_dir, images_subfolder) if images_subfolder else None
        images = list_images(image_dir or class_dir)
        if not images:
            raise MedxpError(f"{image_dir or class_dir}: class folder has no images; expected files ending in "
                             f"{', '.join(sorted(IMAGE_SUFFIXES))}")
        files.extend((path, label) for path in images)
    return files


def split_folder(root: Path, split: str, required: bool = True) -> Path | None:
    """The folder of one split under `root` (`val`, `valid`, `validation` for valid; any case)."""
    for name in SPLIT_FOLDER_NAMES[split]:
        if found := child_folder(root, name):
            return found
    if required:
        found_names = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise MedxpError(f"{root}: split folder '{' or '.join(SPLIT_FOLDER_NAMES[split])}' not found; "
                         f"found: {', '.join(found_names) or 'no folders'}")
    return None


# ----------------------------------------------------------------------------- the layouts


@LAYOUTS.register("folds")
def read_folds(root: Path, config: ExperimentConfig) -> dict[str, LabelledFiles]:
    """`FoldN/{train,valid,test}/<class>`: the glaucoma study's ten given splits."""
    return read_folds_layout(root, config.data.fold, config.dataset.class_names, config.dataset)


@LAYOUTS.register("image_folder_splits")
def read_image_folder_splits(root: Path, config: ExperimentConfig) -> dict[str, LabelledFiles]:
    """`{train,val,test}/<class>` (Kermany's chest X-rays): given splits.

    With `data.val_fraction > 0` the validation split is re-drawn from train + the given val
    (stratified, grouped by `data.patient_id_pattern` when set); with 0 the given val is used.
    """
    spec, data = config.dataset, config.data
    train = read_class_folders(split_folder(root, "train"), spec)
    test = read_class_folders(split_folder(root, "test"), spec)
    valid_dir = split_folder(root, "valid", required=data.val_fraction == 0)
    given_valid = read_class_folders(valid_dir, spec) if valid_dir else []
    if data.val_fraction == 0:
        return {"train": train, "valid": given_valid, "test": test}
    train, valid = carve_validation(train + given_valid, config, root)
    return {"train": train, "valid": valid, "test": test}


@LAYOUTS.register("class_folders")
def read_class_folders_layout(root: Path, config: ExperimentConfig) -> dict[str, LabelledFiles]:
    """`<Class>/images/*.png` (masks beside ignored) or `<Class>/*.png`: no given split.

    Split stratified into `data.split_fractions` (train/valid/test) with `data.split_seed`.
    """
    files = read_class_folders(root, config.dataset, images_subfolder="images")
    groups = _groups(files, config)
    labels = [label for _, label in files]
    parts = split_three(labels, config.data.split_fractions, config.data.split_seed, groups, what=str(root))
    return {split: take(files, indices) for split, indices in parts.items()}


@LAYOUTS.register("training_testing")
def read_training_testing(root: Path, config: ExperimentConfig) -> dict[str, LabelledFiles]:
    """`Training/<class>`, `Testing/<class>` (brain tumour MRI): given test, valid carved from training."""
    if config.data.val_fraction == 0:
        raise MedxpError(f"{root}: the training_testing layout has no validation split; expected "
                         f"data.val_fraction > 0 (the share of Training/ used for validation)")
    train = read_class_folders(split_folder(root, "train"), config.dataset)
    test = read_class_folders(split_folder(root, "test"), config.dataset)
    train, valid = carve_validation(train, config, root)
    return {"train": train, "valid": valid, "test": test}


def carve_validation(files: LabelledFiles, config: ExperimentConfig, root: Path) -> tuple[LabelledFiles, LabelledFiles]:
    """(train, valid): `data.val_fraction` of `files`, stratified, grouped by patient when a pattern is set."""
    labels = [label for _, label in files]
    kept, carved = carve(labels, config.data.val_fraction, config.data.split_seed, _groups(files, config),
                         what=str(root))
    return take(files, kept), take(files, carved)


def _groups(files: LabelledFiles, config: ExperimentConfig) -> list[str] | None:
    pattern = config.data.patient_id_pattern
    return patient_ids([path for path, _ in files], pattern) if pattern else None
