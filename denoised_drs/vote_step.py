"""One batch of the sampling engine: noise -> noisy sub-images -> voter -> vote counts.

:class:`VoteStep` is everything the engine does per batch after the noise is drawn:
add the noise to the clean sub-images (``x_j + sigma_j e_j``), run the voter (its
denoiser pre-processing, network, x0 estimate, split, resize and classifiers), turn
the votes into counts per (branch, class) with a fixed-size ``scatter_add_``, and
count the votes outside ``[0, num_classes)``. It reads nothing back to the host.

Eager (the default on CPUs) it computes exactly what the engine always computed:
the noise is turned into the noisy sub-images in place, one fused pass, and the last
batch of a call is as short as it is. Compiled (``compile_mode``: the default on
CUDA) the whole step is one ``torch.compile`` graph per batch shape, with static
shapes: a short batch (the last of a call, the N0 stage, an adaptive look) is padded
with rows whose votes land in a dropped bin, to the next power of two (at least
:data:`MIN_PADDED`, at most the full batch; :meth:`VoteStep.padded_size`). So a run
meets at most ``log2(batch / 64) + 2`` shapes, each compiled once (each on a code object
of its own, see :meth:`VoteStep._own_count`), and padding never costs more than the
samples it pads. ``mode="reduce-overhead"`` replays each graph as a CUDA graph (its
outputs are consumed before the next replay).

Under ``autocast_dtype`` the whole voter runs in ``torch.autocast``: the denoiser and
the classifiers alike. A compiled or reduced-precision step is a slightly different
base classifier (float rounding), for which the certificate is as sound as for any
other; the counts are exact integers either way.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from denoised_drs.modes import COMPILE_MODES
from denoised_drs.partition import Partition
from denoised_drs.voters import NONFINITE_VOTE

MIN_PADDED = 64
"""The smallest batch shape a compiled step pads a short batch to (one noise block)."""


def check_votes(votes: object, samples: int, branches: int) -> None:
    """Refuse voter output that is not integer class indices of shape (samples, branches)."""
    if not isinstance(votes, torch.Tensor):
        raise TypeError(
            f"the voter must return a tensor of class indices, got {type(votes).__name__}"
        )
    if votes.dtype.is_floating_point or votes.dtype.is_complex or votes.dtype == torch.bool:
        raise ValueError(f"the voter must return integer class indices, got dtype {votes.dtype}")
    if tuple(votes.shape) != (samples, branches):
        raise ValueError(
            f"the voter returned votes of shape {tuple(votes.shape)}, expected "
            f"({samples}, {branches}): one class index per sample and branch"
        )


def is_compile_error(error: BaseException) -> bool:
    """Whether ``error`` was raised by ``torch.compile``'s tracer or backend (dynamo or
    inductor), not by the models themselves."""
    return type(error).__module__.startswith(("torch._dynamo", "torch._inductor"))


class VoteStep:
    """The per-batch work of :class:`~denoised_drs.smoothing.SmoothedClassifier`.

    Args:
        voter: maps ``(noisy_parts, fresh_noise)`` to ``(N, num_branches)`` class indices.
        partition: cuts a batch of noise into the parts' noise.
        sigmas: each part's noise level.
        num_classes: the number of classes a vote may name.
        autocast_dtype: None (float32), or the dtype the whole voter runs in under
            ``torch.autocast``.
        compile_mode: None runs eagerly; one of :data:`COMPILE_MODES` compiles the step.
        compile_backend: the ``torch.compile`` backend; the mode applies to inductor only
            (another backend, e.g. "eager" for a quick CPU check, is called without it).
    """

    def __init__(self, voter: nn.Module, partition: Partition, sigmas: Sequence[float],
                 num_classes: int, autocast_dtype: torch.dtype | None = None,
                 compile_mode: str | None = None, compile_backend: str = "inductor") -> None:
        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
        self.voter = voter
        self.partition = partition
        self.sigmas = tuple(float(s) for s in sigmas)
        self.num_classes = int(num_classes)
        self.autocast_dtype = autocast_dtype
        self.compile_mode = compile_mode
        self.compile_backend = compile_backend
        self._compiled: dict[int, Callable[..., Any]] = {}
        self._prepared: set[tuple] = set()

    @property
    def padded(self) -> bool:
        """Whether short batches are padded to a few static shapes (compiled steps only)."""
        return self.compile_mode is not None

    def padded_size(self, count: int, batch_size: int) -> int:
        """The batch shape ``count`` samples run at, with full batches of ``batch_size``:
        ``count`` itself eagerly or for a full batch; compiled, the next power of two at
        or above ``count``, at least :data:`MIN_PADDED` and at most ``batch_size``."""
        if not self.padded or count >= batch_size:
            return count
        return min(batch_size, max(MIN_PADDED, 1 << (count - 1).bit_length()))

    def __call__(self, clean_parts: Sequence[torch.Tensor], noise: torch.Tensor,
                 fresh_noise: torch.Tensor | None, choices: torch.Tensor | None,
                 samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Counts of one batch: ``(counts, out_of_range)``.

        ``noise`` holds the batch's standard normal noise (N, C, H, W), of which the
        first ``samples`` rows are real (the rest pad a compiled step's short batch);
        ``fresh_noise`` (N, C, H, W) is the voter's fresh noise when it needs some;
        ``choices`` (N,) the branch each sample's vote is taken from (PREDICT's mixed
        branches) or None for every branch. ``counts`` has one bin per (row, class), row
        major, and a last bin for votes counted in no class; ``out_of_range`` counts the
        real rows' votes outside ``[0, num_classes)`` other than
        :data:`~denoised_drs.voters.NONFINITE_VOTE`. Eager, ``noise`` is overwritten.
        """
        if self.compile_mode is None:
            return self._count(clean_parts, noise, fresh_noise, choices, samples, in_place=True)
        compiled = self._compiled.get(noise.shape[0])
        if compiled is None:
            options = ({"mode": self.compile_mode} if self.compile_backend == "inductor"
                       else {"backend": self.compile_backend})
            compiled = torch.compile(self._own_count(), dynamic=False, **options)
            self._compiled[noise.shape[0]] = compiled
        prepare = getattr(self.voter, "prepare", None)
        image = (tuple(noise.shape[1:]), noise.device, noise.dtype)
        if prepare is not None and image not in self._prepared:
            # What the voter computes once per image shape (a split voter's fill plans)
            # is computed eagerly, outside the graph.
            prepare(noise)
            self._prepared.add(image)
        # The number of real rows is a tensor, so a short batch is the same graph.
        real = torch.full((), samples, dtype=torch.int64, device=noise.device)
        return compiled(clean_parts, noise, fresh_noise, choices, real, in_place=False)

    def _own_count(self) -> Callable[..., Any]:
        """:meth:`_count` bound to this step, on a code object of its own (one per
        batch shape).

        Dynamo keeps compiled graphs per code object and compiles one code object at
        most ``recompile_limit`` (8) times, then runs it eagerly: with one shared code
        object, a process with many pipelines (the embedded default's five runs, the
        GPU suite's configurations) or shapes would fall back to eager steps without
        saying so.
        """
        function = VoteStep._count
        own = types.FunctionType(function.__code__.replace(), function.__globals__,
                                 function.__name__, function.__defaults__, function.__closure__)
        return types.MethodType(own, self)

    def _count(self, clean_parts: Sequence[torch.Tensor], noise: torch.Tensor,
               fresh_noise: torch.Tensor | None, choices: torch.Tensor | None,
               samples: int | torch.Tensor, in_place: bool) -> tuple[torch.Tensor, torch.Tensor]:
        size = noise.shape[0]
        noise_parts = self.partition.split(noise)
        if in_place:
            # One fused pass, in place: noise <- clean + sigma * noise.
            noisy_parts = [torch.add(clean, part, alpha=sigma, out=part)
                           for part, sigma, clean in zip(noise_parts, self.sigmas, clean_parts)]
        else:
            # Functional for the compiler (which fuses it into the first consumer).
            noisy_parts = [torch.add(clean, part, alpha=sigma)
                           for part, sigma, clean in zip(noise_parts, self.sigmas, clean_parts)]
        autocast = (torch.autocast(noise.device.type, dtype=self.autocast_dtype)
                    if self.autocast_dtype is not None else contextlib.nullcontext())
        with autocast:
            votes = self.voter(noisy_parts, fresh_noise)
        check_votes(votes, size, len(self.sigmas))
        if choices is not None:
            votes = votes.gather(1, choices[:, None])
        rows = votes.shape[1]
        valid = (votes >= 0) & (votes < self.num_classes)
        misnamed = ~valid & (votes != NONFINITE_VOTE)
        if not isinstance(samples, int) or samples < size:
            real = torch.arange(size, device=votes.device)[:, None] < samples
            valid = valid & real
            misnamed = misnamed & real
        offsets = torch.arange(rows, device=votes.device) * self.num_classes
        dropped = rows * self.num_classes
        bins = torch.where(valid, votes + offsets, dropped).flatten()
        counts = torch.zeros(dropped + 1, dtype=torch.int64, device=votes.device)
        return counts.scatter_add_(0, bins, torch.ones_like(bins)), misnamed.sum()


__all__ = ["MIN_PADDED", "VoteStep", "check_votes", "is_compile_error"]
