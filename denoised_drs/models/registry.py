"""Bare networks by name (timm-style registry); weights are never downloaded.

Names: ``cifar_resnet20``, ``cifar_resnet56``, ``cifar_resnet110`` (Cohen et al.),
``resnet50`` (torchvision, ``weights=None``), ``small_cnn`` (28x28 grey images) and
``timm:<name>`` for any timm model (``pretrained=False``). Every builder takes
``num_classes``, ``in_channels`` and ``input_size = (H, W)``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .cifar_resnet import CifarResNet
from .small_cnn import SmallCNN
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
    arch: str,
    num_classes: int,
    in_channels: int = 3,
    input_size: tuple[int, int] = (32, 32),
) -> nn.Module:
    """A freshly initialised bare network (no normalisation layer) named ``arch``."""
    if not isinstance(arch, str):
        raise TypeError(f"arch must be a model name (str), got {type(arch).__name__}")
    if num_classes < 1 or in_channels < 1:
        raise ValueError(
            f"num_classes and in_channels must be positive, got {num_classes}, {in_channels}"
        )
    if arch.startswith(TIMM_PREFIX):
        return _timm_model(arch[len(TIMM_PREFIX) :], num_classes, in_channels, tuple(input_size))
    try:
        builder = _REGISTRY[arch]
    except KeyError:
        raise ValueError(
            f"unknown architecture {arch!r}; choose one of {list_models()} or 'timm:<name>'"
        ) from None
    return builder(num_classes, in_channels, tuple(input_size))


def build_classifier(
    arch: str,
    num_classes: int,
    in_channels: int = 3,
    normalization: str = "cifar10",
    input_size: tuple[int, int] = (32, 32),
) -> NormalizedClassifier:
    """``create_model`` with the dataset's normalisation layer first (input in [0, 1])."""
    mean, std = normalization_for(normalization, in_channels)
    return NormalizedClassifier(create_model(arch, num_classes, in_channels, input_size), mean, std)
