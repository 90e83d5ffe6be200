"""Stratified, seeded, grouped splits (scikit-learn underneath) and the split hash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medxp.data.splits import carve, patient_ids, split_hash, split_three, stratified_folds
from medxp.errors import MedxpError

KERMANY = r"^(person\d+|(?:NORMAL\d*-)?IM-\d+)[_-]"


def imbalanced_labels(n: int = 400) -> np.ndarray:
    return np.array([0] * (n // 4) + [1] * (3 * n // 4))


def test_split_three_keeps_class_ratios_and_covers_everything_once():
    labels = imbalanced_labels()
    parts = split_three(labels, (0.7, 0.2, 0.1), seed=1)
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(len(labels)))
    assert [len(parts[s]) for s in ("train", "valid", "test")] == [280, 80, 40]
    for indices in parts.values():
        assert labels[indices].mean() == pytest.approx(0.75, abs=0.01)


def test_same_seed_same_split_other_seed_other_split():
    labels = imbalanced_labels()
    assert np.array_equal(carve(labels, 0.2, 3)[1], carve(labels, 0.2, 3)[1])
    assert not np.array_equal(carve(labels, 0.2, 3)[1], carve(labels, 0.2, 4)[1])


def test_grouped_carve_never_puts_one_patient_in_two_parts():
    rng = np.random.default_rng(0)
    groups = [f"person{rng.integers(0, 60)}" for _ in range(500)]
    labels = [int(g[6:]) % 3 for g in groups]  # a patient's images share its label, as in Kermany
    kept, carved = carve(labels, 0.2, 5, groups)
    assert not {groups[i] for i in kept} & {groups[i] for i in carved}
    assert 0.1 < len(carved) / len(labels) < 0.3
    assert set(np.asarray(labels)[carved]) == {0, 1, 2}


def test_grouped_three_way_split_keeps_patients_apart():
    groups = [f"p{i // 4}" for i in range(400)]
    labels = [i // 4 % 2 for i in range(400)]
    parts = split_three(labels, (0.6, 0.2, 0.2), 0, groups)
    owners = {split: {groups[i] for i in indices} for split, indices in parts.items()}
    assert not owners["train"] & owners["valid"] and not owners["train"] & owners["test"]
    assert not owners["valid"] & owners["test"]


def test_stratified_folds_hold_out_each_item_once():
    labels = imbalanced_labels(100)
    held_out = np.concatenate([test for _, test in stratified_folds(labels, 5, 0)])
    assert sorted(held_out.tolist()) == list(range(100))


def test_too_few_images_per_class_is_named():
    with pytest.raises(MedxpError, match=r"/data/x: cannot carve a stratified 50% split from 3 images"):
        carve([0, 1, 1], 0.5, 0, what="/data/x")


@pytest.mark.parametrize("name, patient", [
    ("person123_bacteria_456.jpeg", "person123"),
    ("person7_virus_13.jpeg", "person7"),
    ("IM-0115-0001.jpeg", "IM-0115"),
    ("NORMAL2-IM-0123-0001.jpeg", "NORMAL2-IM-0123"),
    ("scan.png", "scan"),
])
def test_kermany_patient_ids(name, patient):
    assert patient_ids([Path(name)], KERMANY) == [patient]


def test_bad_pattern_is_named():
    with pytest.raises(MedxpError, match=r"data.patient_id_pattern = '\(': not a valid regular expression"):
        patient_ids([Path("a.png")], "(")


def test_split_hash_ignores_order_but_not_membership():
    first = split_hash({"train": ["a", "b"], "test": ["c"]})
    assert first == split_hash({"test": ["c"], "train": ["b", "a"]})
    assert first != split_hash({"train": ["a"], "test": ["b", "c"]})
