"""The tabular (CSV) source: numeric feature columns and a target column, split stratified and standardised.

The `tabular` modality (`dataset.modality`, layout `csv`), e.g. the fetal-health study.
The CSV is read as published: `dataset.feature_columns` must all be numeric, the
target column (`dataset.target_column`) holds either the class names or the numbers in
`dataset.class_values` (fetal_health: 1, 2, 3). Rows are split stratified by label in
`data.split_fractions` (train, valid, test) with `data.split_seed`. Without the CSV,
`dataset.demo` (fetal_health: `ctg`, medxp.data.synthetic_tabular) generates demo data
the usual way (medxp.data.datamodule.ensure_data), and the data module says it is synthetic.

The datasets hold the raw float32 features (N, F); standardisation (mean and std fitted
on the train split only) is their transform, the way images keep uint8 pixels and
normalise per sample. The fitted statistics travel with the data module, so the logged
model can take raw features.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from typing import ClassVar
from pathlib import Path

import numpy as np
import torch

from medxp.config import DatasetSpec, ExperimentConfig
from medxp.data.datamodule import MODALITIES, ArrayDataset, DataModule, Modality, PriorAudit, ensure_data
from medxp.data.sources import TABLE_LAYOUTS, TableLayout
from medxp.data.splits import split_hash, split_three
from medxp.data.synthetic import is_generated
from medxp.errors import MedxpError
from medxp.hashing import file_sha256

log = logging.getLogger(__name__)


@dataclass
class Table:
    """A CSV's features (N, F) float32 and class labels (N,) int64, in file order."""

    features: np.ndarray
    labels: np.ndarray
    path: Path


class Standardize:
    """Per-feature `(x - mean) / std` on float32 tensors; a constant feature keeps std 1."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self.std = torch.as_tensor(np.where(std > 0, std, 1.0), dtype=torch.float32)

    @classmethod
    def fit(cls, features: np.ndarray) -> "Standardize":
        """Statistics of the given rows (the train split)."""
        return cls(features.mean(axis=0), features.std(axis=0))

    def __call__(self, row: torch.Tensor) -> torch.Tensor:
        return (row - self.mean) / self.std


@dataclass
class TabularDataModule(DataModule):
    """A DataModule over feature rows, with the standardisation fitted on its train split.

    `feature_mean` and `feature_std` are what an inference model applies to raw features.
    """

    explainable: ClassVar[bool] = False  # LIME here explains images, not feature rows

    feature_columns: tuple[str, ...] = ()
    feature_mean: tuple[float, ...] = ()
    feature_std: tuple[float, ...] = ()

    def input_statistics(self, spec: DatasetSpec) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per feature, fitted on the train split: a logged model takes raw features."""
        return self.feature_mean, self.feature_std

    def fold_transforms(self, train_rows: np.ndarray) -> tuple[Standardize, Standardize, dict]:
        """The standardisation refitted on a fold's train rows, so no statistic comes from the rows it
        validates on; with the fields (`feature_mean`, `feature_std`) the fold's module replaces."""
        standardize = Standardize.fit(train_rows)
        return standardize, standardize, {"feature_mean": tuple(standardize.mean.tolist()),
                                          "feature_std": tuple(standardize.std.tolist())}


def csv_file_name(spec: DatasetSpec) -> str:
    """`<dataset name>.csv`: the file the csv layout looks for first (not source_id: that is the Kaggle slug)."""
    return f"{spec.name}.csv"


def find_csv(root: Path, spec: DatasetSpec) -> Path:
    """`root` itself when it is a file, else `<dataset name>.csv` (or the only CSV) inside it.

    Raises:
        MedxpError: no such file or folder, or no single CSV to choose.
    """
    if root.is_file():
        return root
    if not root.is_dir():
        raise MedxpError(f"{root}: CSV file or folder not found; expected the CSV of dataset '{spec.name}' "
                         f"(see projects/{spec.name}/README.md) or data_dir= pointing at it")
    named = root / csv_file_name(spec)
    if named.is_file():
        return named
    found = sorted(root.glob("*.csv"))
    if len(found) == 1:
        return found[0]
    raise MedxpError(f"{root}: expected {named.name} or a single .csv file; found {[p.name for p in found] or 'none'}")


TABLE_LAYOUTS.register("csv")(TableLayout(find_csv, csv_file_name))


def read_table(path: Path, spec: DatasetSpec) -> Table:
    """Reads the spec's feature and target columns of a CSV.

    Raises:
        MedxpError: a missing column, a non-numeric feature value, or a target value that is
            no class (each message names the file, the column and the row).
    """
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in (spec.target_column, *spec.feature_columns) if c not in columns]
        if missing:
            raise MedxpError(f"{path}: column(s) {missing} not found; expected the target column "
                             f"'{spec.target_column}' and the feature columns of dataset.feature_columns "
                             f"(the file has: {columns})")
        rows = list(reader)
    if not rows:
        raise MedxpError(f"{path}: no data rows; expected one row per case")
    features = np.empty((len(rows), len(spec.feature_columns)), dtype=np.float32)
    for index, column in enumerate(spec.feature_columns):
        features[:, index] = [_number(row[column], path, column, line) for line, row in enumerate(rows, start=2)]
    lookup = _label_lookup(spec)
    labels = np.array([_label(row[spec.target_column], lookup, path, spec, line)
                       for line, row in enumerate(rows, start=2)], dtype=np.int64)
    return Table(features, labels, path)


def create_tabular_datamodule(config: ExperimentConfig) -> TabularDataModule:
    """Reads the CSV, splits it stratified, and standardises with train-split statistics."""
    spec = config.dataset
    path = TABLE_LAYOUTS.get(spec.layout).find(ensure_data(config), spec)  # ensure_data: the demo, where wanted
    table = read_table(path, spec)
    indices = split_three(table.labels, config.data.split_fractions, config.data.split_seed, what=str(table.path))
    standardize = Standardize.fit(table.features[indices["train"]])
    datasets = {split: ArrayDataset(table.features[rows], table.labels[rows], standardize)
                for split, rows in indices.items()}
    if is_generated(table.path.parent):
        log.warning("DEMO DATA: %s is GENERATED synthetic data, not real patients", table.path)
    return TabularDataModule(
        class_names=spec.class_names, datasets=datasets, root=table.path, fingerprint=file_sha256(table.path)[:16],
        synthetic=is_generated(table.path.parent), num_workers=config.data.num_workers,
        split_hash=split_hash({split: [f"row{i}" for i in rows] for split, rows in indices.items()}),
        feature_columns=spec.feature_columns, feature_mean=tuple(standardize.mean.tolist()),
        feature_std=tuple(standardize.std.tolist()),
    )


def _create(config: ExperimentConfig, prior: PriorAudit | None) -> TabularDataModule:
    return create_tabular_datamodule(config)  # `prior` is an image audit: feature rows are not audited


MODALITIES.register("tabular")(Modality(_create, audited=False, one_file=True))


def _number(text: str | None, path: Path, column: str, line: int) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise MedxpError(f"{path}: column '{column}', line {line}: {text!r} is not a number; "
                         f"expected numeric, finite feature values")
    return value


def _label_lookup(spec: DatasetSpec) -> dict[str, int]:
    """Target cell text -> class label: the class values as numbers, else the class names."""
    if spec.class_values:
        return {repr(float(value)): label for label, value in enumerate(spec.class_values)}
    return {name.strip().lower(): label for label, name in enumerate(spec.class_names)}


def _label(text: str | None, lookup: dict[str, int], path: Path, spec: DatasetSpec, line: int) -> int:
    key = (text or "").strip().lower()
    if spec.class_values:
        try:
            key = repr(float(key))
        except ValueError:
            pass
    if key not in lookup:
        expected = list(spec.class_values) if spec.class_values else list(spec.class_names)
        raise MedxpError(f"{path}: column '{spec.target_column}', line {line}: {text!r} is not a class; "
                         f"expected one of {expected} (dataset.class_values / dataset.class_names)")
    return lookup[key]
