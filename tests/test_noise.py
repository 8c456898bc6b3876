"""The seeded noise stream: batch-size independence, the documented seeding, parallel draws."""

import numpy as np
import pytest
import torch

from denoised_drs.noise import BLOCK_SIZE, NoiseStream, derive_seed


def test_any_cut_of_the_stream_gives_the_same_samples():
    whole = NoiseStream((3, 1), (1, 4, 4)).take(0, 7 * BLOCK_SIZE + 5)
    for cuts in ([0, 10, 200, 201, 7 * BLOCK_SIZE + 5], [0, BLOCK_SIZE, 3 * BLOCK_SIZE + 1, 7 * BLOCK_SIZE + 5]):
        stream = NoiseStream((3, 1), (1, 4, 4))
        parts = [stream.take(a, b) for a, b in zip(cuts, cuts[1:])]
        assert torch.equal(torch.cat(parts), whole)


def test_blocks_follow_the_documented_seeding():
    # Many whole blocks go through the parallel CPU path; each must equal the block
    # drawn alone from a generator seeded with derive_seed(*key, block).
    key, shape, blocks = (7, 0, 2), (2, 3, 5), 9
    drawn = NoiseStream(key, shape).take(0, blocks * BLOCK_SIZE)
    for block in range(blocks):
        generator = torch.Generator().manual_seed(derive_seed(*key, block))
        expected = torch.randn((BLOCK_SIZE, *shape), generator=generator)
        assert torch.equal(drawn[block * BLOCK_SIZE : (block + 1) * BLOCK_SIZE], expected)


def test_samples_are_standard_normal_and_streams_independent():
    a = NoiseStream((0,), (1, 28, 28)).take(0, 2000).flatten().double()
    b = NoiseStream((1,), (1, 28, 28)).take(0, 2000).flatten().double()
    size = a.numel()
    assert abs(a.mean().item()) < 5 / np.sqrt(size)
    assert abs(a.std().item() - 1) < 5 * np.sqrt(0.5 / size)
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 5 / np.sqrt(size)


def test_bad_keys_and_spans_are_rejected():
    with pytest.raises(ValueError, match="non-negative"):
        derive_seed(1, -2)
    with pytest.raises(ValueError, match="stop > start"):
        NoiseStream((0,), (1,)).take(5, 5)


def test_parallel_draws_work_inside_and_outside_inference_mode():
    # The engine takes fresh noise (a tensor allocated here) under inference mode;
    # the worker threads must follow the caller's mode.
    expected = NoiseStream((4,), (1, 6, 6)).take(0, 5 * BLOCK_SIZE)
    with torch.inference_mode():
        inside = NoiseStream((4,), (1, 6, 6)).take(0, 5 * BLOCK_SIZE)
    assert inside.is_inference() and torch.equal(inside, expected)
