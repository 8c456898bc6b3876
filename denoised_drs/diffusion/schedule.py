"""Diffusion noise schedules and the pixel-noise -> diffusion-timestep map.

All arithmetic is float64, as in the OpenAI code, so that ``alphas_cumprod`` agrees
with the schedules the official checkpoints were trained with to the last bit.

Indexing convention (the OpenAI one): ``betas[t]`` and ``alphas_cumprod[t]`` belong
to timestep ``t`` in ``0 .. T-1``, and the forward process at timestep ``t`` is
``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` with ``abar_t = alphas_cumprod[t]``.
With this convention :func:`sigma_to_timestep` reproduces the reference values of
Carlini et al. (2023) (cosine, T = 4000: sigma 0.25, 0.5, 1.0 -> t = 1158, 1984, 2809;
linear, T = 1000: t = 145, 259, 396).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

SCHEDULES = ("linear", "cosine")

# Improved-diffusion clips cosine betas here so the last steps stay invertible.
_MAX_COSINE_BETA = 0.999
_COSINE_OFFSET = 0.008


def beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """Return the ``num_timesteps`` betas of the named schedule (float64).

    * ``"linear"`` (DDPM, scaled so any T matches T = 1000):
      ``linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T)``.
    * ``"cosine"`` (Nichol and Dhariwal 2021):
      ``beta_i = min(1 - abar(i + 1) / abar(i), 0.999)`` with
      ``abar(s) = cos^2(((s / T + 0.008) / 1.008) * pi / 2)``.
    """
    if not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")
    num_timesteps = int(num_timesteps)
    if name == "linear":
        scale = 1000.0 / num_timesteps
        return np.linspace(1e-4 * scale, 0.02 * scale, num_timesteps, dtype=np.float64)
    if name == "cosine":

        def abar(step: int) -> float:
            phase = (step / num_timesteps + _COSINE_OFFSET) / (1 + _COSINE_OFFSET)
            return math.cos(phase * math.pi / 2) ** 2

        # A scalar loop with math.cos mirrors the reference float64 arithmetic exactly;
        # T is at most a few thousand, so this costs nothing.
        betas = [min(1.0 - abar(i + 1) / abar(i), _MAX_COSINE_BETA) for i in range(num_timesteps)]
        return np.asarray(betas, dtype=np.float64)
    raise ValueError(f"unknown beta schedule {name!r}; expected one of {SCHEDULES}")


def alphas_cumprod(betas: ArrayLike) -> np.ndarray:
    """Return ``abar_t = prod_{s <= t} (1 - beta_s)`` for every timestep (float64)."""
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size == 0:
        raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
    if np.any(~((betas > 0) & (betas <= 1))):
        raise ValueError("betas must lie in (0, 1]")
    return np.cumprod(1.0 - betas)


def noise_to_signal(alphas_cumprod: ArrayLike) -> np.ndarray:
    """Return ``sqrt((1 - abar_t) / abar_t)``: the noise std of ``x_t / sqrt(abar_t)``.

    In [-1, 1] image units this is the Gaussian noise level at timestep ``t``; pixel
    noise ``sigma`` on [0, 1] images is ``2 sigma`` there.
    """
    abar = _check_alphas_cumprod(alphas_cumprod)
    with np.errstate(divide="ignore"):
        return np.sqrt((1.0 - abar) / abar)


def timestep_noise_level(alphas_cumprod: ArrayLike, t: int) -> float:
    """The pixel-space noise std (images in [0, 1]) of the diffusion state at timestep ``t``.

    ``sqrt((1 - abar_t) / abar_t) / 2``: what ``x_t / sqrt(abar_t)``, mapped back from
    [-1, 1] to [0, 1], carries. Denoisers that add their noise through the forward
    process at the timestep :func:`sigma_to_timestep` picks (Carlini et al.'s code, and
    DRS's, call ``q_sample`` on the clean image) smooth with this level, which is at
    least the ``sigma`` asked for, instead of ``sigma`` itself.
    """
    ratio = noise_to_signal(alphas_cumprod)
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < ratio.size:
        raise ValueError(f"t must be an integer timestep in [0, {ratio.size - 1}], got {t!r}")
    return float(ratio[t] / 2.0)


def max_supported_sigma(alphas_cumprod: ArrayLike) -> float:
    """The largest pixel-space sigma that some timestep of this schedule can absorb."""
    abar = _check_alphas_cumprod(alphas_cumprod)
    return timestep_noise_level(abar, abar.size - 1)


def sigma_to_timestep(alphas_cumprod: ArrayLike, sigma: float) -> int:
    """Return the timestep whose noise level first reaches pixel noise ``sigma``.

    ``t`` is the smallest index ``t >= 1`` with ``sqrt((1 - abar_t) / abar_t) >= 2 sigma``,
    where ``abar_t = alphas_cumprod[t]`` (OpenAI indexing, see the module docstring).
    ``sigma`` is the Gaussian noise std on [0, 1] images; the factor 2 converts it to
    the [-1, 1] range diffusion models work in. Because the ratio only grows with t,
    the chosen timestep's noise level is the smallest one that is at least 2 sigma.

    Raises:
        ValueError: if ``sigma <= 0`` (or not finite), or if no timestep is noisy
            enough; the message names the largest supported sigma.
    """
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be positive and finite, got {sigma}")
    ratio = noise_to_signal(alphas_cumprod)
    candidates = np.flatnonzero(ratio[1:] >= 2.0 * sigma)
    if candidates.size == 0:
        raise ValueError(
            f"sigma={sigma} is larger than this schedule supports: the largest supported "
            f"sigma is {ratio[-1] / 2.0:.6g} (T={ratio.size})"
        )
    return int(candidates[0]) + 1


def _check_alphas_cumprod(alphas_cumprod: ArrayLike) -> np.ndarray:
    abar = np.asarray(alphas_cumprod, dtype=np.float64)
    if abar.ndim != 1 or abar.size < 2:
        raise ValueError(f"alphas_cumprod must be a 1-D array of length >= 2, got {abar.shape}")
    # abar_T = 0 is allowed: zero-terminal-SNR schedules end there.
    if np.any(~((abar >= 0) & (abar < 1))):
        raise ValueError("alphas_cumprod must lie in [0, 1)")
    return abar
