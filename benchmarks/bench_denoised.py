"""Throughput of denoised certification: RS with denoiser, DRS joint, DRS split.

Uses the bundled Fashion-MNIST denoiser (an OpenAI-architecture UNet) and
classifiers. For each mode, in one run: noisy samples per second of
``Pipeline.certify_one`` and of the bare denoiser + classifier forward over the
same number of noisy inputs (pre-generated; split mode's bare cost counts its two
denoisings), and their ratio.

    python benchmarks/bench_denoised.py --n 500 --images 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from denoised_drs.data import load_sample
from denoised_drs.partition import checkerboard_split
from denoised_drs.pipeline import Pipeline

CKPT = Path(__file__).resolve().parents[1] / "checkpoints"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--n0", type=int, default=50)
    parser.add_argument("--batch", type=int, default=550)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    common = {"n0": args.n0, "n": args.n, "batch": args.batch, "device": "cpu", "sigma": 0.25,
              "denoiser": str(CKPT / "fmnist_denoiser.pt")}
    branches = {"classifier_l": str(CKPT / "fmnist_drs_l_gaussian_s0.18.pt"),
                "classifier_r": str(CKPT / "fmnist_drs_r_gaussian_s0.18.pt")}
    modes = {
        "rs_denoised": Pipeline(mode="rs", classifier=str(CKPT / "fmnist_rs_gaussian_s0.25.pt"),
                                **common),
        "drs_joint": Pipeline(mode="drs", denoise="joint", **branches, **common),
        "drs_split": Pipeline(mode="drs", denoise="split", **branches, **common),
    }
    data = load_sample()
    total = args.n0 + args.n
    figures = {}
    for name, pipe in modes.items():
        denoiser = pipe.denoiser
        voter = pipe.smoothed.voter
        pipe.certify_one(data[0][0], data[0][1], 0)  # warm-up
        ours = bare = 0.0
        for i in range(args.images):
            x, y = data[i]
            start = time.perf_counter()
            pipe.certify_one(x, y, i)
            ours += time.perf_counter() - start
            noisy = x + 0.25 * torch.randn(total, *x.shape)
            start = time.perf_counter()
            with torch.inference_mode():
                for lo in range(0, total, args.batch):
                    batch = noisy[lo : lo + args.batch]
                    if name == "rs_denoised":
                        voter.classifiers[0](batch)
                    else:
                        copies = 2 if name == "drs_split" else 1
                        clean = denoiser(torch.cat([batch] * copies))[: len(batch)]
                        left, right = checkerboard_split(clean)
                        voter.classifiers[0](left)
                        voter.classifiers[1](right)
            bare += time.perf_counter() - start
        samples = args.images * total
        figures[name] = {"samples_per_s": samples / ours, "bare_samples_per_s": samples / bare,
                         "ours_over_bare": ours / bare}
        print(f"{name:12s} {samples / ours:8.1f} samples/s  bare {samples / bare:8.1f}  "
              f"ours/bare {ours / bare:.3f}")
    joint_vs_rs = figures["rs_denoised"]["samples_per_s"] / figures["drs_joint"]["samples_per_s"]
    print(f"DRS joint cost per sample / denoised RS = {joint_vs_rs:.3f}")
    figures["joint_over_rs"] = joint_vs_rs
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
