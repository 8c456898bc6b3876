"""The checkerboard split of the DRS paper (Figure 2) and its inverse."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from denoised_drs.partition import (
    Checkerboard,
    Identity,
    checkerboard_merge,
    checkerboard_split,
    get_partition,
    resize,
)


def test_split_pattern_on_hand_checked_4x4():
    x = torch.arange(16.0).reshape(1, 4, 4)
    # x = [[ 0  1  2  3]
    #      [ 4  5  6  7]
    #      [ 8  9 10 11]
    #      [12 13 14 15]]   l keeps (i + j) even, r keeps (i + j) odd.
    x_l, x_r = checkerboard_split(x)
    assert x_l.tolist() == [[[0, 2], [5, 7], [8, 10], [13, 15]]]
    assert x_r.tolist() == [[[1, 3], [4, 6], [9, 11], [12, 14]]]
    # Every 2x2 block: l holds the main diagonal, r the anti-diagonal.
    assert {0.0, 5.0} <= set(x_l.flatten().tolist())
    assert {1.0, 4.0} <= set(x_r.flatten().tolist())


@settings(max_examples=60, deadline=None)
@given(
    lead=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    channels=st.integers(1, 3),
    half_h=st.integers(1, 6),
    half_w=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_split_merge_round_trip(lead, channels, half_h, half_w, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, channels, 2 * half_h, 2 * half_w, generator=generator)
    x_l, x_r = checkerboard_split(x)
    assert x_l.shape == (*lead, channels, 2 * half_h, half_w)
    assert torch.equal(checkerboard_merge(x_l, x_r), x)
    # The halves partition the pixels: no pixel lost, none duplicated.
    assert torch.equal(torch.cat([x_l.flatten(), x_r.flatten()]).sort().values,
                       x.flatten().sort().values)


@pytest.mark.parametrize("shape", [(1, 3, 4), (1, 4, 3), (4, 4), (5,)])
def test_bad_shapes_name_the_shape(shape):
    with pytest.raises(ValueError, match=str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")):
        checkerboard_split(torch.zeros(shape))


def test_merge_rejects_mismatched_halves():
    with pytest.raises(ValueError, match="same shape"):
        checkerboard_merge(torch.zeros(1, 4, 2), torch.zeros(1, 4, 3))


def test_partition_objects():
    x = torch.rand(2, 1, 6, 6)
    assert get_partition("rs").split(x)[0] is x
    parts = get_partition("drs").split(x)
    assert len(parts) == Checkerboard.num_parts == 2
    assert torch.equal(Checkerboard().merge(parts), x)
    assert torch.equal(Identity().merge([x]), x)
    with pytest.raises(ValueError, match="unknown partition"):
        get_partition("quadrants")
    with pytest.raises(ValueError):
        Checkerboard().check_image_shape((3, 5, 4))
    Checkerboard().check_image_shape((3, 4, 4))


def test_resize_to_full_size():
    half = torch.arange(8.0).reshape(1, 1, 2, 4)
    full = resize(half, (2, 8), "nearest")
    assert full.shape == (1, 1, 2, 8)
    assert full[0, 0, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert resize(half, (2, 8), "bilinear").shape == (1, 1, 2, 8)
    with pytest.raises(ValueError, match="interpolation mode"):
        resize(half, (2, 8), "area")
    with pytest.raises(ValueError, match="N, C, H, W"):
        resize(half[0], (2, 8))


def test_fill_missing_depends_on_own_part_only_and_matches_noise_level():
    torch.manual_seed(0)
    sigma = 0.5
    board = Checkerboard()
    clean = torch.full((4000, 1, 6, 6), 0.5)
    noisy_l, noisy_r = board.split(clean + sigma * torch.randn_like(clean))
    fresh = torch.randn_like(clean)
    filled = board.fill_missing(0, noisy_l, sigma, fresh)
    # Own pixels stay in place.
    assert torch.equal(board.split(filled)[0], noisy_l)
    # Every pixel, observed or filled, carries noise of standard deviation sigma.
    std = (filled - 0.5).std(dim=0)
    assert torch.allclose(std, torch.full_like(std, sigma), rtol=0.06)
    # The other sub-image cannot influence the result: it is not even an input. What
    # sits at its positions of `fresh` only moves the top-up noise, by
    # sigma * sqrt(1 - 1/k) per unit (k = 2, 3 or 4 neighbours); fresh's entries at
    # the own positions are not used at all.
    own, other = board.split(torch.ones_like(clean))
    moved = board.fill_missing(0, noisy_l, sigma, fresh + board.merge([0 * own, other])) - filled
    assert torch.equal(board.split(moved)[0], torch.zeros_like(noisy_l))
    top_up = board.split(moved)[1]
    assert top_up.min() >= sigma * 0.5**0.5 - 1e-6 and top_up.max() <= sigma * 0.75**0.5 + 1e-6
    assert torch.equal(board.fill_missing(0, noisy_l, sigma, fresh + board.merge([own, 0 * other])),
                       filled)
    # The same holds with the roles of the two sub-images swapped.
    again = board.fill_missing(1, noisy_r, sigma, fresh)
    assert torch.equal(board.split(again)[1], noisy_r)
    with pytest.raises(ValueError, match="full image shape"):
        board.fill_missing(0, noisy_l, sigma, fresh[:, :, :4])
