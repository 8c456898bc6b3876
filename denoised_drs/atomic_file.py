"""Writing a file atomically: a reader sees the old content or the new, never a part.

Every file the library writes whole (checkpoints, logs, configurations, merged
results, plots, the bundled sample) goes through :func:`atomic_write`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; on success it replaces ``path``.

    ``mode`` is ``"wb"`` (bytes, ``torch.save``, ``np.savez``) or ``"w"`` (text, with
    no newline translation). The parent folder is created if needed. On leaving the
    block the data is flushed to disk (fsync) and moved over ``path`` with
    ``os.replace``; if the block raises, the temporary file is deleted and ``path`` is
    left as it was. The new file gets the usual permissions (``0o666`` less the umask).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A hidden, unique name in the same folder: os.replace is atomic only within a file system.
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, mode, **({} if "b" in mode else {"newline": ""})) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        _chmod_as_new_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _chmod_as_new_file(path: str) -> None:
    # mkstemp creates files readable by the owner only; give the mode open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
