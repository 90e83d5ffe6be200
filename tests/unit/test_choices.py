"""The registries behind config choices: declared light, filled by the heavy modules, never drifting apart."""

from __future__ import annotations

import subprocess
import sys

import pytest

import medxp.data  # noqa: F401  (fills the layout and modality registries)
import medxp.training.optim  # noqa: F401  (fills the optimizer and scheduler registries)
from medxp.choices import MODALITIES, MODALITY_CONTRACTS, REGISTERED_CHOICES, modality_contract, registered_choices
from medxp.config import load_project
from medxp.errors import MedxpError
from medxp.models.mlp import input_width

REGISTRIES = [registry for registries in REGISTERED_CHOICES.values() for registry in registries]


@pytest.mark.parametrize("registry", REGISTRIES, ids=lambda registry: registry.kind)
def test_each_registry_declares_exactly_the_names_medxp_registers(registry):
    assert registry.declared and sorted(registry.declared) == registry.names()


def test_every_modality_has_a_contract_and_every_contract_a_modality():
    assert MODALITY_CONTRACTS.names() == MODALITIES.names() == sorted(MODALITIES.declared)


def test_registered_choices_list_declared_names_and_later_plug_ins(monkeypatch):
    assert registered_choices()["dataset.layout"] == ["class_folders", "csv", "folds", "image_folder_splits",
                                                      "medmnist", "training_testing"]
    monkeypatch.setitem(REGISTERED_CHOICES["train.scheduler"][0]._entries, "warm_restarts", object())
    assert "warm_restarts" in registered_choices()["train.scheduler"]


def test_loading_a_config_imports_neither_torch_nor_the_data_and_training_modules():
    code = ("import sys; from medxp.config import load_project; "
            "load_project('glaucoma'); load_project('fetal_health'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch' "
            "or m.startswith(('medxp.data', 'medxp.training', 'medxp.models'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_modality_contract_gives_the_input_shape_the_mlp_reads():
    fetal, glaucoma = load_project("fetal_health").dataset, load_project("glaucoma").dataset
    assert modality_contract(fetal).input_shape(fetal) == (len(fetal.feature_columns),)
    assert input_width(fetal) == len(fetal.feature_columns) == 21
    assert input_width(glaucoma) == glaucoma.channels * glaucoma.image_size**2
    assert modality_contract(glaucoma).images and not modality_contract(fetal).images


def test_the_tabular_contract_is_checked_when_the_config_loads():
    with pytest.raises(MedxpError, match="'dataset.target_column' = '': expected the name of the CSV's target column"):
        load_project("fetal_health", {"dataset.target_column": ""})
    load_project("glaucoma", {"dataset.target_column": ""})  # an image spec has no target column to name
