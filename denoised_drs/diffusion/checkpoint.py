"""Our denoiser checkpoint format: the weights with the architecture and schedule they need.

A file written by :func:`save_denoiser_checkpoint` is a dict ``{"format":
"denoised_drs.denoiser", "flags", "schedule", "num_timesteps", "rescale_timesteps",
"state_dict", "extra", "state_dict_sha256"}``: the OpenAI UNet flags, the beta
schedule, the weights in our UNet's (diffusers) layout and their content hash. It
loads with ``--denoiser path/to/file.pt`` and nothing else
(:func:`~denoised_drs.diffusion.loading.load_denoiser_network`, which reads the file
and hands the payload to :func:`network_from_checkpoint`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from ..atomic_file import atomic_write
from ..checkpoint_file import with_content_hash
from ..state_dicts import check_state_dict
from .flags_file import MAX_TIMESTEPS, checked_flags
from .network import DenoiserNetwork
from .schedule import SCHEDULES, alphas_cumprod, beta_schedule
from .unet import OpenAIUNet, openai_unet

CHECKPOINT_FORMAT = "denoised_drs.denoiser"
REQUIRED_KEYS = ("flags", "schedule", "num_timesteps", "rescale_timesteps", "state_dict")
"""The entries every denoiser checkpoint must hold (``extra`` and the hash are optional)."""


def save_denoiser_checkpoint(
    path: str | os.PathLike,
    network: OpenAIUNet,
    flags: Mapping[str, Any],
    schedule: str,
    num_timesteps: int,
    rescale_timesteps: bool = False,
    extra: Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Write network weights and everything needed to rebuild it (atomic: tmp + rename).

    ``dtype=torch.float16`` halves the file; weights are cast back to float32 on load.
    The file carries the content hash of the stored weights, verified on load.
    """
    state = {
        key: value.to(dtype) if value.is_floating_point() else value
        for key, value in network.state_dict().items()
    }
    payload = with_content_hash({
        "format": CHECKPOINT_FORMAT,
        "flags": dict(flags),
        "schedule": schedule,
        "num_timesteps": int(num_timesteps),
        "rescale_timesteps": bool(rescale_timesteps),
        "state_dict": state,
        "extra": dict(extra or {}),
    })
    with atomic_write(path) as stream:
        torch.save(payload, stream)


def is_denoiser_checkpoint(obj: Any) -> bool:
    """Whether ``obj`` (a file's content) is a :func:`save_denoiser_checkpoint` payload."""
    return isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT


def network_from_checkpoint(payload: Mapping[str, Any], name: str = "") -> DenoiserNetwork:
    """Rebuild the network of a :func:`save_denoiser_checkpoint` payload, loaded strictly.

    Every entry is checked first (:data:`REQUIRED_KEYS` present, the flags as a
    ``--denoiser-config`` file's, a known schedule, 1 to :data:`MAX_TIMESTEPS` steps, a
    state dict of tensors): anything else raises one ValueError naming ``name``. Weights
    whose keys or shapes do not fit the recorded flags raise
    :class:`~denoised_drs.state_dicts.StateDictMismatchError` (a ValueError), checked
    on a network without storage before the real one is built.
    """
    where = f"denoiser checkpoint {name or '<payload>'}"
    try:
        _check_payload(payload)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    with torch.device("meta"):  # flags claiming a huge network cost no memory here
        shapes = openai_unet(**payload["flags"]).state_dict()
    check_state_dict(state, shapes, f"{where} does not fit its own flags")
    network = openai_unet(**payload["flags"])
    network.load_state_dict(state, strict=True)
    num_timesteps = payload["num_timesteps"]
    return DenoiserNetwork(
        network=network.eval(),
        alphas_cumprod=alphas_cumprod(beta_schedule(payload["schedule"], num_timesteps)),
        timestep_scale=1000.0 / num_timesteps if payload["rescale_timesteps"] else 1.0,
        name=name,
    )


def _check_payload(payload: Mapping[str, Any]) -> None:
    """ValueError (one line) unless every entry of ``payload`` has its type and range."""
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise ValueError(f"a {CHECKPOINT_FORMAT} checkpoint with no {missing[0]!r}")
    flags = payload["flags"]
    if not isinstance(flags, Mapping):
        raise ValueError(f"flags must be a dict of OpenAI UNet flags, got {flags!r}")
    try:
        checked_flags(flags)
    except ValueError as error:
        raise ValueError(f"flags: {error}") from None
    if not isinstance(payload["schedule"], str) or payload["schedule"] not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {payload['schedule']!r}")
    steps = payload["num_timesteps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_TIMESTEPS:
        raise ValueError(
            f"num_timesteps must be an integer from 1 to {MAX_TIMESTEPS}, got {steps!r}"
        )
    if not isinstance(payload["rescale_timesteps"], bool):
        raise ValueError(
            f"rescale_timesteps must be true or false, got {payload['rescale_timesteps']!r}"
        )
    state = payload["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError("state_dict must map parameter names to tensors")
    if not isinstance(payload.get("extra", {}), Mapping):
        raise ValueError(f"extra must be a dict, got {payload['extra']!r}")
