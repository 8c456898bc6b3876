"""Reading a PyTorch checkpoint file safely, with one kind of error for bad files.

Every checkpoint in the library is read through :func:`load_weights_only`:
``torch.load(weights_only=True)`` on the CPU, so a file cannot run code, and any
unreadable content (a text file, a truncated zip, a pickle of arbitrary objects)
becomes a ValueError that names the file, instead of the many exception types
``torch.load`` raises.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def load_weights_only(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """The object stored in ``path``, read with ``weights_only=True`` onto the CPU.

    Raises FileNotFoundError when ``path`` is not a file (a directory included),
    and ValueError when its content cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found (or not a file): {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load fails in many types: pickle, zip, key, OS errors
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"cannot read {path} as a weights-only PyTorch {what}: {detail}") from None
