"""Train a small OpenAI-architecture diffusion model for one-shot denoising.

The objective is the DDPM noise-prediction loss of Ho et al. (2020), as in the
OpenAI code: ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` with ``x0`` in
[-1, 1], and ``|| eps - network(x_t, t * timestep_scale)[:, :C] ||^2``. Since the
model only ever serves as a one-shot denoiser at the timesteps matched to the
smoothing noise levels, ``t`` is drawn uniformly from the timesteps of
``[sigma_min, sigma_max]`` rather than from all ``T`` steps; the result is a
denoiser for that band, not a sampler.

Checkpoints are written in our own format, which keeps the architecture with
the weights (:func:`save_denoiser_checkpoint`, :func:`load_denoiser_checkpoint`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint_file import load_weights_only, with_content_hash
from .loading import DenoiserNetwork
from .schedule import alphas_cumprod as make_alphas_cumprod
from .schedule import beta_schedule, sigma_to_timestep
from .unet import OpenAIUNet, openai_unet

CHECKPOINT_FORMAT = "denoised_drs.denoiser"


def timestep_band(abar: np.ndarray, sigma_min: float, sigma_max: float) -> tuple[int, int]:
    """The inclusive range of diffusion timesteps that serve pixel noise in [sigma_min, sigma_max]."""
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    return sigma_to_timestep(abar, sigma_min), sigma_to_timestep(abar, sigma_max)


def denoising_loss(
    network: nn.Module,
    x0: torch.Tensor,
    abar: torch.Tensor,
    band: tuple[int, int],
    timestep_scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mean squared error of the predicted noise on a batch of clean images in [0, 1].

    ``abar`` holds abar_t for every t (float32, on the images' device); ``band`` the
    inclusive timestep range to draw t from.
    """
    low, high = band
    t = torch.randint(low, high + 1, (x0.shape[0],), device=x0.device, generator=generator)
    eps = torch.randn(x0.shape, device=x0.device, generator=generator)
    a = abar[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * (2 * x0 - 1) + (1 - a).sqrt() * eps
    prediction = network(x_t, t.float() * timestep_scale)[:, : x0.shape[1]]
    return torch.mean((prediction - eps) ** 2)


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
    from ..models.loading import atomic_save  # imported here: models is a heavier import

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
    atomic_save(payload, path)


def is_denoiser_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT


def network_from_checkpoint(payload: Mapping[str, Any], name: str = "") -> DenoiserNetwork:
    """Rebuild the network of a :func:`save_denoiser_checkpoint` payload, loaded strictly."""
    network = openai_unet(**payload["flags"])
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    result = network.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        missing = result.missing_keys[:1] or ["none"]
        unexpected = result.unexpected_keys[:1] or ["none"]
        raise ValueError(
            f"denoiser checkpoint {name or '<payload>'} does not fit its own flags: "
            f"first missing key {missing[0]!r}, first unexpected key {unexpected[0]!r}"
        )
    num_timesteps = int(payload["num_timesteps"])
    return DenoiserNetwork(
        network=network.eval(),
        alphas_cumprod=make_alphas_cumprod(beta_schedule(payload["schedule"], num_timesteps)),
        timestep_scale=1000.0 / num_timesteps if payload["rescale_timesteps"] else 1.0,
        name=name,
    )


def load_denoiser_checkpoint(path: str | os.PathLike) -> DenoiserNetwork:
    """Load a checkpoint written by :func:`save_denoiser_checkpoint` (weights_only)."""
    path = Path(path)
    payload = load_weights_only(path, "denoiser checkpoint")
    if not is_denoiser_checkpoint(payload):
        raise ValueError(f"{path} is not a denoised_drs denoiser checkpoint")
    return network_from_checkpoint(payload, str(path))


def cosine_warmup_lr(step: int, total_steps: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
