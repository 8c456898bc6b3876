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

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint_file import load_state_dict, load_weights_only
from ..errors import first_line
from .checkpoint import is_denoiser_checkpoint, network_from_checkpoint
from .flags_file import MAX_TIMESTEPS
from .network import DenoiserNetwork
from .presets import PRESETS, DenoiserPreset, get_preset
from .unet import DiffusersUNet

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
"""What a diffusers scheduler's network may predict; the denoiser turns each into x0."""

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

    Both configs are checked before diffusers reads them (diffusers fills any missing
    key with a default, so an empty ``scheduler_config.json`` would silently be a
    1000-step linear schedule): ``config.json`` must be a ``UNet2DModel``'s, give its
    channels and blocks as positive integers and lists of them, and sit beside its
    weights (``diffusion_pytorch_model.safetensors`` or ``.bin``, the latter read with
    ``weights_only``); ``scheduler_config.json`` must give ``num_train_timesteps`` (1 to
    :data:`~.flags_file.MAX_TIMESTEPS`) and a known ``beta_schedule``, betas in (0, 1),
    and a known ``prediction_type`` (if any; diffusers' default is ``"epsilon"``). Any
    defect, and anything diffusers then refuses, is one ValueError naming the directory.
    """
    from diffusers import DDPMScheduler, UNet2DModel

    root = Path(directory)
    unet_dir = _first_existing(root, ("unet", "."), "config.json")
    scheduler_dir = _first_existing(root, ("scheduler", "."), "scheduler_config.json")
    try:
        _check_unet_config(_json_object(unet_dir / "config.json"))
        weights = _weights_file(unet_dir)
        _check_scheduler_config(_json_object(scheduler_dir / "scheduler_config.json"))
    except ValueError as error:
        raise ValueError(f"diffusers denoiser {root}: {error}") from None
    try:
        unet = UNet2DModel.from_pretrained(
            unet_dir, local_files_only=True, use_safetensors=".safetensors" in weights.name
        )
        scheduler = DDPMScheduler.from_pretrained(scheduler_dir, local_files_only=True)
    except Exception as error:  # diffusers fails in many types: OS, value, type, runtime
        raise ValueError(
            f"diffusers denoiser {root}: diffusers cannot load it: {first_line(error)}"
        ) from None
    abar = scheduler.alphas_cumprod.double().numpy()
    if not (np.isfinite(abar).all() and (abar > 0).all() and (abar <= 1).all()):
        raise ValueError(
            f"diffusers denoiser {root}: its schedule's alphas_cumprod do not all lie in (0, 1]"
        )
    return DenoiserNetwork(
        network=DiffusersUNet(unet).eval(),
        alphas_cumprod=abar,
        timestep_scale=1.0,
        prediction_type=str(scheduler.config.prediction_type),
        name=str(root),
    )


WEIGHTS_FILES = ("diffusion_pytorch_model.safetensors",
                 "diffusion_pytorch_model.safetensors.index.json",
                 "diffusion_pytorch_model.bin", "diffusion_pytorch_model.bin.index.json")
"""The weights files of a diffusers model folder, whole or sharded, in the order tried."""
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
"""The ``beta_schedule`` values of diffusers' ``DDPMScheduler``."""
_UNET_REQUIRED = ("in_channels", "out_channels", "layers_per_block", "block_out_channels",
                  "down_block_types", "up_block_types")


def _json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; ValueError naming the file if it holds anything else."""
    try:
        values = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path.name} is not JSON: {first_line(error)}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path.name} must hold a JSON object, got a {type(values).__name__}")
    return values


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_unet_config(config: dict[str, Any]) -> None:
    """ValueError unless ``config`` names a ``UNet2DModel`` and gives its layout's keys
    with the right types (diffusers checks the rest when it builds the network)."""
    kind = config.get("_class_name", "UNet2DModel")
    if kind != "UNet2DModel":
        raise ValueError(f"config.json describes a {kind!r}, not a 'UNet2DModel'")
    missing = [key for key in _UNET_REQUIRED if key not in config]
    if missing:
        raise ValueError(f"config.json has no {missing[0]!r}")
    for key in ("in_channels", "out_channels", "layers_per_block"):
        if not _positive_int(config[key]):
            raise ValueError(f"config.json: {key} must be a positive integer, got {config[key]!r}")
    channels = config["block_out_channels"]
    if not (isinstance(channels, list) and channels and all(map(_positive_int, channels))):
        raise ValueError(
            f"config.json: block_out_channels must be a list of positive integers, got "
            f"{channels!r}"
        )
    for key in ("down_block_types", "up_block_types"):
        types = config[key]
        if not (isinstance(types, list) and len(types) == len(channels)
                and all(isinstance(t, str) for t in types)):
            raise ValueError(
                f"config.json: {key} must be a list of {len(channels)} block names (one per "
                f"block_out_channels entry), got {types!r}"
            )
    size = config.get("sample_size")
    if not (size is None or _positive_int(size) or (
            isinstance(size, list) and len(size) == 2 and all(map(_positive_int, size)))):
        raise ValueError(
            f"config.json: sample_size must be a positive integer or two, got {size!r}"
        )


def _weights_file(unet_dir: Path) -> Path:
    """The weights file of the model folder ``unet_dir`` (a regular file; ValueError if none)."""
    for name in WEIGHTS_FILES:
        if (unet_dir / name).is_file():
            return unet_dir / name
    raise ValueError(f"no weights: found none of {list(WEIGHTS_FILES)} in {unet_dir}")


def _check_scheduler_config(config: dict[str, Any]) -> None:
    """ValueError unless ``config`` gives a DDPM schedule diffusers can compute and a
    prediction type one-shot denoising knows."""

    for key in ("num_train_timesteps", "beta_schedule"):
        if key not in config:
            raise ValueError(f"scheduler_config.json has no {key!r}")
    steps = config["num_train_timesteps"]
    if not _positive_int(steps) or steps > MAX_TIMESTEPS:
        raise ValueError(
            f"scheduler_config.json: num_train_timesteps must be an integer from 1 to "
            f"{MAX_TIMESTEPS}, got {steps!r}"
        )
    if config["beta_schedule"] not in BETA_SCHEDULES:
        raise ValueError(
            f"scheduler_config.json: beta_schedule must be one of {BETA_SCHEDULES}, got "
            f"{config['beta_schedule']!r}"
        )
    for key in ("beta_start", "beta_end"):
        if key in config and not _beta(config[key]):
            raise ValueError(
                f"scheduler_config.json: {key} must be a number in (0, 1), got {config[key]!r}"
            )
    betas = config.get("trained_betas")
    if betas is not None and not (
            isinstance(betas, list) and len(betas) == steps and all(map(_beta, betas))):
        raise ValueError(
            f"scheduler_config.json: trained_betas must be null or {steps} numbers in (0, 1)"
        )
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ValueError(
            f"scheduler_config.json: prediction_type must be one of {PREDICTION_TYPES}, got "
            f"{prediction!r}"
        )


def _beta(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and 0 < value < 1)


def _first_existing(root: Path, subfolders: tuple[str, ...], filename: str) -> Path:
    for sub in subfolders:
        if (root / sub / filename).is_file():
            return root / sub
    places = " or ".join(str(root / sub / filename) for sub in subfolders)
    raise FileNotFoundError(f"not a diffusers denoiser directory: found no {places}")
