"""Stratified K-fold over a data module's train + valid pool, the test split fixed.

Two users: the cross-validation flow (`medxp cv`, `cv.source: stratified`), which trains one
run per fold, and a search trial's K-fold objective (`search.cv_folds`), which refits a model
fitted in one call on each fold. Both re-draw train and valid from the same pool with
scikit-learn's StratifiedKFold (grouped by patient when `data.patient_id_pattern` is set,
through `medxp.data.splits.stratified_folds`), seeded by `data.split_seed`; a tabular module
refits its standardisation on each fold's train rows.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from medxp.config import ExperimentConfig
from medxp.data.datamodule import ArrayDataset, DataModule
from medxp.data.splits import patient_ids, split_hash, stratified_folds
from medxp.errors import MedxpError


def pool_folds(base: DataModule, fold_count: int, config: ExperimentConfig,
               key: str = "cv.folds") -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, held-out) indices into the train + valid pool, grouped by patient when a pattern is set.

    Raises:
        MedxpError: too few images (or patients) per class for `fold_count` folds, naming `key`.
    """
    labels = np.concatenate([base.datasets[split].labels.numpy() for split in ("train", "valid")])
    pool_files = base.files.get("train", []) + base.files.get("valid", [])
    pattern = config.data.patient_id_pattern
    groups = patient_ids([path for path, _ in pool_files], pattern) if pattern and pool_files else None
    try:
        return stratified_folds(labels, fold_count, config.data.split_seed, groups)
    except ValueError as error:
        counts = dict(zip(*np.unique(labels, return_counts=True)))
        raise MedxpError(f"'{key}' = {fold_count}: cannot split the {len(labels)} train + valid items of "
                         f"{base.root} (per label: {counts}) into stratified folds; expected at least "
                         f"{fold_count} items (or patients) per class ({error})") from None


def fold_datamodule(base: DataModule, train: np.ndarray, held_out: np.ndarray) -> DataModule:
    """`base` with train and valid re-drawn from their pool: `train` trains, `held_out` validates.

    Args:
        base: The data module as the source split it (its test split is kept).
        train: Indices into the pool (base train rows, then base valid rows).
        held_out: Indices into the pool; the fold's validation split.
    """
    pool_images = torch.cat([base.datasets["train"].images, base.datasets["valid"].images])
    pool_labels = torch.cat([base.datasets["train"].labels, base.datasets["valid"].labels]).numpy()
    pool_files = base.files.get("train", []) + base.files.get("valid", [])
    # A tabular module refits its standardisation on the fold's train rows.
    train_transform, valid_transform, extra = base.fold_transforms(pool_images[train].numpy())
    datasets = {
        "train": ArrayDataset(pool_images[train].numpy(), pool_labels[train], train_transform),
        "valid": ArrayDataset(pool_images[held_out].numpy(), pool_labels[held_out], valid_transform),
        "test": base.datasets["test"],
    }
    names = _item_names(base, pool_files, len(pool_labels))
    # Array sources (MedMNIST) list no files: their splits keep the (empty) lists they have.
    files = ({**base.files, "train": [pool_files[i] for i in train], "valid": [pool_files[i] for i in held_out]}
             if pool_files else base.files)
    hashed = split_hash({"train": [names[i] for i in train], "valid": [names[i] for i in held_out],
                         "test": _item_names(base, base.files.get("test", []), len(datasets["test"]), "test")})
    return dataclasses.replace(base, datasets=datasets, files=files, split_hash=hashed, **extra)


def _item_names(base: DataModule, files: list, count: int, prefix: str = "pool") -> list[str]:
    """Stable names of items for the split hash: paths relative to the data root, else row numbers."""
    if files:
        return [path.relative_to(base.root).as_posix() if path.is_relative_to(base.root) else str(path)
                for path, _ in files]
    return [f"{prefix}{i}" for i in range(count)]
