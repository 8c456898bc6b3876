"""Finding non-finite weights and losses: a training run whose numbers are no longer
finite has diverged, and nothing of it may be saved (or started from) as a model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def non_finite_tensor(tensors: Any, name: str = "") -> str | None:
    """The name (``key.subkey...``, ``name`` as prefix) of the first floating-point tensor in
    ``tensors`` that holds a NaN or an infinity, or None when every one is finite.

    ``tensors`` is a tensor, or a mapping or list nesting them (a state dict, an optimizer
    state); other values are skipped. One host sync per tensor: meant for checks once per
    file or epoch, not per step.
    """
    if isinstance(tensors, torch.Tensor):
        finite = not tensors.is_floating_point() or bool(torch.isfinite(tensors).all())
        return None if finite else name
    if isinstance(tensors, Mapping):
        items = ((f"{name}.{key}" if name else str(key), value) for key, value in tensors.items())
    elif isinstance(tensors, (list, tuple)):
        items = ((f"{name}.{index}" if name else str(index), value)
                 for index, value in enumerate(tensors))
    else:
        return None
    for item_name, value in items:
        found = non_finite_tensor(value, item_name)
        if found is not None:
            return found
    return None


def check_finite_weights(tensors: Any, source: str) -> None:
    """Raise ValueError (one line naming ``source`` and the tensor) if a floating-point
    tensor of ``tensors`` holds a NaN or an infinity (see :func:`non_finite_tensor`)."""
    found = non_finite_tensor(tensors)
    if found is not None:
        raise ValueError(f"{source} holds non-finite weights (NaN or infinity) in {found}")


class TrainingDiverged(ValueError):
    """A training run's loss or weights stopped being finite; nothing of the epoch is saved.

    A ValueError, so that scripts end with one line and exit 2: the usual cause is a
    setting (a learning rate far too high), not a bug.
    """
