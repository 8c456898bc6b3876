"""Hugging Face transformers image classifiers saved as a folder (``save_pretrained``).

A classifier folder holds ``config.json`` and the weights (``model.safetensors``),
with the image processor's ``preprocessor_config.json`` beside them; Carlini et al.'s
CIFAR-10 ViT (a ``ViTForImageClassification``) is one. It is loaded by transformers
itself (``AutoModelForImageClassification``, local files only, in float32), an
optional dependency: ``pip install -e '.[hf]'``.

What the folder records becomes the classifier's defaults (:func:`folder_defaults`):
its architecture ``hf:<class>``, classes (``num_labels``) and channels from
``config.json``; the input size, normalisation and resize interpolation from
``preprocessor_config.json``. :class:`HFImageClassifier` makes the model a bare
network (pixel values in, logits out) for the library's wrappers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from denoised_drs.errors import first_line

HF_PREFIX = "hf:"
"""Architecture names of transformers classifiers: ``hf:ViTForImageClassification``."""
CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
PIL_RESAMPLING = {0: "nearest", 2: "bilinear", 3: "bicubic"}
"""PIL resampling codes (as image processors record them) this library resizes by."""
INSTALL_HINT = "pip install -e '.[hf]'"


def is_model_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder: classifiers in folders are transformers models."""
    return os.path.isdir(path)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            f"a classifier folder is a Hugging Face model; loading it needs transformers: "
            f"{INSTALL_HINT}"
        ) from err
    return transformers


def _check_folder(folder: Path) -> None:
    if not (folder / CONFIG_FILE).is_file():
        raise ValueError(
            f"{folder} is a folder but holds no {CONFIG_FILE}: a classifier folder must hold "
            f"a Hugging Face image classifier as save_pretrained writes it ({CONFIG_FILE}, "
            f"model.safetensors and {PREPROCESSOR_FILE})"
        )


def _side(size: Any) -> tuple[int, int] | None:
    """An image processor's ``size`` / ``crop_size`` as (H, W): an int, or a dict with
    ``height`` and ``width`` or ``shortest_edge`` (a square input); None for None or a
    dict naming neither. ValueError for any other value, or sides that are not
    positive integers."""
    if size is None:
        return None
    if isinstance(size, Mapping):
        if "height" in size and "width" in size:
            side = size["height"], size["width"]
        elif "shortest_edge" in size:
            side = size["shortest_edge"], size["shortest_edge"]
        else:
            return None
    else:
        side = size, size
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in side):
        raise ValueError(f"an image size must be positive integers, got {size!r}")
    return side


def _per_channel(value: Any, channels: int) -> tuple[float, ...]:
    """A processor's mean or std: one number for every channel, or a list of numbers
    (ValueError otherwise; the count is checked with the rest of the spec)."""
    values = [value] * channels if not isinstance(value, (list, tuple)) else list(value)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"image_mean and image_std must be numbers, got {value!r}")
    return tuple(float(v) for v in values)


def preprocessor_defaults(processor: Mapping[str, Any], channels: int) -> dict[str, Any]:
    """``input_size``, ``mean`` / ``std`` and ``interpolation`` from an image processor's
    configuration (the dict of ``preprocessor_config.json``), where it names them.

    The input size is ``crop_size`` when the processor center-crops, else ``size``;
    a processor with ``do_normalize`` false gets the identity normalisation; a PIL
    resampling code this library lacks (e.g. Lanczos) is left out.
    """
    values: dict[str, Any] = {}
    cropped = processor.get("do_center_crop") and processor.get("crop_size") is not None
    side = _side(processor["crop_size"] if cropped else processor.get("size"))
    if side is not None:
        values["input_size"] = side
    if not processor.get("do_normalize", True):
        values["mean"], values["std"] = (0.0,) * channels, (1.0,) * channels
    elif processor.get("image_mean") is not None and processor.get("image_std") is not None:
        values["mean"] = _per_channel(processor["image_mean"], channels)
        values["std"] = _per_channel(processor["image_std"], channels)
    if processor.get("resample") in PIL_RESAMPLING:
        values["interpolation"] = PIL_RESAMPLING[processor["resample"]]
    return values


def folder_defaults(folder: str | os.PathLike) -> dict[str, Any]:
    """What a classifier folder records: ``arch`` (``hf:<class>``), ``num_classes``
    (``num_labels``), ``in_channels`` and, where named, ``input_size`` (the config's
    ``image_size``, then the processor's), ``mean``, ``std`` and ``interpolation``.

    Raises ValueError for a folder that is no transformers model and ImportError
    (saying how to install it) when transformers is missing.
    """
    folder = Path(folder)
    _check_folder(folder)
    transformers = _transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{folder / CONFIG_FILE}: {first_line(err)}") from None
    names = getattr(config, "architectures", None) or [config.model_type]
    channels = int(getattr(config, "num_channels", 3))
    values: dict[str, Any] = {
        "arch": HF_PREFIX + names[0],
        "num_classes": int(config.num_labels),
        "in_channels": channels,
    }
    try:
        side = _side(getattr(config, "image_size", None))
    except ValueError as err:
        raise ValueError(f"{folder / CONFIG_FILE}: {err}") from None
    if side is not None:
        values["input_size"] = side
    processor_file = folder / PREPROCESSOR_FILE
    if processor_file.is_file():
        try:
            processor = json.loads(processor_file.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{processor_file}: {first_line(err)}") from None
        if not isinstance(processor, Mapping):
            raise ValueError(f"{processor_file} does not hold a JSON object")
        try:
            values.update(preprocessor_defaults(processor, channels))
        except ValueError as err:
            raise ValueError(f"{processor_file}: {err}") from None
    return values


class HFImageClassifier(nn.Module):
    """A transformers image-classification model as a bare network: ``pixel_values``
    (already resized and normalised) in, the output's ``logits`` out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def load_hf_network(folder: str | os.PathLike) -> HFImageClassifier:
    """The image classifier saved in ``folder``, by transformers from local files only,
    in float32 and eval mode. A folder whose weights leave some of the model's
    parameters unset (e.g. a backbone without its classification head) is refused.
    """
    folder = Path(folder)
    _check_folder(folder)
    transformers = _transformers()
    # transformers draws a progress bar and a load report on stderr; a script's stderr
    # is for its one-line errors.
    hf_logging = transformers.utils.logging
    bar_was_on, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        model, info = transformers.AutoModelForImageClassification.from_pretrained(
            str(folder), local_files_only=True, output_loading_info=True
        )
    except Exception as err:  # noqa: BLE001 - any failure to read the folder is bad input
        # Wrong shapes raise RuntimeError, a damaged weights file safetensors' own error.
        raise ValueError(f"{folder}: not a loadable classifier ({first_line(err)})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar_was_on:
            hf_logging.enable_progress_bar()
    missing = sorted(info.get("missing_keys", ()))
    if missing:
        raise ValueError(
            f"{folder}: the weights leave {len(missing)} parameter(s) of the model unset, "
            f"first {missing[0]!r} (is it an image classifier with its head?)"
        )
    return HFImageClassifier(model.float().eval())
