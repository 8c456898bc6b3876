"""Diffusion denoising for randomized smoothing (Carlini et al. 2023).

* :mod:`.schedule`: beta schedules, ``alphas_cumprod``, the sigma -> timestep map.
* :mod:`.unet`: the OpenAI improved-/guided-diffusion UNet on top of diffusers, with a
  converter from the official checkpoint layout.
* :mod:`.presets`: the official checkpoints' architectures and schedules by name.
* :mod:`.loading`: preset + checkpoint file, or a diffusers directory -> network.
* :mod:`.denoiser`: :class:`OneShotDenoiser`, one network call per noisy image.

diffusers itself is imported only when a network is built.
"""

from .denoiser import OneShotDenoiser, check_autocast_device
from .loading import DenoiserNetwork, load_denoiser_network, load_state_dict_file
from .presets import PRESETS, DenoiserPreset, get_preset
from .schedule import alphas_cumprod, beta_schedule, max_supported_sigma, sigma_to_timestep
from .unet import OpenAIUNet, OpenAIUNetConfig, StateDictMismatchError, openai_unet

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
    "get_preset",
    "load_denoiser_network",
    "load_state_dict_file",
    "max_supported_sigma",
    "openai_unet",
    "sigma_to_timestep",
]
