"""scikit-learn's histogram gradient boosting as a medxp model: fitting, logits, the estimator trainer, settings.

Generated data only: separable random rows for the model itself, the generated CTG demo
(medxp.data.synthetic_tabular, not real patients) for the trainer and the pipeline.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from medxp.config import DatasetSpec, ModelConfig, load_project
from medxp.data import create_datamodule
from medxp.data.synthetic_tabular import generate_ctg_demo
from medxp.errors import MedxpError
from medxp.models import InferenceModel, create_model
from medxp.models.estimator import ABSENT_CLASS_LOGIT, EstimatorFit, EstimatorModel
from medxp.models.factory import model_info
from medxp.models.gradient_boosting import HistGradientBoosting
from medxp.pipeline import inference_model, run_experiment
from medxp.search.space import load_search_space
from medxp.tracking import NullTracker
from medxp.training.estimator import EstimatorTrainer, best_iteration, cross_entropy
from medxp.training.optim import class_weight_tensor

MODEL = "hist_gradient_boosting"


def separable_rows(classes: int = 3, per_class: int = 60, features: int = 5, seed: int = 0):
    """Rows whose class shifts the first feature: learnable, with some overlap."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    rows = rng.normal(size=(len(labels), features)).astype(np.float32)
    rows[:, 0] += 2.5 * labels
    order = rng.permutation(len(labels))
    return rows[order], labels[order]


def spec(classes: int = 3, features: int = 5) -> DatasetSpec:
    return DatasetSpec(name="rows", modality="tabular", layout="csv", class_names=tuple(f"c{i}" for i in range(classes)),
                       target_column="y", feature_columns=tuple(f"f{i}" for i in range(features)))


def fitted(classes: int = 3, **fit) -> tuple[HistGradientBoosting, np.ndarray, np.ndarray]:
    rows, labels = separable_rows(classes)
    model = create_model(ModelConfig(name=MODEL, gb_max_iter=30), spec(classes))
    model.fit_arrays(rows, labels, None, None, EstimatorFit(**fit))
    return model, rows, labels


@pytest.fixture(scope="module")
def ctg_root(tmp_path_factory):
    """600 generated CTG exams (synthetic, not real patients) in the real file's class proportions."""
    return generate_ctg_demo(tmp_path_factory.mktemp("ctg") / "fetal_health", rows=600)


def ctg_config(root, **overrides):
    return load_project("fetal_health", {"data.data_dir": str(root), "model": MODEL, "model.gb_max_iter": 60,
                                         "eval.bootstrap_resamples": 20, "train.threads": 1, **overrides})


# ----------------------------------------------------------------------------- the model


@pytest.mark.parametrize("classes", [2, 3])
def test_softmax_of_the_logits_is_the_estimators_predict_proba(classes):
    model, rows, labels = fitted(classes)
    assert isinstance(model, EstimatorModel) and model.fitted and model.iterations == 30
    with torch.no_grad():
        probabilities = torch.softmax(model(torch.from_numpy(rows)), dim=1).numpy()
    assert probabilities.shape == (len(rows), classes)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert np.allclose(probabilities, model.estimator.predict_proba(rows), atol=1e-5)
    assert (probabilities.argmax(axis=1) == labels).mean() > 0.8  # it learned the signal


def test_the_settings_and_the_fit_reach_the_estimator():
    config = ModelConfig(name=MODEL, gb_learning_rate=0.05, gb_max_iter=7, gb_max_leaf_nodes=8, gb_max_depth=3,
                         gb_min_samples_leaf=4, gb_l2_regularization=0.5, gb_max_features=0.6)
    model = create_model(config, spec())
    rows, labels = separable_rows()
    model.fit_arrays(rows, labels, None, None, EstimatorFit(seed=7, class_weights=(1.0, 2.0, 3.0)))
    params = model.estimator.get_params()
    assert {k: params[k] for k in ("learning_rate", "max_iter", "max_leaf_nodes", "max_depth", "min_samples_leaf",
                                   "l2_regularization", "max_features", "random_state")} == \
        {"learning_rate": 0.05, "max_iter": 7, "max_leaf_nodes": 8, "max_depth": 3, "min_samples_leaf": 4,
         "l2_regularization": 0.5, "max_features": 0.6, "random_state": 7}
    assert params["class_weight"] == {0: 1.0, 1: 2.0, 2: 3.0} and params["early_stopping"] is False
    unlimited = create_model(ModelConfig(name=MODEL), spec())
    assert unlimited.settings["max_depth"] is None  # model.gb_max_depth 0: no limit


def test_the_same_seed_fits_the_same_model():
    first, rows, _ = fitted(seed=3, patience=0)
    second, _, _ = fitted(seed=3, patience=0)
    assert np.array_equal(first.raw_logits(rows), second.raw_logits(rows))


def test_a_class_the_train_split_lacks_gets_a_finite_near_zero_probability():
    rows, labels = separable_rows(classes=2)
    model = create_model(ModelConfig(name=MODEL, gb_max_iter=10), spec(classes=3))
    model.fit_arrays(rows, np.where(labels == 1, 2, 0), None, None, EstimatorFit())  # classes 0 and 2 only
    logits = model.raw_logits(rows)
    assert logits.shape == (len(rows), 3) and np.isfinite(logits).all()
    assert np.all(logits[:, 1] == ABSENT_CLASS_LOGIT)
    assert torch.softmax(torch.from_numpy(logits), dim=1)[:, 1].max() < 1e-6


def test_an_unfitted_model_says_it_is_fitted_by_training():
    model = create_model(ModelConfig(name=MODEL), spec())
    with pytest.raises(MedxpError, match="not fitted; it is fitted on a train split by medxp.training.estimator"):
        model(torch.zeros(2, 5))


def test_it_refuses_image_data_naming_the_models_that_fit():
    config = load_project("glaucoma", {"model": MODEL})
    with pytest.raises(MedxpError, match=rf"model.name = '{MODEL}' reads tabular data but dataset 'glaucoma' is "
                                         r"image; expected one of: .*resnet18"):
        create_model(config.model, config.dataset)


def test_it_is_registered_as_a_tabular_estimator_reading_its_own_keys():
    info = model_info(MODEL)
    assert info.modalities == ("tabular",) and info.family == "tabular" and info.trainer == "estimator"
    assert info.reads("gb_learning_rate") and not info.reads("hidden_sizes") and not info.reads("dropout")
    assert info.reads_train("class_weights") and info.reads_train("patience") and not info.reads_train("lr")
    assert not model_info("mlp").reads("gb_learning_rate") and model_info("mlp").reads_train("lr")


@pytest.mark.parametrize("key, value, expected", [
    ("model.gb_learning_rate", 0.0, "a learning rate > 0"),
    ("model.gb_max_iter", 0, "at least one iteration"),
    ("model.gb_max_leaf_nodes", 1, "at least 2 leaves per tree"),
    ("model.gb_max_depth", -1, "a depth >= 1, or 0 for no limit"),
    ("model.gb_min_samples_leaf", 0, "at least 1 row per leaf"),
    ("model.gb_l2_regularization", -0.1, "a penalty >= 0"),
    ("model.gb_max_features", 1.5, r"a share of the features in \(0, 1\]"),
])
def test_a_bad_setting_is_an_error_naming_the_key(key, value, expected):
    with pytest.raises(MedxpError, match=rf"'{key}' = {value!r}: expected {expected}"):
        load_project("fetal_health", {key: value})


def test_the_inference_model_takes_raw_features_and_survives_pickling(tmp_path):
    model, rows, _ = fitted()
    mean, std = rows.mean(axis=0), rows.std(axis=0)
    raw = rows * std + mean  # what a user feeds: the inference model standardises inside
    logged = InferenceModel(model, mean, std, temperature=2.0).eval()
    torch.save(logged, tmp_path / "model.pt")  # what the pickled PyTorch flavour does
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    with torch.no_grad():
        expected = torch.softmax(torch.from_numpy(model.raw_logits(rows)) / 2.0, dim=1)
        assert torch.allclose(loaded(torch.from_numpy(raw)), expected, atol=1e-5)


# ----------------------------------------------------------------------------- the estimator trainer


class Recorder:
    """A callback that keeps what it was called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool, dict]] = []

    def on_epoch_end(self, trainer, epoch, metrics) -> None:
        self.calls.append((epoch, trainer.should_stop, dict(metrics)))


def test_the_trainer_early_stops_on_valid_records_every_iteration_and_keeps_the_best(ctg_root):
    config = ctg_config(ctg_root, **{"model.gb_max_iter": 400, "model.gb_learning_rate": 0.3, "train.patience": 5,
                                     "train.restore_best": True})
    data = create_datamodule(config)
    model = create_model(config.model, config.dataset)
    recorder = Recorder()
    result = EstimatorTrainer(config.train, callbacks=[recorder]).fit(model, data)
    fitted_iterations = len(result.history)
    assert result.stopped_early and fitted_iterations < 400
    assert [row["epoch"] for row in result.history] == list(range(1, fitted_iterations + 1))
    assert set(result.history[0]) == {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                                      "val_f1_macro", "val_roc_auc"}
    losses = [row["val_loss"] for row in result.history]
    assert result.best_epoch == int(np.argmin(losses)) + 1 and result.best_value == pytest.approx(min(losses))
    # restore_best: refitted to the best iteration, which repeats the first fit's trees exactly
    assert result.restored_epoch == result.best_epoch == model.iterations < fitted_iterations
    with torch.no_grad():
        valid = torch.cat([inputs for inputs, _ in data.loader("valid", 1000)])
        kept = torch.softmax(model(valid), dim=1).numpy()
    stored = np.array([row["val_loss"] for row in result.history])[result.best_epoch - 1]
    assert cross_entropy(np.log(kept), data.datasets["valid"].labels.numpy()) == pytest.approx(stored, rel=1e-4)
    # callbacks see every iteration after the fit, which nothing can stop any more
    assert [epoch for epoch, _, _ in recorder.calls] == list(range(1, fitted_iterations + 1))
    assert all(stopped for _, stopped, _ in recorder.calls) and recorder.calls[-1][2] == result.history[-1]


def test_without_patience_or_restore_best_the_budget_and_the_last_iteration_are_kept(ctg_root):
    config = ctg_config(ctg_root, **{"model.gb_max_iter": 25, "train.patience": 0, "train.restore_best": False})
    data = create_datamodule(config)
    model = create_model(config.model, config.dataset)
    result = EstimatorTrainer(config.train).fit(model, data)
    assert len(result.history) == 25 and not result.stopped_early
    assert model.iterations == result.restored_epoch == 25 and 1 <= result.best_epoch <= 25


def test_balanced_class_weights_and_the_seed_reach_the_estimator(ctg_root):
    config = ctg_config(ctg_root, **{"train.class_weights": "balanced", "train.seed": 11, "model.gb_max_iter": 10})
    data = create_datamodule(config)
    model = create_model(config.model, config.dataset)
    EstimatorTrainer(config.train).fit(model, data)
    expected = class_weight_tensor(config.train, data.datasets["train"].labels.numpy(), 3).tolist()
    assert model.estimator.class_weight == dict(enumerate(expected)) and expected[2] > expected[0]
    assert model.estimator.random_state == 11


def test_staged_fine_tuning_is_refused_and_loop_settings_are_logged_unused(ctg_root, caplog):
    from medxp.training.stages import fit_in_stages

    staged = ctg_config(ctg_root, **{"train.stage_unfrozen_layers": [0], "train.stage_epochs": [2],
                                     "train.stage_lrs": [0.01]})
    model = create_model(staged.model, staged.dataset)
    with pytest.raises(MedxpError, match=rf"train.stage_epochs = \[2\]: model '{MODEL}' is fitted in one call"):
        fit_in_stages(model, create_datamodule(staged), staged)
    config = ctg_config(ctg_root, **{"train.lr": 0.5, "data.sampler": "oversample", "model.gb_max_iter": 5})
    with caplog.at_level(logging.INFO, logger="medxp.training.estimator"):
        fit, trainer = fit_in_stages(create_model(config.model, config.dataset), create_datamodule(config), config)
    assert isinstance(trainer, EstimatorTrainer) and trainer.device == torch.device("cpu")
    assert "does not use" in caplog.text and "train.lr=0.5" in caplog.text and "data.sampler=oversample" in caplog.text
    assert "train.seed" not in caplog.text and len(fit.history) == 5


def test_best_iteration_follows_the_monitor_and_skips_non_finite_values():
    history = [{"epoch": 1, "val_loss": 0.5, "val_f1_macro": float("nan")},
               {"epoch": 2, "val_loss": 0.3, "val_f1_macro": 0.7},
               {"epoch": 3, "val_loss": 0.3, "val_f1_macro": 0.9}]
    assert best_iteration(history, "val_loss") == (2, 0.3)  # the first on ties
    assert best_iteration(history, "val_f1_macro") == (3, 0.9)
    assert best_iteration([{"epoch": 1, "val_roc_auc": float("nan")}], "val_roc_auc") == (0, None)


def test_weighted_cross_entropy_matches_torch():
    logits = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    labels = np.arange(20) % 3
    weights = np.array([1.0, 2.0, 4.0])
    loss = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32))
    assert cross_entropy(logits, labels, weights) == pytest.approx(float(loss(torch.from_numpy(logits),
                                                                               torch.from_numpy(labels))), rel=1e-5)


def test_the_pipeline_fits_evaluates_and_wraps_it_like_any_model(ctg_root):
    config = ctg_config(ctg_root, **{"eval.calibration": "temperature", "search.refit": False})
    tracker = NullTracker()
    result = run_experiment(config, tracker, log_model=True, progress=False)
    assert result.evaluations["test"].metrics["accuracy"] > 0.7  # the demo's classes are learnable
    assert tracker.latest("epochs_trained") == len(result.fit.history) and tracker.latest("best_epoch") >= 1
    assert tracker.latest("test_f1_macro") == pytest.approx(result.evaluations["test"].metrics["f1_macro"])
    assert [step for name, _, step in tracker.metrics if name == "val_loss"][:3] == [1, 2, 3]  # per iteration
    logged = tracker.models["model"]
    assert isinstance(logged, InferenceModel) and isinstance(logged.network, HistGradientBoosting)
    raw = result.data.datasets["test"].images[:5]
    with torch.no_grad():
        assert torch.allclose(logged(raw).sum(dim=1), torch.ones(5), atol=1e-5)
    assert inference_model(result.model, config, result.data).network is result.model


# ----------------------------------------------------------------------------- search spaces


def test_the_projects_space_fits_it_and_other_models_refuse_its_keys():
    space = load_search_space("fetal_health")  # the project's default model
    assert {p.config_key for p in space.parameters} >= {"model.gb_learning_rate", "model.gb_max_leaf_nodes"}
    space.check_against(load_project("fetal_health", {"model": MODEL}))
    with pytest.raises(MedxpError, match=r"searches model.gb_learning_rate, which model 'mlp' does not read.*"
                                         rf"\({MODEL}\)"):
        space.check_against(load_project("fetal_health", {"model": "mlp"}))


@pytest.mark.parametrize("line", ["lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}",
                                  "batch_size: {type: categorical, choices: [16, 32]}",
                                  "train.label_smoothing: {type: float, low: 0.0, high: 0.2}"])
def test_a_space_searching_an_epoch_loop_key_is_refused_for_it(tmp_path, line):
    path = tmp_path / "space.yaml"
    path.write_text(f"model.gb_learning_rate: {{type: float, low: 0.05, high: 0.2}}\n{line}\n")
    with pytest.raises(MedxpError, match=rf"searches train\.\w+, which model '{MODEL}' does not read: it is fitted "
                                         "in one call"):
        load_search_space(path).check_against(load_project("fetal_health", {"model": MODEL}))


def test_a_space_over_both_models_limits_each_key_with_when(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("model: {type: categorical, choices: [mlp, hist_gradient_boosting]}\n"
                    "lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true, when: {model: mlp}}\n"
                    "model.gb_learning_rate: {type: float, low: 0.05, high: 0.2, when: {model: hist_gradient_boosting}}\n"
                    "train.class_weights: {type: categorical, choices: ['', balanced]}\n")
    load_search_space(path).check_against(load_project("fetal_health"))
    path.write_text("model: {type: categorical, choices: [mlp, hist_gradient_boosting]}\n"
                    "lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n")
    with pytest.raises(MedxpError, match=rf"searches train.lr, which model '{MODEL}' does not read"):
        load_search_space(path).check_against(load_project("fetal_health"))


# ----------------------------------------------------------------------------- a K-fold objective (search.cv_folds)


def test_cross_validate_scores_each_held_out_fold_of_train_plus_valid(ctg_root):
    from medxp.data.pooled_folds import fold_datamodule, pool_folds
    from medxp.training.estimator import cross_validate

    config = ctg_config(ctg_root)
    data = create_datamodule(config)
    scores = cross_validate(config, data, 4, "f1_macro")
    assert len(scores) == 4 and all(0.5 < score <= 1.0 for score in scores)  # the demo's classes are learnable
    assert cross_validate(config, data, 4, "f1_macro") == scores  # seeded folds, seeded fits
    # The folds partition the train + valid pool; the test split is not among them.
    pool = len(data.datasets["train"]) + len(data.datasets["valid"])
    held_out = np.concatenate([part for _, part in pool_folds(data, 4, config)])
    assert sorted(held_out) == list(range(pool))
    fold = fold_datamodule(data, *pool_folds(data, 4, config)[0])
    assert fold.datasets["test"] is data.datasets["test"]
    # A worse configuration scores worse on the same folds: the objective tells settings apart.
    stump = cross_validate(ctg_config(ctg_root, **{"model.gb_max_iter": 1, "model.gb_max_leaf_nodes": 2}), data, 4,
                           "f1_macro")
    assert np.mean(stump) < np.mean(scores)


def test_a_k_fold_objective_is_refused_for_a_model_trained_by_gradient_steps(ctg_root):
    from medxp.search import run_search
    from medxp.training.estimator import cross_validate

    config = ctg_config(ctg_root, **{"model": "mlp", "search.space": "fetal_health_mlp", "search.cv_folds": 3})
    with pytest.raises(MedxpError, match=r"'search.cv_folds' = 3: model 'mlp' trains by gradient steps.*"
                                         r"expected search.cv_folds: 0 and search.refit: false$"):
        run_search(config)  # before any run or trial starts; the project refits, which needs the folds
    with pytest.raises(MedxpError, match="'search.cv_folds' = 3: model 'mlp'"):
        cross_validate(config, create_datamodule(config), 3, "f1_macro")  # a trial whose space sampled the MLP


@pytest.mark.parametrize("overrides", [{"search.cv_folds": 1}, {"search.cv_folds": -2},
                                       {"search.cv_folds": 3, "search.objectives": ["val_f1_macro:max", "infer_ms:min"]}])
def test_a_bad_fold_count_is_refused_naming_the_key(overrides):
    with pytest.raises(MedxpError, match=r"'search.cv_folds'.*a fold count >= 2, with one objective"):
        load_project("fetal_health", overrides)


def test_the_project_judges_boosting_trials_by_5_fold_cv_and_its_mlp_experiments_on_valid():
    from medxp.search.report import objective_lines

    assert load_project("fetal_health").search.cv_folds == 5
    # The search run's description says what its best value is.
    [line] = objective_lines(load_project("fetal_health"))
    assert "averaged over 5 stratified folds of train + valid (`cv_f1_macro_mean`" in line
    assert "validation F1" in objective_lines(load_project("fetal_health", experiment="mlp"))[0]
    assert load_project("fetal_health", experiment="mlp").search.cv_folds == 0
    assert load_project("fetal_health", experiment="mlp_class_weights").search.cv_folds == 0
