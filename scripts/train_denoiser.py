"""Train a small OpenAI-architecture diffusion denoiser (the embedded default's denoiser).

    python scripts/train_denoiser.py --dataset fashion-mnist --epochs 4 \
        --out checkpoints/fmnist_denoiser.pt
    accelerate launch scripts/train_denoiser.py ...     # several GPUs

The network is trained for one-shot denoising at pixel noise levels in
[--sigma-min, --sigma-max] (see denoised_drs.diffusion.training). The checkpoint
keeps the architecture flags and schedule, so it loads with
``--denoiser path/to/file.pt`` and nothing else. An exponential moving average of
the weights is what gets saved. A CSV log (epoch, loss, seconds) lies beside it.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from denoised_drs.cli import ArgumentParser, run_script
from denoised_drs.cpu_memory import keep_freed_memory
from denoised_drs.data import get_dataset
from denoised_drs.diffusion import alphas_cumprod, beta_schedule, openai_unet
from denoised_drs.diffusion.training import (
    cosine_warmup_lr,
    denoising_loss,
    save_denoiser_checkpoint,
    timestep_band,
)
from denoised_drs.errors import check_distinct_outputs, check_output_file


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="checkpoints/fmnist_denoiser.pt")
    parser.add_argument("--num-channels", type=int, default=32)
    parser.add_argument("--num-res-blocks", type=int, default=1)
    parser.add_argument("--channel-mult", default="1,2")
    parser.add_argument("--attention-resolutions", default="14")
    parser.add_argument("--num-head-channels", type=int, default=32)
    parser.add_argument("--schedule", choices=("linear", "cosine"), default="cosine")
    parser.add_argument("--timesteps", type=int, default=1000)
    parser.add_argument("--sigma-min", type=float, default=0.05)
    parser.add_argument("--sigma-max", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--max-train", type=int, default=None, help="use only the first N images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--half", action="store_true", help="store weights as float16")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint and log")
    args = parser.parse_args(argv)
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    """Refuse impossible settings before any work or file."""
    for name in ("num_channels", "num_res_blocks", "num_head_channels", "timesteps", "epochs", "batch"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.max_train is not None and args.max_train < 1:
        raise ValueError(f"--max-train must be positive, got {args.max_train}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be a positive finite number, got {args.lr}")
    if not 0 <= args.ema < 1:
        raise ValueError(f"--ema must lie in [0, 1), got {args.ema}")
    if not 0 < args.sigma_min <= args.sigma_max < math.inf:
        raise ValueError(f"need 0 < --sigma-min <= --sigma-max (finite), got {args.sigma_min}, {args.sigma_max}")
    outputs = {"--out": Path(args.out), "its log": log_path(args.out)}
    for path in outputs.values():
        check_output_file(path)
    check_distinct_outputs(outputs)
    if not args.overwrite:
        for role, path in outputs.items():
            if path.exists():
                raise ValueError(f"{role} {path} exists; pass --overwrite to replace it")


def log_path(out: str) -> Path:
    """The CSV log written beside the checkpoint ``out``."""
    return Path(out).with_suffix(".csv")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keep_freed_memory()  # up to 2x faster on CPUs; see denoised_drs.cpu_memory
    from accelerate import Accelerator

    accelerator = Accelerator()
    torch.manual_seed(args.seed)
    dataset = get_dataset(args.dataset, "train", args.data_dir)
    if args.max_train is not None:
        dataset = Subset(dataset, range(min(args.max_train, len(dataset))))
    if len(dataset) < args.batch:
        raise ValueError(f"--batch {args.batch} exceeds the {len(dataset)} training images (full batches only)")
    channels, height, width = dataset[0][0].shape
    if height != width:
        raise ValueError(f"the OpenAI UNet needs square images, got {height}x{width}")
    flags = {
        "image_size": height,
        "in_channels": channels,
        "num_channels": args.num_channels,
        "num_res_blocks": args.num_res_blocks,
        "channel_mult": args.channel_mult,
        "attention_resolutions": args.attention_resolutions,
        "num_head_channels": args.num_head_channels,
        "learn_sigma": False,
        "use_scale_shift_norm": True,
        "resblock_updown": False,
        "dropout": 0.0,
    }
    network = openai_unet(**flags).train()
    abar_np = alphas_cumprod(beta_schedule(args.schedule, args.timesteps))
    band = timestep_band(abar_np, args.sigma_min, args.sigma_max)
    loader = DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True)
    optimizer = torch.optim.Adam(network.parameters(), lr=args.lr)
    total_steps = args.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_warmup_lr(step, total_steps, warmup=min(500, total_steps // 10))
    )
    network, optimizer, loader, scheduler = accelerator.prepare(network, optimizer, loader, scheduler)
    ema = AveragedModel(accelerator.unwrap_model(network), multi_avg_fn=get_ema_multi_avg_fn(args.ema))
    abar = torch.tensor(abar_np, dtype=torch.float32, device=accelerator.device)

    out = Path(args.out)
    log = log_path(args.out)
    for epoch in range(1, args.epochs + 1):
        start, total, count = time.time(), 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch}/{args.epochs}", disable=not accelerator.is_main_process)
        for images, _ in bar:
            loss = denoising_loss(network, images, abar, band)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            ema.update_parameters(accelerator.unwrap_model(network))
            total, count = total + loss.item(), count + 1
            bar.set_postfix(loss=f"{total / count:.4f}")
        if accelerator.is_main_process:
            # Nothing is written before the first epoch ends: a batch that runs out
            # of memory (one line, exit 2) leaves no file behind.
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "w" if epoch == 1 else "a", newline="") as handle:
                if epoch == 1:
                    csv.writer(handle).writerow(["epoch", "loss", "lr", "seconds"])
                csv.writer(handle).writerow(
                    [epoch, f"{total / count:.5f}", f"{scheduler.get_last_lr()[0]:.2e}", f"{time.time() - start:.1f}"]
                )
            save_denoiser_checkpoint(
                out,
                ema.module,
                flags,
                args.schedule,
                args.timesteps,
                extra={"epochs": epoch, "sigma_band": [args.sigma_min, args.sigma_max],
                       "dataset": args.dataset, "loss": total / count},
                dtype=torch.float16 if args.half else torch.float32,
            )
    return 0


if __name__ == "__main__":
    run_script(main, __file__)
