"""k-way partitions: diagonal stripes and polyphase components, by name and by class."""

import math

import pytest
import torch

from denoised_drs.partition import (
    PARTITIONS,
    Checkerboard,
    Diagonal,
    DrsRelease,
    Partition,
    Polyphase,
    get_partition,
    partition_names,
)

NAMES = [
    "diagonal-2", "diagonal-3", "diagonal-4", "diagonal-5", "diagonal-7",
    "polyphase-1x2", "polyphase-2x1", "polyphase-2x2", "polyphase-2x3", "polyphase-3x3",
    "polyphase-1x4", "polyphase-4x1",
]


def _periods(partition: Partition) -> tuple[int, int]:
    """What height and width must be multiples of."""
    if isinstance(partition, Diagonal):
        return 1, partition.num_parts
    return partition.rows, partition.cols


def _part_of(partition: Partition, i: int, j: int) -> int:
    """The part pixel (i, j) belongs to, straight from the definition."""
    if isinstance(partition, Diagonal):
        return (i + j) % partition.num_parts
    return (i % partition.rows) * partition.cols + j % partition.cols


def _stored_positions(partition: Partition, part: int, height: int, width: int):
    """The image positions of a part's stored pixels, as a nested list of its shape."""
    if isinstance(partition, Diagonal):
        return [[(i, j) for j in range(width) if (i + j) % partition.num_parts == part]
                for i in range(height)]
    row, col = divmod(part, partition.cols)
    return [[(i, j) for j in range(col, width, partition.cols)]
            for i in range(row, height, partition.rows)]


def _random_shape(partition: Partition, generator: torch.Generator) -> tuple[int, ...]:
    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=generator))

    lead = tuple(draw(1, 3) for _ in range(draw(0, 2)))
    row_period, col_period = _periods(partition)
    return (*lead, draw(1, 3), row_period * draw(1, 4), col_period * draw(1, 4))


@pytest.mark.parametrize("name", NAMES)
def test_names_parse_to_the_right_partition(name):
    partition = get_partition(name)
    assert partition.name == name
    family, size = name.split("-")
    if family == "diagonal":
        assert isinstance(partition, Diagonal) and partition.num_parts == int(size)
    else:
        a, b = map(int, size.split("x"))
        assert isinstance(partition, Polyphase) and partition.num_parts == a * b


@pytest.mark.parametrize("name", NAMES)
def test_merge_inverts_split_bit_for_bit(name):
    partition = get_partition(name)
    generator = torch.Generator().manual_seed(sum(map(ord, name)))
    for _ in range(6):
        shape = _random_shape(partition, generator)
        x = torch.randn(shape, generator=generator, dtype=torch.float64)
        # Values whose bits a float round trip could lose: -0.0, NaN, inf, subnormals.
        x.view(-1)[: 4] = torch.tensor([-0.0, math.nan, -math.inf, 5e-324])[: x.numel()]
        parts = partition.split(x)
        assert len(parts) == partition.num_parts
        row_period, col_period = _periods(partition)
        if isinstance(partition, Diagonal):
            part_shape = (*shape[:-1], shape[-1] // col_period)
        else:
            part_shape = (*shape[:-2], shape[-2] // row_period, shape[-1] // col_period)
        assert all(tuple(part.shape) == part_shape for part in parts)
        assert all(part.is_contiguous() for part in parts)
        merged = partition.merge(parts)
        assert merged.shape == x.shape
        assert torch.equal(merged.view(torch.int64), x.view(torch.int64))
        # Integer images and non-contiguous views (transposed, strided) too.
        wide = torch.randint(-1000, 1000, (*shape[:-2], shape[-1], 2 * shape[-2]),
                             generator=generator)
        view = wide[..., ::2].transpose(-1, -2)
        assert not view.is_contiguous()
        assert torch.equal(partition.merge(partition.split(view)), view)


@pytest.mark.parametrize("name", NAMES)
def test_parts_are_disjoint_cover_every_pixel_and_follow_the_stated_order(name):
    partition = get_partition(name)
    row_period, col_period = _periods(partition)
    height, width = 2 * row_period * 3, 2 * col_period
    index = torch.arange(height * width).view(1, 1, height, width)
    parts = partition.split(index)
    stored = torch.cat([part.flatten() for part in parts])
    assert torch.equal(stored.sort().values, index.flatten())  # each pixel exactly once
    for p, part in enumerate(parts):
        positions = _stored_positions(partition, p, height, width)
        assert part[0, 0].tolist() == [[i * width + j for i, j in row] for row in positions]
        assert all(_part_of(partition, i, j) == p for row in positions for i, j in row)


def test_diagonal_4_on_a_hand_checked_4x4():
    x = torch.arange(16).view(1, 4, 4)
    # x = [[ 0  1  2  3]
    #      [ 4  5  6  7]
    #      [ 8  9 10 11]
    #      [12 13 14 15]]   part p holds (i + j) mod 4 == p, one pixel per row here.
    parts = get_partition("diagonal-4").split(x)
    assert [part.tolist() for part in parts] == [
        [[[0], [7], [10], [13]]],
        [[[1], [4], [11], [14]]],
        [[[2], [5], [8], [15]]],
        [[[3], [6], [9], [12]]],
    ]
    wide = torch.arange(16).view(1, 2, 8)
    # [[0 1 2 3 4 5 6 7], [8 ... 15]]: row 1 of part 0 holds columns 3 and 7.
    assert Diagonal(4).split(wide)[0].tolist() == [[[0, 4], [11, 15]]]


def test_polyphase_2x2_on_a_hand_checked_4x4():
    x = torch.arange(16).view(1, 4, 4)
    parts = get_partition("polyphase-2x2").split(x)
    assert [part.tolist() for part in parts] == [
        [[[0, 2], [8, 10]]],  # (even, even)
        [[[1, 3], [9, 11]]],  # (even, odd)
        [[[4, 6], [12, 14]]],  # (odd, even)
        [[[5, 7], [13, 15]]],  # (odd, odd)
    ]
    # A x B = 1 x 2 is columns by parity, every row kept.
    assert Polyphase(1, 2).split(x)[1].tolist() == [[[1, 3], [5, 7], [9, 11], [13, 15]]]


def test_diagonal_2_is_the_checkerboard_bit_for_bit():
    generator = torch.Generator().manual_seed(2)
    diagonal, board = get_partition("diagonal-2"), Checkerboard()
    for shape in [(3, 4, 6), (2, 1, 3, 8, 2), (5, 3, 32, 32)]:
        x = torch.randn(shape, generator=generator)
        ours, theirs = diagonal.split(x), board.split(x)
        assert len(ours) == len(theirs) == 2
        assert all(torch.equal(a.view(torch.int32), b.view(torch.int32))
                   for a, b in zip(ours, theirs))
        assert torch.equal(diagonal.merge(theirs), board.merge(ours))
    x = torch.rand(3, 3, 8, 8, generator=generator)
    fresh = torch.randn(3, 3, 8, 8, generator=generator)
    for j, part in enumerate(board.split(x)):
        assert torch.equal(diagonal.fill_missing(j, part, 0.3, fresh),
                           board.fill_missing(j, part, 0.3, fresh))


@pytest.mark.parametrize(("name", "shape"), [
    ("diagonal-3", (2, 3, 6, 8)),
    ("diagonal-4", (1, 4, 6)),
    ("polyphase-2x2", (1, 3, 5, 4)),
    ("polyphase-2x2", (1, 3, 4, 5)),
    ("polyphase-3x1", (2, 1, 8, 9)),
])
def test_shapes_that_do_not_divide_are_refused_in_one_line(name, shape):
    partition = get_partition(name)
    for refuse in (lambda: partition.split(torch.zeros(shape)),
                   lambda: partition.check_image_shape(shape[-3:])):
        with pytest.raises(ValueError) as caught:
            refuse()
        message = str(caught.value)
        assert "\n" not in message and name in message
        assert f"{shape[-2]}, {shape[-1]})" in message


def test_merge_refuses_wrong_parts():
    partition = get_partition("polyphase-2x2")
    parts = partition.split(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="has 4 parts, got 3"):
        partition.merge(parts[:3])
    with pytest.raises(ValueError, match="same shape"):
        partition.merge([*parts[:3], torch.zeros(1, 2, 3)])
    with pytest.raises(ValueError, match="has 3 parts, got 2"):
        Diagonal(3).merge([torch.zeros(1, 2, 2)] * 2)
    with pytest.raises(ValueError, match="at least 3 dimensions"):
        Diagonal(2).merge([torch.zeros(2, 2)] * 2)


@pytest.mark.parametrize("name", [
    "diagonal", "diagonal-", "diagonal-1", "diagonal-0", "diagonal-02", "diagonal-x",
    "diagonal-2.5", "polyphase-2", "polyphase-1x1", "polyphase-0x4", "polyphase-2x2x2",
    "polyphase-2X2", "Diagonal-4", " diagonal-4", "diagonal-4 ", "quadrants", "",
])
def test_names_that_do_not_parse_are_refused_listing_the_forms(name):
    with pytest.raises(ValueError) as caught:
        get_partition(name)
    message = str(caught.value)
    assert "\n" not in message and repr(name) in message
    assert "diagonal-K" in message and "polyphase-AxB" in message and "checkerboard" in message


def test_constructors_refuse_degenerate_sizes():
    for bad in (1, 0, -2, 2.0, True):
        with pytest.raises(ValueError, match="k >= 2"):
            Diagonal(bad)
    for a, b in ((1, 1), (0, 2), (2, -1), (2.0, 2)):
        with pytest.raises(ValueError, match="a \\* b >= 2"):
            Polyphase(a, b)


def test_the_fixed_names_stay_and_the_forms_are_listed():
    assert {"identity", "checkerboard", "drs-release", "rs", "drs"} == set(PARTITIONS)
    names = partition_names()
    assert set(PARTITIONS) < set(names)
    assert any(form.startswith("diagonal-K") for form in names)
    assert any(form.startswith("polyphase-AxB") for form in names)
    assert isinstance(get_partition("drs"), Checkerboard)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_are_checked_on_the_meta_device(name):
    partition = get_partition(name)
    row_period, col_period = _periods(partition)
    partition.check_image_shape((3, 2 * row_period, 3 * col_period))
    parts = partition.split(torch.empty(7, 3, 2 * row_period, 3 * col_period, device="meta"))
    assert all(part.device.type == "meta" for part in parts)
    assert partition.merge(parts).shape == (7, 3, 2 * row_period, 3 * col_period)
    bad = (3, 2 * row_period + 1, 3 * col_period) if row_period > 1 else (
        3, 2 * row_period, 3 * col_period + 1)
    with pytest.raises(ValueError, match=name):
        partition.check_image_shape(bad)


def _reference_fill(partition, part_index, noisy_part, sigma, fresh):
    """fill_missing by its definition, pixel by pixel: the mean of the nearest own
    pixels (all ties) plus sigma * sqrt(1 - 1/n) * fresh."""
    height, width = fresh.shape[-2:]
    owner = partition.merge([torch.full_like(noisy_part[:1, :1], p)
                             for p in range(partition.num_parts)])[0, 0]
    placed = partition.merge([noisy_part if p == part_index else torch.zeros_like(noisy_part)
                              for p in range(partition.num_parts)])
    own = [(i, j) for i in range(height) for j in range(width) if owner[i, j] == part_index]
    out = placed.clone()
    for i in range(height):
        for j in range(width):
            if owner[i, j] == part_index:
                continue
            nearest = min((a - i) ** 2 + (b - j) ** 2 for a, b in own)
            chosen = [(a, b) for a, b in own if (a - i) ** 2 + (b - j) ** 2 == nearest]
            mean = sum(placed[..., a, b] for a, b in chosen) / len(chosen)
            out[..., i, j] = mean + sigma * math.sqrt(1 - 1 / len(chosen)) * fresh[..., i, j]
    return out


@pytest.mark.parametrize(("partition", "height", "width"), [
    (Checkerboard(), 6, 6), (DrsRelease(), 5, 6), (Diagonal(3), 5, 6), (Diagonal(4), 5, 8),
    (Diagonal(6), 7, 12), (Polyphase(2, 2), 4, 6), (Polyphase(3, 3), 6, 6),
    (Polyphase(1, 3), 3, 6),
], ids=lambda value: value.name if isinstance(value, Partition) else str(value))
def test_fill_missing_is_the_mean_of_the_nearest_own_pixels_plus_top_up(partition, height, width):
    generator = torch.Generator().manual_seed(partition.num_parts + height)
    x = torch.rand(2, 2, height, width, generator=generator, dtype=torch.float64)
    fresh = torch.randn(2, 2, height, width, generator=generator, dtype=torch.float64)
    for j, part in enumerate(partition.split(x)):
        filled = partition.fill_missing(j, part, 0.4, fresh)
        assert torch.allclose(filled, _reference_fill(partition, j, part, 0.4, fresh),
                              rtol=0, atol=1e-12)
        assert torch.equal(partition.split(filled)[j], part)


def test_fill_missing_worked_examples_beyond_the_4_neighbours():
    sigma = 0.5
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    fresh = torch.full((1, 1, 4, 4), 2.0)
    # Polyphase 2x2, part 0 observes (0,0)=1, (0,2)=3, (2,0)=9, (2,2)=11.
    filled = Polyphase(2, 2).fill_missing(0, Polyphase(2, 2).split(x)[0], sigma, fresh)[0, 0]
    assert filled[1, 1] == pytest.approx((1 + 3 + 9 + 11) / 4 + sigma * math.sqrt(3 / 4) * 2)
    assert filled[0, 1] == pytest.approx((1 + 3) / 2 + sigma * math.sqrt(1 / 2) * 2)
    assert filled[3, 3] == 11  # one nearest pixel, (2, 2): no top-up
    assert filled[3, 0] == 9
    # Diagonal-4, part 1 observes (0,1)=2, (1,0)=5, (2,3)=12, (3,2)=15. Pixel (0, 3) has
    # no own pixel among its 8 neighbours; the nearest are (0, 1) and (2, 3), at 2.
    filled = Diagonal(4).fill_missing(1, Diagonal(4).split(x)[1], sigma, fresh)[0, 0]
    assert filled[0, 3] == pytest.approx((2 + 12) / 2 + sigma * math.sqrt(1 / 2) * 2)
    assert filled[1, 1] == pytest.approx((2 + 5) / 2 + sigma * math.sqrt(1 / 2) * 2)


@pytest.mark.parametrize("name", ["diagonal-3", "diagonal-4", "polyphase-2x2", "polyphase-3x3"])
def test_fill_missing_depends_on_the_own_part_and_fresh_noise_only(name):
    torch.manual_seed(0)
    sigma = 0.5
    partition = get_partition(name)
    row_period, col_period = _periods(partition)
    clean = torch.full((4000, 1, 2 * row_period * 2, 2 * col_period), 0.5)
    parts = partition.split(clean + sigma * torch.randn_like(clean))
    fresh = torch.randn_like(clean)
    for j in (0, partition.num_parts - 1):
        own = partition.merge([torch.ones_like(part) if p == j else torch.zeros_like(part)
                               for p, part in enumerate(parts)])
        filled = partition.fill_missing(j, parts[j], sigma, fresh)
        assert torch.equal(partition.split(filled)[j], parts[j])
        # Every pixel, observed or filled, carries noise of standard deviation sigma.
        std = (filled - 0.5).std(dim=0)
        assert torch.allclose(std, torch.full_like(std, sigma), rtol=0.06)
        # fresh is not read at the own positions; at a missing position it moves that
        # pixel alone, by sigma * sqrt(1 - 1/n) per unit (n nearest own pixels): the
        # output is a function of the own part and the fresh noise at missing positions.
        assert torch.equal(partition.fill_missing(j, parts[j], sigma, fresh + own), filled)
        moved = partition.fill_missing(j, parts[j], sigma, fresh + (1 - own)) - filled
        assert (moved[own.bool()] == 0).all()
        assert moved.min() >= -1e-6 and moved.max() <= sigma + 1e-6
        # With period 3 every missing pixel has one nearest own pixel and copies it
        # (n = 1, no top-up); the others have pixels with several.
        assert (moved.max() > 0) == (name != "polyphase-3x3")


def test_fill_missing_refuses_a_part_index_out_of_range_and_wrong_noise():
    partition = Polyphase(2, 2)
    part = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="0..3"):
        partition.fill_missing(4, part, 0.5, torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="full image shape"):
        partition.fill_missing(0, part, 0.5, torch.zeros(1, 1, 4, 2))
