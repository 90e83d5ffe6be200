"""SHA-256 of a file's bytes, or of a network's state dict: the one helper for content hashes (weight files,
data files, initial weights).

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


def state_dict_sha256(module) -> str:
    """The SHA-256 of a network's state dict: every entry's name, dtype, shape and bytes, in order.

    Two networks hash alike exactly when they hold the same weights under the same names: what a
    series compares to show that variants sharing an architecture started from the same weights.
    torch is imported here, not at the top: loading a config imports this module.
    """
    import torch

    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        if not isinstance(tensor, torch.Tensor):
            continue
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()
