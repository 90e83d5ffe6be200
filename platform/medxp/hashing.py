"""SHA-256 of a file's bytes: the one helper for content hashes (weight files, data files).

Fingerprints that hash something other than a file's bytes stay with their owners: the
file list and sizes of an image folder (`data.images.fingerprint_files`), the list plus
modification times (`data.sources.change_key`), a split's item names (`data.splits`), a cache
file's name (`data.cache`), and the SHA-1 of decoded pixels the audit compares (`data.audit_scan`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20  # 1 MiB: weight files run to hundreds of MiB, so they are never read whole


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits, read in 1 MiB chunks.

    Args:
        path: The file.

    Returns:
        The hex digest; a short fingerprint is its prefix (``file_sha256(path)[:16]``).
    """
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
