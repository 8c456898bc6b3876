"""Throughput of `Smooth.certify` against the bare network and against IBM ART.

The network is ``--model lenet`` (default: a LeNet-style CNN, two 5x5
convolutions and two linear layers, about 0.3M multiply-adds: the setting where
ART's own overhead is visible) or ``--model small_cnn`` (the library's
Fashion-MNIST default, about 4M multiply-adds, where the network dominates every
implementation's time). All three are timed in one run, interleaved image by image so
that machine load affects them alike:

* bare: the small CNN's forward over the same number of noisy inputs (n0 + n per
  image), pre-generated, in batches of ``--batch``, under ``torch.inference_mode``;
* ours: ``Smooth(cnn, 10, sigma).certify(x, n0, n, alpha, batch)``, noise included;
* engine: the same call with the seeded sampler swapped for copies from a
  pre-drawn tensor, so that ``engine / bare`` is the engine's own overhead and
  ``ours - engine`` the cost of drawing the Gaussian noise;
* ART: ``PyTorchRandomizedSmoothing(...).certify(x, n, batch)`` with
  ``sample_size = n0`` (``pip install adversarial-robustness-toolbox``; the benchmark
  skips ART with a note when it is not installed; it is never a dependency of the
  library).

Prints the median seconds per image of each and the median over images of the
per-image ratios ours / bare, ART / bare and ART / ours (each contender runs twice
on each image, in a rotating order and then its reverse), and writes them, with
every image's times, as JSON with ``--json``.

    python benchmarks/bench_certify.py --n 10000 --batch 1000 --images 9
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from denoised_drs import Smooth, keep_freed_memory, smoothing
from denoised_drs.models.small_cnn import SmallCNN
from denoised_drs.noise import NoiseStream


class LeNet(torch.nn.Module):
    """A classic small CNN for 1x28x28 inputs (benchmark only)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 6, 5, padding=2),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(6, 16, 5),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(16 * 5 * 5, 120),
            torch.nn.ReLU(),
            torch.nn.Linear(120, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PredrawnNoise:
    """Stands in for :class:`NoiseStream` in the engine contender: serves ``source``."""

    source = torch.empty(0)

    def __init__(self, key, stream, shape, device="cpu", dtype=torch.float32) -> None:
        pass

    def take(self, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        if out is None:
            return PredrawnNoise.source[start:stop].clone()
        return out[: stop - start].copy_(PredrawnNoise.source[start:stop])


def bare_forward_seconds(model: torch.nn.Module, noisy: torch.Tensor, batch: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(noisy), batch):
            model(noisy[i : i + batch])
    return time.perf_counter() - start


def make_art_smoother(model, sigma, n0, alpha):
    try:
        from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing
    except ImportError:
        return None
    return PyTorchRandomizedSmoothing(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(1, 28, 28),
        nb_classes=10,
        channels_first=True,
        clip_values=(0.0, 1.0),
        sample_size=n0,
        scale=sigma,
        alpha=alpha,
        device_type="cpu",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--images", type=int, default=9)
    parser.add_argument("--model", choices=("lenet", "small_cnn"), default="lenet")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="call denoised_drs.keep_freed_memory() first, as the scripts do "
                             "(process-wide: speeds up every contender)")
    parser.add_argument("--json", help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.keep_freed_memory and not keep_freed_memory():
        parser.error("--keep-freed-memory needs Linux with glibc")

    torch.manual_seed(0)
    model = (LeNet() if args.model == "lenet" else SmallCNN(10, 1, (28, 28))).eval()
    smooth = Smooth(model, 10, args.sigma)
    art = make_art_smoother(model, args.sigma, args.n0, args.alpha)
    images = torch.rand(args.images, 1, 28, 28)
    total = args.n0 + args.n

    # Warm-up: first calls pay for allocator and kernel selection.
    smooth.certify(images[0], args.n0, min(args.n, 2 * args.batch), args.alpha, args.batch)
    bare_forward_seconds(model, torch.rand(2 * args.batch, 1, 28, 28), args.batch)

    # One buffer for every image, as the engine reuses its batch buffer: a fresh
    # 30 MB tensor per image would put the allocator's behaviour into the baseline.
    noisy = torch.empty(total, 1, 28, 28)

    def run_bare(index: int, x: torch.Tensor) -> float:
        torch.randn(noisy.shape, out=noisy).mul_(args.sigma).add_(x)
        return bare_forward_seconds(model, noisy, args.batch)

    def run_ours(index: int, x: torch.Tensor) -> float:
        start = time.perf_counter()
        smooth.certify(x, args.n0, args.n, args.alpha, args.batch, seed=(0, index))
        return time.perf_counter() - start

    PredrawnNoise.source = torch.randn(max(args.n0, args.n), 1, 28, 28)

    def run_engine(index: int, x: torch.Tensor) -> float:
        smoothing.NoiseStream = PredrawnNoise
        try:
            return run_ours(index, x)
        finally:
            smoothing.NoiseStream = NoiseStream

    def run_art(index: int, x: torch.Tensor) -> float:
        start = time.perf_counter()
        art.certify(x[None].numpy(), n=args.n, batch_size=args.batch)
        return time.perf_counter() - start

    runners = {"bare": run_bare, "ours": run_ours, "engine": run_engine}
    if art is not None:
        runners["art"] = run_art
    times: dict[str, list[float]] = {name: [] for name in runners}
    order = list(runners)
    for index, x in enumerate(images):
        # Each contender runs twice per image, in a rotating order and then its
        # reverse (ABBA), so that drifting machine load (other tenants, clock
        # changes) falls on every contender alike.
        rotated = order[index % len(order):] + order[: index % len(order)]
        seconds = dict.fromkeys(order, 0.0)
        for name in rotated + rotated[::-1]:
            seconds[name] += runners[name](index, x)
        for name in order:
            times[name].append(seconds[name] / 2)

    def median_ratio(top: str, bottom: str) -> float:
        # Ratios of the same image's times, then the median: robust to load that
        # changes between images.
        return statistics.median(a / b for a, b in zip(times[top], times[bottom]))

    per_image = {k: statistics.median(v) for k, v in times.items()}
    figures = {
        "setting": vars(args) | {"threads": torch.get_num_threads(), "torch": torch.__version__},
        "seconds_per_image": per_image,
        "ours_over_bare": median_ratio("ours", "bare"),
        "engine_over_bare": median_ratio("engine", "bare"),
        "seconds_each_image": times,
    }
    if "art" in per_image:
        figures["art_over_bare"] = median_ratio("art", "bare")
        figures["art_over_ours"] = median_ratio("art", "ours")
    print(f"{args.model}, 1x28x28, n0={args.n0}, n={args.n}, batch={args.batch}, "
          f"{args.images} images, {torch.get_num_threads()} threads, "
          f"keep_freed_memory={args.keep_freed_memory} (median s/image)")
    for name, seconds in per_image.items():
        print(f"  {name:6s} {seconds:8.3f} s")
    print(f"  ours / bare = {figures['ours_over_bare']:.3f}")
    print(f"  engine / bare = {figures['engine_over_bare']:.3f} (ours without drawing the noise)")
    if "art" in per_image:
        print(f"  ART / bare  = {figures['art_over_bare']:.3f}")
        print(f"  ART / ours  = {figures['art_over_ours']:.3f}")
    else:
        print("  ART not installed: pip install adversarial-robustness-toolbox", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
