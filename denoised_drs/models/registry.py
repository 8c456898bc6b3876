"""Bare networks by name (timm-style registry); weights are never downloaded.

Names: ``cifar_resnet20``, ``cifar_resnet56``, ``cifar_resnet110`` (Cohen et al.),
``resnet50`` (torchvision, ``weights=None``), ``small_cnn`` (28x28 grey images) and
``timm:<name>`` for any timm model (``pretrained=False``). Every builder takes
``num_classes``, ``in_channels`` and ``input_size = (H, W)``; :func:`create_model` is
the one way the package builds a classifier by name.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from torch import nn

from denoised_drs.checkpoint_file import load_weights_only
from denoised_drs.state_dicts import find_state_dict

from .cifar_resnet import CifarResNet
from .small_cnn import SmallCNN
from .weights import load_weights
from .wrappers import NormalizedClassifier, normalization_for

ModelBuilder = Callable[[int, int, tuple[int, int]], nn.Module]
_REGISTRY: dict[str, ModelBuilder] = {}
TIMM_PREFIX = "timm:"


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: register ``builder(num_classes, in_channels, input_size)`` under ``name``."""

    def decorate(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return decorate


def list_models() -> list[str]:
    """Registered names (plus any ``timm:<name>``, not listed)."""
    return sorted(_REGISTRY)


def _cifar_resnet(depth: int) -> ModelBuilder:
    def build(num_classes: int, in_channels: int, input_size: tuple[int, int]) -> nn.Module:
        return CifarResNet(depth, num_classes, in_channels)

    return build


for _depth in (20, 56, 110):
    register_model(f"cifar_resnet{_depth}")(_cifar_resnet(_depth))


@register_model("small_cnn")
def _small_cnn(num_classes: int, in_channels: int, input_size: tuple[int, int]) -> nn.Module:
    return SmallCNN(num_classes, in_channels, input_size)


@register_model("resnet50")
def _resnet50(num_classes: int, in_channels: int, input_size: tuple[int, int]) -> nn.Module:
    from torchvision.models import resnet50

    model = resnet50(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return model


def _timm_model(
    name: str, num_classes: int, in_channels: int, input_size: tuple[int, int]
) -> nn.Module:
    """timm's ``name`` (never pretrained), built for ``input_size`` where that matters.

    Models with a fixed input size (ViT, BEiT: the position embedding) are built with
    ``img_size=input_size`` when it differs from their ``pretrained_cfg``; models that
    take any size (convolutional networks) have no such argument and ignore it.
    """
    try:
        import timm
        from timm.models import get_pretrained_cfg
    except ImportError as err:  # optional dependency
        raise ImportError(f"model {TIMM_PREFIX}{name} needs the 'timm' package") from err
    if not timm.is_model(name):
        raise ValueError(f"timm has no model named {name!r}")
    options = {"pretrained": False, "num_classes": num_classes, "in_chans": in_channels}
    cfg = get_pretrained_cfg(name)
    native = tuple(cfg.input_size[-2:]) if cfg is not None and cfg.input_size else None
    if native is not None and tuple(input_size) != native:
        try:
            return timm.create_model(name, img_size=tuple(input_size), **options)
        except TypeError:  # this architecture has no img_size argument: any size fits
            pass
    return timm.create_model(name, **options)


def create_model(
    name: str,
    *,
    num_classes: int,
    in_chans: int = 3,
    input_size: tuple[int, int] = (32, 32),
    normalization: str | tuple[Sequence[float], Sequence[float]] | None = None,
    checkpoint_path: str | os.PathLike | None = None,
) -> nn.Module:
    """The network ``name``, freshly initialised or with the weights of ``checkpoint_path``.

    Without ``normalization`` this is the bare network. With it (a dataset name of
    :data:`~denoised_drs.data.DATASET_INFO`, ``"none"`` for the identity, or a
    ``(mean, std)`` pair) it is a :class:`NormalizedClassifier` taking images in
    [0, 1], whose ``model`` is the bare network. ``checkpoint_path`` names a file
    holding the bare network's weights in any layout :mod:`.loading` reads (our
    checkpoints, Cohen-style files, plain state dicts); weights that do not fit
    ``name`` raise ValueError naming the file and the first misfitting keys.
    """
    if not isinstance(name, str):
        raise TypeError(f"arch must be a model name (str), got {type(name).__name__}")
    if num_classes < 1 or in_chans < 1:
        raise ValueError(
            f"num_classes and in_chans must be positive, got {num_classes}, {in_chans}"
        )
    network = _bare_network(name, num_classes, in_chans, tuple(input_size))
    if checkpoint_path is not None:
        checkpoint = load_weights_only(checkpoint_path)
        try:
            load_weights(network, find_state_dict(checkpoint), name)
        except ValueError as err:
            raise ValueError(f"{checkpoint_path}: {err}") from None
    if normalization is None:
        return network
    if isinstance(normalization, str):
        mean, std = normalization_for(normalization, in_chans)
    else:
        mean, std = normalization
    return NormalizedClassifier(network, mean, std)


def _bare_network(
    name: str, num_classes: int, in_chans: int, input_size: tuple[int, int]
) -> nn.Module:
    if name.startswith(TIMM_PREFIX):
        return _timm_model(name[len(TIMM_PREFIX) :], num_classes, in_chans, input_size)
    try:
        builder = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown architecture {name!r}; choose one of {list_models()} or 'timm:<name>'"
        ) from None
    return builder(num_classes, in_chans, input_size)
