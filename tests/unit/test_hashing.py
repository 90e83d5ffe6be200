"""The one file-hash helper, and the data fingerprints built on it (unchanged by moving them there)."""

from __future__ import annotations

import csv
import hashlib

import numpy as np

from medxp.config import load_project
from medxp.data import create_datamodule
from medxp.hashing import file_sha256


def test_file_sha256_is_the_digest_of_the_whole_file_across_chunks(tmp_path):
    data = np.random.default_rng(0).bytes((1 << 20) * 2 + 123)  # three chunks, the last one short
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert file_sha256(empty) == hashlib.sha256(b"").hexdigest()


def test_a_medmnist_fingerprint_is_the_short_sha256_of_the_npz(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in (("train", 8), ("val", 4), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % 2).astype(np.uint8)[:, None]
    path = tmp_path / "pneumoniamnist.npz"
    np.savez_compressed(path, **arrays)
    config = load_project("pneumoniamnist", {"data.data_dir": str(tmp_path), "dataset.image_size": 28,
                                             "data.cache": False})
    assert create_datamodule(config).fingerprint == hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def test_a_csv_fingerprint_is_the_short_sha256_of_the_table(tmp_path):
    config = load_project("fetal_health", {"data.data_dir": str(tmp_path)})
    path = tmp_path / "fetal_health.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*config.dataset.feature_columns, "fetal_health"])
        for row in range(60):
            writer.writerow([row + column for column in range(len(config.dataset.feature_columns))]
                            + [f"{row % 3 + 1}.0"])
    assert create_datamodule(config).fingerprint == hashlib.sha256(path.read_bytes()).hexdigest()[:16]
