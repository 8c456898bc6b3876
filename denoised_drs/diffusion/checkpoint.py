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
from .network import DenoiserNetwork
from .schedule import alphas_cumprod, beta_schedule
from .unet import OpenAIUNet, openai_unet

CHECKPOINT_FORMAT = "denoised_drs.denoiser"


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

    Weights whose keys or shapes do not fit the recorded flags raise
    :class:`~denoised_drs.state_dicts.StateDictMismatchError` (a ValueError).
    """
    network = openai_unet(**payload["flags"])
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    check_state_dict(
        state,
        network.state_dict(),
        f"denoiser checkpoint {name or '<payload>'} does not fit its own flags",
    )
    network.load_state_dict(state, strict=True)
    num_timesteps = int(payload["num_timesteps"])
    return DenoiserNetwork(
        network=network.eval(),
        alphas_cumprod=alphas_cumprod(beta_schedule(payload["schedule"], num_timesteps)),
        timestep_scale=1000.0 / num_timesteps if payload["rescale_timesteps"] else 1.0,
        name=name,
    )
