"""What `medxp download` does around the network: placing MedMNIST files, unpacking Kaggle archives, errors."""

from __future__ import annotations

import re
import subprocess
import zipfile
from pathlib import Path

import pytest

from medxp.config import load_project
from medxp.data import download
from medxp.data.datamodule import create_datamodule
from medxp.errors import MedxpError
from tests.unit.test_sources import make_covid, make_kermany, write_npz
from tests.unit.test_tabular import write_csv


def zip_folder(folder: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as opened:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                opened.write(path, f"{prefix}{path.relative_to(folder).as_posix()}")
        opened.writestr("__MACOSX/._junk", b"")
    return archive


def test_kermany_archive_with_wrapper_and_duplicate_folders_is_placed(tmp_path):
    source = make_kermany(tmp_path / "source", patients=6)
    archive = tmp_path / "archive.zip"
    with zipfile.ZipFile(zip_folder(source, archive, prefix="chest_xray/"), "a") as opened:
        opened.writestr("chest_xray/chest_xray/train/NORMAL/IM-0001-0001.jpeg", b"duplicate")
    config = load_project("chest_xray_pneumonia")
    target = download.unpack_layout(archive, tmp_path / "data" / "chest_xray_pneumonia", config)
    assert sorted(p.name for p in target.iterdir()) == ["chest_xray", "test", "train", "val"]
    data = create_datamodule(config.replace({"data.data_dir": str(target), "dataset.image_size": 8,
                                             "data.cache": False, "data.val_fraction": 0.25}))
    assert len(data.files["test"]) == 24


def test_covid_archive_is_placed_and_readable(tmp_path):
    source = make_covid(tmp_path / "source", per_class=10)
    archive = zip_folder(source, tmp_path / "covid.zip", prefix="COVID-19_Radiography_Dataset/")
    config = load_project("covid_radiography")
    target = download.unpack_layout(archive, tmp_path / "covid", config)
    assert (target / "Viral Pneumonia" / "images").is_dir()
    data = create_datamodule(config.replace({"data.data_dir": str(target), "dataset.image_size": 8,
                                             "data.cache": False}))
    assert sum(len(files) for files in data.files.values()) == 40


def test_archive_without_the_layout_is_named(tmp_path):
    (tmp_path / "source" / "other").mkdir(parents=True)
    (tmp_path / "source" / "other" / "x.txt").write_text("x")
    archive = zip_folder(tmp_path / "source", tmp_path / "a.zip", prefix="wrapper/")
    with pytest.raises(MedxpError, match=r"no folder in the download holds the 'training_testing' layout"):
        download.unpack_layout(archive, tmp_path / "brain", load_project("brain_tumor_mri"))


def test_not_a_zip_is_named(tmp_path):
    (tmp_path / "a.zip").write_bytes(b"nope")
    with pytest.raises(MedxpError, match=r"a.zip: not a zip archive"):
        download.unpack_layout(tmp_path / "a.zip", tmp_path / "x", load_project("brain_tumor_mri"))


def test_medmnist_download_places_a_checked_npz(tmp_path, monkeypatch):
    def fake_fetch(flag, image_size, folder):
        return write_npz(folder / download.medmnist_file_name(flag, image_size))

    monkeypatch.setattr(download, "_fetch_medmnist", fake_fetch)
    path = download.download_project("pneumoniamnist", tmp_path / "data")
    assert path == tmp_path / "data" / "pneumoniamnist.npz"
    assert sorted(p.name for p in path.parent.iterdir()) == ["pneumoniamnist.npz"]  # no staging left


def test_medmnist_download_with_wrong_keys_places_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "_fetch_medmnist",
                        lambda flag, size, folder: write_npz(folder / "x.npz", drop="test_images"))
    with pytest.raises(MedxpError, match=r"missing arrays \['test_images'\]"):
        download.download_project("pneumoniamnist", tmp_path / "data")
    assert list((tmp_path / "data").iterdir()) == []


@pytest.mark.parametrize("size, name", [(28, "organsmnist.npz"), (64, "organsmnist_64.npz"),
                                        (224, "organsmnist_224.npz"), (32, "organsmnist.npz")])
def test_medmnist_file_names(size, name):
    assert download.medmnist_file_name("organsmnist", size) == name


def test_kaggle_without_tool_or_token_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(download.shutil, "which", lambda name: None)
    with pytest.raises(MedxpError, match=r"the 'kaggle' command is not installed"):
        download.download_project("brain_tumor_mri", tmp_path / "brain")
    monkeypatch.setattr(download.shutil, "which", lambda name: "/usr/bin/kaggle")
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-token"))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    with pytest.raises(MedxpError, match=r"kaggle.json: no Kaggle API token"):
        download.download_project("brain_tumor_mri", tmp_path / "brain")


def test_project_without_a_source_is_named(tmp_path):
    with pytest.raises(MedxpError, match=r"glaucoma/project.yaml: 'dataset.source_id' = '': expected"):
        download.download_project("glaucoma", tmp_path / "g")


FETAL_URL = "https://www.kaggle.com/datasets/andrewmvd/fetal-health-classification"


def test_fetal_health_without_kaggle_names_the_page_and_where_the_csv_goes(tmp_path, monkeypatch):
    target = tmp_path / "data" / "fetal_health"
    monkeypatch.setattr(download.shutil, "which", lambda name: None)
    with pytest.raises(MedxpError) as error:
        download.download_project("fetal_health", target)
    message = str(error.value)
    assert "'kaggle' command is not installed" in message
    assert FETAL_URL in message and f"put its fetal_health.csv at {target / 'fetal_health.csv'}" in message
    monkeypatch.setattr(download.shutil, "which", lambda name: "/usr/bin/kaggle")
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-token"))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    with pytest.raises(MedxpError, match=r"no Kaggle API token.*" + re.escape(FETAL_URL)):
        download.download_project("fetal_health", target)
    assert not target.exists()


def test_fetal_health_is_fetched_from_its_kaggle_slug_and_readable(tmp_path, monkeypatch):
    config = load_project("fetal_health")
    csv_source = write_csv(tmp_path / "fetal_health.csv", config.dataset.feature_columns, rows=60)
    commands = []

    def fake_kaggle(command, **kwargs):  # what `kaggle datasets download -d <slug> -p <folder>` leaves
        commands.append(command)
        with zipfile.ZipFile(Path(command[command.index("-p") + 1]) / "fetal-health-classification.zip", "w") as z:
            z.write(csv_source, "fetal_health.csv")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(download.shutil, "which", lambda name: "/usr/bin/kaggle")
    monkeypatch.setenv("KAGGLE_USERNAME", "user")
    monkeypatch.setenv("KAGGLE_KEY", "key")
    monkeypatch.setattr(download.subprocess, "run", fake_kaggle)
    target = download.download_project("fetal_health", tmp_path / "data" / "fetal_health")
    assert commands[0][:5] == ["kaggle", "datasets", "download", "-d", "andrewmvd/fetal-health-classification"]
    assert sorted(p.name for p in target.iterdir()) == ["fetal_health.csv"]
    data = create_datamodule(config.replace({"data.data_dir": str(target)}))
    assert sum(len(dataset) for dataset in data.datasets.values()) == 60


def test_the_hand_download_hint_asks_the_table_layout_for_its_file_name(tmp_path, monkeypatch):
    from medxp.data.sources import TABLE_LAYOUTS, TableLayout

    plugged = TableLayout(find=lambda root, spec: root, file_name=lambda spec: f"{spec.name}.parquet")
    monkeypatch.setitem(TABLE_LAYOUTS._entries, "parquet", plugged)  # a table layout a later module registers
    config = load_project("fetal_health", {"dataset.layout": "parquet"})

    hint = download.manual_download_hint("owner/name", tmp_path, config)
    assert hint.endswith(f"put its fetal_health.parquet at {tmp_path / 'fetal_health.parquet'}")
    image_hint = download.manual_download_hint("owner/name", tmp_path, load_project("covid_radiography"))
    assert f"unpack it into {tmp_path}" in image_hint
