"""Refusing a batch that cannot fit in memory before any work or file.

A probe forward pass of one sample, with hooks on every submodule, measures the
largest activation a layer produces for one sample; a forward pass of ``batch``
samples holds at least that layer's input and output for all of them at once. If
that lower bound already exceeds the memory available on the device (free GPU
memory, or the kernel's ``MemAvailable`` on the CPU), the batch is refused with
the largest batch the bound allows. The bound is deliberately low: a batch it
passes may still run out of memory, which the scripts then report in one line
(see :func:`denoised_drs.cli.run_script`); it never refuses a batch that fits.
Certification results do not depend on the batch size, so a smaller one is
always a safe answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def peak_bytes_per_sample(module: nn.Module, forward: Callable[[], Any]) -> int:
    """A lower bound on the memory one sample needs in ``module``'s forward pass.

    ``forward`` runs ``module`` (directly or inside a larger call) on a batch of
    one; the bound is the largest input + output of any one submodule.
    """
    largest = 0

    def hook(_module: nn.Module, inputs: Any, output: Any) -> None:
        nonlocal largest
        largest = max(largest, _tensor_bytes(inputs) + _tensor_bytes(output))

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    try:
        forward()
    finally:
        for handle in handles:
            handle.remove()
    return largest


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` in bytes, or None when it cannot be told."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_batch_fits(batch: int, per_sample: int, device: torch.device,
                     flag: str = "--batch") -> None:
    """Raise ValueError when ``batch`` samples of ``per_sample`` bytes surely exceed free memory."""
    free = available_bytes(device)
    if free is None or per_sample <= 0 or batch * per_sample <= free:
        return
    gib = 1 << 30
    raise ValueError(
        f"{flag} {batch} needs at least {batch * per_sample / gib:.1f} GiB for one forward pass on "
        f"{device.type}, more than the {free / gib:.1f} GiB available; pass {flag} "
        f"{max(1, free // per_sample)} or less (results do not depend on it)"
    )
