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

:func:`choose_batch` goes the other way: from forward passes of two small batches
whose peak memory the caller measures, it picks the largest batch that fits in a
share of the free memory (see there).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from denoised_drs.errors import is_integer, is_real
from denoised_drs.noise import BLOCK_SIZE


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


def _format_bytes(count: float) -> str:
    """``count`` bytes in the largest binary unit that keeps it at 1 or more (one decimal)."""
    if count < 1024:
        return f"{int(count)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        count /= 1024
        if count < 1024 or unit == "TiB":
            return f"{count:.1f} {unit}"
    raise AssertionError("unreachable")


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


@dataclass(frozen=True)
class BatchChoice:
    """The batch :func:`choose_batch` picked and the memory model it picked it from.

    ``per_sample_bytes`` and ``fixed_bytes`` are the fitted model
    ``peak(b) = fixed_bytes + b * per_sample_bytes`` (after the conservative
    adjustments of :func:`choose_batch`); ``free_bytes`` is the free memory it was
    given and ``fraction`` the share of it a forward pass may use.
    """

    batch: int
    per_sample_bytes: int
    fixed_bytes: int
    free_bytes: int
    fraction: float = 0.85

    def describe(self) -> str:
        """One line for the log and the run's record."""
        return (
            f"batch {self.batch} chosen from free memory: {_format_bytes(self.free_bytes)} free, "
            f"{_format_bytes(self.per_sample_bytes)} per sample + "
            f"{_format_bytes(self.fixed_bytes)} fixed ({_percent(self.fraction)} used at most)"
        )


def _too_big(batch: int, peak: int, free: int, fraction: float, budget: int) -> ValueError:
    return ValueError(
        f"a batch of {batch} needs {_format_bytes(peak)} for one forward pass, more than "
        f"{_percent(fraction)} of the {_format_bytes(free)} free ({_format_bytes(budget)}); "
        f"free memory or pass a smaller batch (results do not depend on it)"
    )


def _check_choose_arguments(free: Any, cap: Any, probes: Any, fraction: Any,
                            multiple: Any) -> None:
    if not is_integer(free) or free < 0:
        raise ValueError(f"free must be a number of bytes (an integer >= 0), not {free!r}")
    if not is_integer(cap) or cap < 1:
        raise ValueError(f"cap must be an integer >= 1, not {cap!r}")
    if (not isinstance(probes, tuple) or len(probes) != 2
            or not all(is_integer(p) for p in probes) or not 1 <= probes[0] < probes[1]):
        raise ValueError(f"probes must be two integers 1 <= small < large, not {probes!r}")
    if not is_real(fraction) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be a number in (0, 1], not {fraction!r}")
    if not is_integer(multiple) or multiple < 1:
        raise ValueError(f"multiple must be an integer >= 1, not {multiple!r}")


def choose_batch(bytes_at: Callable[[int], int], free: int, cap: int, *,
                 probes: tuple[int, int] = (8, 16), fraction: float = 0.85,
                 multiple: int = BLOCK_SIZE) -> BatchChoice:
    """The largest batch, up to ``cap``, whose forward pass fits in ``fraction * free`` bytes.

    ``bytes_at(b)`` runs one real forward pass of ``b`` samples and returns the peak
    bytes it allocated (on CUDA: ``torch.cuda.reset_peak_memory_stats`` before,
    ``torch.cuda.max_memory_allocated`` after, less what was allocated before). This
    function only calls it and does arithmetic: it touches no device, so it is the
    same on a CPU with a fake ``bytes_at``. ``free`` is the free memory in bytes
    (e.g. :func:`available_bytes`), ``cap`` the largest batch worth running (e.g.
    the number of samples a certificate needs).

    Method (deterministic; at most four calls of ``bytes_at``):

    1. ``cap <= probes[0]``: ``bytes_at(cap)`` is measured; ``cap`` is returned if it
       fits, ValueError otherwise.
    2. Otherwise the two probes (the larger clipped to ``cap``) are measured and
       ``peak(b) = fixed + b * per_sample`` is fitted through them, rounding
       ``per_sample`` up to whole bytes. A slope ``<= 0`` (measurement noise, or
       memory that does not grow over so small a range) is replaced by the larger
       probe's bytes / its batch with ``fixed = 0``; a negative ``fixed`` is raised
       to 0 (both only ever predict more memory). If the smaller probe does not fit,
       ValueError names the bytes it needed and the bytes free.
    3. ``batch = (fraction * free - fixed) // per_sample``, rounded down to a
       multiple of ``multiple`` when it is at least ``multiple`` (64 =
       :data:`denoised_drs.noise.BLOCK_SIZE`, so batches cover whole noise blocks),
       then at most ``cap``.
    4. Verification: unless that batch was already measured, ``bytes_at(batch)``
       runs once. If it is over the budget, the batch is shrunk once along the
       chord from the largest measured batch that fits to the one that did not
       (which lies above any convex memory curve between them), rounded as in 3,
       and measured; if that also fails, or the model never reaches past a
       probe, the largest measured batch that fits is returned.

    Guarantee: the returned batch is one whose measured peak was at most
    ``fraction * free`` (as long as ``bytes_at`` answers the same for the same
    batch); it is never below a probe that fit. Assumptions: peak memory is close to
    linear in the batch (then the choice is the largest multiple of ``multiple``
    under the budget; sublinear memory is under-used, superlinear memory is caught
    by the verification), and the memory free now is free while the run lasts —
    ``1 - fraction`` is the headroom for allocator fragmentation and other tenants.
    Certification does not depend on the batch: noise is seeded per sample (per
    noise block), so any batch gives the same counts and is sound.
    """
    _check_choose_arguments(free, cap, probes, fraction, multiple)
    budget = math.floor(fraction * free)
    measured: dict[int, int] = {}

    def measure(batch: int) -> int:
        if batch not in measured:
            value = bytes_at(batch)
            if not is_real(value) or not 0 <= value < math.inf:
                raise ValueError(
                    f"bytes_at({batch}) returned {value!r}; expected a number of bytes >= 0"
                )
            measured[batch] = math.ceil(value)
        return measured[batch]

    small, large = probes
    if cap <= small:
        peak = measure(cap)
        if peak > budget:
            raise _too_big(cap, peak, free, fraction, budget)
        return BatchChoice(cap, max(1, -(-peak // cap)), 0, free, fraction)

    large = min(large, cap)
    peak_small = measure(small)
    if peak_small > budget:
        raise _too_big(small, peak_small, free, fraction, budget)
    peak_large = measure(large)
    per_sample = -(-(peak_large - peak_small) // (large - small))  # ceiling
    if per_sample <= 0:
        per_sample = max(1, -(-peak_large // large))
        fixed = 0
    else:
        fixed = max(0, peak_large - large * per_sample)

    def rounded(batch: int) -> int:
        if batch >= multiple:
            batch -= batch % multiple
        return min(cap, batch)

    def best_fitting() -> int:
        return max(b for b, peak in measured.items() if peak <= budget)

    batch = rounded((budget - fixed) // per_sample)
    low = best_fitting()
    if batch > low:
        peak = measure(batch)
        if peak > budget:
            low_peak = measured[low]
            slope = -(-(peak - low_peak) // (batch - low))
            shrunk = rounded(low + (budget - low_peak) // slope)
            if shrunk > low:
                measure(shrunk)
            low = best_fitting()
        else:
            low = batch
    return BatchChoice(low, per_sample, fixed, free, fraction)
