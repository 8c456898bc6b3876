"""Seeded Gaussian noise that does not depend on how samples are batched.

Noise for one image is cut into fixed blocks of :data:`BLOCK_SIZE` samples, each
drawn from its own generator. A batch that covers a whole block draws it straight
into the output; a batch that covers part of one draws the whole block and keeps it
for the next batch. So sample ``i`` of a stream is the same whatever the batch size,
thread count or process count.

Seeding, and what is distinct by construction. A *key* (the user's seed and the
image index) names one certificate. It is hashed once (:func:`key_base`) to a
32-bit base ``b``; block ``k`` of stream ``s`` (the stage of the algorithm:
selection, estimation, prediction; plain or fresh noise) gets the generator seed

    ``(b + s * 2**26 + k) mod 2**32``.

Within one key, distinct ``(s, k)`` pairs with ``s < 64`` and ``k < 2**26`` give
distinct seeds: every noise block of one certificate (selection, estimation, every
branch, fresh noise) comes from a generator of its own, never a repeat. Seeds are 32
bits because that is all torch's CPU generator (mt19937) keeps of a seed; a 63-bit
seed per block would collide in its low bits for about 1 image in 3,600 at
n = 100,000. A stream therefore holds at most ``2**26`` blocks (2**32 samples).

Across keys (other images), bases are independent hashes: two certificates may
share a block with probability about ``(blocks used) / 2**32`` per pair. That does
not touch any certificate's guarantee, which is a statement about its own image;
certified accuracy over a data set is an average of per-image events, each of which
holds with probability at least ``1 - alpha`` whatever their dependence.

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
MAX_STREAMS = 64
"""Streams one key can have; stream ``s`` owns seeds ``b + s * 2**26 ...``."""
MAX_BLOCKS = 2**26
"""Blocks one stream can have (``MAX_STREAMS * MAX_BLOCKS == 2**32`` seeds per key)."""
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


def key_base(*key: int) -> int:
    """The 32-bit base of a key's block seeds (see the module docstring)."""
    return derive_seed(*key) & 0xFFFFFFFF


def block_seed(base: int, stream: int, block: int) -> int:
    """The generator seed of ``block`` of ``stream`` under a key with ``base``.

    Distinct for distinct ``(stream, block)`` within one base, by construction.
    """
    if not 0 <= stream < MAX_STREAMS:
        raise ValueError(f"stream must lie in [0, {MAX_STREAMS}), got {stream}")
    if not 0 <= block < MAX_BLOCKS:
        raise ValueError(
            f"a noise stream holds at most {MAX_BLOCKS * BLOCK_SIZE} samples; "
            f"block {block} is beyond it"
        )
    return (base + stream * MAX_BLOCKS + block) & 0xFFFFFFFF


@functools.cache
def _cpu_pool(pid: int) -> ThreadPoolExecutor:
    """Worker threads for drawing CPU noise blocks, one per torch intra-op thread.

    Keyed by process id: a forked child (e.g. a DataLoader worker) inherits the
    cache but not the threads, so it must build its own pool.
    """
    return ThreadPoolExecutor(max_workers=torch.get_num_threads(), thread_name_prefix="noise")


class NoiseStream:
    """Standard normal samples of a fixed shape, indexed by sample number.

    ``NoiseStream(key, stream, shape, device)`` represents the sequence (at most
    ``MAX_BLOCKS * BLOCK_SIZE`` long) of tensors of ``shape`` that stream number
    ``stream`` of ``key`` holds; :meth:`take` returns samples ``start .. stop - 1``
    of it. Streams of one key never share a block (see the module docstring).
    """

    def __init__(
        self,
        key: Sequence[int],
        stream: int,
        shape: Sequence[int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.key = tuple(int(k) for k in key)
        self.stream = int(stream)
        block_seed(0, self.stream, 0)  # checks the stream number
        self.base = key_base(*self.key)
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
        seeded = [(block_seed(self.base, self.stream, block), target) for block, target in blocks]
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
        if count <= 0 or start < 0:
            raise ValueError(f"need 0 <= start < stop, got start={start}, stop={stop}")
        if stop > MAX_BLOCKS * BLOCK_SIZE:
            raise ValueError(
                f"a noise stream holds at most {MAX_BLOCKS * BLOCK_SIZE} samples, asked for {stop}"
            )
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
