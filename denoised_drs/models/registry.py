"""Bare networks by name (timm-style registry); weights are never downloaded.

Names: ``cifar_resnet20``, ``cifar_resnet56``, ``cifar_resnet110`` (Cohen et al.),
``resnet50`` (torchvision, ``weights=None``), ``small_cnn`` (28x28 grey images) and
``timm:<name>`` for any timm model (``pretrained=False``). Every builder takes
``num_classes``, ``in_channels`` and ``input_size = (H, W)``; :func:`create_model` is
the one way the package builds a classifier by name. :func:`model_defaults` gives the
input a network was made for (``resnet50``: 224 x 224, bilinear, as torchvision's
ImageNet weights; timm models: their ``pretrained_cfg``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from denoised_drs.checkpoint_file import load_weights_only
from denoised_drs.errors import is_integer
from denoised_drs.partition import INTERPOLATIONS, InterpolationMode
from denoised_drs.state_dicts import find_state_dict

from .cifar_resnet import CifarResNet
from .small_cnn import SmallCNN
from .weights import load_weights
from .wrappers import NormalizedClassifier, normalization_for

ModelBuilder = Callable[[int, int, tuple[int, int]], nn.Module]
_REGISTRY: dict[str, ModelBuilder] = {}
_INPUT_DEFAULTS: dict[str, dict[str, Any]] = {}
TIMM_PREFIX = "timm:"


def register_model(
    name: str,
    *,
    input_size: tuple[int, int] | None = None,
    interpolation: InterpolationMode | None = None,
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: register ``builder(num_classes, in_channels, input_size)`` under ``name``.

    ``input_size`` (and ``interpolation``) name the input the network was made for:
    a foreign file of this architecture is then fed its images resized to it, unless
    the caller names another size (see :func:`model_defaults`). Networks that take
    their images as they are (the CIFAR ResNets, SmallCNN) register none.
    """
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    defaults: dict[str, Any] = {}
    if input_size is not None:
        defaults["input_size"] = (int(input_size[0]), int(input_size[1]))
    if interpolation is not None:
        defaults["interpolation"] = interpolation

    def decorate(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = builder
        if defaults:
            _INPUT_DEFAULTS[name] = defaults
        return builder

    return decorate


def model_defaults(arch: str) -> dict[str, Any]:
    """The input the network ``arch`` was made for: any of ``input_size`` (H, W),
    ``interpolation``, ``mean`` and ``std``, or ``{}`` when it names none.

    Registered names give what they were registered with (``resnet50``: 224 x 224,
    bilinear); ``timm:<name>`` gives timm's ``pretrained_cfg`` (an interpolation this
    library lacks is left out). ViT and BEiT, for example, use mean = std = 0.5, not
    ImageNet's.
    """
    if not arch.startswith(TIMM_PREFIX):
        return dict(_INPUT_DEFAULTS.get(arch, {}))
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch[len(TIMM_PREFIX) :])
    if cfg is None:
        return {}
    values: dict[str, Any] = {}
    if cfg.mean is not None and cfg.std is not None:
        values["mean"], values["std"] = tuple(cfg.mean), tuple(cfg.std)
    if cfg.input_size is not None:
        values["input_size"] = tuple(cfg.input_size[-2:])
    if cfg.interpolation in INTERPOLATIONS:
        values["interpolation"] = cfg.interpolation
    return values


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


# torchvision's ImageNet ResNet-50s (and Cohen et al.'s) take 224-px crops, resized bilinearly.
@register_model("resnet50", input_size=(224, 224), interpolation="bilinear")
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
    for field, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if not is_integer(value):
            raise TypeError(f"{field} must be an integer, got {value!r}")
    if num_classes < 1 or in_chans < 1:
        raise ValueError(
            f"num_classes and in_chans must be positive, got {num_classes}, {in_chans}"
        )
    if not (isinstance(input_size, Sequence) and len(input_size) == 2
            and all(is_integer(side) and side >= 1 for side in input_size)):
        raise ValueError(f"input_size must be two positive integers (height, width), got "
                         f"{input_size!r}")
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
