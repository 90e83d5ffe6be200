"""The decoded-image cache: decoded once, reused without decoding, invalidated when files change, atomic."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medxp.config import load_project
from medxp.data import cache as cache_module
from medxp.data import images as images_module
from medxp.data import medmnist as medmnist_module
from medxp.data.cache import cache_dir, cached_array
from medxp.data.datamodule import create_datamodule
from medxp.errors import MedxpError
from tests.unit.test_sources import make_covid, write_npz


@pytest.fixture
def covid_config(tmp_path):
    root = make_covid(tmp_path / "covid", per_class=10)
    return load_project("covid_radiography", {"data.data_dir": str(root), "dataset.image_size": 8,
                                              "data.cache_dir": str(tmp_path / "cache")})


def forbid(monkeypatch, module, name):
    def fail(*args, **kwargs):
        raise AssertionError(f"{name} was called: the cache should have been used")

    monkeypatch.setattr(module, name, fail)


def cache_files(config):
    return sorted(p.name for p in (cache_dir(config) / config.dataset.name).glob("*.npy"))


def test_second_load_reads_the_cache_without_decoding(covid_config, monkeypatch):
    first = create_datamodule(covid_config)
    assert len(cache_files(covid_config)) == 3
    forbid(monkeypatch, images_module, "decode_image")
    second = create_datamodule(covid_config)
    for split in ("train", "valid", "test"):
        assert np.array_equal(first.datasets[split].images.numpy(), second.datasets[split].images.numpy())


def test_cache_is_memory_mapped_and_never_written_through(covid_config):
    create_datamodule(covid_config)
    data = create_datamodule(covid_config)
    path = cache_dir(covid_config) / "covid_radiography" / cache_files(covid_config)[0]
    before = path.read_bytes()
    data.datasets["test"].images[0].fill_(0)  # a careless in-place write changes a private copy only
    assert path.read_bytes() == before


def test_changed_file_invalidates_the_cache(covid_config, monkeypatch):
    create_datamodule(covid_config)
    image = sorted(Path(covid_config.data.data_dir).rglob("images/*.png"))[0]
    Image.new("L", (12, 12), 250).save(image)
    os.utime(image, ns=(1, 1))  # even a same-size rewrite is caught through the modification time
    decoded = []
    original = images_module.decode_image
    monkeypatch.setattr(images_module, "decode_image", lambda *a: decoded.append(a[0]) or original(*a))
    data = create_datamodule(covid_config)
    assert image in decoded
    row = [p for p, _ in data.files[split_of(data, image)]].index(image)
    assert int(data.datasets[split_of(data, image)].images[row].float().mean()) == 250
    assert len(cache_files(covid_config)) == 6


def split_of(data, path):
    return next(split for split, files in data.files.items() if any(p == path for p, _ in files))


def test_other_image_size_or_split_gets_its_own_cache(covid_config):
    create_datamodule(covid_config)
    create_datamodule(covid_config.replace({"dataset.image_size": 6}))
    create_datamodule(covid_config.replace({"data.split_seed": 3}))
    assert len(cache_files(covid_config)) == 9


def test_cache_off_decodes_every_time_and_writes_nothing(covid_config):
    config = covid_config.replace({"data.cache": False})
    create_datamodule(config)
    assert not (cache_dir(config) / config.dataset.name).exists()


def test_medmnist_cache_hit_never_decompresses_images(tmp_path, monkeypatch):
    write_npz(tmp_path / "pneumoniamnist.npz")
    config = load_project("pneumoniamnist", {"data.data_dir": str(tmp_path), "dataset.image_size": 14,
                                             "data.cache_dir": str(tmp_path / "cache")})
    first = create_datamodule(config)
    forbid(monkeypatch, medmnist_module, "convert_images")
    second = create_datamodule(config)
    assert np.array_equal(first.datasets["test"].images.numpy(), second.datasets["test"].images.numpy())


def test_failed_decode_leaves_no_cache_file(tmp_path):
    path = tmp_path / "c" / "x.npy"

    def broken(out):
        raise MedxpError("bad image")

    with pytest.raises(MedxpError):
        cached_array(path, (2, 1, 4, 4), broken)
    assert [p.name for p in path.parent.iterdir() if p.suffix != ""] == []  # no .npy, no temp file left


def test_reader_never_sees_a_half_written_file(tmp_path, monkeypatch):
    path = tmp_path / "x.npy"
    seen = []

    def fill(out):
        seen.append(path.exists())  # while decoding, the final name does not exist yet
        out[:] = 7
        return out

    array = cached_array(path, (3, 1, 2, 2), fill)
    assert seen == [False] and int(array.sum()) == 7 * 12 and isinstance(array, np.memmap)
    assert cached_array(path, (3, 1, 2, 2), lambda out: pytest.fail("decoded twice")).shape == (3, 1, 2, 2)


def test_unwritable_cache_folder_is_named(tmp_path, monkeypatch):
    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache_module, "_write_atomically", deny)
    with pytest.raises(MedxpError, match=r"cannot write the decoded-image cache.*data.cache_dir"):
        cached_array(tmp_path / "x.npy", (1, 1, 2, 2), lambda out: out)


def test_cache_dir_setting_then_environment_then_home(monkeypatch, covid_config):
    monkeypatch.setenv("MEDXP_CACHE_DIR", "/somewhere")
    assert str(cache_dir(covid_config.replace({"data.cache_dir": ""}))) == "/somewhere"
    assert cache_dir(covid_config).name == "cache"
    monkeypatch.delenv("MEDXP_CACHE_DIR")
    assert str(cache_dir(covid_config.replace({"data.cache_dir": ""}))).endswith(".cache/medxp")


def test_concurrent_loaders_decode_once(tmp_path):
    import threading
    import time

    path, calls = tmp_path / "x.npy", []

    def slow_fill(out):
        calls.append(1)
        time.sleep(0.2)
        out[:] = 3
        return out

    results = []
    workers = [threading.Thread(target=lambda: results.append(cached_array(path, (2, 1, 2, 2), slow_fill)))
               for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(calls) == 1 and all(int(r.sum()) == 3 * 8 for r in results)
