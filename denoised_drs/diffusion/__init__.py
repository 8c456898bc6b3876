"""Diffusion denoising for randomized smoothing (Carlini et al. 2023).

* :mod:`.schedule`: beta schedules, ``alphas_cumprod``, the sigma -> timestep map and
  the noise level a timestep carries.
* :mod:`.unet`: the OpenAI improved-/guided-diffusion UNet on top of diffusers.
* :mod:`.openai_checkpoint`: the official checkpoint layout -> our UNet's keys.
* :mod:`.presets`: the official checkpoints' architectures and schedules by name.
* :mod:`.flags_file`: any other unconditional OpenAI checkpoint's, from a JSON flags file.
* :mod:`.network`: :class:`DenoiserNetwork`, a network with its schedule.
* :mod:`.checkpoint`: our own denoiser checkpoint format (save, recognise, rebuild).
* :mod:`.loading`: preset + checkpoint file, our checkpoint, or a diffusers directory
  -> network.
* :mod:`.denoiser`: :class:`OneShotDenoiser`, one network call per noisy image, and
  :func:`checked_denoiser`, the vetting of other modules offered as denoisers.
* :mod:`.training`: training a small denoiser for a band of noise levels.

diffusers itself is imported only when a network is built.
"""

from ..state_dicts import StateDictMismatchError
from .denoiser import (
    OneShotDenoiser,
    check_autocast_device,
    checked_denoiser,
    cpu_has_native_bf16,
)
from .flags_file import read_denoiser_config
from .loading import load_denoiser_network
from .network import DenoiserNetwork
from .presets import PRESETS, DenoiserPreset, get_preset
from .schedule import (
    alphas_cumprod,
    beta_schedule,
    max_supported_sigma,
    sigma_to_timestep,
    timestep_noise_level,
)
from .unet import OpenAIUNet, OpenAIUNetConfig, openai_unet

__all__ = [
    "PRESETS",
    "DenoiserNetwork",
    "DenoiserPreset",
    "OneShotDenoiser",
    "OpenAIUNet",
    "OpenAIUNetConfig",
    "StateDictMismatchError",
    "alphas_cumprod",
    "beta_schedule",
    "check_autocast_device",
    "cpu_has_native_bf16",
    "checked_denoiser",
    "get_preset",
    "load_denoiser_network",
    "max_supported_sigma",
    "openai_unet",
    "read_denoiser_config",
    "sigma_to_timestep",
    "timestep_noise_level",
]
