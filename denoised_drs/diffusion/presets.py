"""Named denoiser presets: network flags + diffusion schedule of a known checkpoint.

A preset says everything needed to use a checkpoint file for one-shot denoising: the
OpenAI UNet flags, the beta schedule, the number of diffusion steps T and whether
the network was trained on rescaled timesteps (improved-diffusion's
``rescale_timesteps=True``: the network sees ``t * 1000 / T``). The checkpoints
themselves are downloaded by users from the OpenAI repositories; nothing here
fetches anything. Any other unconditional OpenAI checkpoint is described the same way
by a JSON file of its flags (:mod:`~denoised_drs.diffusion.flags_file`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from ..state_dicts import StateDictMismatchError
from .schedule import alphas_cumprod, beta_schedule
from .unet import OpenAIUNet, openai_unet


@dataclass(frozen=True)
class DenoiserPreset:
    """One known denoiser architecture and the schedule it was trained with.

    ``flags`` are the OpenAI UNet flags, ``prediction_type`` what the first output
    channels hold: "epsilon" (the OpenAI default) or "sample" (``predict_xstart``).
    """

    name: str
    flags: Mapping[str, Any]
    schedule: str
    num_timesteps: int
    rescale_timesteps: bool
    checkpoint: str = ""
    description: str = field(default="", compare=False)
    prediction_type: str = "epsilon"

    @property
    def timestep_scale(self) -> float:
        """Factor from the diffusion timestep t to what the network is called with."""
        return 1000.0 / self.num_timesteps if self.rescale_timesteps else 1.0

    def alphas_cumprod(self) -> np.ndarray:
        """abar_t for t = 0 .. T-1 (float64), exactly as the training code computed it."""
        return alphas_cumprod(beta_schedule(self.schedule, self.num_timesteps))

    def build_network(self, state_dict: Mapping[str, torch.Tensor] | None = None) -> OpenAIUNet:
        """The preset's UNet, loaded strictly from ``state_dict`` (official layout) if given.

        A state dict that does not fit raises ValueError naming the preset, the first
        missing and the first unexpected key.
        """
        if state_dict is None:
            return openai_unet(**self.flags)
        try:
            return openai_unet(state_dict, **self.flags)
        except StateDictMismatchError as error:
            expected = f" (expected {self.checkpoint})" if self.checkpoint else ""
            raise StateDictMismatchError(f"denoiser {self.name!r}{expected}: {error}") from None


_IMPROVED_SMALL_FLAGS = {
    "image_size": 32,
    "num_channels": 32,
    "num_res_blocks": 1,
    "attention_resolutions": "16,8",
    "num_heads": 4,
    "learn_sigma": True,
    "use_scale_shift_norm": True,
    "dropout": 0.0,
}

PRESETS: Mapping[str, DenoiserPreset] = MappingProxyType(
    {
        preset.name: preset
        for preset in (
            DenoiserPreset(
                name="cifar10-uncond-50M",
                flags=MappingProxyType(
                    {
                        "image_size": 32,
                        "num_channels": 128,
                        "num_res_blocks": 3,
                        "channel_mult": (1, 2, 2, 2),
                        "attention_resolutions": "16,8",
                        "num_heads": 4,
                        "learn_sigma": True,
                        "use_scale_shift_norm": True,
                        "dropout": 0.3,
                    }
                ),
                schedule="cosine",
                num_timesteps=4000,
                rescale_timesteps=True,
                checkpoint="cifar10_uncond_50M_500K.pt",
                description="improved-diffusion CIFAR-10 unconditional model (52.5M parameters)"
                " used by Carlini et al. (2023); from github.com/openai/improved-diffusion",
            ),
            DenoiserPreset(
                name="imagenet64-uncond",
                flags=MappingProxyType(
                    {
                        "image_size": 64,
                        "num_channels": 128,
                        "num_res_blocks": 3,
                        "channel_mult": (1, 2, 3, 4),
                        "attention_resolutions": "16,8",
                        "num_heads": 4,
                        "learn_sigma": True,
                        "use_scale_shift_norm": True,
                        "dropout": 0.0,
                    }
                ),
                schedule="cosine",
                num_timesteps=4000,
                rescale_timesteps=True,
                checkpoint="imagenet64_uncond_100M_1500K.pt",
                description="improved-diffusion ImageNet 64x64 unconditional model (121.1M "
                "parameters, whatever its file name says; imagenet64_uncond_vlb_100M_1500K.pt "
                "has the same architecture and schedule); for whole images downsampled to "
                "64x64 (--dataset imagenet --image-size 64); "
                "from github.com/openai/improved-diffusion",
            ),
            DenoiserPreset(
                name="imagenet256-uncond",
                flags=MappingProxyType(
                    {
                        "image_size": 256,
                        "num_channels": 256,
                        "num_res_blocks": 2,
                        "channel_mult": (1, 1, 2, 2, 4, 4),
                        "attention_resolutions": "32,16,8",
                        "num_head_channels": 64,
                        "learn_sigma": True,
                        "use_scale_shift_norm": True,
                        "resblock_updown": True,
                        "dropout": 0.0,
                    }
                ),
                schedule="linear",
                num_timesteps=1000,
                rescale_timesteps=False,
                checkpoint="256x256_diffusion_uncond.pt",
                description="guided-diffusion ImageNet 256x256 unconditional model (552.8M "
                "parameters) used by Carlini et al. (2023); "
                "from github.com/openai/guided-diffusion",
            ),
            DenoiserPreset(
                name="improved-small",
                flags=MappingProxyType({**_IMPROVED_SMALL_FLAGS, "channel_mult": (1, 2, 2, 2)}),
                schedule="cosine",
                num_timesteps=4000,
                rescale_timesteps=True,
                description="a 32-channel improved-diffusion UNet for tests and smoke runs "
                "(the architecture of tests/data/improved_small_reference.pt)",
            ),
            DenoiserPreset(
                name="guided-small",
                flags=MappingProxyType(
                    {
                        **_IMPROVED_SMALL_FLAGS,
                        "channel_mult": (1, 2, 2),
                        "num_head_channels": 16,
                        "resblock_updown": True,
                    }
                ),
                schedule="linear",
                num_timesteps=1000,
                rescale_timesteps=False,
                description="a 32-channel guided-diffusion UNet for tests and smoke runs "
                "(the architecture of tests/data/guided_small_reference.pt)",
            ),
        )
    }
)


def get_preset(name: str) -> DenoiserPreset:
    """The preset called ``name``; ValueError listing the known presets otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown denoiser preset {name!r}; known: {sorted(PRESETS)}") from None
