"""Series files: the real ones load, bad ones are refused naming the file and key; variants' configs share
seed and split; variants that share an architecture get the same initial weights."""

from __future__ import annotations

import shutil

import pytest
import torch

from medxp.config import projects_dir
from medxp.errors import MedxpError
from medxp.flows.series import InitialWeights, config_hash, variant_configs
from medxp.hashing import state_dict_sha256
from medxp.models import create_model
from medxp.series_files import load_series, series_names

REAL = [("covid_radiography", "ablation", 5), ("organsmnist", "ladder", 7), ("chest_xray_pneumonia", "vgg16_pair", 2)]


@pytest.mark.parametrize("dataset, name, count", REAL)
def test_the_seed_studies_series_load_with_one_seed_and_split(dataset, name, count):
    spec = load_series(dataset, name)
    assert len(spec.variants) == count and name in series_names(dataset)
    configs = variant_configs(dataset, spec, {})
    assert len({config.train.seed for config in configs.values()}) == 1
    assert len({config.data.split_seed for config in configs.values()}) == 1


def test_the_ladder_ends_in_an_ensemble_of_three_and_the_vgg_pair_differs_in_convolutions():
    ladder = load_series("organsmnist", "ladder")
    assert ladder.variants[-1].is_ensemble and ladder.variants[-1].ensemble_top == 3
    pair = variant_configs("chest_xray_pneumonia", load_series("chest_xray_pneumonia", "vgg16_pair"), {})
    assert [config.model.name for config in pair.values()] == ["vgg16_dwsep", "vgg16_plain"]


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = tmp_path / "projects"
    shutil.copytree(projects_dir() / "covid_radiography", root / "covid_radiography")
    monkeypatch.setenv("MEDXP_PROJECTS_DIR", str(root))
    folder = root / "covid_radiography" / "series"

    def write(text: str) -> str:
        (folder / "bad.yaml").write_text(text)
        return "bad"

    return write


@pytest.mark.parametrize("text, message", [
    ("variants: []", r"'variants': expected a non-empty list"),
    ("varients: [{label: a}]", r"unknown key\(s\) \['varients'\]"),
    ("variants: [{label: a, experiment: cnn_base}, {label: a, experiment: cnn_bn}]", r"labels \['a'\] appear more"),
    ("variants: [{label: a, experiment: cnn_base}, {label: m, ensemble: {top: 2}}]", r"'m' averages earlier.*two"),
    ("variants: [{label: a}, {label: b}, {label: m, ensemble: {top: 1}}]", r"expected \{top: N\} with N >= 2"),
    ("variants: [{label: a, overrides: {train.seed: 3}}]", r"'a': 'overrides' sets the seed"),
    ("variants: [{label: 'a/b'}]", r"'label' = 'a/b'"),
    ("variants: [{label: a, colour: red}]", r"variant 1: unknown key\(s\) \['colour'\]"),
    ("seed: x\nvariants: [{label: a}]", r"'seed' = 'x': expected an integer"),
    ("variants: [oops", r"not valid YAML"),
])
def test_a_bad_series_file_is_refused_naming_the_file_and_key(project, text, message):
    with pytest.raises(MedxpError, match=message) as error:
        load_series("covid_radiography", project(text))
    assert "bad.yaml" in str(error.value)


def test_an_unknown_series_lists_the_projects_series():
    with pytest.raises(MedxpError, match=r"unknown series 'nope'.*ablation"):
        load_series("covid_radiography", "nope")


def test_variants_are_refused_before_training_when_they_disagree_on_the_split_or_name_a_bad_key(project):
    name = project("variants: [{label: a, experiment: cnn_base}, {label: b, experiment: cnn_bn, "
                   "overrides: {data.split_seed: 7}}]")
    with pytest.raises(MedxpError, match=r"variant 'b' has 'data.split_seed' = 7 but 'a' has 42"):
        variant_configs("covid_radiography", load_series("covid_radiography", name), {})
    name = project("variants: [{label: a, experiment: cnn_base, overrides: {train.lrr: 0.1}}]")
    with pytest.raises(MedxpError, match=r"variant 'a'.*train.lrr"):
        variant_configs("covid_radiography", load_series("covid_radiography", name), {})


def test_the_series_seed_and_the_command_lines_overrides_reach_every_variant(project):
    name = project("seed: 7\noverrides: {train.epochs: 3}\nvariants: [{label: a, experiment: cnn_base}, "
                   "{label: b, experiment: cnn_bn, overrides: {train.epochs: 4}}]")
    configs = variant_configs("covid_radiography", load_series("covid_radiography", name), {"train.lr": "0.05"})
    assert [(c.train.seed, c.train.epochs, c.train.lr) for c in configs.values()] == [(7, 3, 0.05), (7, 4, 0.05)]
    assert config_hash(configs["a"]) != config_hash(configs["b"])
    again = variant_configs("covid_radiography", load_series("covid_radiography", name), {"train.lr": "0.05"})
    assert config_hash(again["a"]) == config_hash(configs["a"])


def test_variants_sharing_an_architecture_start_from_the_first_ones_initial_weights():
    configs = variant_configs("covid_radiography", load_series("covid_radiography", "ablation"),
                              {"model.channels": "[4,8]", "dataset.image_size": "16"})
    weights, hashes = InitialWeights(), {}
    for seed, (label, config) in enumerate(configs.items()):
        torch.manual_seed(seed)  # a different draw for each: only the bank makes them equal
        model = create_model(config.model, config.dataset)
        weights.initialiser(label)(model)
        hashes[label] = state_dict_sha256(model)
    assert hashes["cnn_base"] == hashes["cnn_dropout"] != hashes["cnn_bn"]
    assert hashes["cnn_bn"] == hashes["cnn_bn_dropout"] == hashes["cnn_bn_dropout_early_stopping"]
    assert weights.source == {"cnn_base": "cnn_base", "cnn_bn": "cnn_bn", "cnn_dropout": "cnn_base",
                              "cnn_bn_dropout": "cnn_bn", "cnn_bn_dropout_early_stopping": "cnn_bn"}
