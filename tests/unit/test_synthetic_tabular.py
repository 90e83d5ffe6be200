"""Tests of the synthetic CTG (fetal_health) demo: determinism, marker, ranges, signal, safety, data module."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medxp.cli import _synthetic as cli_synthetic
from medxp.config import load_project
from medxp.data import create_datamodule
from medxp.data.datamodule import ensure_data
from medxp.data.synthetic import MARKER_FILE, is_generated
from medxp.data.synthetic_tabular import (
    CSV_FILE,
    DEFAULT_ROWS,
    FEATURE_COLUMNS,
    TARGET_COLUMN,
    class_counts,
    generate_ctg_demo,
)
from medxp.errors import MedxpError
from medxp.promotion import registered_model_name

# The range of every feature in the real Kaggle file (min, max).
REAL_RANGES = {
    "baseline value": (106, 160), "accelerations": (0, 0.019), "fetal_movement": (0, 0.481),
    "uterine_contractions": (0, 0.015), "light_decelerations": (0, 0.015), "severe_decelerations": (0, 0.001),
    "prolongued_decelerations": (0, 0.005), "abnormal_short_term_variability": (12, 87),
    "mean_value_of_short_term_variability": (0.2, 7.0),
    "percentage_of_time_with_abnormal_long_term_variability": (0, 91),
    "mean_value_of_long_term_variability": (0, 50.7), "histogram_width": (3, 180), "histogram_min": (50, 159),
    "histogram_max": (122, 238), "histogram_number_of_peaks": (0, 18), "histogram_number_of_zeroes": (0, 10),
    "histogram_mode": (60, 187), "histogram_mean": (73, 182), "histogram_median": (77, 186),
    "histogram_variance": (0, 269), "histogram_tendency": (-1, 1),
}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default demo (2,126 rows, seed 0), generated once for the read-only tests."""
    return generate_ctg_demo(tmp_path_factory.mktemp("ctg") / "fetal_health")


def read_demo(root: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The header, the features (N, 21) and the target values (N,) of a generated CSV."""
    with (root / CSV_FILE).open(newline="") as handle:
        rows = list(csv.reader(handle))
    values = np.array(rows[1:], dtype=float)
    return rows[0], values[:, :-1], values[:, -1]


def test_the_same_seed_gives_the_same_file_and_another_seed_another(tmp_path: Path, demo_root: Path) -> None:
    again = generate_ctg_demo(tmp_path / "again")
    other = generate_ctg_demo(tmp_path / "other", seed=1)
    assert (again / CSV_FILE).read_bytes() == (demo_root / CSV_FILE).read_bytes()
    assert (other / CSV_FILE).read_bytes() != (demo_root / CSV_FILE).read_bytes()


def test_the_folder_is_marked_generated_and_records_its_arguments(demo_root: Path) -> None:
    assert is_generated(demo_root)
    text = (demo_root / MARKER_FILE).read_text(encoding="utf-8")
    assert "SYNTHETIC DEMO DATA" in text and "NOT REAL PATIENTS" in text and "generate_ctg_demo" in text
    assert f'"rows": {DEFAULT_ROWS}' in text and '"seed": 0' in text
    assert sorted(path.name for path in demo_root.iterdir()) == sorted([CSV_FILE, MARKER_FILE])


def test_generation_logs_a_loud_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="medxp.data.synthetic"):
        generate_ctg_demo(tmp_path / "fetal_health", rows=300)
    assert any("generating SYNTHETIC demo data" in record.getMessage() and "not real patients" in record.getMessage()
               for record in caplog.records if record.levelname == "WARNING")


def test_columns_class_balance_and_ranges_follow_the_real_file(demo_root: Path) -> None:
    header, features, target = read_demo(demo_root)
    assert header == [*load_project("fetal_health", {}).dataset.feature_columns, TARGET_COLUMN]
    counts = [int((target == value).sum()) for value in (1.0, 2.0, 3.0)]
    assert counts == [1655, 295, 176] and len(target) == DEFAULT_ROWS  # 78% / 14% / 8%
    for index, column in enumerate(FEATURE_COLUMNS):
        low, high = REAL_RANGES[column]
        assert low <= features[:, index].min() and features[:, index].max() <= high, column
        assert features[:, index].std() > 0, column
    width, low, high = (features[:, FEATURE_COLUMNS.index(c)] for c in ("histogram_width", "histogram_min",
                                                                       "histogram_max"))
    np.testing.assert_array_equal(width, high - low)


def test_the_class_is_learnable_but_not_trivially(demo_root: Path) -> None:
    _, features, target = read_demo(demo_root)
    train_x, test_x, train_y, test_y = train_test_split(features, target, test_size=0.25, stratify=target,
                                                        random_state=0)

    def test_f1(columns: list[int]) -> float:
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        model.fit(train_x[:, columns], train_y)
        return f1_score(test_y, model.predict(test_x[:, columns]), average="macro")

    assert 0.75 < test_f1(list(range(len(FEATURE_COLUMNS)))) < 0.99
    assert max(test_f1([column]) for column in range(len(FEATURE_COLUMNS))) < 0.7
    noise = [FEATURE_COLUMNS.index("fetal_movement"), FEATURE_COLUMNS.index("histogram_number_of_zeroes")]
    assert test_f1(noise) < 0.35  # about what always answering "normal" gets (0.29)


@pytest.mark.parametrize("rows, expected", [(2126, (1655, 295, 176)), (1000, (778, 139, 83)), (300, (233, 42, 25))])
def test_class_counts_keep_the_real_proportions(rows: int, expected: tuple[int, int, int]) -> None:
    assert class_counts(rows) == expected and sum(expected) == rows


def test_too_few_rows_for_the_rarest_class_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MedxpError, match=r"rows=100, expected at least 242"):
        generate_ctg_demo(tmp_path / "fetal_health", rows=100)
    assert not (tmp_path / "fetal_health").exists()


def test_a_folder_with_a_real_csv_is_never_written_into(tmp_path: Path) -> None:
    root = tmp_path / "fetal_health"
    root.mkdir()
    (root / "fetal_health.csv").write_text("baseline value,fetal_health\n120.0,1.0\n")
    with pytest.raises(MedxpError, match="no GENERATED_DEMO_DATA.txt marker, so it may be real data"):
        generate_ctg_demo(root)
    config = load_project("fetal_health", {"data.data_dir": str(root), "data.demo": "always"})
    with pytest.raises(MedxpError, match="refusing to write synthetic demo data there"):
        ensure_data(config)
    assert (root / "fetal_health.csv").read_text() == "baseline value,fetal_health\n120.0,1.0\n"
    assert not is_generated(root)


def test_a_matching_generation_is_reused_and_another_refused(tmp_path: Path) -> None:
    root = generate_ctg_demo(tmp_path / "fetal_health", rows=300)
    written = (root / CSV_FILE).stat().st_mtime_ns
    assert generate_ctg_demo(root, rows=300) == root and (root / CSV_FILE).stat().st_mtime_ns == written
    with pytest.raises(MedxpError, match="generated with .*'rows': 300.* but .*'rows': 400"):
        generate_ctg_demo(root, rows=400)


def test_a_datamodule_on_absent_data_generates_the_demo_with_every_class_in_every_split(tmp_path: Path) -> None:
    root = tmp_path / "fetal_health"
    data = create_datamodule(load_project("fetal_health", {"data.data_dir": str(root)}))
    assert is_generated(root) and data.synthetic and data.root == root / CSV_FILE
    sizes = {split: len(dataset) for split, dataset in data.datasets.items()}
    assert sum(sizes.values()) == DEFAULT_ROWS and abs(sizes["test"] - 0.2 * DEFAULT_ROWS) <= 3
    for split, size in sizes.items():  # stratified: each split keeps about 78% / 14% / 8%
        shares = np.array(list(data.class_counts(split).values())) / size
        assert shares.min() > 0 and np.allclose(shares, [0.778, 0.139, 0.083], atol=0.02), split


def test_a_real_csv_is_read_as_real_and_demo_never_does_not_generate(tmp_path: Path, demo_root: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "fetal_health.csv").write_bytes((demo_root / CSV_FILE).read_bytes())  # no marker: counts as real
    for data_dir in (real, real / "fetal_health.csv"):  # the folder, or the file itself
        config = load_project("fetal_health", {"data.data_dir": str(data_dir)})
        assert ensure_data(config) == data_dir  # what a search's driver calls first
        data = create_datamodule(config)
        assert not data.synthetic and data.root == real / "fetal_health.csv"
        assert not cli_synthetic(config)  # models register as fetal_health-classifier, no -demo
    absent = load_project("fetal_health", {"data.data_dir": str(tmp_path / "absent"), "data.demo": "never"})
    with pytest.raises(MedxpError, match=r"absent: data folder not found \(data.demo=never\)"):
        create_datamodule(absent)
    assert not (tmp_path / "absent").exists()


def test_models_of_the_demo_are_named_demo_before_and_after_generation(tmp_path: Path) -> None:
    config = load_project("fetal_health", {"data.data_dir": str(tmp_path / "fetal_health")})
    assert cli_synthetic(config)  # absent data: the run will generate it
    create_datamodule(config)
    assert cli_synthetic(config)
    assert registered_model_name("fetal_health", cli_synthetic(config)) == "fetal_health-classifier-demo"


def test_a_project_whose_columns_the_demo_lacks_is_told_so_before_generation(tmp_path: Path) -> None:
    config = load_project("fetal_health", {"data.data_dir": str(tmp_path / "fetal_health"),
                                           "dataset.feature_columns": ["baseline value", "heart_rate_entropy"]})
    with pytest.raises(MedxpError, match=r"project.yaml: 'dataset.feature_columns' does not fit the generated CTG "
                                         r"demo data .*\['heart_rate_entropy'\] are not"):
        create_datamodule(config)
    assert not (tmp_path / "fetal_health").exists()
