"""Synthetic cardiotocography (CTG) exams: the fetal_health demo data when the real CSV is absent.

The generated folder holds what medxp reads of the real Kaggle file::

    root/
      GENERATED_DEMO_DATA.txt   marker: says loudly that this is not patient data
      fetal_health.csv          one row per generated exam: the 21 SisPorto features and
                                `fetal_health` (1.0 normal, 2.0 suspect, 3.0 pathological)

The classes keep the real imbalance (1,655 / 295 / 176 of 2,126 exams, about 78% / 14% / 8%)
and every feature stays in the range it has in the real file. The class shifts a few features
the way it does in the clinic, with overlapping distributions so that no single threshold
separates the classes: normal exams have accelerations, suspect ones a higher baseline, more
abnormal short- and long-term variability and few accelerations, pathological ones prolonged
(and some severe) decelerations, low long-term variability, a wide histogram and a high
variance. The remaining features (fetal movement, number of zeroes) carry no class signal.

Generation is deterministic: the same seed and row count give a byte-identical CSV.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from medxp.config import DatasetSpec
from medxp.data.synthetic import generate_demo_folder
from medxp.errors import MedxpError

CSV_FILE = "fetal_health.csv"
TARGET_COLUMN = "fetal_health"
CLASS_NAMES = ("normal", "suspect", "pathological")
# The real file's exam counts per class; the demo keeps their proportions.
REAL_CLASS_COUNTS = (1655, 295, 176)
DEFAULT_ROWS = sum(REAL_CLASS_COUNTS)
MIN_ROWS_PER_CLASS = 20
# Bump when the rows change, so an old folder is not mistaken for a current one.
GENERATOR_VERSION = 1
# The columns of the Kaggle file, in its order, with the decimals they are written with.
FEATURE_DECIMALS = {
    "baseline value": 0,
    "accelerations": 3,
    "fetal_movement": 3,
    "uterine_contractions": 3,
    "light_decelerations": 3,
    "severe_decelerations": 3,
    "prolongued_decelerations": 3,
    "abnormal_short_term_variability": 0,
    "mean_value_of_short_term_variability": 1,
    "percentage_of_time_with_abnormal_long_term_variability": 0,
    "mean_value_of_long_term_variability": 1,
    "histogram_width": 0,
    "histogram_min": 0,
    "histogram_max": 0,
    "histogram_number_of_peaks": 0,
    "histogram_number_of_zeroes": 0,
    "histogram_mode": 0,
    "histogram_mean": 0,
    "histogram_median": 0,
    "histogram_variance": 0,
    "histogram_tendency": 0,
}
FEATURE_COLUMNS = tuple(FEATURE_DECIMALS)
_DESCRIPTION = (
    "The CTG exams in fetal_health.csv are drawn by medxp.data.synthetic_tabular.generate_ctg_demo;\n"
    "no fetus or mother is behind them. The class shifts accelerations, decelerations, variability\n"
    "and the histogram's width and variance; fetal movement and the number of zeroes are noise.\n"
)


def generate_ctg_demo(root: Path, *, rows: int = DEFAULT_ROWS, seed: int = 0) -> Path:
    """Writes a synthetic fetal-health CSV in the layout of the Kaggle file.

    Writes root/fetal_health.csv (the 21 feature columns of FEATURE_COLUMNS and the target
    column ``fetal_health`` holding 1.0, 2.0 or 3.0) and the ``GENERATED_DEMO_DATA.txt``
    marker, through medxp.data.synthetic.generate_demo_folder.

    Args:
        root: Folder to create. It may be absent or empty; a folder already generated
            with the same arguments is returned as it is.
        rows: Number of exams; split over the classes in the real file's proportions.
        seed: Seed of every random choice; same seed and rows give an identical file.

    Returns:
        root.

    Raises:
        MedxpError: If rows leaves a class with fewer than MIN_ROWS_PER_CLASS exams, root
            holds something that is not generated demo data, or root was generated with
            different arguments.
    """
    class_counts(rows)  # checks rows before anything is written
    arguments = {"rows": int(rows), "seed": int(seed), "generator_version": GENERATOR_VERSION}
    return generate_demo_folder(root, arguments, _write_csv, contents="CTG exams", description=_DESCRIPTION)


def class_counts(rows: int) -> tuple[int, ...]:
    """Exams per class for a demo of `rows` exams, in the real proportions (largest remainders).

    Raises:
        MedxpError: If a class would get fewer than MIN_ROWS_PER_CLASS exams.
    """
    shares = np.array(REAL_CLASS_COUNTS, dtype=float) * rows / DEFAULT_ROWS
    counts = np.floor(shares).astype(int)
    counts[np.argsort(counts - shares)[: rows - counts.sum()]] += 1
    if counts.min() < MIN_ROWS_PER_CLASS:
        needed = int(np.ceil(MIN_ROWS_PER_CLASS * DEFAULT_ROWS / min(REAL_CLASS_COUNTS)))
        raise MedxpError(f"synthetic CTG demo: rows={rows}, expected at least {needed} so every class "
                         f"has {MIN_ROWS_PER_CLASS} exams (the rarest class is about 8%)")
    return tuple(int(count) for count in counts)


def _write_csv(root: Path, arguments: dict[str, int]) -> None:
    """Writes the exams, shuffled, as root/fetal_health.csv."""
    rng = np.random.default_rng(np.random.SeedSequence(arguments["seed"]))
    labels = rng.permutation(np.repeat(np.arange(len(CLASS_NAMES)), class_counts(arguments["rows"])))
    features = sample_features(labels, rng)
    with (root / CSV_FILE).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow([*FEATURE_COLUMNS, TARGET_COLUMN])
        for index, label in enumerate(labels):
            cells = [_cell(features[column][index], decimals) for column, decimals in FEATURE_DECIMALS.items()]
            writer.writerow([*cells, f"{label + 1:.1f}"])


def _cell(value: float, decimals: int) -> str:
    # The real file writes every value as a float ("120.0", "0.006").
    return f"{value:.{max(decimals, 1)}f}"


def sample_features(labels: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draws every feature of the exams with the given labels (0 normal, 1 suspect, 2 pathological).

    Returns:
        Feature column -> values (N,), rounded to the decimals the CSV writes and clipped to
        the range of the real file.
    """
    features = _heart_rate_features(labels, rng)
    features.update(_variability_features(labels, rng))
    features.update(_histogram_features(labels, features["baseline value"], rng))
    return {column: np.round(features[column], FEATURE_DECIMALS[column]) for column in FEATURE_COLUMNS}


def _per_class(labels: np.ndarray, values: tuple[float, float, float]) -> np.ndarray:
    """The value of each exam's class (normal, suspect, pathological)."""
    return np.asarray(values, dtype=float)[labels]


def _events_per_second(labels: np.ndarray, rng: np.random.Generator, chance: tuple[float, float, float],
                       mean: tuple[float, float, float], high: float) -> np.ndarray:
    """Rates of an event (accelerations, decelerations): zero in many exams, skewed where present."""
    present = rng.random(len(labels)) < _per_class(labels, chance)
    rate = rng.gamma(2.0, _per_class(labels, mean) / 2.0)
    return np.clip(np.where(present, rate, 0.0), 0.0, high)


def _heart_rate_features(labels: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Baseline heart rate (bpm) and the rates (per second) of movements, contractions and decelerations."""
    n = len(labels)
    baseline = rng.normal(_per_class(labels, (131.5, 141.0, 131.0)), _per_class(labels, (9.0, 8.0, 12.0)))
    severe = np.where(rng.random(n) < _per_class(labels, (0.0, 0.0, 0.04)), 0.001, 0.0)
    return {
        "baseline value": np.clip(baseline, 106, 160),
        "accelerations": _events_per_second(labels, rng, (0.80, 0.30, 0.35), (0.0045, 0.0015, 0.0020), 0.019),
        "fetal_movement": np.clip(np.where(rng.random(n) < 0.35, rng.exponential(0.02, n), 0.0), 0.0, 0.481),
        "uterine_contractions": _events_per_second(labels, rng, (0.85, 0.65, 0.80), (0.0050, 0.0035, 0.0045),
                                                   0.015),
        "light_decelerations": _events_per_second(labels, rng, (0.40, 0.20, 0.55), (0.0035, 0.0025, 0.0055),
                                                  0.015),
        "severe_decelerations": severe,
        "prolongued_decelerations": _events_per_second(labels, rng, (0.05, 0.10, 0.50), (0.0012, 0.0012, 0.0025),
                                                       0.005),
    }


def _variability_features(labels: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Short- and long-term variability: abnormal percentages and mean values."""
    n = len(labels)
    abnormal_stv = rng.normal(_per_class(labels, (44.0, 60.0, 62.0)), _per_class(labels, (15.0, 12.0, 14.0)))
    mean_stv = rng.gamma(4.0, _per_class(labels, (1.45, 0.75, 1.3)) / 4.0)
    abnormal_ltv = rng.exponential(_per_class(labels, (6.0, 26.0, 20.0)), n)
    mean_ltv = rng.gamma(2.5, _per_class(labels, (8.8, 8.0, 4.0)) / 2.5)
    return {
        "abnormal_short_term_variability": np.clip(abnormal_stv, 12, 87),
        "mean_value_of_short_term_variability": np.clip(mean_stv, 0.2, 7.0),
        "percentage_of_time_with_abnormal_long_term_variability": np.clip(abnormal_ltv, 0, 91),
        "mean_value_of_long_term_variability": np.clip(mean_ltv, 0.0, 50.7),
    }


def _histogram_features(labels: np.ndarray, baseline: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The heart-rate histogram: width = max - min, mode, mean and median near the baseline."""
    n = len(labels)
    mode = np.clip(baseline + rng.normal(_per_class(labels, (4.0, 2.0, -6.0)), _per_class(labels, (5.0, 5.0, 14.0))),
                   60, 187)
    width = np.clip(rng.normal(_per_class(labels, (72.0, 50.0, 80.0)), _per_class(labels, (36.0, 33.0, 40.0))), 3, 180)
    low = np.round(np.clip(mode - width * rng.uniform(0.4, 0.75, n), 50, 159))
    high = np.round(np.clip(low + width, 122, 238))
    mean = np.clip(mode - rng.normal(_per_class(labels, (2.0, 1.0, 8.0)), 4.0), 73, 182)
    variance = rng.gamma(1.5, _per_class(labels, (15.0, 9.0, 45.0)) / 1.5)
    tendency = _tendency(labels, rng)
    return {
        "histogram_width": high - low,
        "histogram_min": low,
        "histogram_max": high,
        "histogram_number_of_peaks": np.clip(rng.poisson(1.0 + (high - low) / 20.0), 0, 18),
        "histogram_number_of_zeroes": np.clip(rng.poisson(0.3, n), 0, 10),
        "histogram_mode": mode,
        "histogram_mean": mean,
        "histogram_median": np.clip((mode + mean) / 2 + rng.normal(0.0, 2.0, n), 77, 186),
        "histogram_variance": np.clip(variance, 0, 269),
        "histogram_tendency": tendency,
    }


def _tendency(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A falling (-1), flat (0) or rising (1) histogram per exam, with chances that depend on the class."""
    falling = _per_class(labels, (0.06, 0.05, 0.25))
    flat = _per_class(labels, (0.50, 0.60, 0.50))
    draw = rng.random(len(labels))
    return np.where(draw < falling, -1.0, np.where(draw < falling + flat, 0.0, 1.0))


def check_spec(spec: DatasetSpec, source: str) -> None:
    """Checks that a project reads what the CTG demo writes, before anything is generated.

    Args:
        spec: The project's dataset spec (fetal_health, or a copy of it).
        source: The config file, for the message.

    Raises:
        MedxpError: naming the key whose value the demo cannot serve and what it expects.
    """
    unknown = [column for column in spec.feature_columns if column not in FEATURE_COLUMNS]
    expectations = {
        "dataset.feature_columns": (not unknown, f"columns among {list(FEATURE_COLUMNS)}; {unknown} are not"),
        "dataset.target_column": (spec.target_column == TARGET_COLUMN, repr(TARGET_COLUMN)),
        "dataset.class_values": (tuple(spec.class_values) == (1, 2, 3), "[1, 2, 3]"),
        "dataset.class_names": (len(spec.class_names) == len(CLASS_NAMES), f"{len(CLASS_NAMES)} names"),
    }
    for key, (fits, expected) in expectations.items():
        if not fits:
            raise MedxpError(f"{source}: '{key}' does not fit the generated CTG demo data (dataset.demo: ctg); "
                             f"expected {expected}. Put the real CSV in the data folder, or drop dataset.demo")
