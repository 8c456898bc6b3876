"""Seeded Gaussian noise that does not depend on how samples are batched.

Noise for one image is cut into fixed blocks of :data:`BLOCK_SIZE` samples. Block
``b`` of stream ``key`` is drawn from its own generator, seeded from
``(key, b)`` through :class:`numpy.random.SeedSequence`. A batch that covers a
whole block draws it straight into the output; a batch that covers part of one
draws the whole block and keeps it for the next batch. So sample ``i`` of a stream
is the same whatever the batch size, and two streams with different keys (other
image, other stage of the algorithm) are independent.

Noise is drawn on the device of the model. The same seed gives the same noise on
the same kind of device; CPU and CUDA generators differ.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

BLOCK_SIZE = 64
"""Samples per independently seeded block (a fixed constant: changing it changes results)."""
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
"""The noise is float32: a noise level (or any setting it is scaled by) must stay below this."""


def derive_seed(*key: int) -> int:
    """A 63-bit seed from a tuple of non-negative integers (order matters).

    SeedSequence ignores trailing zeros (``(1, 2)`` and ``(1, 2, 0)`` give the same
    seed), so every use must pass keys of one fixed length per purpose; the engine's
    keys are (seed..., stream, block), always ending in the block index.
    """
    if any(k < 0 for k in key):
        raise ValueError(f"seed keys must be non-negative integers, got {key}")
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


@functools.cache
def _cpu_pool(pid: int) -> ThreadPoolExecutor:
    """Worker threads for drawing CPU noise blocks, one per torch intra-op thread.

    Keyed by process id: a forked child (e.g. a DataLoader worker) inherits the
    cache but not the threads, so it must build its own pool.
    """
    return ThreadPoolExecutor(max_workers=torch.get_num_threads(), thread_name_prefix="noise")


class NoiseStream:
    """Standard normal samples of a fixed shape, indexed by sample number.

    ``NoiseStream(key, shape, device)`` represents an unbounded sequence of tensors
    of ``shape``; :meth:`take` returns samples ``start .. stop - 1`` of it.
    """

    def __init__(
        self,
        key: Sequence[int],
        shape: Sequence[int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.key = tuple(int(k) for k in key)
        self.shape = tuple(int(s) for s in shape)
        self.device = torch.device(device)
        self.dtype = dtype
        self._cached_index: int | None = None
        self._cached_noise: torch.Tensor | None = None

    def _draw_block(self, seed: int, out: torch.Tensor) -> None:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed)
        torch.randn(out.shape, generator=generator, device=self.device, dtype=self.dtype, out=out)

    def _draw_blocks(self, blocks: list[tuple[int, torch.Tensor]]) -> None:
        """Fill each ``(block, target)``; on the CPU, blocks are drawn in parallel.

        One CPU generator is serial, so drawing inline would leave all but one core
        idle; blocks have their own generators and disjoint targets, and torch
        releases the GIL while drawing, so threads draw them at once with the same
        result. Seeds are derived here, not in the workers (deriving holds the GIL),
        and each worker gets one share of the blocks, to keep hand-overs out of the
        loop.
        """
        seeded = [(derive_seed(*self.key, block), target) for block, target in blocks]
        workers = torch.get_num_threads()
        if self.device.type != "cpu" or len(seeded) < 2 or workers < 2:
            for seed, target in seeded:
                self._draw_block(seed, target)
            return
        # Inference mode is thread-local: the workers must write into the caller's
        # tensors (inference tensors, when the caller is in inference mode) in the
        # caller's mode.
        inference = torch.is_inference_mode_enabled()

        def draw(share: list[tuple[int, torch.Tensor]]) -> None:
            with torch.inference_mode(inference):
                for seed, target in share:
                    self._draw_block(seed, target)

        shares = [seeded[i::workers] for i in range(min(workers, len(seeded)))]
        list(_cpu_pool(os.getpid()).map(draw, shares))

    def take(self, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Samples ``start .. stop - 1`` as a fresh tensor ``(stop - start, *shape)``.

        ``out``, if given, must be a contiguous buffer of at least that many samples;
        its leading part is filled and returned.
        """
        count = stop - start
        if count <= 0:
            raise ValueError(f"need stop > start, got start={start}, stop={stop}")
        if out is None:
            out = torch.empty((count, *self.shape), device=self.device, dtype=self.dtype)
        else:
            out = out[:count]
        draws = []
        partial = []
        for block in range(start // BLOCK_SIZE, (stop - 1) // BLOCK_SIZE + 1):
            block_start = block * BLOCK_SIZE
            lo, hi = max(start, block_start), min(stop, block_start + BLOCK_SIZE)
            target = out[lo - start : hi - start]
            if lo == block_start and hi == block_start + BLOCK_SIZE:
                draws.append((block, target))
                continue
            # A batch edge cuts this block: draw all of it (with the whole blocks)
            # and keep it, since the next batch usually starts inside it.
            if block == self._cached_index and self._cached_noise is not None:
                noise = self._cached_noise
            else:
                noise = torch.empty((BLOCK_SIZE, *self.shape), device=self.device, dtype=self.dtype)
                draws.append((block, noise))
            partial.append((block, noise, target, lo - block_start, hi - block_start))
        self._draw_blocks(draws)
        for block, noise, target, lo, hi in partial:
            target.copy_(noise[lo:hi])
            self._cached_index, self._cached_noise = block, noise
        return out
