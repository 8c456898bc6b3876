"""Reading a weights file safely, with one kind of error for bad files.

Every checkpoint in the library is read through :func:`load_weights_only`: a
``.safetensors`` file with safetensors, anything else with
``torch.load(weights_only=True)``, on the CPU, so a file cannot run code. Any
unreadable content (a text file, a truncated zip, a pickle of arbitrary objects, a
file holding no dict) becomes a ValueError that names the file, instead of the many
exception types the readers raise. :func:`load_state_dict` goes on to take the state
dict out of the file's dict (:func:`~denoised_drs.state_dicts.find_state_dict`).

Checkpoints this library writes carry a content hash of their weights
(:func:`with_content_hash`, key :data:`HASH_KEY`): the sha256 of every tensor of the
``state_dict`` entry (names, dtypes, shapes and raw bytes, in name order).
:func:`load_weights_only` recomputes it and refuses a file whose tensors were
altered. Files without the key (third-party checkpoints, older files) load as before.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from denoised_drs.errors import first_line
from denoised_drs.state_dicts import find_state_dict

HASH_KEY = "state_dict_sha256"
"""Key of a checkpoint dict holding the hex sha256 of its ``state_dict`` tensors."""


def state_dict_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The hex sha256 of a state dict's tensors: names, dtypes, shapes and bytes, in name order.

    Independent of the device, of memory layout (strides) and of how the file was
    serialised; any changed bit of any tensor changes it.
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state dict entry {name!r} is a {type(tensor).__name__}, not a tensor")
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        header = f"{name}\0{flat.dtype}\0{tuple(tensor.shape)}\0"
        digest.update(header.encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def with_content_hash(payload: Mapping[str, Any]) -> dict[str, Any]:
    """``payload`` (a dict with a ``state_dict`` entry) plus the hash of those tensors."""
    return {**payload, HASH_KEY: state_dict_digest(payload["state_dict"])}


def verify_content_hash(payload: Any, path: str | os.PathLike) -> None:
    """Raise ValueError when ``payload`` records a content hash its tensors do not match."""
    if not isinstance(payload, Mapping) or HASH_KEY not in payload:
        return
    state = payload.get("state_dict")
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} records a content hash but holds no state_dict")
    try:
        actual = state_dict_digest(state)
    except TypeError as error:
        raise ValueError(f"{path}: {error}") from None
    if actual != payload[HASH_KEY]:
        raise ValueError(
            f"{path} is corrupt: its weights do not match the content hash it was written with"
        )


def _check_torch_file_start(path: Path, what: str) -> None:
    """ValueError unless ``path`` starts as torch.save writes: a zip archive, or (the
    legacy format) a pickle, which opens with the PROTO opcode. Anything else would
    fail inside the unpickler with a message that depends on its first bytes."""
    try:
        with open(path, "rb") as stream:
            start = stream.read(4)
    except OSError as error:
        raise ValueError(f"cannot read {path}: {first_line(error)}") from None
    if not start:
        raise ValueError(f"{path} is empty, not a {what}")
    if not (start.startswith(b"PK\x03\x04") or start.startswith(b"\x80")):
        raise ValueError(f"{path} is not a {what} this library reads: it is neither a "
                         "PyTorch file (a zip archive or a pickle) nor .safetensors")


def load_weights_only(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, Any]:
    """The dict stored in ``path`` (a checkpoint or a bare state dict), read onto the CPU
    with safetensors (``.safetensors``) or ``torch.load(weights_only=True)``.

    Raises FileNotFoundError when ``path`` is not a file (a directory included), and
    ValueError when its content cannot be read, is not a dict, or fails its content hash.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found (or not a file): {path}")
    if path.suffix != ".safetensors":
        _check_torch_file_start(path, what)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            payload = load_file(str(path), device="cpu")
        else:
            with warnings.catch_warnings():
                # torch warns (on stderr) of any pickle protocol above 2 before refusing
                # or reading the file; the outcome is what matters.
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the readers fail in many types: pickle, zip, key, OS errors
        if isinstance(error, pickle.UnpicklingError) and "Weights only" in str(error):
            # torch's message suggests weights_only=False, which could run the file's
            # code: such a file is never read here, so say what it is instead.
            found = re.search(r"GLOBAL ([\w.]+)", str(error))
            detail = f", which names {found.group(1)}," if found else ""
            raise ValueError(
                f"{path} is not a {what} this library reads: a weights-only load refuses "
                f"its pickled content{detail} and nothing else is tried (only tensors and "
                "plain data are read, since unpickling other objects can run code)"
            ) from None
        raise ValueError(
            f"cannot read {path} as a weights-only PyTorch {what}: {first_line(error)}"
        ) from None
    if not isinstance(payload, Mapping):
        raise ValueError(
            f"{path} does not hold a state dict or a checkpoint dict but a {type(payload).__name__}"
        )
    verify_content_hash(payload, path)
    return dict(payload)


def load_state_dict(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state dict of the weights file ``path`` (see :func:`load_weights_only` and
    :func:`~denoised_drs.state_dicts.find_state_dict`); ValueError if it holds none."""
    return find_state_dict(load_weights_only(path, what), str(path))
