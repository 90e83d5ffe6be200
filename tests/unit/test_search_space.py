"""Search spaces as data: parsing, validation errors that name file and key, define-by-run sampling."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from medxp.config import load_project
from medxp.errors import MedxpError
from medxp.search.space import load_search_space, space_path

optuna.logging.set_verbosity(optuna.logging.WARNING)


def write_space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def sample(space, n: int = 30, seed: int = 0) -> list[dict]:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
    samples = []
    for _ in range(n):
        trial = study.ask()
        samples.append(space(trial))
        study.tell(trial, 0.0)
    return samples


def test_glaucoma_small_cnn_space_loads_and_fits_its_experiment():
    space = load_search_space("glaucoma_small_cnn")
    names = [p.name for p in space.parameters]
    assert names[:2] == ["optimizer", "lr"]
    assert {"batch_size", "dropout", "unfrozen_layers", "weight_decay", "train.momentum"} <= set(names)
    assert set(space.parameters[0].choices) == {"adam", "adamw", "sgd", "adadelta", "adagrad"}
    space.check_against(load_project("glaucoma", experiment="small_cnn"))


def test_the_imagenet_recipe_space_searches_unfrozen_layers_and_stage_rates_of_the_default():
    config = load_project("glaucoma")
    assert config.model.name == "tf_efficientnet_lite0" and config.train.stage_epochs == (3, 4, 3)
    space = load_search_space(config.search.space)
    assert space.path.name == "imagenet_staged.yaml"
    space.check_against(config)
    for values in sample(space, 12):
        sampled = config.replace(values)
        assert len(sampled.train.stage_unfrozen_layers) == len(sampled.train.stage_lrs) == 3
        assert sampled.train.stage_unfrozen_layers[0] == 0  # the head alone first, as the studies did
        assert "train.lr" not in values and "model.unfrozen_layers" not in values  # a staged run ignores them


def test_define_by_run_samples_types_ranges_and_conditions(tmp_path):
    space = load_search_space(write_space(tmp_path, """
optimizer: {type: categorical, choices: [adam, sgd]}
lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
batch_size: {type: int, low: 16, high: 64, step: 16}
train.momentum: {type: float, low: 0.8, high: 0.99, when: {optimizer: sgd}}
"""))
    samples = sample(space)
    for values in samples:
        assert 1e-4 <= values["lr"] <= 1e-1
        assert values["batch_size"] in (16, 32, 48, 64)
        assert ("train.momentum" in values) == (values["optimizer"] == "sgd")
    assert {v["optimizer"] for v in samples} == {"adam", "sgd"}
    config = load_project("glaucoma").replace(samples[0])
    assert config.train.lr == samples[0]["lr"]


def test_when_accepts_a_list_of_values(tmp_path):
    space = load_search_space(write_space(tmp_path, """
optimizer: {type: categorical, choices: [adam, adamw, sgd]}
weight_decay: {type: float, low: 1.0e-6, high: 1.0e-2, log: true, when: {optimizer: [adamw, sgd]}}
"""))
    for values in sample(space):
        assert ("weight_decay" in values) == (values["optimizer"] in ("adamw", "sgd"))


def test_space_names_resolve_under_search_spaces():
    assert space_path("glaucoma_small_cnn").name == "glaucoma_small_cnn.yaml"
    assert space_path("glaucoma_small_cnn").parent.name == "search_spaces"
    assert space_path("some/dir/x.yaml") == Path("some/dir/x.yaml")


@pytest.mark.parametrize("text, key, expected", [
    ("lr: {type: gaussian, low: 0, high: 1}", "lr", "type 'gaussian'"),
    ("lr: {low: 0.1, high: 1}", "lr", "type None"),
    ("lr: 0.01", "lr", "expected a mapping"),
    ("lr: {type: float, low: 0.1, high: 0.01}", "lr", "`low <= high` must hold, but got (low=0.1, high=0.01)"),
    ("batch_size: {type: int, low: 64, high: 16}", "batch_size", "`low <= high` must hold, but got (low=64, high=16)"),
    ("optimizer: {type: categorical, choices: []}", "optimizer", "non-empty list"),
    ("optimizer: {type: categorical}", "optimizer", "non-empty list"),
    ("optimizer: {type: categorical, choices: [adam, adam]}", "optimizer", "distinct"),
    ("train.lrate: {type: float, low: 0.1, high: 1}", "train.lrate", "unknown key"),
    ("learning_rate: {type: float, low: 0.1, high: 1}", "learning_rate", "unknown key"),
    ("lr: {type: float, low: 0, high: 1, log: true}", "lr", "`low > 0` must hold for `log=True`"),
    ("lr: {type: float, low: -1.0, high: 1, log: true}", "lr", "`low > 0` must hold for `log=True`"),
    ("batch_size: {type: int, low: 0, high: 64, log: true}", "batch_size", "`low >= 1` must hold for `log=True`"),
    ("lr: {type: float, low: 0.1, high: 1, lo: 3}", "lr", "unknown field(s) lo"),
    ("lr: {type: float, low: a, high: 1}", "lr", "low = 'a'"),
    ("batch_size: {type: int, low: 16.5, high: 64}", "batch_size", "expected an integer"),
    ("batch_size: {type: int, low: 16, high: 64, step: 0}", "batch_size", "`step > 0` must hold, but got step=0"),
    ("batch_size: {type: int, low: 16, high: 64, step: 1.5}", "batch_size", "step = 1.5: expected an integer"),
    ("lr: {type: float, low: 0.1, high: 1, step: 0.1, log: true}", "lr", "`step` is not supported when `log` is true"),
    ("lr: {type: float, low: 0.1, high: 1, log: maybe}", "lr", "log = 'maybe': expected true or false"),
    ("epochs: {type: int, low: 5, high: 20}", "epochs", "search.max_epochs"),
    ("train.momentum: {type: float, low: 0.8, high: 0.9, when: {optimizer: sgd}}", "train.momentum",
     "defined above"),
    ("optimizer: {type: categorical, choices: [adam]}\n"
     "train.momentum: {type: float, low: 0.8, high: 0.9, when: {optimizer: sgd}}", "train.momentum",
     "among its choices"),
    ("lr: {type: float, low: 0.1, high: 1}\ntrain.lr: {type: float, low: 0.1, high: 1}", "train.lr", "twice"),
])
def test_bad_space_is_an_error_naming_file_and_key(tmp_path, text, key, expected):
    path = write_space(tmp_path, text)
    with pytest.raises(MedxpError) as error:
        load_search_space(path)
    message = str(error.value)
    assert str(path) in message and f"'{key}'" in message and expected in message


@pytest.mark.parametrize("text", ["", "[lr, batch_size]", "lr: {type: float"])
def test_empty_or_malformed_file_is_an_error_naming_the_file(tmp_path, text):
    path = write_space(tmp_path, text)
    with pytest.raises(MedxpError, match=str(path)):
        load_search_space(path)


def test_missing_file_is_an_error_listing_the_spaces(tmp_path):
    with pytest.raises(MedxpError, match=r"no_such_space\.yaml: cannot read search space.*glaucoma"):
        load_search_space("no_such_space")


def test_values_the_config_rejects_are_an_error_naming_file_and_key(tmp_path):
    path = write_space(tmp_path, "optimizer: {type: categorical, choices: [adam, lbfgs]}")
    with pytest.raises(MedxpError) as error:
        load_search_space(path).check_against(load_project("glaucoma"))
    assert str(path) in str(error.value) and "optimizer" in str(error.value) and "lbfgs" in str(error.value)


@pytest.mark.parametrize("key, value", [("search.n_trials", 0), ("search.max_concurrent", 0),
                                        ("search.grace_period", 0), ("search.reduction_factor", 1),
                                        ("search.sampler", "cmaes"), ("search.cpus_per_trial", 0),
                                        ("search.grace_period", 99)])
def test_bad_search_settings_are_errors_naming_the_key(key, value):
    with pytest.raises(MedxpError, match=key.replace(".", r"\.")):
        load_project("glaucoma", {key: value})


def test_new_optimizers_are_accepted():
    from medxp.training.optim import OPTIMIZERS

    for name in ("adadelta", "adagrad", "rmsprop"):
        assert load_project("glaucoma", {"optimizer": name}).train.optimizer == name
        assert name in OPTIMIZERS


def test_a_space_searching_a_key_the_model_does_not_read_is_refused_before_any_trial():
    space = load_search_space("glaucoma_small_cnn")  # searches dropout
    config = load_project("glaucoma", {"model": "resnet18"}, experiment="small_cnn")
    with pytest.raises(MedxpError, match=r"glaucoma_small_cnn.yaml: parameter 'dropout' searches model.dropout, which "
                                         r"model 'resnet18' does not read.*small_cnn"):
        space.check_against(config)
    space.check_against(config.replace({"model": "vgg16_dwsep"}))  # VGG applies it per conv block


def test_a_searched_model_is_checked_against_each_candidate_its_when_allows(tmp_path):
    refused = load_search_space(write_space(tmp_path, """
model: {type: categorical, choices: [small_cnn, resnet18]}
dropout: {type: float, low: 0.0, high: 0.4}
"""))
    with pytest.raises(MedxpError, match=r"parameter 'dropout' searches model.dropout, which model 'resnet18'"):
        refused.check_against(load_project("glaucoma"))
    limited = load_search_space(write_space(tmp_path, """
model: {type: categorical, choices: [small_cnn, resnet18]}
dropout: {type: float, low: 0.0, high: 0.4, when: {model: small_cnn}}
model.head_pooling: {type: categorical, choices: [avg, max], when: {model: resnet18}}
"""))
    limited.check_against(load_project("glaucoma"))
