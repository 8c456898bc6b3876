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

Every partition here is a true partition (disjoint parts covering every pixel once),
which is all the DRS certificates assume of it.
"""

from __future__ import annotations

from collections.abc import Sequence
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
        """Build a full-size noisy image from one noisy sub-image alone (two-part
        partitions whose parts share one shape).

        The sub-image's pixels stay in place. Each missing pixel gets the mean of its
        k in-image 4-neighbours that belong to the sub-image plus
        ``sigma * sqrt(1 - 1/k) * fresh_noise``, so its noise has variance exactly
        ``sigma**2``, like every observed pixel (a missing pixel with no such
        neighbour, k = 0, gets ``0.5 + sigma * fresh_noise``; the checkerboard has
        none). ``fresh_noise`` is a standard normal tensor of the full image shape
        ``(N, C, H, W)`` that must be independent of the other sub-image; only its
        entries at the missing positions are used. The output is therefore a
        function of ``noisy_part`` and ``fresh_noise`` only: the other sub-image
        cannot influence it.
        """
        if self.num_parts != 2 or part_index not in (0, 1):
            raise ValueError(
                f"part_index must be 0 (l) or 1 (r) of a two-part partition, got {part_index} "
                f"of {self.num_parts}"
            )
        zeros = torch.zeros_like(noisy_part)
        ones = torch.ones_like(noisy_part[..., :1, :, :])
        parts = (noisy_part, zeros) if part_index == 0 else (zeros, noisy_part)
        masks = (
            (ones, torch.zeros_like(ones)) if part_index == 0 else (torch.zeros_like(ones), ones)
        )
        placed = self.merge(parts)
        observed = self.merge(masks)
        if fresh_noise.shape != placed.shape:
            raise ValueError(
                f"fresh_noise must have the full image shape {tuple(placed.shape)}, "
                f"got {tuple(fresh_noise.shape)}"
            )
        cross = placed.new_tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
        channels = placed.shape[-3]
        flat = placed.reshape(-1, channels, *placed.shape[-2:])
        neighbour_sum = F.conv2d(flat, cross.expand(channels, 1, 3, 3), padding=1, groups=channels)
        mask = observed.reshape(-1, 1, *placed.shape[-2:])[:1]
        neighbours = F.conv2d(mask, cross.view(1, 1, 3, 3), padding=1)
        # Observed pixels may have no observed neighbours (count 0); clamp so the
        # unused branch of the final `where` stays finite.
        count = neighbours.clamp_min(1.0)
        mean = neighbour_sum / count
        top_up = sigma * torch.sqrt(1.0 - 1.0 / count)
        filled = mean + top_up * fresh_noise.reshape(flat.shape)
        isolated = (neighbours == 0) & ~mask.bool()
        if isolated.any():
            filled = torch.where(isolated, 0.5 + sigma * fresh_noise.reshape(flat.shape), filled)
        return torch.where(observed.bool(), placed, filled.reshape(placed.shape))



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


_BY_NAME: dict[str, type[Partition]] = {
    cls.name: cls for cls in (Identity, Checkerboard, DrsRelease)
}
PARTITIONS = {**_BY_NAME, **{mode.value: _BY_NAME[partition_for(mode).value] for mode in Mode}}
"""Partition classes by name, and by the mode they serve (see :mod:`denoised_drs.modes`)."""


def get_partition(name: str) -> Partition:
    """Partition by name: ``"rs"``/``"identity"``, ``"drs"``/``"checkerboard"`` or
    ``"drs-release"``."""
    try:
        return PARTITIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown partition {name!r}; choose one of {sorted(PARTITIONS)}"
        ) from None


__all__ = [
    "Checkerboard",
    "DrsRelease",
    "Identity",
    "InterpolationMode",
    "Partition",
    "checkerboard_merge",
    "checkerboard_split",
    "get_partition",
    "resize",
]
