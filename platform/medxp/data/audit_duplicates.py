"""Finding exact and near-duplicate images, within and across splits.

Every pair of readable images whose 256-bit perceptual hashes differ in at most
`max_distance` bits is a duplicate pair; it is *exact* when the content hashes (sha1
of the file or array bytes) are equal too. The search compares each hash with all the
later ones in vectorised blocks (xor + popcount), which takes seconds for tens of
thousands of images and never builds an n x n matrix. A pair whose images sit in
different splits is data leakage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from medxp.data.audit_scan import ImageRecord

# The order that decides which copy of a leaking pair is kept: the earliest split's.
SPLIT_ORDER = ("train", "valid", "test")
# Pairs compared in one block: a few (rows x later hashes) arrays of this many elements.
_BLOCK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class DuplicatePair:
    """Two images whose pictures match; `first` is the copy a leak policy keeps.

    Attributes:
        first: The image in the earlier split (train before valid before test).
        second: The other image.
        distance: Hamming distance of the perceptual hashes, in bits.
        exact: True when the bytes are identical (same sha1).
    """

    first: ImageRecord
    second: ImageRecord
    distance: int
    exact: bool

    @property
    def leaking(self) -> bool:
        """True when the two copies are in different splits."""
        return self.first.split != self.second.split

    @property
    def splits(self) -> str:
        """`train-test`, `valid-valid`, ...: where the two copies are."""
        return f"{self.first.split}-{self.second.split}"

    @property
    def labels_conflict(self) -> bool:
        """True when the two copies carry different labels."""
        return self.first.label != self.second.label

    def to_json(self) -> dict:
        """A plain dict for the JSON report."""
        return {"splits": self.splits, "exact": self.exact, "distance": self.distance,
                "first": _record_json(self.first), "second": _record_json(self.second)}


def find_duplicate_pairs(records: Sequence[ImageRecord], max_distance: int) -> list[DuplicatePair]:
    """All pairs of readable images within `max_distance` bits of each other.

    Args:
        records: The scanned images of every split.
        max_distance: Largest Hamming distance of the perceptual hashes that counts as a duplicate.

    Returns:
        The pairs, leaking ones first, then by distance and source.
    """
    readable = [record for record in records if record.readable and record.phash is not None]
    hashes = hash_words([record.phash for record in readable])
    pairs = []
    for i, j, distance in zip(*close_hash_pairs(hashes, max_distance)):
        first, second = _ordered(readable[i], readable[j])
        pairs.append(DuplicatePair(first, second, int(distance), first.sha1 == second.sha1))
    return sorted(pairs, key=lambda p: (not p.leaking, split_rank(p.second.split), p.distance,
                                        p.first.source, p.second.source))


def hash_words(hashes: Sequence[bytes]) -> np.ndarray:
    """Equal-length byte hashes as an (N, words) uint64 array."""
    width = len(hashes[0]) if hashes else 8
    return np.frombuffer(b"".join(hashes), dtype=">u8").astype(np.uint64).reshape(len(hashes), width // 8)


def close_hash_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs (i < j) of hashes within `max_distance` differing bits, and their distances.

    Args:
        hashes: (N, words) uint64 hashes, one row per image.
        max_distance: Largest Hamming distance kept.

    Returns:
        Arrays `(i, j, distance)` of equal length.
    """
    count = len(hashes)
    rows_per_block = max(1, _BLOCK_ELEMENTS // max(count, 1))
    found_i, found_j, found_d = [], [], []
    for start in range(0, count, rows_per_block):
        stop = min(start + rows_per_block, count)
        distances = _block_distances(hashes[start:stop], hashes[start + 1:])
        rows, columns = np.nonzero(distances <= max_distance)
        i, j = rows + start, columns + start + 1
        upper = j > i
        found_i.append(i[upper])
        found_j.append(j[upper])
        found_d.append(distances[rows[upper], columns[upper]])
    if not found_i:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d).astype(np.int64)


def split_rank(split: str) -> int:
    """Position of a split in train < valid < test; other names come after."""
    return SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER)


def _ordered(a: ImageRecord, b: ImageRecord) -> tuple[ImageRecord, ImageRecord]:
    """The pair with the copy to keep first: earlier split, then earlier index."""
    return (a, b) if (split_rank(a.split), a.split, a.index) <= (split_rank(b.split), b.split, b.index) else (b, a)


def _block_distances(rows: np.ndarray, later: np.ndarray) -> np.ndarray:
    """Hamming distances (rows x later), summed word by word so no (rows x later x words) array is built."""
    distances = np.zeros((len(rows), len(later)), dtype=np.uint16)
    for word in range(rows.shape[1]):
        distances += _popcount(rows[:, word, None] ^ later[None, :, word])
    return distances


def _popcount(values: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values)
    bytes_view = values.view(np.uint8).reshape(*values.shape, 8)
    return np.unpackbits(bytes_view, axis=-1).sum(axis=-1, dtype=np.uint8)


def _record_json(record: ImageRecord) -> dict:
    return {"split": record.split, "index": record.index, "label": record.label, "source": record.source}
