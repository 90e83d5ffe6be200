"""The CSV source of tabular projects (fetal_health): reading, splitting, train-only standardisation, errors."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from medxp.config import load_project
from medxp.data import create_datamodule
from medxp.errors import MedxpError
from medxp.pipeline import run_experiment
from medxp.tracking.null import NullTracker


def write_csv(path, features, rows: int = 60, target=lambda i: f"{i % 3 + 1}.0", cell=lambda i, j: f"{i + j}"):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*features, "fetal_health", "ignored"])
        for i in range(rows):
            writer.writerow([cell(i, j) for j in range(len(features))] + [target(i), "x"])
    return path


@pytest.fixture
def fetal(tmp_path):
    """The fetal_health project reading a tiny CSV in tmp_path."""
    config = load_project("fetal_health", {"data.data_dir": str(tmp_path), "train.epochs": 2,
                                           "train.batch_size": 8, "eval.bootstrap_resamples": 20})
    rng = np.random.default_rng(0)
    values = rng.normal(size=(60, len(config.dataset.feature_columns))) * 10 + 50
    write_csv(tmp_path / "fetal_health.csv", config.dataset.feature_columns, cell=lambda i, j: f"{values[i, j]:.4f}")
    return config


def test_csv_rows_become_stratified_float32_splits(fetal):
    data = create_datamodule(fetal)
    sizes = {split: len(dataset) for split, dataset in data.datasets.items()}
    assert sum(sizes.values()) == 60 and sizes["test"] == 12
    assert data.class_counts("test") == {"normal": 4, "suspect": 4, "pathological": 4}
    features, label = data.datasets["train"][0]
    assert features.dtype == torch.float32 and features.shape == (21,) and label.dtype == torch.int64


def test_standardisation_is_fitted_on_the_train_split_only(fetal):
    data = create_datamodule(fetal)
    train = torch.stack([data.datasets["train"][i][0] for i in range(len(data.datasets["train"]))])
    assert torch.allclose(train.mean(0), torch.zeros(21), atol=1e-4)
    assert torch.allclose(train.std(0, unbiased=False), torch.ones(21), atol=1e-4)
    raw_train = data.datasets["train"].images.numpy()
    assert np.allclose(data.feature_mean, raw_train.mean(0), atol=1e-4)
    assert not np.allclose(data.feature_mean, data.datasets["test"].images.numpy().mean(0), atol=1e-2)


def test_the_tabular_module_carries_its_modality(fetal):
    data = create_datamodule(fetal)
    assert data.input_statistics(fetal.dataset) == (data.feature_mean, data.feature_std)
    assert not data.explainable
    rows = data.datasets["train"].images.numpy()[:10]
    train_transform, valid_transform, fields = data.fold_transforms(rows)
    assert train_transform is valid_transform and np.allclose(fields["feature_mean"], rows.mean(0), atol=1e-4)
    assert torch.allclose(train_transform(torch.from_numpy(rows)).mean(0), torch.zeros(21), atol=1e-4)


def test_modalities_are_a_registry_that_create_datamodule_follows(fetal, monkeypatch):
    from medxp.data.datamodule import MODALITIES, Modality

    assert MODALITIES.names() == ["image", "tabular"]
    assert not MODALITIES.get("tabular").audited and MODALITIES.get("image").audited
    built = []
    plugged = Modality(lambda config, prior: built.append(config) or "rows", audited=False, one_file=True)
    monkeypatch.setitem(MODALITIES._entries, "plugged_in", plugged)  # a modality a later module registers
    config = load_project("fetal_health", {"dataset.modality": "plugged_in"})

    assert create_datamodule(config) == "rows" and built == [config]


@pytest.mark.parametrize("model", ["hist_gradient_boosting", "mlp"])
def test_tabular_models_train_and_evaluate_through_the_ordinary_pipeline(fetal, model):
    config = fetal.replace({"model": model, "model.gb_max_iter": 5})
    result = run_experiment(config, NullTracker(), log_model=False, progress=False)
    assert set(result.evaluations) == {"valid", "test"}
    assert result.evaluations["test"].y_prob.shape == (12, 3)


def test_a_missing_target_column_names_the_file_and_column(fetal, tmp_path):
    columns = [c for c in fetal.dataset.feature_columns]
    path = tmp_path / "fetal_health.csv"
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([columns, ["1"] * len(columns)])
    with pytest.raises(MedxpError, match=r"fetal_health.csv: column\(s\) \['fetal_health'\] not found"):
        create_datamodule(fetal)


def test_a_non_numeric_feature_names_the_file_column_and_line(fetal, tmp_path):
    write_csv(tmp_path / "fetal_health.csv", fetal.dataset.feature_columns,
              cell=lambda i, j: "n/a" if (i, j) == (4, 2) else "1.5")
    with pytest.raises(MedxpError, match=r"fetal_health.csv: column 'fetal_movement', line 6: 'n/a' is not a number"):
        create_datamodule(fetal)


def test_a_target_value_that_is_no_class_is_an_error(fetal, tmp_path):
    write_csv(tmp_path / "fetal_health.csv", fetal.dataset.feature_columns, target=lambda i: "4")
    with pytest.raises(MedxpError, match=r"column 'fetal_health', line 2: '4' is not a class; expected one of "
                                         r"\[1.0, 2.0, 3.0\]"):
        create_datamodule(fetal)


def test_a_tabular_spec_must_name_its_columns(tmp_path):
    with pytest.raises(MedxpError, match="dataset.feature_columns"):
        load_project("fetal_health", {"dataset.feature_columns": []})
