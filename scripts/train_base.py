"""Train a base classifier for randomized smoothing (RS) or dual randomized smoothing (DRS).

Examples::

    # RS, Gaussian augmentation, Fashion-MNIST, CPU
    python scripts/train_base.py --dataset fashion-mnist --sigma 0.25 \
        --out checkpoints/fmnist_rs_gaussian_s0.25.pt
    # DRS, both branches fine-tuned from a pretrained model (writes ..._l.pt and ..._r.pt)
    accelerate launch scripts/train_base.py --dataset cifar10 --target drs --branch both \
        --sigma 0.18 --init models/cifar10/noise_0.25/checkpoint.pth.tar --out runs/drs.pt
    # k parts: one classifier per 14x14 polyphase component (writes ..._1.pt ... ..._4.pt)
    python scripts/train_base.py --dataset fashion-mnist --partition polyphase-2x2 \
        --branch all --sigma 0.125 --out checkpoints/fmnist_poly2x2.pt

Every recipe value (see ``denoised_drs.training.TRAINING_RECIPES``) can be overridden by a flag.
Bad input gives a one-line message on stderr and exit code 2, before anything is written;
so does a run that diverges (a loss or weight that is NaN or infinite), which saves nothing
of the epoch it diverged in.
"""

from __future__ import annotations

import argparse

from denoised_drs.cli import ArgumentParser, run_script
from denoised_drs.cpu_memory import keep_freed_memory
from denoised_drs.training import (
    STRATEGIES,
    TARGETS,
    TRAINING_RECIPES,
    WORKERS_PER_CPU,
    TrainConfig,
    train,
)


def _milestones(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(m) for m in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"milestones must be integers, got {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--dataset", default="fashion-mnist", choices=sorted(TRAINING_RECIPES))
    add("--data-dir", help="dataset folder (default: the dataset's standard location)")
    add("--out", required=True,
        help="checkpoint path; with --branch all/both, _l/_r (two parts) or _1.._k are "
        "inserted before the suffix, or {branch} filled in")
    add("--arch", help="model name: small_cnn, cifar_resnet20/56/110, resnet50, timm:<name>")
    add("--strategy", default="gaussian", choices=STRATEGIES)
    add("--target", choices=TARGETS,
        help="rs (default) or drs (default when --partition has 2 or more parts)")
    add("--partition",
        help="how images are cut into parts: identity (rs), checkerboard (drs default), "
        "drs-release, diagonal-K, polyphase-AxB")
    add("--branch",
        help="full (rs); for drs: l or r (two parts), a part number 1..k, or all "
        "(every part, the default; both = all for two parts)")
    add("--sigma", type=float, default=0.25, help="noise level in [0, 1] pixel units")
    add("--epochs", type=int)
    add("--lr", type=float)
    add(
        "--milestones",
        type=_milestones,
        help="epochs at which lr is multiplied by gamma, e.g. 25,35",
    )
    add("--gamma", type=float)
    add("--optimizer", choices=("adam", "sgd"))
    add("--weight-decay", type=float)
    add("--batch", type=int)
    add("--num-noise", type=int, help="noisy copies per image (default 1; consistency 2)")
    add("--lbd", type=float, help="consistency weight lambda (default 10)")
    add("--eta", type=float, help="entropy weight eta (default 0.5)")
    add("--epsilon", type=float, help="SmoothAdv L2 radius (default 0.5)")
    add("--attack-steps", type=int, help="SmoothAdv PGD steps (default 1)")
    add("--warmup", type=int, help="SmoothAdv epochs to ramp epsilon up (default 1)")
    add("--interpolation", choices=("nearest", "bilinear"), help="sub-image resize mode (DRS)")
    add("--init", help="checkpoint to fine-tune from (ours, Cohen-style or a plain state dict)")
    add("--resume", action="store_true",
        help="continue from <out>.state.pt (refused if a training setting changed)")
    add("--overwrite", action="store_true", help="replace an existing checkpoint and log")
    add("--keep-state", action="store_true", help="keep <out>.state.pt after the last epoch")
    add("--seed", type=int)
    add("--max-train", type=int, help="train on the first N training images only")
    add("--max-test", type=int, help="evaluate on the first N test images only")
    add("--workers", type=int,
        help=f"data loader worker processes (at most {WORKERS_PER_CPU} per CPU)")
    add("--log", help="CSV log path (default: the checkpoint path with .csv)")
    add("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    add("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Train; bad input (usage errors included) raises ValueError, OSError or ImportError."""
    args = parse_args(argv)
    keep_freed_memory()  # up to 2x faster on CPUs; see denoised_drs.cpu_memory
    settings = vars(args).copy()
    dataset, out = settings.pop("dataset"), settings.pop("out")
    settings["progress"] = not settings.pop("no_progress")
    for flag in ("resume", "overwrite", "keep_state", "cpu"):
        settings[flag] = settings[flag] or None
    config = TrainConfig.from_recipe(dataset, out, **settings)
    for path in train(config):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_script(main, __file__)
