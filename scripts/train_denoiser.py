"""Train a small OpenAI-architecture diffusion denoiser (the embedded default's denoiser).

    python scripts/train_denoiser.py --dataset fashion-mnist --epochs 4 \
        --out checkpoints/fmnist_denoiser.pt
    accelerate launch scripts/train_denoiser.py ...     # several GPUs

The network is trained for one-shot denoising at pixel noise levels in
[--sigma-min, --sigma-max] (see denoised_drs.diffusion.training). The checkpoint
keeps the architecture flags and schedule, so it loads with
``--denoiser path/to/file.pt`` and nothing else. An exponential moving average of
the weights is what gets saved. A CSV log (epoch, loss, lr, seconds) lies beside it.
A run that diverges (a loss or weight that is NaN or infinite) ends with one line and
exit 2, and nothing of the epoch it diverged in is saved.
The training run itself is denoised_drs.diffusion.training.train_denoiser.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import fields
from pathlib import Path

from denoised_drs.cli import ArgumentParser, run_script
from denoised_drs.cpu_memory import keep_freed_memory
from denoised_drs.diffusion.training import DenoiserTrainConfig, train_denoiser
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
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing checkpoint and log")
    args = parser.parse_args(argv)
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    """Refuse impossible settings before any work or file."""
    for name in ("num_channels", "num_res_blocks", "num_head_channels", "timesteps", "epochs",
                 "batch"):
        if getattr(args, name) < 1:
            raise ValueError(
                f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}"
            )
    if args.max_train is not None and args.max_train < 1:
        raise ValueError(f"--max-train must be positive, got {args.max_train}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be a positive finite number, got {args.lr}")
    if not 0 <= args.ema < 1:
        raise ValueError(f"--ema must lie in [0, 1), got {args.ema}")
    if not 0 < args.sigma_min <= args.sigma_max < math.inf:
        raise ValueError(
            "need 0 < --sigma-min <= --sigma-max (finite), "
            f"got {args.sigma_min}, {args.sigma_max}"
        )
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
    names = {f.name for f in fields(DenoiserTrainConfig)}
    settings = {k: v for k, v in vars(args).items() if k in names}
    train_denoiser(DenoiserTrainConfig(**{**settings, "out": Path(args.out),
                                          "log": log_path(args.out)}))
    return 0


if __name__ == "__main__":
    run_script(main, __file__)
