"""Splits where the publisher gives none: stratified, seeded, optionally grouped by patient.

All the splitting is scikit-learn's (`train_test_split`, `StratifiedGroupKFold`,
`StratifiedKFold`); this module only adapts it to medxp's labelled file lists, names
the data in its errors, and hashes the result so runs on the same split can be compared.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from medxp.errors import MedxpError

LabelledFiles = list[tuple[Path, int]]


def carve(labels: Sequence[int], fraction: float, seed: int, groups: Sequence[str] | None = None,
          what: str = "data") -> tuple[np.ndarray, np.ndarray]:
    """Splits indices into (kept, carved) with about `fraction` carved, stratified by label.

    Args:
        labels: One class label per item.
        fraction: Share of the items to carve out, in (0, 1).
        seed: Makes the split repeat.
        groups: One group (patient) id per item; a group never straddles the two parts.
        what: Names the data in errors (a folder).

    Returns:
        Two sorted index arrays.

    Raises:
        MedxpError: too few items (or groups) per class to stratify.
    """
    labels = np.asarray(labels)
    indices = np.arange(len(labels))
    try:
        if groups is None:
            carved_count = round(fraction * len(labels))  # rounded, not ceiled: 0.2 / 0.9 of 360 is 80
            kept, carved = train_test_split(indices, test_size=carved_count, stratify=labels, random_state=seed)
        else:
            kept, carved = _grouped_carve(labels, np.asarray(groups), fraction, seed)
    except ValueError as error:
        counts = dict(zip(*np.unique(labels, return_counts=True)))
        raise MedxpError(f"{what}: cannot carve a stratified {fraction:.0%} split from {len(labels)} images "
                         f"(per label: {counts}); expected more images per class ({error})") from None
    return np.sort(kept), np.sort(carved)


def split_three(labels: Sequence[int], fractions: Sequence[float], seed: int,
                groups: Sequence[str] | None = None, what: str = "data") -> dict[str, np.ndarray]:
    """Stratified train/valid/test indices in the given fractions (they sum to 1)."""
    train_share, valid_share, test_share = fractions
    rest, test = carve(labels, test_share, seed, groups, what)
    sub_groups = None if groups is None else [groups[i] for i in rest]
    train, valid = carve([labels[i] for i in rest], valid_share / (train_share + valid_share), seed, sub_groups, what)
    return {"train": rest[train], "valid": rest[valid], "test": test}


def stratified_folds(labels: Sequence[int], folds: int, seed: int,
                     groups: Sequence[str] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, held-out) index pairs of stratified K-fold cross-validation, grouped when groups are given."""
    labels = np.asarray(labels)
    if groups is None:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(len(labels)), labels))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels, np.asarray(groups)))


def _grouped_carve(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One fold of StratifiedGroupKFold with 1/fraction folds: the carved part keeps whole groups."""
    folds = max(2, round(1 / fraction))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    kept, carved = next(splitter.split(np.zeros(len(labels)), labels, groups))
    return kept, carved


def patient_ids(paths: Sequence[Path], pattern: str, key: str = "data.patient_id_pattern") -> list[str]:
    """The patient id of each file: the pattern's first group in the file name, else the file stem.

    Args:
        paths: Image files.
        pattern: A regular expression searched in the file name, e.g. `^(person\\d+)_` for
            Kermany's `person123_bacteria_456.jpeg`.
        key: The setting the pattern came from, named when it is not a valid expression.
    """
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise MedxpError(f"{key} = {pattern!r}: not a valid regular expression ({error})") from None
    ids = []
    for path in paths:
        match = compiled.search(path.name)
        ids.append(match.group(1) if match and match.groups() else match.group(0) if match else path.stem)
    return ids


def split_hash(items: dict[str, Iterable[str]]) -> str:
    """A short hash of which item went to which split, independent of order: equal for equal splits."""
    lines = sorted(f"{split}\t{item}" for split, names in items.items() for item in names)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def take(files: LabelledFiles, indices: np.ndarray) -> LabelledFiles:
    """The labelled files at the given indices, in index order."""
    return [files[i] for i in indices]
