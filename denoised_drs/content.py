"""Content identity: what a certification run's rows depend on, by hash rather than by name.

A path names a file, not its content: a classifier replaced at the same path, or a
``--data-dir`` pointing elsewhere, must not be mixed into one result file. The
runner therefore records, beside each result, the sha256 of every checkpoint the
pipeline reads and a sha256 over the images and labels it certifies, and refuses a
resume whose hashes differ (see :mod:`denoised_drs.runner`).

* :func:`path_sha256`: a file's sha256 (streamed in 1 MiB chunks), or for a folder
  (a diffusers model) the sha256 of its sorted ``relative/name<TAB>sha256`` lines.
  A file's hash is computed once per process while its size, mtime and inode stay
  the same; a 2 GB checkpoint takes a few seconds.
* :func:`image_digest` / :func:`selection_sha256`: one image's index, label, shape
  and float32 pixels, and the hash of a selection's digests in selection order.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

_CHUNK = 1 << 20
_file_hashes: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 (hex) of the file at ``path``; cached while its stat is unchanged."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    key = (real, stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _file_hashes:
        digest = hashlib.sha256()
        with open(real, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        _file_hashes[key] = digest.hexdigest()
    return _file_hashes[key]


def path_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder's files (their relative names and hashes, sorted)."""
    root = Path(path)
    if not root.is_dir():
        return file_sha256(root)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    listing = "".join(f"{p.relative_to(root).as_posix()}\t{file_sha256(p)}\n" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def image_digest(idx: int, image: torch.Tensor, label: int) -> bytes:
    """A digest of one dataset item: its index, label, shape and float32 pixel values."""
    pixels = np.ascontiguousarray(image.detach().cpu().to(torch.float32).numpy())
    digest = hashlib.sha256(f"{idx}\t{label}\t{tuple(pixels.shape)}\n".encode())
    digest.update(pixels.tobytes())
    return digest.digest()


def selection_sha256(digests: Iterable[bytes]) -> str:
    """The sha256 (hex) of a selection: its items' digests in selection order."""
    total = hashlib.sha256()
    for digest in digests:
        total.update(digest)
    return total.hexdigest()
