"""How an image becomes sub-images and back.

A :class:`Partition` maps a batch of images ``(..., C, H, W)`` to a tuple of
non-overlapping sub-images and back again, exactly. Randomized smoothing (RS) uses
the :class:`Identity` partition (one part, the image itself); Dual Randomized
Smoothing (DRS) uses the :class:`Checkerboard` partition of Xia et al. (2024):
sub-image ``l`` holds the pixels with ``(i + j)`` even, ``r`` those with ``(i + j)``
odd, each stored compactly as ``(..., C, H, W / 2)`` row by row (row ``i`` of ``l``
keeps columns ``i mod 2, i mod 2 + 2, ...``). :class:`DrsRelease` is the partition
the DRS authors' released code trained its classifiers on (the same except in the
first column pair of each row, see there); it lets their checkpoints run as trained.

Two families cut an image into ``k`` parts: :class:`Diagonal` (``"diagonal-K"``, pixel
``(i, j)`` to part ``(i + j) mod K``, each part ``(..., C, H, W / K)`` row by row;
``diagonal-2`` is the checkerboard) and :class:`Polyphase` (``"polyphase-AxB"``, part
``(i mod A) * B + (j mod B)``, each part a ``(..., C, H / A, W / B)`` low-resolution
image). :func:`get_partition` builds any of them from its name.

Every partition here is a true partition (disjoint parts covering every pixel once),
which is all the DRS certificates assume of it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from denoised_drs.modes import Mode, PartitionName, partition_for

InterpolationMode = Literal["nearest", "bilinear", "bicubic"]
INTERPOLATIONS: tuple[str, ...] = ("nearest", "bilinear", "bicubic")


def _check_image(x: torch.Tensor, what: str = "image batch") -> None:
    if x.dim() < 3:
        raise ValueError(
            f"expected a {what} of shape (..., C, H, W) with at least 3 dimensions, "
            f"got shape {tuple(x.shape)}"
        )


def _check_even(x: torch.Tensor) -> None:
    _check_image(x)
    height, width = x.shape[-2:]
    if height % 2 or width % 2:
        raise ValueError(
            f"the checkerboard split needs even height and width, got shape {tuple(x.shape)}"
        )


def checkerboard_split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``x`` of shape ``(..., C, H, W)`` into the two checkerboard halves.

    Returns ``(x_l, x_r)``, each of shape ``(..., C, H, W // 2)``: ``x_l`` holds the
    pixels with ``(i + j)`` even, ``x_r`` those with ``(i + j)`` odd, in row-major
    order. ``H`` and ``W`` must be even. The two halves share no pixel and together
    hold every pixel once, so :func:`checkerboard_merge` inverts this exactly.
    """
    _check_even(x)
    *lead, channels, height, width = x.shape
    # blocks[..., a, p, b, q] is pixel (2a + p, 2b + q); (i + j) is even iff p == q.
    blocks = x.reshape(*lead, channels, height // 2, 2, width // 2, 2)
    x_l = torch.stack((blocks[..., 0, :, 0], blocks[..., 1, :, 1]), dim=-2)
    x_r = torch.stack((blocks[..., 0, :, 1], blocks[..., 1, :, 0]), dim=-2)
    half_shape = (*lead, channels, height, width // 2)
    return x_l.reshape(half_shape), x_r.reshape(half_shape)


def checkerboard_merge(x_l: torch.Tensor, x_r: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`checkerboard_split`: two ``(..., C, H, W / 2)`` halves to one image."""
    _check_image(x_l, "sub-image batch")
    if x_l.shape != x_r.shape:
        raise ValueError(
            f"checkerboard halves must have the same shape, got {tuple(x_l.shape)} "
            f"and {tuple(x_r.shape)}"
        )
    *lead, channels, height, half_width = x_l.shape
    if height % 2:
        raise ValueError(
            f"the checkerboard merge needs an even height, got shape {tuple(x_l.shape)}"
        )
    rows_l = x_l.reshape(*lead, channels, height // 2, 2, half_width)
    rows_r = x_r.reshape(*lead, channels, height // 2, 2, half_width)
    blocks = x_l.new_empty(*lead, channels, height // 2, 2, half_width, 2)
    blocks[..., 0, :, 0] = rows_l[..., 0, :]
    blocks[..., 1, :, 1] = rows_l[..., 1, :]
    blocks[..., 0, :, 1] = rows_r[..., 0, :]
    blocks[..., 1, :, 0] = rows_r[..., 1, :]
    return blocks.reshape(*lead, channels, height, 2 * half_width)


def resize(
    x: torch.Tensor, size: tuple[int, int], mode: InterpolationMode = "nearest"
) -> torch.Tensor:
    """Resize a batch ``(N, C, h, w)`` to ``(N, C, *size)`` by interpolation.

    Used to feed a compact sub-image ``(N, C, H, W / 2)`` to a classifier that
    expects full-size ``(H, W)`` input. The result depends on ``x`` alone, so a
    classifier composed with it stays a function of its own sub-image.
    """
    if x.dim() != 4:
        raise ValueError(f"resize expects a batch of shape (N, C, H, W), got {tuple(x.shape)}")
    if mode not in INTERPOLATIONS:
        raise ValueError(f"interpolation mode must be one of {INTERPOLATIONS}, got {mode!r}")
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    # antialias=True matches torchvision's (PIL-like) resizing when shrinking
    # (e.g. 256 -> 224). When enlarging it leaves bilinear unchanged (to 1e-6), but
    # not bicubic: the antialiased kernel is PIL's (a = -0.5), the plain one uses
    # a = -0.75, and the two differ by up to 0.11 on random 32 -> 224 images.
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)


class Partition:
    """A lossless way to cut images into ``num_parts`` sub-images (the smoothing branches)."""

    num_parts: int = 1
    name: str = "partition"
    scale: tuple[int, int] = (1, 1)
    """How many times taller and wider the image is than each part (all parts share
    one shape): what a classifier of a part upsamples it by to see a full-size image."""

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def merge(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def check_image_shape(self, shape: Sequence[int]) -> None:
        """Raise ValueError if images of ``shape`` (C, H, W) cannot be partitioned."""
        self.split(torch.empty((1, *shape), device="meta"))

    def fill_missing(
        self, part_index: int, noisy_part: torch.Tensor, sigma: float, fresh_noise: torch.Tensor
    ) -> torch.Tensor:
        """Build a full-size noisy image from one noisy sub-image alone (partitions whose
        parts share one shape, as all here do).

        The sub-image's pixels stay in place. Each missing pixel gets the mean of the
        n pixels of the sub-image nearest to it in the image (Euclidean distance, every
        pixel at that smallest distance counted) plus ``sigma * sqrt(1 - 1/n) *
        fresh_noise``, so its noise has variance exactly ``sigma**2``, like every
        observed pixel. Where a missing pixel has observed 4-neighbours these are its
        nearest pixels, so the two-part partitions here (each missing pixel has one) get
        the mean of the observed 4-neighbours, as they always did; with ``k`` parts the
        nearest pixels may be diagonal (polyphase 2x2) or further (diagonal-K, K >= 5).
        ``fresh_noise`` is a standard normal tensor of the full image shape
        ``(N, C, H, W)`` that must be independent of the other sub-images; only its
        entries at the missing positions are used. The output is therefore a function
        of ``noisy_part`` and ``fresh_noise`` only: the other sub-images cannot
        influence it.
        """
        plan = self.fill_plan(part_index, noisy_part)
        zeros = torch.zeros_like(noisy_part)
        placed = self.merge(
            [noisy_part if j == part_index else zeros for j in range(self.num_parts)]
        )
        if fresh_noise.shape != placed.shape:
            raise ValueError(
                f"fresh_noise must have the full image shape {tuple(placed.shape)}, "
                f"got {tuple(fresh_noise.shape)}"
            )
        height, width = placed.shape[-2:]
        channels = placed.shape[-3]
        flat = placed.reshape(-1, channels, height, width)
        noise = fresh_noise.reshape(flat.shape)
        # Observed pixels keep their values; each ring (nearest first) fills the missing
        # pixels that have observed pixels on it and none nearer.
        filled = flat
        for ring in plan:
            neighbour_sum = F.conv2d(
                flat, ring.kernel.expand(channels, 1, *ring.kernel.shape[-2:]),
                padding=ring.radius, groups=channels,
            )
            mean = neighbour_sum / ring.count
            top_up = sigma * ring.root
            filled = torch.where(ring.use, mean + top_up * noise, filled)
        return filled.reshape(placed.shape)

    def fill_plan(self, part_index: int, like: torch.Tensor) -> tuple[FillRing, ...]:
        """Where :meth:`fill_missing` fills part ``part_index``'s missing pixels from, for
        sub-images shaped, typed and placed as ``like`` (..., C, h, w): one
        :class:`FillRing` per distance that fills any pixel, nearest first.

        It depends on the geometry alone, so it is computed once per part, sub-image size,
        device and dtype and kept (the per-batch fill then reads no tensor value back,
        and a compiled step traces no data-dependent branch).
        """
        if part_index not in range(self.num_parts):
            raise ValueError(
                f"part_index must be one of 0..{self.num_parts - 1} for the {self.name} "
                f"partition, got {part_index}"
            )
        key = (self.name, part_index, tuple(like.shape[-2:]), like.device, like.dtype)
        plan = _FILL_PLANS.get(key)
        if plan is None:
            plan = _FILL_PLANS[key] = self._compute_fill_plan(part_index, like)
        return plan

    def _compute_fill_plan(self, part_index: int, like: torch.Tensor) -> tuple[FillRing, ...]:
        ones = torch.ones((1, 1, *like.shape[-2:]), dtype=like.dtype, device=like.device)
        mask = self.merge([ones if j == part_index else torch.zeros_like(ones)
                           for j in range(self.num_parts)])
        height, width = mask.shape[-2:]
        missing = ~mask.bool()
        plan = []
        for radius, offsets in _rings(height, width):
            if not missing.any():
                break
            ring = mask.new_zeros(2 * radius + 1, 2 * radius + 1)
            for di, dj in offsets:
                ring[radius + di, radius + dj] = 1.0
            kernel = ring.view(1, 1, *ring.shape)
            neighbours = F.conv2d(mask, kernel, padding=radius)
            use = missing & (neighbours > 0)
            if not use.any():
                continue
            # Pixels with no observed pixel on this ring have count 0; clamp so the
            # unused branch of the `where` stays finite.
            count = neighbours.clamp_min(1.0)
            plan.append(FillRing(radius, kernel, use, count, torch.sqrt(1.0 - 1.0 / count)))
            missing = missing & ~use
        return tuple(plan)


@dataclass(frozen=True)
class FillRing:
    """One distance of :meth:`Partition.fill_plan`: the pixels it fills (``use``, (1, 1, H, W))
    from the ``count`` observed pixels on a ring of offsets (``kernel``, (1, 1, 2r + 1,
    2r + 1), r = ``radius``) around them, with ``root`` = sqrt(1 - 1 / count)."""

    radius: int
    kernel: torch.Tensor
    use: torch.Tensor
    count: torch.Tensor
    root: torch.Tensor


_FILL_PLANS: dict[tuple, tuple[FillRing, ...]] = {}


def _rings(height: int, width: int) -> Iterator[tuple[int, set[tuple[int, int]]]]:
    """The offsets ``(di, dj)`` between pixels of a ``height x width`` image, grouped by
    Euclidean distance, nearest first: yields ``(radius, offsets)`` per distance, with
    ``radius`` the largest ``|di|`` or ``|dj|`` among them. The first group is the four
    4-neighbours (radius 1); every offset between two pixels of the image is in one."""
    for squared in range(1, (height - 1) ** 2 + (width - 1) ** 2 + 1):
        offsets = set()
        for di in range(math.isqrt(squared) + 1):
            dj = math.isqrt(squared - di * di)
            if di * di + dj * dj == squared:
                offsets |= {(si * di, sj * dj) for si in (1, -1) for sj in (1, -1)}
        if offsets:
            yield max(max(abs(di), abs(dj)) for di, dj in offsets), offsets


class Identity(Partition):
    """The trivial partition of randomized smoothing: one part, the whole image."""

    num_parts = 1
    name = PartitionName.IDENTITY.value

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        _check_image(x)
        return (x,)

    def merge(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(parts) != 1:
            raise ValueError(f"the identity partition has one part, got {len(parts)}")
        return parts[0]


class Checkerboard(Partition):
    """The DRS split: ``l`` = pixels with (i + j) even, ``r`` = pixels with (i + j) odd."""

    num_parts = 2
    name = PartitionName.CHECKERBOARD.value
    scale = (1, 2)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return checkerboard_split(x)

    def merge(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(parts) != 2:
            raise ValueError(f"the checkerboard partition has two parts, got {len(parts)}")
        return checkerboard_merge(parts[0], parts[1])


def _release_columns(
    height: int, width: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Column of each stored pixel of the :class:`DrsRelease` parts, shape (H, W / 2)."""
    rows = torch.arange(height, device=device).view(-1, 1)
    pairs = torch.arange(width // 2, device=device).view(1, -1)
    # Pair 0 of row i: l takes column i mod 2 (as the checkerboard); later pairs: the other.
    offset = torch.where(pairs == 0, rows % 2, (rows + 1) % 2)
    return 2 * pairs + offset, 2 * pairs + 1 - offset


class DrsRelease(Partition):
    """The two-part partition of the DRS authors' released code (xiasong0501/DRS).

    Each row is cut into column pairs (2k, 2k + 1), one pixel of each pair per part.
    In pair 0 of row ``i``, ``l`` takes column ``i mod 2`` (as :class:`Checkerboard`'s
    ``l``); in every later pair it takes the other pixel (as the checkerboard's ``r``).
    Their code's loop over flat pixel indices advances its row parity only after the
    first pair of each row, which gives this pattern; their classifiers were trained
    and certified on it. Each part is stored as ``(..., C, H, W / 2)``, column ``k``
    holding the pixel of pair ``k``, as their code's sub-images are.

    It is a true partition (every pixel in exactly one part), so the DRS certificates
    hold for it as for the checkerboard. ``W`` must be even.
    """

    num_parts = 2
    name = PartitionName.DRS_RELEASE.value
    scale = (1, 2)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        _check_image(x)
        height, width = x.shape[-2:]
        if width % 2:
            raise ValueError(
                f"the {self.name} partition needs an even width, got shape {tuple(x.shape)}"
            )
        half_shape = (*x.shape[:-1], width // 2)
        return tuple(
            torch.gather(x, -1, columns.expand(half_shape))
            for columns in _release_columns(height, width, x.device)
        )

    def merge(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(parts) != 2:
            raise ValueError(f"the {self.name} partition has two parts, got {len(parts)}")
        x_l, x_r = parts
        _check_image(x_l, "sub-image batch")
        if x_l.shape != x_r.shape:
            raise ValueError(
                f"the {self.name} parts must have the same shape, got {tuple(x_l.shape)} "
                f"and {tuple(x_r.shape)}"
            )
        height, half_width = x_l.shape[-2:]
        merged = x_l.new_empty((*x_l.shape[:-1], 2 * half_width))
        for part, columns in zip(parts, _release_columns(height, 2 * half_width, x_l.device)):
            merged.scatter_(-1, columns.expand(part.shape), part)
        return merged


def _check_parts(parts: Sequence[torch.Tensor], partition: Partition) -> None:
    """Raise ValueError unless ``parts`` are ``num_parts`` sub-image batches of one shape."""
    if len(parts) != partition.num_parts:
        raise ValueError(
            f"the {partition.name} partition has {partition.num_parts} parts, got {len(parts)}"
        )
    _check_image(parts[0], "sub-image batch")
    shapes = {tuple(part.shape) for part in parts}
    if len(shapes) > 1:
        raise ValueError(
            f"the {partition.name} parts must have the same shape, got {sorted(shapes)}"
        )


class Diagonal(Partition):
    """Diagonal stripes, ``k`` parts: pixel ``(i, j)`` goes to part ``(i + j) mod k``.

    Each part is stored as ``(..., C, H, W / k)`` row by row: row ``i`` of part ``p``
    holds, in increasing column order, the columns ``j`` with ``(i + j) mod k == p``
    (``j = (p - i) mod k, (p - i) mod k + k, ...``). ``W`` must be divisible by ``k``,
    ``H`` may be anything. ``Diagonal(2)`` is :class:`Checkerboard`, part for part and
    bit for bit. Its name is ``"diagonal-<k>"``; :meth:`merge` inverts :meth:`split`
    exactly (both only move values).
    """

    def __init__(self, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValueError(f"a diagonal partition needs an integer k >= 2, got {k!r}")
        self.num_parts = k
        self.name = f"diagonal-{k}"
        self.scale = (1, k)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        _check_image(x)
        k = self.num_parts
        height, width = x.shape[-2:]
        if width % k:
            raise ValueError(
                f"the {self.name} partition needs a width divisible by {k}, "
                f"got shape {tuple(x.shape)}"
            )
        # blocks[..., i, b, q] is pixel (i, b k + q), which is in part (i + q) mod k.
        blocks = x.reshape(*x.shape[:-1], width // k, k)
        rows = torch.arange(height, device=x.device).view(-1, 1, 1)
        parts = torch.arange(k, device=x.device).view(1, 1, -1)
        # by_part[..., i, b, p] = blocks[..., i, b, (p - i) mod k]: the b-th pixel of part p.
        by_part = torch.gather(blocks, -1, (parts - rows).remainder(k).expand(blocks.shape))
        return tuple(by_part.movedim(-1, 0).contiguous())

    def merge(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        _check_parts(parts, self)
        k = self.num_parts
        by_part = torch.stack(tuple(parts), dim=-1)
        height, part_width = by_part.shape[-3:-1]
        rows = torch.arange(height, device=by_part.device).view(-1, 1, 1)
        slots = torch.arange(k, device=by_part.device).view(1, 1, -1)
        # blocks[..., i, b, q] = by_part[..., i, b, (i + q) mod k], inverting split.
        blocks = torch.gather(by_part, -1, (rows + slots).remainder(k).expand(by_part.shape))
        return blocks.reshape(*by_part.shape[:-2], part_width * k)


class Polyphase(Partition):
    """Polyphase components, ``a * b`` parts: part ``(i mod a) * b + (j mod b)`` holds
    the pixels ``(i, j)`` with those residues.

    Part ``p = r * b + s`` is stored as ``(..., C, H / a, W / b)``, its pixel
    ``(u, v)`` being image pixel ``(u a + r, v b + s)``: each part is a proper
    low-resolution image (a ``(a, b)``-strided subsampling). ``H`` must be divisible
    by ``a`` and ``W`` by ``b``. Its name is ``"polyphase-<a>x<b>"``; :meth:`merge`
    inverts :meth:`split` exactly (both only move values).
    """

    def __init__(self, a: int, b: int) -> None:
        if (
            any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in (a, b))
            or a * b < 2
        ):
            raise ValueError(
                f"a polyphase partition needs integers a, b >= 1 with a * b >= 2, "
                f"got {a!r} x {b!r}"
            )
        self.rows, self.cols = a, b
        self.num_parts = a * b
        self.name = f"polyphase-{a}x{b}"
        self.scale = (a, b)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        _check_image(x)
        a, b = self.rows, self.cols
        height, width = x.shape[-2:]
        if height % a or width % b:
            raise ValueError(
                f"the {self.name} partition needs a height divisible by {a} and a width "
                f"divisible by {b}, got shape {tuple(x.shape)}"
            )
        # grid[..., u, r, v, s] is pixel (u a + r, v b + s), in part r b + s.
        grid = x.reshape(*x.shape[:-2], height // a, a, width // b, b)
        phases = grid.movedim((-3, -1), (0, 1))  # (a, b, ..., H / a, W / b)
        return tuple(phases.reshape(a * b, *phases.shape[2:]).contiguous())

    def merge(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        _check_parts(parts, self)
        a, b = self.rows, self.cols
        phases = torch.stack(tuple(parts)).unflatten(0, (a, b))
        grid = phases.movedim((0, 1), (-3, -1))  # (..., H / a, a, W / b, b)
        return grid.reshape(*grid.shape[:-4], grid.shape[-4] * a, grid.shape[-2] * b)


_BY_NAME: dict[str, type[Partition]] = {
    cls.name: cls for cls in (Identity, Checkerboard, DrsRelease)
}
PARTITIONS = {**_BY_NAME, **{mode.value: _BY_NAME[partition_for(mode).value] for mode in Mode}}
"""Partition classes by name, and by the mode they serve (see :mod:`denoised_drs.modes`)."""


_DIAGONAL = re.compile(r"diagonal-([1-9][0-9]*)")
_POLYPHASE = re.compile(r"polyphase-([1-9][0-9]*)x([1-9][0-9]*)")


def partition_names() -> tuple[str, ...]:
    """The names :func:`get_partition` accepts: the fixed names of :data:`PARTITIONS`
    (partitions and modes), then the two families' forms ``"diagonal-K"`` (integer
    ``K >= 2``) and ``"polyphase-AxB"`` (integers ``A, B >= 1``, ``A * B >= 2``)."""
    return (
        *sorted(PARTITIONS),
        "diagonal-K (integer K >= 2)",
        "polyphase-AxB (integers A, B >= 1, A*B >= 2)",
    )


def part_shape(partition: Partition, index: int, image_shape: Sequence[int]) -> tuple[int, int]:
    """(h, w) of part ``index`` of an image of ``image_shape`` (C, H, W) under ``partition``
    (ValueError if that shape cannot be partitioned)."""
    parts = partition.split(torch.empty((1, *image_shape), device="meta"))
    return int(parts[index].shape[-2]), int(parts[index].shape[-1])


def get_partition(name: str) -> Partition:
    """Partition by name: ``"rs"``/``"identity"``, ``"drs"``/``"checkerboard"``,
    ``"drs-release"``, ``"diagonal-K"`` (:class:`Diagonal`) or ``"polyphase-AxB"``
    (:class:`Polyphase`). The returned partition's ``name`` is the one given, or the
    partition's own for a mode's name. Any other name raises ValueError with one line
    listing the accepted forms (:func:`partition_names`)."""
    if name in PARTITIONS:
        return PARTITIONS[name]()
    diagonal = _DIAGONAL.fullmatch(name)
    if diagonal and int(diagonal[1]) >= 2:
        return Diagonal(int(diagonal[1]))
    polyphase = _POLYPHASE.fullmatch(name)
    if polyphase and int(polyphase[1]) * int(polyphase[2]) >= 2:
        return Polyphase(int(polyphase[1]), int(polyphase[2]))
    raise ValueError(
        f"unknown partition {name!r}; choose one of: {', '.join(partition_names())}"
    )


__all__ = [
    "Checkerboard",
    "Diagonal",
    "DrsRelease",
    "Identity",
    "InterpolationMode",
    "Partition",
    "Polyphase",
    "checkerboard_merge",
    "checkerboard_split",
    "get_partition",
    "part_shape",
    "partition_names",
    "resize",
]
