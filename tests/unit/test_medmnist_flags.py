"""Any MedMNIST 2D flag is a dataset: the generic project, its data, and the flags that are refused."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import optuna
import pytest
import torch

from medxp import medmnist_flags
from medxp.cli import main
from medxp.config import (PROJECTS_DIR_ENV, experiment_names, generic_project_names, is_generic_project,
                          load_project, project_names)
from medxp.data import download
from medxp.data.datamodule import create_datamodule
from medxp.errors import MedxpError
from medxp.models import create_model
from medxp.search.space import load_search_space
from tests.unit.test_sources import write_npz

optuna.logging.set_verbosity(optuna.logging.WARNING)

# MedMNIST v2's Table 1: classes and channels of each 2D flag.
PUBLISHED = {"pathmnist": (9, 3), "dermamnist": (7, 3), "octmnist": (4, 1), "pneumoniamnist": (2, 1),
             "retinamnist": (5, 3), "breastmnist": (2, 1), "bloodmnist": (8, 3), "tissuemnist": (8, 1),
             "organamnist": (11, 1), "organcmnist": (11, 1), "organsmnist": (11, 1)}
REFUSED = {"chestmnist": "multi-label", **{flag: "3D volumes" for flag in (
    "organmnist3d", "nodulemnist3d", "adrenalmnist3d", "fracturemnist3d", "vesselmnist3d", "synapsemnist3d")}}


@pytest.fixture
def no_projects(tmp_path, monkeypatch):
    """A projects folder without any project: every 2D flag loads as its generic project."""
    folder = tmp_path / "projects"
    folder.mkdir()
    monkeypatch.setenv(PROJECTS_DIR_ENV, str(folder))
    return folder


def tiny_bloodmnist(path, classes: int = 8):
    return write_npz(path, counts=(24, 8, 8), rgb=True, classes=classes)


def test_the_table_holds_every_2d_flag_with_its_published_classes_and_channels():
    assert {flag: (len(info.labels), info.channels) for flag, info in medmnist_flags.FLAGS_2D.items()} == PUBLISHED
    assert generic_project_names() == sorted(PUBLISHED)
    for info in medmnist_flags.FLAGS_2D.values():
        names = info.medxp_class_names()
        assert len(set(names)) == len(info.labels) and all(names), info.flag
        assert (info.task == "binary-class") == bool(info.positive_label) == (len(info.labels) == 2), info.flag
        assert sum(info.samples) > 0 and info.licence.startswith("CC BY")


def test_label_names_become_the_class_names_the_projects_use():
    assert medmnist_flags.class_name("femur-left") == "femur_left"
    assert medmnist_flags.class_name("normal, benign") == "normal_benign"
    assert medmnist_flags.class_name("Collecting Duct, Connecting Tubule") == "collecting_duct_connecting_tubule"
    assert medmnist_flags.FLAGS_2D["bloodmnist"].medxp_class_names()[3] == \
        "immature_granulocytes_myelocytes_metamyelocytes_and_promyelocytes"


@pytest.mark.parametrize("flag", sorted(set(PUBLISHED) & set(project_names())))
def test_the_generic_project_of_a_flag_with_a_project_agrees_with_it(flag, no_projects, monkeypatch):
    generic = load_project(flag).dataset
    monkeypatch.delenv(PROJECTS_DIR_ENV)
    project = load_project(flag)
    assert not is_generic_project(flag) and project.source.endswith(f"{flag}/project.yaml")
    for key in ("name", "layout", "class_names", "positive_class", "channels", "image_size", "licence", "source_id"):
        assert getattr(generic, key) == getattr(project.dataset, key), key


@pytest.mark.parametrize("flag", sorted(PUBLISHED))
def test_every_2d_flag_loads_a_generic_project_whose_space_fits_its_model(flag, no_projects):
    config = load_project(flag)
    assert is_generic_project(flag) and config.source == f"generic MedMNIST project '{flag}'"
    classes, channels = PUBLISHED[flag]
    spec = config.dataset
    assert (spec.name, spec.layout, spec.source_id, spec.image_size) == (flag, "medmnist", flag, 28)
    assert (len(spec.class_names), spec.channels, len(spec.mean), len(spec.std)) == (classes, channels,
                                                                                       channels, channels)
    assert "MedMNIST v2" in spec.provenance and f"flag {flag}" in spec.provenance
    assert experiment_names(flag) == []
    assert config.eval.primary_metric == ("roc_auc" if classes == 2 else "accuracy")
    space = load_search_space(config.search.space)
    assert space.path.name == "medmnist.yaml"
    space.check_against(config)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(3):
        trial = study.ask()
        sampled = config.replace(space(trial), origin=f"{space.path}: a sample")
        study.tell(trial, 0.0)
        model = create_model(sampled.model, sampled.dataset).eval()
        with torch.no_grad():
            assert model(torch.randn(2, channels, 28, 28)).shape == (2, classes)


def test_binary_generic_projects_name_the_finding_as_positive_class(no_projects):
    assert load_project("pneumoniamnist").dataset.positive_class == "pneumonia"
    assert load_project("breastmnist").dataset.positive_class == "malignant"
    assert load_project("bloodmnist").dataset.positive_class == ""  # multi-class: macro metrics, no positive


def test_bloodmnist_reads_its_npz_under_the_data_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDXP_DATA_DIR", str(tmp_path / "data"))
    npz = tiny_bloodmnist(tmp_path / "data" / "bloodmnist" / "bloodmnist.npz")
    config = load_project("bloodmnist", {"data.cache": False})
    assert not (config.source.endswith(".yaml")) and is_generic_project("bloodmnist")
    data = create_datamodule(config)
    assert data.root == npz.parent and not data.synthetic
    assert data.datasets["train"].images.shape == (24, 3, 28, 28)
    counts = data.class_counts("train")
    assert list(counts) == list(config.dataset.class_names) and set(counts.values()) == {3}
    raw = np.load(npz)["test_images"]
    assert np.array_equal(data.datasets["test"].images.numpy(), raw.transpose(0, 3, 1, 2))  # 28 px RGB: untouched


def test_data_dir_may_name_the_npz_itself(tmp_path):
    npz = tiny_bloodmnist(tmp_path / "elsewhere.npz")
    data = create_datamodule(load_project("bloodmnist", {"data_dir": str(npz), "data.cache": False}))
    assert len(data.datasets["valid"]) == 8


def test_a_file_with_more_classes_than_the_flag_is_named(tmp_path):
    tiny_bloodmnist(tmp_path / "bloodmnist.npz", classes=9)
    with pytest.raises(MedxpError, match=r"bloodmnist.npz: 'train_labels' holds labels 0..8; expected 0..7 for the 8"):
        create_datamodule(load_project("bloodmnist", {"data_dir": str(tmp_path), "data.cache": False}))


def test_a_file_missing_classes_of_the_flag_is_warned_about(tmp_path, caplog):
    tiny_bloodmnist(tmp_path / "bloodmnist.npz", classes=6)
    with caplog.at_level(logging.WARNING, logger="medxp.data.medmnist"):
        create_datamodule(load_project("bloodmnist", {"data_dir": str(tmp_path), "data.cache": False}))
    assert "no image of 2 of the 8 classes of dataset.class_names (neutrophil, platelet)" in caplog.text


def test_stratified_cv_folds_of_an_npz_redraw_train_and_valid(tmp_path):
    from medxp.flows.cross_validation import stratified_plan

    tiny_bloodmnist(tmp_path / "bloodmnist.npz")
    folds, synthetic = stratified_plan(load_project("bloodmnist", {"data_dir": str(tmp_path), "data.cache": False,
                                                                   "cv.folds": 2}))
    modules = [fold.make_data() for fold in folds]
    assert not synthetic and len(modules) == 2
    for data in modules:  # an array source lists no files: the folds keep the empty lists
        assert [len(data.datasets[split]) for split in ("train", "valid", "test")] == [16, 16, 8]
        assert data.files == {"train": [], "valid": [], "test": []}
    assert modules[0].split_hash != modules[1].split_hash


def test_missing_data_points_at_medxp_download(tmp_path):
    with pytest.raises(MedxpError, match=r"bloodmnist: data folder not found.*medxp download bloodmnist"):
        create_datamodule(load_project("bloodmnist", {"data_dir": str(tmp_path / "bloodmnist")}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedxpError, match=r"data folder is empty; expected the 'medmnist' layout described in "
                                         r"README.md, any MedMNIST 2D flag"):
        create_datamodule(load_project("bloodmnist", {"data_dir": str(tmp_path / "empty")}))


def test_download_fetches_a_generic_flag_into_its_data_folder(tmp_path, monkeypatch):
    fetched = []

    def fake_fetch(flag, image_size, folder):
        fetched.append((flag, image_size))
        return tiny_bloodmnist(folder / download.medmnist_file_name(flag, image_size))

    monkeypatch.setattr(download, "_fetch_medmnist", fake_fetch)
    monkeypatch.setenv("MEDXP_DATA_DIR", str(tmp_path / "data"))
    path = download.download_project("bloodmnist")
    assert fetched == [("bloodmnist", 28)] and path == tmp_path / "data" / "bloodmnist" / "bloodmnist.npz"
    assert len(create_datamodule(load_project("bloodmnist", {"data.cache": False})).datasets["train"]) == 24


@pytest.mark.parametrize("flag", sorted(REFUSED))
def test_multi_label_and_3d_flags_are_refused_naming_flag_and_reason(flag, no_projects):
    with pytest.raises(MedxpError) as error:
        load_project(flag)
    message = str(error.value)
    assert message.startswith(f"dataset '{flag}': MedMNIST flag {flag} is not supported: ")
    assert REFUSED[flag] in message and "bloodmnist" in message  # the reason, and what is accepted
    with pytest.raises(MedxpError, match=f"MedMNIST flag {flag} is not supported"):
        download.download_project(flag)


def test_an_unknown_name_lists_the_projects_and_accepts_medmnist_2d_flags():
    with pytest.raises(MedxpError) as error:
        load_project("bloodmnst")
    message = str(error.value)
    assert message.startswith("unknown dataset 'bloodmnst': no ") and "glaucoma, " in message
    assert "or any MedMNIST 2D flag" in message and "bloodmnist, breastmnist" in message


def test_a_generic_project_has_no_experiments():
    with pytest.raises(MedxpError, match=r"unknown experiment 'cnn_base' of dataset 'bloodmnist': a generic MedMNIST "
                                         r"project has no experiments"):
        load_project("bloodmnist", experiment="cnn_base")


def test_the_cli_refuses_chestmnist_in_one_line_and_lists_generic_flags(capsys, mlflow_store):
    assert main(["train", "--dataset", "chestmnist"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "chestmnist is not supported: multi-label" in err
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "generic project from MedMNIST's metadata): bloodmnist, dermamnist" in listed
    assert "organsmnist" not in listed.split("metadata):")[1].split("\n")[0]  # it has its project folder


def test_loading_a_generic_project_imports_no_torch():
    code = ("import sys; from medxp.config import load_project; load_project('bloodmnist'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m.startswith('medxp.data')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
