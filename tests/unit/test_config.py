"""Config loading: defaults, project overrides, command-line overrides, and errors that name file and key."""

from __future__ import annotations

import pytest

from medxp.config import ExperimentConfig, load, load_project, project_names
from medxp.errors import MedxpError


def write(tmp_path, text: str):
    path = tmp_path / "project.yaml"
    path.write_text(text)
    return path


MINIMAL = "dataset: {name: toy, class_names: [a, b], positive_class: b}\n"


def test_project_file_overrides_only_what_it_names(tmp_path):
    config = load(write(tmp_path, MINIMAL + "train: {lr: 0.01}\n"))
    assert config.train.lr == 0.01
    assert config.train.batch_size == ExperimentConfig().train.batch_size
    assert config.dataset.class_names == ("a", "b")


def test_glaucoma_project_loads_with_its_contract():
    config = load_project("glaucoma")
    assert config.dataset.class_names == ("normal", "abnormal")
    assert config.dataset.positive_class == "abnormal"
    assert "glaucoma" in project_names()


def test_short_and_dotted_overrides_are_parsed_and_typed():
    config = load_project("glaucoma", {"lr": "0.05", "train.batch_size": "8", "model": "resnet18",
                                       "model.channels": "[4, 8]", "data.augment": "false"})
    assert (config.train.lr, config.train.batch_size, config.model.name) == (0.05, 8, "resnet18")
    assert config.model.channels == (4, 8) and config.data.augment is False


def test_flat_dict_holds_every_resolved_key():
    flat = load_project("glaucoma").to_flat_dict()
    assert flat["dataset.name"] == "glaucoma" and "train.seed" in flat and "eval.primary_metric" in flat


@pytest.mark.parametrize("text, words", [
    ("dataset: {name: toy, class_names: [a, b], colour: red}\n", ["project.yaml", "dataset.colour"]),
    (MINIMAL + "trian: {lr: 0.1}\n", ["project.yaml", "trian"]),
    (MINIMAL + "train: {lr: fast}\n", ["project.yaml", "train.lr", "number"]),
    (MINIMAL + "train: {epochs: 2.5}\n", ["train.epochs", "integer"]),
    (MINIMAL + "train: {optimizer: lbfgs}\n", ["train.optimizer", "adam"]),
    (MINIMAL + "train: {batch_size: 0}\n", ["train.batch_size", "positive"]),
    ("dataset: {name: toy, class_names: [a]}\n", ["dataset.class_names", "two"]),
    (MINIMAL + "model: {dropout: 1.5}\n", ["model.dropout"]),
    ("- just\n- a list\n", ["project.yaml", "mapping"]),
    ("dataset: {name: [unclosed\n", ["project.yaml", "YAML"]),
])
def test_bad_project_files_name_the_file_and_key(tmp_path, text, words):
    with pytest.raises(MedxpError) as error:
        load(write(tmp_path, text))
    for word in words:
        assert word in str(error.value)


def test_unknown_override_key_lists_valid_keys():
    with pytest.raises(MedxpError, match=r"unknown key 'train.lrate'.*lr"):
        load_project("glaucoma", {"train.lrate": "0.1"})


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(MedxpError, match=r"unknown dataset 'glaucomma'.*glaucoma"):
        load_project("glaucomma")


def test_missing_project_file_is_named(tmp_path):
    with pytest.raises(MedxpError, match="nothere.yaml"):
        load(tmp_path / "nothere.yaml")


def test_config_is_frozen():
    config = load_project("glaucoma")
    with pytest.raises(AttributeError):
        config.train.lr = 1.0


def registries():
    from medxp.data.datamodule import MODALITIES
    from medxp.data.sources import ARRAY_SOURCES, LAYOUTS, TABLE_LAYOUTS
    from medxp.training.optim import OPTIMIZERS, SCHEDULERS

    return {"train.optimizer": [OPTIMIZERS], "train.scheduler": [SCHEDULERS],
            "dataset.layout": [LAYOUTS, ARRAY_SOURCES, TABLE_LAYOUTS], "dataset.modality": [MODALITIES]}


@pytest.mark.parametrize("key", ["train.optimizer", "train.scheduler", "dataset.layout", "dataset.modality"])
def test_registered_choices_come_from_their_registry(tmp_path, key, monkeypatch):
    first = registries()[key][0]
    monkeypatch.setitem(first._entries, "plugged_in", object())  # a plug-in registered by a later module

    section, name = key.split(".")
    assert getattr(getattr(load_project("glaucoma", {key: "plugged_in"}), section), name) == "plugged_in"
    with pytest.raises(MedxpError) as error:
        load(write(tmp_path, f"{MINIMAL}{section}: {{{name}: bogus}}\n"))
    every_name = sorted({entry for registry in registries()[key] for entry in registry})
    assert str(error.value).endswith(f"project.yaml: '{key}' = 'bogus': expected one of {', '.join(every_name)}")


def test_the_csv_layout_is_known_to_a_process_that_imported_only_config():
    import subprocess
    import sys

    code = "from medxp.config import load_project; print(load_project('fetal_health').dataset.layout)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "csv"


def test_a_project_starts_from_its_recipe_and_an_experiment_can_drop_it(tmp_path, monkeypatch):
    projects, recipes = tmp_path / "projects", tmp_path / "recipes"
    (projects / "lab").mkdir(parents=True)
    recipes.mkdir()
    monkeypatch.setenv("MEDXP_PROJECTS_DIR", str(projects))
    monkeypatch.setenv("MEDXP_RECIPES_DIR", str(recipes))
    (recipes / "warm.yaml").write_text("model: {name: resnet18, head_dropout: 0.2}\ntrain: {lr: 0.01, epochs: 7}\n")
    (projects / "lab" / "project.yaml").write_text(
        "recipe: warm\ndataset: {name: lab, class_names: [a, b], positive_class: b}\ntrain: {lr: 0.5}\n")
    (projects / "lab" / "experiments").mkdir()
    (projects / "lab" / "experiments" / "scratch.yaml").write_text("recipe: none\nmodel: {name: small_cnn}\n")
    config = load_project("lab")
    assert (config.model.name, config.model.head_dropout, config.train.epochs) == ("resnet18", 0.2, 7)
    assert config.train.lr == 0.5  # the project's own key wins over the recipe's
    scratch = load_project("lab", experiment="scratch")
    assert (scratch.model.head_dropout, scratch.train.epochs, scratch.train.lr) == (0.3, 20, 0.5)

    (projects / "lab" / "project.yaml").write_text("recipe: hot\ndataset: {name: lab, class_names: [a, b], positive_class: b}\n")
    with pytest.raises(MedxpError, match=r"project.yaml: 'recipe' = 'hot': expected 'none' or the name of a file "
                                         r"under .*recipes; valid: warm"):
        load_project("lab")
    (projects / "lab" / "project.yaml").write_text("recipe: warm\ndataset: {name: lab, class_names: [a, b], positive_class: b}\n")
    (recipes / "warm.yaml").write_text("train: {lrr: 0.01}\n")
    with pytest.raises(MedxpError, match=r"warm.yaml: unknown key 'train.lrr'"):
        load_project("lab")
    (recipes / "warm.yaml").write_text("dataset: {image_size: 64}\n")
    with pytest.raises(MedxpError, match=r"warm.yaml: a recipe holds model, train, data, search and eval sections"):
        load_project("lab")
