"""What a model costs: parameter counts (networks and fitted estimators), the timed inference batch,
the state-dict hash of initial weights, and every run recording them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medxp.config import DatasetSpec, ModelConfig
from medxp.hashing import state_dict_sha256
from medxp.models import create_model
from medxp.models.cost import INFER_BATCH, batch_of, inference_ms, parameter_count
from medxp.models.estimator import EstimatorFit
from medxp.pipeline import run_experiment
from medxp.tracking import NullTracker


def test_a_networks_parameter_count_is_its_tensor_elements():
    network = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2, bias=False))
    assert parameter_count(network) == 4 * 3 + 3 + 3 * 2


def test_a_fitted_gradient_boosting_model_counts_its_tree_nodes():
    spec = DatasetSpec(name="rows", modality="tabular", layout="csv", class_names=("a", "b", "c"), target_column="y",
                       feature_columns=("f0", "f1"))
    model = create_model(ModelConfig(name="hist_gradient_boosting", gb_max_iter=5), spec)
    assert parameter_count(model) == 0  # nothing learned yet
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)
    rows = rng.normal(size=(90, 2)).astype(np.float32) + labels[:, None]
    model.fit_arrays(rows, labels, None, None, EstimatorFit(max_iterations=5))
    nodes = sum(len(tree.nodes) for per_iteration in model.estimator._predictors for tree in per_iteration)
    assert parameter_count(model) == nodes > 5 * 3  # 5 iterations x 3 classes, more than one node each


def test_the_timed_batch_holds_sixteen_inputs_repeating_a_short_split_in_order():
    inputs = torch.arange(5).float()[:, None]
    batch = batch_of(inputs)
    assert len(batch) == INFER_BATCH and batch[:, 0].tolist() == [0, 1, 2, 3, 4] * 3 + [0]
    with pytest.raises(ValueError):
        batch_of(inputs[:0])


def test_inference_time_is_positive_grows_with_the_work_and_keeps_the_training_mode():
    small, large = nn.Linear(8, 2), nn.Sequential(*[nn.Linear(512, 512) for _ in range(8)])
    large.train()
    assert 0 < inference_ms(small, torch.rand(3, 8)) < inference_ms(large, torch.rand(3, 512))
    assert large.training


def test_the_state_dict_hash_follows_the_weights_and_ignores_the_object():
    torch.manual_seed(0)
    first = nn.Linear(3, 2)
    twin = nn.Linear(3, 2)
    twin.load_state_dict(first.state_dict())
    assert state_dict_sha256(first) == state_dict_sha256(twin)
    with torch.no_grad():
        twin.bias[0] += 1e-6
    assert state_dict_sha256(first) != state_dict_sha256(twin)
    renamed = nn.Sequential(nn.Linear(3, 2))
    renamed[0].load_state_dict(first.state_dict())
    assert state_dict_sha256(renamed) != state_dict_sha256(first)  # the names are part of it


def test_every_run_records_its_cost_and_initial_weights_and_scores_train_without_augmentation(tiny_config):
    config = tiny_config.replace({"data.augment": True})
    tracker = NullTracker()
    seen = []
    result = run_experiment(config, tracker, log_model=False, progress=False, splits=("train", "valid"),
                            initialise=lambda model: seen.append(state_dict_sha256(model)))
    assert tracker.latest("model_params") == parameter_count(result.model) > 0
    assert tracker.latest("infer_ms") > 0 and tracker.latest("train_seconds") > 0
    assert result.cost["infer_ms"] == tracker.latest("infer_ms")
    assert tracker.tags["model.init_sha256"] == seen[0] == result.initial_weights_sha256
    assert "batch of 16" in tracker.tags["cost.infer"]
    # train is scored in order, without augmentation: the same numbers twice
    data = result.data
    loader = data.evaluation_loader("train", 64)
    first = torch.cat([images for images, _ in loader])
    assert torch.equal(first, torch.cat([images for images, _ in loader]))
    logged = {name for name, _, _ in tracker.metrics}
    assert "train_f1_weighted" in logged and "test_accuracy" not in logged  # an evaluation of train, not of test
