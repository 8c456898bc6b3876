"""Modules that wrap a bare network so it can serve as a base classifier.

* :class:`Normalize` / :class:`NormalizedClassifier`: per-channel normalisation as the
  first layer, so callers (and the smoothing noise) work in [0, 1] pixel space.
* :class:`SubImageClassifier`: lets a full-size classifier classify a compact DRS
  sub-image ``(N, C, H, W/2)`` by resizing it back to ``(H, W)`` first.
* :class:`ResizedClassifier`: lets a classifier of a fixed square input size take any
  image or sub-image, resized to that size first (e.g. a 32-px denoised CIFAR-10
  image upsampled bicubically for a 224-px ViT);
* :class:`EnsembleClassifier`: averages the logits of several classifiers
  (Horvath et al. 2022).

Each is an ``nn.Module`` mapping a batch of images to logits ``(N, num_classes)``,
so they nest and can be used anywhere a single classifier is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..data import DATASET_INFO
from ..partition import INTERPOLATIONS, InterpolationMode, resize


def normalization_for(name: str, in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) for a dataset name (:data:`~denoised_drs.data.DATASET_INFO`), or the
    identity (0, 1) for ``"none"``."""
    if name == "none":
        return (0.0,) * in_channels, (1.0,) * in_channels
    try:
        info = DATASET_INFO[name]
    except KeyError:
        raise ValueError(
            f"no normalisation constants for {name!r}; choose one of "
            f"{sorted([*DATASET_INFO, 'none'])}"
        ) from None
    mean, std = info.mean, info.std
    if len(mean) != in_channels:
        raise ValueError(
            f"{name!r} normalisation has {len(mean)} channel(s), the model expects {in_channels}"
        )
    return mean, std


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; mean and std are buffers, saved with the model."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"need one positive std per mean, got mean={mean} std={std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class NormalizedClassifier(nn.Module):
    """A bare network with its normalisation first: input in [0, 1], output logits.

    ``self.model`` holds the bare network, whose ``state_dict`` is what checkpoints store.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))


class SubImageClassifier(nn.Module):
    """Classify a compact sub-image ``(N, C, h, w)`` with a full-size classifier.

    The sub-image (by default a DRS half, ``(H, W/2)``; any part's ``part_size``
    otherwise, e.g. ``(H/2, W/2)`` for polyphase-2x2) is resized to
    ``full_size = (H, W)`` by ``mode`` interpolation
    (:func:`denoised_drs.partition.resize`) and passed to ``classifier``. The output
    depends on the given sub-image alone, which is what the independent-branch DRS
    certificate requires.
    """

    def __init__(
        self,
        classifier: nn.Module,
        full_size: tuple[int, int],
        mode: InterpolationMode = "nearest",
        part_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if mode not in INTERPOLATIONS:
            raise ValueError(f"interpolation mode must be one of {INTERPOLATIONS}, got {mode!r}")
        height, width = (int(s) for s in full_size)
        if part_size is None:
            if width % 2:
                raise ValueError(f"full_size needs an even width for a half, got {full_size}")
            part_size = (height, width // 2)
        if min(height, width, *part_size) <= 0:
            raise ValueError(f"sizes must be positive, got {full_size} and {part_size}")
        self.classifier = classifier
        self.full_size = (height, width)
        self.part_size = (int(part_size[0]), int(part_size[1]))
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = self.part_size
        if x.dim() != 4 or tuple(x.shape[-2:]) != expected:
            raise ValueError(
                f"expected sub-images of shape (N, C, {expected[0]}, {expected[1]}) "
                f"for full size {self.full_size}, got {tuple(x.shape)}"
            )
        return self.classifier(resize(x, self.full_size, self.mode))


class ResizedClassifier(nn.Module):
    """Resize any input ``(N, C, h, w)`` to ``size`` by ``mode``, then classify it.

    ``size`` None keeps full images as they are and gives a compact sub-image
    ``(h, w)`` its full shape: ``(h, 2 w)`` for a DRS half (``sub_image=True``), or
    ``(a h, b w)`` for ``sub_image=(a, b)`` (a partition's ``scale``). The output
    depends on the given input alone, so a branch built from it stays a function of
    its own sub-image (the independent certificate's requirement).
    """

    def __init__(
        self,
        classifier: nn.Module,
        size: tuple[int, int] | None,
        mode: InterpolationMode = "nearest",
        sub_image: bool | tuple[int, int] = False,
    ) -> None:
        super().__init__()
        if mode not in INTERPOLATIONS:
            raise ValueError(f"interpolation mode must be one of {INTERPOLATIONS}, got {mode!r}")
        if size is not None:
            size = (int(size[0]), int(size[1]))
            if min(size) <= 0:
                raise ValueError(f"size must be positive, got {size}")
        self.classifier = classifier
        self.size = size
        self.mode = mode
        if isinstance(sub_image, bool):
            sub_image = (1, 2) if sub_image else (1, 1)
        self.scale = (int(sub_image[0]), int(sub_image[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected a batch of images (N, C, H, W), got {tuple(x.shape)}")
        size = self.size
        if size is None:
            height, width = x.shape[-2:]
            size = (height * self.scale[0], width * self.scale[1])
        return self.classifier(resize(x, size, self.mode))


class EnsembleClassifier(nn.Module):
    """Average of the members' logits (Horvath et al. 2022): ``mean_k f_k(x)``.

    Logits, not softmax probabilities, are averaged; the argmax is the ensemble's
    vote for each noisy sample. All members must accept the same input shape and
    return the same number of classes.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) == 0:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = [member(x) for member in self.members]
        shapes = {tuple(out.shape) for out in logits}
        if len(shapes) != 1:
            raise ValueError(f"ensemble members disagree on the output shape: {sorted(shapes)}")
        return torch.stack(logits).mean(dim=0)
