"""A denoiser described by a JSON file of OpenAI script flags (``--denoiser-config``).

Any unconditional improved-diffusion or guided-diffusion checkpoint loads with the
flags it was trained with, written as a JSON object under the names of the OpenAI
``script_util.py`` (``image_size``, ``num_channels``, ``num_res_blocks``,
``channel_mult``, ``attention_resolutions``, ``num_heads``, ``num_head_channels``,
``learn_sigma``, ``use_scale_shift_norm``, ``resblock_updown``, ``dropout``, ...), for
example improved-diffusion's ImageNet-64 model::

    {"image_size": 64, "num_channels": 128, "num_res_blocks": 3, "learn_sigma": true,
     "diffusion_steps": 4000, "noise_schedule": "cosine", "rescale_timesteps": true}

What is checked, and what cannot be:

* ``diffusion_steps``, ``noise_schedule`` and ``rescale_timesteps`` are required: the
  two repositories disagree on the default of ``rescale_timesteps`` (improved-diffusion
  True, guided-diffusion False), and no check of the weights can tell a wrong schedule.
* Every other flag defaults as in the OpenAI scripts (``channel_mult`` by image size).
  A key that is no OpenAI flag, a value of the wrong type (JSON numbers, booleans,
  strings; ``channel_mult`` and ``attention_resolutions`` as ``"1,2,3"`` or a list of
  integers) or out of range is refused as one line naming the file.
* The checkpoint is then loaded strictly, so a flag that changes a weight's name or
  shape is caught; ``num_heads``, ``num_heads_upsample`` and
  ``use_new_attention_order`` change no shape and must simply be right.
* ``class_cond`` must be false: one-shot denoising takes unconditional models only.
* ``predict_xstart`` true makes the network's output the clean-image estimate itself;
  ``timestep_respacing``, ``use_kl``, ``sigma_small``, ``rescale_learned_sigmas``,
  ``use_checkpoint`` and ``use_fp16`` concern sampling or training and are ignored
  (one-shot denoising uses the schedule the network was trained on).
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..errors import first_line
from .presets import DenoiserPreset
from .schedule import SCHEDULES
from .unet import OpenAIUNetConfig

MAX_TIMESTEPS = 100_000
"""The most diffusion steps a schedule may have: the OpenAI models use up to 4,000; a
larger count is no trained model's and would only spend memory on its schedule."""
REQUIRED = ("diffusion_steps", "noise_schedule", "rescale_timesteps")
"""Keys a denoiser config must give: the schedule the network was trained with."""

_POSITIVE_INTS = ("image_size", "num_channels", "num_res_blocks", "num_heads", "in_channels",
                  "diffusion_steps")
_HEAD_INTS = ("num_head_channels", "num_heads_upsample")  # -1 means "derive it"
_BOOLS = ("learn_sigma", "use_scale_shift_norm", "resblock_updown", "use_new_attention_order",
          "class_cond", "rescale_timesteps", "predict_xstart", "use_kl", "sigma_small",
          "rescale_learned_sigmas", "use_checkpoint", "use_fp16")
_INT_LISTS = ("channel_mult", "attention_resolutions")
KNOWN_FLAGS = frozenset(
    (*_POSITIVE_INTS, *_HEAD_INTS, *_BOOLS, *_INT_LISTS, "dropout", "noise_schedule",
     "timestep_respacing")
)
"""Every key a denoiser config may hold (the OpenAI script flags that describe a model)."""


def read_denoiser_config(path: str | os.PathLike) -> DenoiserPreset:
    """The denoiser described by the JSON flags file ``path``, as a preset named by the path.

    Raises FileNotFoundError if the file is missing and ValueError (one line naming the
    file) if it is not a JSON object of valid flags; see the module docstring.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"denoiser config not found: {path}")
    try:
        flags = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot parse denoiser config {path}: {first_line(error)}") from None
    if not isinstance(flags, dict):
        raise ValueError(f"denoiser config {path} must hold a JSON object of OpenAI flags")
    try:
        return preset_from_flags(flags, str(path))
    except ValueError as error:
        raise ValueError(f"denoiser config {path}: {error}") from None


def preset_from_flags(flags: Mapping[str, Any], name: str) -> DenoiserPreset:
    """The denoiser that the OpenAI flags ``flags`` describe (checked as for a file)."""
    unknown = sorted(set(flags) - KNOWN_FLAGS)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; known: {sorted(KNOWN_FLAGS)}")
    missing = [key for key in REQUIRED if key not in flags]
    if missing:
        raise ValueError(
            f"missing {missing}: give the schedule the checkpoint was trained with "
            "(rescale_timesteps: true for improved-diffusion, false for guided-diffusion)"
        )
    checked = checked_flags(flags)
    if checked["noise_schedule"] not in SCHEDULES:
        raise ValueError(
            f"noise_schedule must be one of {SCHEDULES}, got {checked['noise_schedule']!r}"
        )
    architecture = {k: v for k, v in checked.items() if k not in REQUIRED}
    return DenoiserPreset(
        name=name,
        flags=MappingProxyType(architecture),
        schedule=checked["noise_schedule"],
        num_timesteps=checked["diffusion_steps"],
        rescale_timesteps=checked["rescale_timesteps"],
        prediction_type="sample" if checked.get("predict_xstart") else "epsilon",
    )


def checked_flags(flags: Mapping[str, Any]) -> dict[str, Any]:
    """``flags`` (OpenAI flags, any subset), each checked for its type and range and
    parsed (``"1,2"`` lists as tuples), after checking that they name an unconditional
    network whose layers fit together. Raises ValueError (one line) otherwise."""
    unknown = sorted(str(key) for key in set(flags) - KNOWN_FLAGS)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; known: {sorted(KNOWN_FLAGS)}")
    checked = {key: _checked(key, value) for key, value in flags.items()}
    if checked.get("class_cond"):
        raise ValueError("class_cond is true: one-shot denoising takes unconditional models only")
    architecture = {k: v for k, v in checked.items() if k not in REQUIRED}
    OpenAIUNetConfig.from_flags(**architecture)  # the layers fit together (ValueError)
    return checked


def _checked(key: str, value: Any) -> Any:
    """``value`` if it has the type and range flag ``key`` takes; ValueError otherwise."""
    if key in _BOOLS:
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {value!r}")
        return value
    if key in _POSITIVE_INTS or key in _HEAD_INTS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key} must be an integer, got {value!r}")
        if value < 1 and not (key in _HEAD_INTS and value == -1):
            allowed = "positive or -1" if key in _HEAD_INTS else "positive"
            raise ValueError(f"{key} must be {allowed}, got {value}")
        if key == "diffusion_steps" and value > MAX_TIMESTEPS:
            raise ValueError(f"diffusion_steps must be at most {MAX_TIMESTEPS}, got {value}")
        return value
    if key in _INT_LISTS:
        return _int_list(key, value)
    if key == "dropout":
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
            math.isfinite(value) and 0 <= value < 1
        ):
            raise ValueError(f"dropout must be a number in [0, 1), got {value!r}")
        return float(value)
    if key == "timestep_respacing" and value is None:
        return value
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {value!r}")
    return value


def _int_list(key: str, value: Any) -> tuple[int, ...]:
    """A ``"1,2,3"`` string or a list of positive integers, as a tuple."""
    message = f'{key} must be positive integers, as "1,2,3" or [1, 2, 3], got {value!r}'
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",") if part.strip()]
        if not all(part.isdigit() for part in parts):
            raise ValueError(message)
        values = tuple(int(part) for part in parts)
    elif isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        values = tuple(value)
    else:
        raise ValueError(message)
    if any(n < 1 for n in values):
        raise ValueError(message)
    return values
