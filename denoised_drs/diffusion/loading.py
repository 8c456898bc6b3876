"""Load a denoising network and its schedule from a preset, our checkpoint or a directory.

Four sources, all strictly local (nothing is ever downloaded):

* a preset name (:data:`~denoised_drs.diffusion.presets.PRESETS`) plus the path of an
  official OpenAI checkpoint (``--denoiser cifar10-uncond-50M --denoiser-checkpoint
  cifar10_uncond_50M_500K.pt``);
* a :class:`~denoised_drs.diffusion.presets.DenoiserPreset` read from a JSON file of
  OpenAI flags (:func:`~denoised_drs.diffusion.flags_file.read_denoiser_config`,
  ``--denoiser-config``) plus the path of the checkpoint it describes;
* our own denoiser checkpoint (:mod:`denoised_drs.diffusion.checkpoint`), which
  records its architecture and schedule;
* a diffusers directory: a ``UNet2DModel`` and a ``DDPMScheduler`` saved with
  ``save_pretrained``, either in the ``unet/`` and ``scheduler/`` sub-folders that
  ``DDPMPipeline.save_pretrained`` writes, or side by side (``config.json`` + weights +
  ``scheduler_config.json``). The schedule comes from the scheduler config.

Only unconditional models are taken: an official checkpoint holding a class embedding
(``label_emb.weight``) or a class-conditional ``UNet2DModel`` is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..checkpoint_file import load_state_dict, load_weights_only
from .checkpoint import is_denoiser_checkpoint, network_from_checkpoint
from .network import DenoiserNetwork
from .presets import PRESETS, DenoiserPreset, get_preset
from .unet import DiffusersUNet

CLASS_EMBEDDING_KEY = "label_emb.weight"
"""The official key of a class-conditional OpenAI UNet's class embedding."""


def load_denoiser_network(
    denoiser: str | os.PathLike | DenoiserPreset,
    checkpoint_path: str | os.PathLike | None = None,
) -> DenoiserNetwork:
    """Build the network named by ``denoiser``: a preset (its name, or a
    :class:`~denoised_drs.diffusion.presets.DenoiserPreset` such as
    :func:`~denoised_drs.diffusion.flags_file.read_denoiser_config` returns), a diffusers
    directory, or a denoiser checkpoint written by
    :func:`~denoised_drs.diffusion.checkpoint.save_denoiser_checkpoint` (it records its
    own architecture and schedule).

    The source is decided explicitly, never guessed from the spelling: a name in
    :data:`~denoised_drs.diffusion.presets.PRESETS` is a preset; otherwise an existing
    directory or file is that path; anything else is a ValueError naming both choices.
    With a preset, ``checkpoint_path`` (an official OpenAI checkpoint in the preset's
    architecture) is required; a class-conditional file raises ValueError saying that
    only unconditional models are taken, and a file whose keys do not fit raises
    ValueError naming the preset and the first missing / unexpected key. A directory or
    our own checkpoint must not come with a checkpoint path (its weights are inside).
    The network is returned in eval mode.
    """
    if isinstance(denoiser, DenoiserPreset):
        return _preset_network(denoiser, checkpoint_path)
    name = os.fspath(denoiser)
    if name in PRESETS:
        return _preset_network(get_preset(name), checkpoint_path)
    path = Path(name)
    if path.is_dir():
        if checkpoint_path is not None:
            raise ValueError(
                f"{path} is a diffusers directory that holds its own weights; "
                "do not pass a separate checkpoint"
            )
        return load_diffusers_denoiser(path)
    if path.is_file():
        payload = load_weights_only(path, "denoiser checkpoint")
        if checkpoint_path is None and is_denoiser_checkpoint(payload):
            return network_from_checkpoint(payload, name)
        raise ValueError(
            f"denoiser {name!r} is a file but not a denoised_drs denoiser checkpoint: pass a "
            f"preset name ({sorted(PRESETS)}) as the denoiser and this file as its checkpoint"
        )
    raise ValueError(
        f"unknown denoiser {name!r}: not a preset ({sorted(PRESETS)}) "
        "nor an existing file or directory"
    )


def _preset_network(
    preset: DenoiserPreset, checkpoint_path: str | os.PathLike | None
) -> DenoiserNetwork:
    if checkpoint_path is None:
        source = f" ({preset.checkpoint})" if preset.checkpoint else ""
        raise ValueError(
            f"denoiser {preset.name!r} needs a checkpoint file{source}: pass its path"
        )
    state_dict = load_state_dict(checkpoint_path, "denoiser checkpoint")
    if CLASS_EMBEDDING_KEY in state_dict:
        raise ValueError(
            f"{checkpoint_path} is a class-conditional checkpoint (it holds "
            f"{CLASS_EMBEDDING_KEY}): one-shot denoising takes unconditional models only"
        )
    return DenoiserNetwork(
        network=preset.build_network(state_dict),
        alphas_cumprod=preset.alphas_cumprod(),
        timestep_scale=preset.timestep_scale,
        prediction_type=preset.prediction_type,
        name=preset.name,
    )


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
