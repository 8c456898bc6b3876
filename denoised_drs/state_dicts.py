"""State dicts in memory: finding one inside a checkpoint, cleaning its keys, checking its fit.

* :func:`find_state_dict`: the tensors of a checkpoint, under its ``state_dict`` /
  ``model`` / ``model_state_dict`` entry or at its top level, with the
  ``module.`` (``DataParallel``) and ``_orig_mod.`` (``torch.compile``) prefixes removed;
* :func:`check_state_dict`: one line naming the missing, unexpected and wrongly shaped
  keys when a state dict does not fit a network, as :class:`StateDictMismatchError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")
"""Entries of a checkpoint dict that hold its state dict, in the order they are tried."""

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
"""Key prefixes added by ``DataParallel`` / ``DistributedDataParallel`` and ``torch.compile``."""


class StateDictMismatchError(ValueError):
    """A state dict whose keys or shapes do not fit the network it is loaded into."""


def find_state_dict(checkpoint: Any, source: str = "the checkpoint") -> dict[str, torch.Tensor]:
    """The state dict of ``checkpoint``: its first :data:`STATE_DICT_KEYS` entry that is a
    mapping, else the checkpoint itself; only its tensors, wrapper prefixes stripped.

    Raises ValueError (naming ``source``) when there is no tensor to be found.
    """
    if isinstance(checkpoint, Mapping):
        for key in STATE_DICT_KEYS:
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint = checkpoint[key]
                break
        tensors = {
            k: v
            for k, v in checkpoint.items()
            if isinstance(k, str) and isinstance(v, torch.Tensor)
        }
        if tensors:
            return strip_prefixes(tensors)
    raise ValueError(f"{source} does not hold a state dict (a mapping of names to tensors)")


def strip_prefixes(
    state_dict: Mapping[str, torch.Tensor], prefixes: Sequence[str] = WRAPPER_PREFIXES
) -> dict[str, torch.Tensor]:
    """``state_dict`` without any of ``prefixes`` that every key starts with (repeatedly:
    ``module._orig_mod.conv.weight`` becomes ``conv.weight``)."""
    sd = dict(state_dict)
    stripped = True
    while stripped:
        stripped = False
        for prefix in prefixes:
            if sd and all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                stripped = True
    return sd


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor | Sequence[int]],
    mismatch: str,
    hint: str = "",
) -> None:
    """Raise :class:`StateDictMismatchError` unless ``state_dict`` has exactly the keys
    and shapes of ``expected`` (tensors or shapes by key).

    The message is one line: ``mismatch`` (what did not fit what), then the count and
    first key of each kind of misfit, then ``hint``, e.g. ``"... does not fit X: 2
    missing key(s), first 'a'; 1 shape mismatch(es), first 'b': (3,) in the file, (6,)
    expected"``. Works on meta tensors (no data is touched).
    """
    shapes = {k: tuple(v.shape if isinstance(v, torch.Tensor) else v) for k, v in expected.items()}
    missing = [k for k in shapes if k not in state_dict]
    unexpected = [k for k in state_dict if k not in shapes]
    wrong_shape = [k for k in shapes if k in state_dict and tuple(state_dict[k].shape) != shapes[k]]
    if not (missing or unexpected or wrong_shape):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), first {missing[0]!r}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), first {unexpected[0]!r}")
    if wrong_shape:
        k = wrong_shape[0]
        problems.append(
            f"{len(wrong_shape)} shape mismatch(es), first {k!r}: "
            f"{tuple(state_dict[k].shape)} in the file, {shapes[k]} expected"
        )
    if hint:
        problems.append(hint)
    raise StateDictMismatchError(f"{mismatch}: " + "; ".join(problems))
