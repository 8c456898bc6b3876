"""Load a denoising network and its schedule from a preset + checkpoint or a directory.

Two sources, both strictly local (nothing is ever downloaded):

* a preset name (:data:`~denoised_drs.diffusion.presets.PRESETS`) plus the path of an
  official OpenAI checkpoint (``--denoiser cifar10-uncond-50M --denoiser-checkpoint
  cifar10_uncond_50M_500K.pt``);
* a diffusers directory: a ``UNet2DModel`` and a ``DDPMScheduler`` saved with
  ``save_pretrained``, either in the ``unet/`` and ``scheduler/`` sub-folders that
  ``DDPMPipeline.save_pretrained`` writes, or side by side (``config.json`` + weights +
  ``scheduler_config.json``). The schedule comes from the scheduler config.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoint_file import load_weights_only
from .presets import PRESETS, get_preset
from .unet import DiffusersUNet


@dataclass
class DenoiserNetwork:
    """A noise-prediction network with everything needed to call it at timestep t.

    ``network(x_t, t * timestep_scale)`` returns (N, C_out, H, W) whose first C channels
    are the prediction named by ``prediction_type`` ("epsilon", "sample" or
    "v_prediction"); ``alphas_cumprod[t]`` is abar_t (float64).
    """

    network: nn.Module
    alphas_cumprod: np.ndarray
    timestep_scale: float = 1.0
    prediction_type: str = "epsilon"
    name: str = ""


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file with ``torch.load(weights_only=True)`` onto the CPU.

    Accepts a plain state dict or a dict holding one under ``"state_dict"``.
    Raises FileNotFoundError (with the path) or ValueError for unreadable content.
    """
    path = Path(path)
    loaded = load_weights_only(path, "denoiser checkpoint")
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(loaded)


def load_denoiser_network(
    denoiser: str | os.PathLike, checkpoint_path: str | os.PathLike | None = None
) -> DenoiserNetwork:
    """Build the network named by ``denoiser``: a preset name, a diffusers directory, or a
    denoiser checkpoint written by :func:`~denoised_drs.diffusion.training.save_denoiser_checkpoint`
    (it records its own architecture and schedule).

    With a preset, ``checkpoint_path`` (an official OpenAI checkpoint in the preset's
    architecture) is required; a file whose keys do not fit raises ValueError naming
    the preset and the first missing / unexpected key. A directory must not come with a
    checkpoint path (its weights are inside). The network is returned in eval mode.
    """
    name = os.fspath(denoiser)
    if name in PRESETS:
        preset = get_preset(name)
        if checkpoint_path is None:
            source = f" ({preset.checkpoint})" if preset.checkpoint else ""
            raise ValueError(
                f"denoiser preset {name!r} needs a checkpoint file{source}: pass its path"
            )
        network = preset.build_network(load_state_dict_file(checkpoint_path))
        return DenoiserNetwork(
            network=network,
            alphas_cumprod=preset.alphas_cumprod(),
            timestep_scale=preset.timestep_scale,
            name=name,
        )
    path = Path(name)
    if path.is_dir():
        if checkpoint_path is not None:
            raise ValueError(
                f"{path} is a diffusers directory that holds its own weights; "
                "do not pass a separate checkpoint"
            )
        return load_diffusers_denoiser(path)
    if path.is_file():
        # Imported here: .training builds on this module.
        from .training import is_denoiser_checkpoint, network_from_checkpoint

        payload = load_weights_only(path, "denoiser checkpoint")
        if checkpoint_path is None and is_denoiser_checkpoint(payload):
            return network_from_checkpoint(payload, name)
        raise ValueError(
            f"denoiser {name!r} is a file but not a denoised_drs denoiser checkpoint: pass a "
            f"preset name ({sorted(PRESETS)}) as the denoiser and this file as its checkpoint"
        )
    if os.sep in name or (os.altsep and os.altsep in name):
        raise FileNotFoundError(f"denoiser directory not found: {path}")
    raise ValueError(f"unknown denoiser {name!r}: not a preset ({sorted(PRESETS)}) or a directory")


def load_diffusers_denoiser(directory: str | os.PathLike) -> DenoiserNetwork:
    """Load a diffusers ``UNet2DModel`` + ``DDPMScheduler`` from a local directory.

    ``alphas_cumprod`` and ``prediction_type`` are taken from the scheduler
    (``DDPMScheduler.from_pretrained(...).alphas_cumprod``; diffusers computes it in
    float32). Loading uses ``local_files_only=True``: nothing is downloaded.
    """
    from diffusers import DDPMScheduler, UNet2DModel

    root = Path(directory)
    unet_dir = _first_existing(root, ("unet", "."), "config.json")
    scheduler_dir = _first_existing(root, ("scheduler", "."), "scheduler_config.json")
    unet = UNet2DModel.from_pretrained(unet_dir, local_files_only=True)
    scheduler = DDPMScheduler.from_pretrained(scheduler_dir, local_files_only=True)
    return DenoiserNetwork(
        network=DiffusersUNet(unet).eval(),
        alphas_cumprod=scheduler.alphas_cumprod.double().numpy(),
        timestep_scale=1.0,
        prediction_type=str(scheduler.config.prediction_type),
        name=str(root),
    )


def _first_existing(root: Path, subfolders: tuple[str, ...], filename: str) -> Path:
    for sub in subfolders:
        if (root / sub / filename).is_file():
            return root / sub
    places = " or ".join(str(root / sub / filename) for sub in subfolders)
    raise FileNotFoundError(f"not a diffusers denoiser directory: found no {places}")
