"""Throughput of the converted OpenAI UNet against the original improved-diffusion code.

Builds the full-size CIFAR-10 50M model (52,546,438 parameters) with the seeded random
weights that ``tests/data/README.md`` specifies, key by key from the manifest
``cifar10_uncond_50M_500K.keys.json``, and times one-shot denoising of a batch of
32-px images:

* ours, float32: :class:`~denoised_drs.diffusion.OneShotDenoiser` on the preset's network
  (its 3x3 convolutions on 16 px and larger through NNPACK's Winograd kernel where that
  pays on this CPU, :mod:`denoised_drs.diffusion.winograd`; ``--winograd on|off``
  forces it, and the JSON records which path ran);
* ours, bf16: the same with ``autocast_dtype=torch.bfloat16`` (weights held in bf16);
* theirs, float32 (only with ``--original-dir``): improved-diffusion's ``UNetModel``,
  imported from that directory (the original code is not a dependency and is never
  shipped), with identical weights, behind the same ``OneShotDenoiser`` wrapper.

With ``--ceiling`` it also measures how fast the ours contenders could be at best on
this CPU: the profiler's self time of the convolutions and linear layers alone (the
matrix work, whose FLOPs both implementations share) per call, the FLOPs per sample
(``torch.utils.flop_counter``, as direct convolutions) and the rate they ran at (in
direct-convolution FLOPs, so the fp32 Winograd layers can exceed the CPU's true
peak). ``ceiling_samples_per_s`` is the throughput if nothing but that matrix work
ran (no attention, normalisation, activation or copy); its ratio to theirs bounds
what any rewrite on the same kernels can reach here.

Both networks are first checked to agree (max |difference| of the denoised images).
The contenders are timed interleaved (A B C C B A ...), each sample being one call on
the batch; the medians of wall-clock and of process CPU time give samples/s and the
throughput ratios ours/theirs (ours bf16 against theirs float32, as the project states its
target). Another process sharing the CPU slows every contender alike within a round,
which the interleaving and the median absorb; CPU time is the steadier figure then.

    python benchmarks/bench_unet.py --original-dir /tmp/improved-diffusion --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import torch

from denoised_drs.diffusion import OneShotDenoiser, get_preset, winograd

# The reference data the tests read too (tests/reference_data.py).
REFERENCE = Path(
    os.environ.get("DENOISED_DRS_REFERENCE", Path(__file__).resolve().parents[1] / "tests" / "data")
)
MANIFEST = REFERENCE / "cifar10_uncond_50M_500K.keys.json"
PRESET = "cifar10-uncond-50M"
SIGMA = 0.5


def reference_weights(manifest: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The seeded full-size weights of the reference README, and the OpenAI flags."""
    data = json.loads(manifest.read_text())
    state_dict = {}
    for key, shape in data["state_dict"].items():
        g = torch.Generator().manual_seed(zlib.crc32(("public:" + key).encode()))
        if len(shape) > 1:
            state_dict[key] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        else:
            base = 1.0 if key.endswith("weight") else 0.0
            state_dict[key] = base + 0.1 * torch.randn(shape, generator=g)
    return state_dict, data["flags"]


def original_network(directory: Path, flags: dict, state_dict: dict) -> torch.nn.Module:
    """improved-diffusion's UNetModel, imported from ``directory``, loaded strictly."""
    sys.path.insert(0, str(directory))
    from improved_diffusion.unet import UNetModel

    size = flags["image_size"]
    model = UNetModel(
        in_channels=3,
        model_channels=flags["num_channels"],
        out_channels=6 if flags["learn_sigma"] else 3,
        num_res_blocks=flags["num_res_blocks"],
        attention_resolutions=tuple(
            size // int(r) for r in flags["attention_resolutions"].split(",")
        ),
        dropout=flags["dropout"],
        channel_mult=(1, 2, 2, 2),
        num_heads=flags["num_heads"],
        num_heads_upsample=flags["num_heads_upsample"],
        use_scale_shift_norm=flags["use_scale_shift_norm"],
    )
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def time_interleaved(
    contenders: dict[str, Callable[[], object]], repeats: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall-clock and process-CPU seconds per call of each contender, called in
    A B C C B A order ``repeats`` times. CPU time counts only this process's work, so it
    is the steadier figure when other processes share the cores."""
    names = list(contenders)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            start, start_cpu = time.perf_counter(), time.process_time()
            contenders[name]()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return (
        {name: statistics.median(values) for name, values in wall.items()},
        {name: statistics.median(values) for name, values in cpu.items()},
    )


# Convolutions and linear layers: the kernels that do the model's FLOPs (oneDNN, and
# NNPACK's Winograd for the layers denoised_drs.diffusion.winograd sends there).
MATRIX_OPS = ("aten::mkldnn_convolution", "aten::_nnpack_spatial_convolution", "aten::addmm",
              "aten::mm")


def matrix_work(call: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Seconds per call spent in :data:`MATRIX_OPS` (profiler self CPU time), and in all."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            call()
    events = prof.key_averages()
    matrix = sum(e.self_cpu_time_total for e in events if e.key in MATRIX_OPS)
    total = sum(e.self_cpu_time_total for e in events)
    return matrix / 1e6 / repeats, total / 1e6 / repeats


def flops_per_sample(denoiser: OneShotDenoiser, x: torch.Tensor) -> float:
    """FLOPs of one denoising call per sample, as torch's flop counter counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        denoiser(x)
    return counter.get_total_flops() / len(x)


def ceiling(ours: dict[str, OneShotDenoiser], x: torch.Tensor, repeats: int,
            theirs_cpu_seconds: float | None) -> dict[str, object]:
    # Counted on the bf16 network, whose convolutions all take the direct path: the
    # counter does not see NNPACK's Winograd kernel (which does fewer multiplications
    # than a direct convolution of the same shape). The FLOPs are the same in fp32.
    flops = flops_per_sample(ours["ours_bf16"], x)
    out: dict[str, object] = {"gflop_per_sample": flops / 1e9}
    for name, denoiser in ours.items():
        matrix, total = matrix_work(lambda d=denoiser: d(x), repeats)
        entry = {
            "matrix_ms_per_sample": 1e3 * matrix / len(x),
            "other_ms_per_sample": 1e3 * (total - matrix) / len(x),
            "matrix_gflop_per_s": flops * len(x) / matrix / 1e9,
            "ceiling_samples_per_s": len(x) / matrix,
        }
        if theirs_cpu_seconds is not None:
            entry["ceiling_ratio_vs_theirs_fp32"] = theirs_cpu_seconds / matrix
        out[name] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--original-dir", type=Path,
                        help="directory holding improved-diffusion's improved_diffusion package")
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=6, help="timed calls per contender")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--ceiling", action="store_true",
                        help="also profile the matrix work of ours (see the docstring)")
    parser.add_argument("--winograd", choices=("auto", "on", "off"), default="auto",
                        help="ours fp32: Winograd where it pays (auto, the library's "
                        "default), or forced on / off")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    winograd.set_winograd({"auto": None, "on": True, "off": False}[args.winograd])
    torch.manual_seed(0)
    state_dict, flags = reference_weights(args.manifest)
    preset = get_preset(PRESET)
    theirs_net = None
    if args.original_dir is not None:
        # Built first: ours adopts the state dict's tensors (no copy) and would share them.
        theirs_net = original_network(args.original_dir, flags, state_dict)
    ours = {
        "ours_fp32": OneShotDenoiser(preset.build_network(state_dict), preset.alphas_cumprod(),
                                     SIGMA, timestep_scale=preset.timestep_scale),
        "ours_bf16": OneShotDenoiser(preset.build_network(state_dict), preset.alphas_cumprod(),
                                     SIGMA, timestep_scale=preset.timestep_scale,
                                     autocast_dtype=torch.bfloat16),
    }
    contenders = dict(ours)
    if theirs_net is not None:
        contenders["theirs_fp32"] = OneShotDenoiser(theirs_net, preset.alphas_cumprod(), SIGMA,
                                                    timestep_scale=preset.timestep_scale)
    x = (torch.rand(args.batch, 3, 32, 32) + SIGMA * torch.randn(args.batch, 3, 32, 32))
    outputs = {name: denoiser(x) for name, denoiser in contenders.items()}  # also warms up
    result: dict[str, object] = {
        "batch": args.batch, "image_size": 32, "repeats": args.repeats,
        "threads": torch.get_num_threads(), "sigma": SIGMA,
        "winograd": args.winograd,
        "winograd_taken": winograd.nnpack_ready() and winograd.winograd_pays(),
        "num_parameters": sum(p.numel() for p in ours["ours_fp32"].network.parameters()),
        "max_abs_diff_bf16_vs_fp32": float(
            (outputs["ours_bf16"] - outputs["ours_fp32"]).abs().max()),
    }
    if theirs_net is not None:
        result["max_abs_diff_fp32_vs_theirs"] = float(
            (outputs["ours_fp32"] - outputs["theirs_fp32"]).abs().max())
        if result["max_abs_diff_fp32_vs_theirs"] > 1e-4:
            raise SystemExit(
                f"ours and theirs disagree: {result['max_abs_diff_fp32_vs_theirs']:.3g}")
    wall, cpu = time_interleaved({name: lambda d=d: d(x) for name, d in contenders.items()},
                                 args.repeats)
    for label, seconds in (("wall", wall), ("cpu", cpu)):
        result[f"samples_per_s_{label}"] = {name: args.batch / s for name, s in seconds.items()}
        if theirs_net is not None:
            # Throughput ratios ours / theirs (theirs always in float32).
            result[f"ratio_fp32_{label}"] = seconds["theirs_fp32"] / seconds["ours_fp32"]
            result[f"ratio_bf16_vs_theirs_fp32_{label}"] = (
                seconds["theirs_fp32"] / seconds["ours_bf16"])
    if args.ceiling:
        result["ceiling"] = ceiling(ours, x, 2, cpu.get("theirs_fp32"))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
