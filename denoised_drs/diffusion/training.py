"""Train a small OpenAI-architecture diffusion model for one-shot denoising.

The objective is the DDPM noise-prediction loss of Ho et al. (2020), as in the
OpenAI code: ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` with ``x0`` in
[-1, 1], and ``|| eps - network(x_t, t * timestep_scale)[:, :C] ||^2``. Since the
model only ever serves as a one-shot denoiser at the timesteps matched to the
smoothing noise levels, ``t`` is drawn uniformly from the timesteps of
``[sigma_min, sigma_max]`` rather than from all ``T`` steps; the result is a
denoiser for that band, not a sampler.

:func:`train_denoiser` is the whole run (what ``scripts/train_denoiser.py`` does):
Adam with a linear warm-up and cosine decay, an exponential moving average of the
weights, which is what gets saved after every epoch in our own checkpoint format
(:mod:`denoised_drs.diffusion.checkpoint`), and a CSV log (epoch, loss, lr, seconds)
rewritten whole, atomically, after every epoch. Nothing is written before the first
epoch ends, so a run that fails early (a batch that runs out of memory) leaves no file;
an epoch whose loss or weights are not finite (a learning rate far too high) ends the
run with :class:`~denoised_drs.training.divergence.TrainingDiverged` before anything of
it is written.
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..atomic_file import atomic_write
from ..data import get_dataset
from ..training.divergence import TrainingDiverged, non_finite_tensor
from .checkpoint import save_denoiser_checkpoint
from .schedule import alphas_cumprod, beta_schedule, sigma_to_timestep
from .unet import openai_unet

LOG_COLUMNS = ("epoch", "loss", "lr", "seconds")


def timestep_band(abar: np.ndarray, sigma_min: float, sigma_max: float) -> tuple[int, int]:
    """The inclusive range of diffusion timesteps that serve pixel noise in
    [sigma_min, sigma_max]."""
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


def cosine_warmup_lr(step: int, total_steps: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass(frozen=True)
class DenoiserTrainConfig:
    """One denoiser training run: the options of ``scripts/train_denoiser.py``.

    The UNet is the OpenAI architecture with ``num_channels``, ``num_res_blocks``,
    ``channel_mult`` and ``attention_resolutions`` (OpenAI flag strings such as
    ``"1,2"``) and ``num_head_channels``; its image size and channels come from the
    data. ``schedule`` and ``timesteps`` fix the diffusion process; t is drawn from
    the timesteps of pixel noise in [``sigma_min``, ``sigma_max``]. ``max_train``
    keeps the first images only; ``half`` stores float16 weights. The checkpoint goes
    to ``out``, the CSV log to ``log``.
    """

    dataset: str
    data_dir: str | None
    out: Path
    log: Path
    num_channels: int
    num_res_blocks: int
    channel_mult: str
    attention_resolutions: str
    num_head_channels: int
    schedule: str
    timesteps: int
    sigma_min: float
    sigma_max: float
    epochs: int
    batch: int
    lr: float
    ema: float
    max_train: int | None
    seed: int
    half: bool = False


def unet_flags(config: DenoiserTrainConfig, channels: int, size: int) -> dict[str, Any]:
    """The OpenAI UNet flags of ``config`` for square images of ``channels`` x ``size``."""
    return {
        "image_size": size,
        "in_channels": channels,
        "num_channels": config.num_channels,
        "num_res_blocks": config.num_res_blocks,
        "channel_mult": config.channel_mult,
        "attention_resolutions": config.attention_resolutions,
        "num_head_channels": config.num_head_channels,
        "learn_sigma": False,
        "use_scale_shift_norm": True,
        "resblock_updown": False,
        "dropout": 0.0,
    }


def write_log(path: Path, rows: list[list[str]]) -> None:
    """Rewrite the whole CSV log atomically: a reader never sees a partial row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(LOG_COLUMNS)
    writer.writerows(rows)
    with atomic_write(path, "w") as stream:
        stream.write(buffer.getvalue())


def check_finite_epoch(mean_loss: float, network: nn.Module, ema: nn.Module, epoch: int) -> None:
    """Raise :class:`TrainingDiverged` if the epoch's mean loss (reduced over processes),
    the network's or the EMA's weights are not finite: such an epoch must not be saved.
    Every process reaches the same verdict, so none waits for the others."""
    if math.isfinite(mean_loss):
        found = non_finite_tensor({"weights": network.state_dict(), "ema": ema.state_dict()})
        if found is None:
            return
        what = f"{found} holds a NaN or an infinity"
    else:
        what = f"the mean loss is {mean_loss}"
    raise TrainingDiverged(
        f"training diverged in epoch {epoch}: {what}; nothing of this epoch is saved "
        "(try a lower --lr)"
    )


def train_denoiser(config: DenoiserTrainConfig) -> None:
    """Train the denoiser of ``config``; under ``accelerate launch`` data parallel.

    Raises ValueError before any work when the batch exceeds the training images
    (full batches only) or the images are not square. After every epoch the main
    process saves the EMA weights to ``config.out`` and rewrites ``config.log``; an epoch
    whose loss or weights are not finite raises TrainingDiverged (a ValueError) instead.
    """
    from accelerate import Accelerator

    from denoised_drs.launch import bounded_rendezvous

    with bounded_rendezvous("train_denoiser.py"):  # a stale WORLD_SIZE must not hang
        accelerator = Accelerator()
    torch.manual_seed(config.seed)
    dataset = get_dataset(config.dataset, "train", config.data_dir)
    if config.max_train is not None:
        dataset = Subset(dataset, range(min(config.max_train, len(dataset))))
    if len(dataset) < config.batch:
        raise ValueError(
            f"--batch {config.batch} exceeds the {len(dataset)} training images (full batches only)"
        )
    channels, height, width = dataset[0][0].shape
    if height != width:
        raise ValueError(f"the OpenAI UNet needs square images, got {height}x{width}")
    flags = unet_flags(config, channels, height)
    network = openai_unet(**flags).train()
    abar_np = alphas_cumprod(beta_schedule(config.schedule, config.timesteps))
    band = timestep_band(abar_np, config.sigma_min, config.sigma_max)
    loader = DataLoader(dataset, batch_size=config.batch, shuffle=True, drop_last=True)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
    total_steps = config.epochs * len(loader)
    warmup = min(500, total_steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_warmup_lr(step, total_steps, warmup)
    )
    network, optimizer, loader, scheduler = accelerator.prepare(network, optimizer, loader,
                                                                scheduler)
    ema = AveragedModel(
        accelerator.unwrap_model(network), multi_avg_fn=get_ema_multi_avg_fn(config.ema)
    )
    abar = torch.tensor(abar_np, dtype=torch.float32, device=accelerator.device)
    rows: list[list[str]] = []
    for epoch in range(1, config.epochs + 1):
        start, total, count = time.time(), 0.0, 0
        bar = tqdm(
            loader, desc=f"epoch {epoch}/{config.epochs}", disable=not accelerator.is_main_process
        )
        for images, _ in bar:
            loss = denoising_loss(network, images, abar, band)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            ema.update_parameters(accelerator.unwrap_model(network))
            total, count = total + loss.item(), count + 1
            bar.set_postfix(loss=f"{total / count:.4f}")
        # The mean over every process's batches: all of them see the same verdict.
        sums = accelerator.reduce(
            torch.tensor([total, count], dtype=torch.float64, device=accelerator.device), "sum"
        )
        check_finite_epoch(float(sums[0] / sums[1]), accelerator.unwrap_model(network),
                           ema.module, epoch)
        if accelerator.is_main_process:
            rows.append([
                str(epoch),
                f"{total / count:.5f}",
                f"{scheduler.get_last_lr()[0]:.2e}",
                f"{time.time() - start:.1f}",
            ])
            write_log(config.log, rows)
            save_denoiser_checkpoint(
                config.out,
                ema.module,
                flags,
                config.schedule,
                config.timesteps,
                extra={
                    "epochs": epoch,
                    "sigma_band": [config.sigma_min, config.sigma_max],
                    "dataset": config.dataset,
                    "loss": total / count,
                },
                dtype=torch.float16 if config.half else torch.float32,
            )
