"""Every project, and every experiment of one, has a search space that fits its model; list-valued choices."""

from __future__ import annotations

import optuna
import pytest
import torch

from medxp.config import experiment_names, load_project, project_names, project_recipe
from medxp.errors import MedxpError
from medxp.models import create_model
from medxp.models.estimator import EstimatorFit, EstimatorModel
from medxp.models.factory import check_settings
from medxp.search.space import load_search_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def model_input(config) -> torch.Tensor:
    spec = config.dataset
    if spec.modality == "tabular":
        return torch.randn(2, len(spec.feature_columns))
    return torch.randn(2, spec.channels, spec.image_size, spec.image_size)


@pytest.mark.parametrize("project", project_names())
def test_every_project_has_its_own_space_that_fits_its_model(project):
    config = load_project(project)
    space = load_search_space(config.search.space or config.dataset.name)
    # Its own, or the one of the recipe it starts from (recipes/<name>.yaml), which fits the recipe's model.
    assert space.path.name in {f"{project}.yaml", f"{project_recipe(project)}.yaml"}
    space.check_against(config)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(4):  # sampled configs build the project's model and run it on the project's input shape
        trial = study.ask()
        sampled = config.replace(space(trial), origin=f"{space.path}: a sample")
        study.tell(trial, 0.0)
        model = create_model(sampled.model, sampled.dataset).eval()
        if isinstance(model, EstimatorModel):  # fitted in one call before it predicts anything
            fit_on_random_rows(model, sampled)
        with torch.no_grad():
            assert model(model_input(sampled)).shape == (2, len(config.dataset.class_names))


def fit_on_random_rows(model: EstimatorModel, config) -> None:
    """Fits an estimator model on random rows of the config's input shape, every class present."""
    classes = len(config.dataset.class_names)
    rows = torch.randn(20 * classes, len(config.dataset.feature_columns)).numpy()
    model.fit_arrays(rows, torch.arange(len(rows)).numpy() % classes, None, None, EstimatorFit())


EXPERIMENTS = [(project, experiment) for project in project_names() for experiment in experiment_names(project)]
# Keys a staged run (train.stage_epochs set) does not read: each stage has its own epochs, lr and unfrozen layers.
STAGED_RUN_IGNORES = {"train.lr", "train.epochs", "model.unfrozen_layers"}
# What an experiment fixes on purpose (what its study compares or is about): never searched. Keyed
# by project (all its experiments), or by project/experiment.
FIXED_ON_PURPOSE = {
    **{f"covid_radiography/{step}": {"model.batch_norm", "model.dropout", "model.head_dropout", "train.patience"}
       for step in ("cnn_base", "cnn_bn", "cnn_dropout", "cnn_bn_dropout", "cnn_bn_dropout_early_stopping")},
    **{f"chest_xray_pneumonia/{variant}": {"train.class_weights"} for variant in ("vgg16_plain", "vgg16_dwsep_augmented")},
    "fetal_health/mlp_class_weights": {"train.class_weights"},
    "glaucoma": {"train.stage_unfrozen_layers", "train.stage_epochs"},
    "organsmnist": {"model.channels", "model.unfrozen_layers"},
}


@pytest.mark.parametrize("project, experiment", EXPERIMENTS, ids=[f"{p}-{e}" for p, e in EXPERIMENTS])
def test_every_experiment_has_a_space_that_fits_its_model(project, experiment):
    config = load_project(project, experiment=experiment)
    space = load_search_space(config.search.space or config.dataset.name)
    space.check_against(config)  # refused when it searches a model.* key the experiment's model does not read
    searched = {p.config_key for p in space.parameters}
    assert not searched & (FIXED_ON_PURPOSE.get(project, set()) | FIXED_ON_PURPOSE.get(f"{project}/{experiment}", set()))
    if config.train.stage_epochs:
        assert not searched & STAGED_RUN_IGNORES, f"{space.path}: searches keys a staged run ignores"
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(8):  # sampled values are valid config values and knobs the model applies
        trial = study.ask()
        sampled = config.replace(space(trial), origin=f"{space.path}: a sample")
        study.tell(trial, 0.0)
        check_settings(sampled.model)
        assert sampled.model.name == config.model.name


def test_the_staged_efficientnet_searches_the_stage_rates_it_trains_with():
    from medxp.training.stages import training_stages

    config = load_project("glaucoma", experiment="efficientnet_staged")
    space = load_search_space(config.search.space)
    stage_lrs = next(p for p in space.parameters if p.config_key == "train.stage_lrs")
    assert tuple(config.train.stage_lrs) in {tuple(c) for c in stage_lrs.choices}  # the study's schedule is a choice
    for choice in stage_lrs.choices:
        stages = training_stages(config.replace({"train.stage_lrs": choice}))
        assert [lr for _, _, lr in stages] == choice


def test_fetal_health_space_searches_the_gradient_boosting_and_class_weights():
    config = load_project("fetal_health")
    space = load_search_space("fetal_health")
    assert config.model.name == "hist_gradient_boosting"
    by_key = {p.config_key: p for p in space.parameters}
    assert {"model.gb_learning_rate", "model.gb_max_iter", "model.gb_max_leaf_nodes", "model.gb_min_samples_leaf",
            "model.gb_l2_regularization", "model.gb_max_features", "train.class_weights"} == set(by_key)
    assert set(by_key["train.class_weights"].choices) == {"", "balanced"}
    space.check_against(config)


def test_fetal_health_mlp_space_searches_the_mlp_widths_and_class_weights():
    config = load_project("fetal_health", experiment="mlp")
    space = load_search_space(config.search.space)
    assert space.path.name == "fetal_health_mlp.yaml"
    by_key = {p.config_key: p for p in space.parameters}
    assert {"model.hidden_sizes", "model.dropout", "train.lr", "train.batch_size", "train.weight_decay",
            "train.class_weights"} == set(by_key)
    assert [128, 64] in by_key["model.hidden_sizes"].choices
    assert set(by_key["train.class_weights"].choices) == {"", "balanced"}
    space.check_against(config)


def test_list_choices_reach_the_config_and_optuna_records_their_json(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("model.hidden_sizes: {type: categorical, choices: [[64], [128, 64]]}\n"
                    "dropout: {type: float, low: 0.0, high: 0.1, when: {model.hidden_sizes: [[128, 64]]}}\n")
    space = load_search_space(path)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        values = space(trial)
        study.tell(trial, 0.0)
        assert values["model.hidden_sizes"] in ([64], [128, 64])
        assert ("dropout" in values) == (values["model.hidden_sizes"] == [128, 64])
        assert trial.params["model.hidden_sizes"] in ("[64]", "[128, 64]")  # what the study stores
        assert space.config_values(trial.params) == values
        config = load_project("fetal_health").replace(values)
        assert config.model.hidden_sizes == tuple(values["model.hidden_sizes"])
        seen.add(trial.params["model.hidden_sizes"])
    assert seen == {"[64]", "[128, 64]"}


@pytest.mark.parametrize("choices, expected", [
    ("[[64], [64]]", "distinct"),
    ("[[64], '[64]']", "distinct"),
    ("[[], [64]]", "non-empty lists"),
    ("[[[64]], [32]]", "non-empty lists"),
])
def test_bad_list_choices_are_errors_naming_file_and_key(tmp_path, choices, expected):
    path = tmp_path / "space.yaml"
    path.write_text(f"model.hidden_sizes: {{type: categorical, choices: {choices}}}\n")
    with pytest.raises(MedxpError) as error:
        load_search_space(path)
    message = str(error.value)
    assert str(path) in message and "'model.hidden_sizes'" in message and expected in message


def test_the_best_trial_of_a_list_choice_becomes_the_best_config():
    from medxp.search.runner import _result, trial_base_config

    config = load_project("fetal_health", {"data.data_dir": "/nowhere"}, experiment="mlp")
    space = load_search_space("fetal_health_mlp")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for value, widths in ((0.6, "[64]"), (0.9, "[128, 64]")):
        study.enqueue_trial({"model.hidden_sizes": widths})
        trial = study.ask()
        space(trial)
        study.tell(trial, value)
    assert study.best_trial.params["model.hidden_sizes"] == "[128, 64]"  # the study holds the JSON text
    result = _result(study, space, config, trial_base_config(config), "memory", "run-id", 2, 1.0)
    assert result.best_params["model.hidden_sizes"] == [128, 64]
    assert result.best_config.model.hidden_sizes == (128, 64)
