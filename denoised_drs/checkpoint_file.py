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

from denoised_drs.cli import first_line


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
        raise ValueError(
            f"cannot read {path} as a weights-only PyTorch {what}: {first_line(error)}"
        ) from None
