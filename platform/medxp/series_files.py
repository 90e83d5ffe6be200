"""Series files, read and checked without torch: `projects/<dataset>/series/<name>.yaml`.

A series lists a project's variants in ladder order; `medxp.flows.series` runs them. The
format (every key is checked; an unknown one is an error naming the file):

    description: The COVID study's ablation, one step at a time.
    seed: 42                      # every variant's train.seed (default: the project's)
    overrides: {train.epochs: 30} # applied to every variant (optional)
    variants:                     # in ladder order
      - label: cnn_base           # names the variant's run; unique
        experiment: cnn_base      # an experiment of the project (optional)
      - label: cnn_bn_wide
        experiment: cnn_bn
        overrides: {model.channels: [64, 128, 256, 512]}   # inline overrides (optional)
      - label: ensemble_top3
        ensemble: {top: 3}        # the mean of the 3 earlier variants best on validation
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from medxp.config import project_file
from medxp.errors import MedxpError

_SERIES_KEYS = {"description", "seed", "overrides", "variants"}
_VARIANT_KEYS = {"label", "experiment", "overrides", "ensemble"}


@dataclass(frozen=True)
class Variant:
    """One step of a series: an experiment of the project and/or inline overrides, or an ensemble of earlier steps."""

    label: str
    experiment: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    ensemble_top: int = 0

    @property
    def is_ensemble(self) -> bool:
        return self.ensemble_top > 0


@dataclass(frozen=True)
class SeriesSpec:
    """A series file, checked: its name, path, description, seed, shared overrides and variants in order."""

    name: str
    path: Path
    description: str
    seed: int | None
    overrides: Mapping[str, Any]
    variants: tuple[Variant, ...]



def series_names(dataset: str) -> list[str]:
    """The series a project defines (`projects/<dataset>/series/*.yaml`)."""
    folder = project_file(dataset).parent / "series"
    return sorted(path.stem for path in folder.glob("*.yaml")) if folder.is_dir() else []


def load_series(dataset: str, name: str) -> SeriesSpec:
    """Reads and checks `projects/<dataset>/series/<name>.yaml`.

    Raises:
        MedxpError: no such series (the project's series are listed), or a bad key or value (named).
    """
    path = project_file(dataset).parent / "series" / f"{name}.yaml"
    if not path.is_file():
        found = ", ".join(series_names(dataset)) or "none"
        raise MedxpError(f"unknown series '{name}' of dataset '{dataset}': no {path}; the project's series: {found}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise MedxpError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(raw, dict):
        raise MedxpError(f"{path}: expected a mapping with 'variants' (a list), got {type(raw).__name__}")
    _no_unknown_keys(raw, _SERIES_KEYS, str(path))
    seed = raw.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise MedxpError(f"{path}: 'seed' = {seed!r}: expected an integer")
    entries = raw.get("variants")
    if not isinstance(entries, list) or not entries:
        raise MedxpError(f"{path}: 'variants': expected a non-empty list of variants (each with a 'label')")
    variants = tuple(_variant(entry, index, path) for index, entry in enumerate(entries))
    labels = [variant.label for variant in variants]
    duplicated = sorted({label for label in labels if labels.count(label) > 1})
    if duplicated:
        raise MedxpError(f"{path}: labels {duplicated} appear more than once; expected one label per variant")
    for index, variant in enumerate(variants):
        if variant.is_ensemble and sum(not v.is_ensemble for v in variants[:index]) < 2:
            raise MedxpError(f"{path}: variant '{variant.label}' averages earlier variants; expected at least two "
                             "trained variants before it")
    return SeriesSpec(name, path, str(raw.get("description", "")).strip(), seed,
                      _mapping(raw.get("overrides"), f"{path}: 'overrides'"), variants)


def _variant(entry: Any, index: int, path: Path) -> Variant:
    where = f"{path}: variant {index + 1}"
    if not isinstance(entry, dict):
        raise MedxpError(f"{where}: expected a mapping with 'label' and 'experiment', 'overrides' or 'ensemble'")
    _no_unknown_keys(entry, _VARIANT_KEYS, where)
    label = entry.get("label")
    if not isinstance(label, str) or not label.strip() or any(c in label for c in "/\\'\""):
        raise MedxpError(f"{where}: 'label' = {label!r}: expected a non-empty name without slashes or quotes "
                         "(it names the variant's run)")
    where = f"{path}: variant '{label}'"
    if "ensemble" in entry:
        if "experiment" in entry or "overrides" in entry:
            raise MedxpError(f"{where}: 'ensemble' averages earlier variants; expected no 'experiment' or "
                             "'overrides' beside it")
        settings = _mapping(entry["ensemble"], f"{where}: 'ensemble'")
        top = settings.get("top")
        if set(settings) != {"top"} or isinstance(top, bool) or not isinstance(top, int) or top < 2:
            raise MedxpError(f"{where}: 'ensemble' = {entry['ensemble']!r}: expected {{top: N}} with N >= 2 (the "
                             "N earlier variants best on validation)")
        return Variant(label, ensemble_top=top)
    experiment = entry.get("experiment")
    if experiment is not None and not isinstance(experiment, str):
        raise MedxpError(f"{where}: 'experiment' = {experiment!r}: expected the name of a file under experiments/")
    overrides = _mapping(entry.get("overrides"), f"{where}: 'overrides'")
    if "train.seed" in overrides or "seed" in overrides:
        raise MedxpError(f"{where}: 'overrides' sets the seed; a series trains every variant with the same seed "
                         "(the series' 'seed')")
    return Variant(label, experiment, overrides)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MedxpError(f"{where} = {value!r}: expected a mapping of config keys to values, e.g. {{train.lr: 0.01}}")
    return dict(value)


def _no_unknown_keys(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise MedxpError(f"{where}: unknown key(s) {unknown}; expected {sorted(allowed)}")
