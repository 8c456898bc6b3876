"""The GPU suite: denoised-smoothing throughput of the paper-scale models, in one JSON.

    python benchmarks/gpu_suite.py --out results/gpu/gpu_suite.json  # one H100/H200, < 8 min
    python benchmarks/gpu_suite.py --tiny \
        --out /tmp/gpu_suite_tiny.json  # CPU, small models, seconds

For each preset (the 50M CIFAR-10 UNet at 32 px, the 552M ImageNet UNet on the 224
crop that Carlini et al. and DRS certify; before 2026-12-07 it measured 256 px)
and precision (fp32, bf16, bf16 with ``torch.compile``) it measures noisy samples per
second and peak GPU memory of denoised RS, DRS with joint denoising and DRS with
split denoising (two denoiser calls per sample), and the ratios between them; then
certifies two random images per preset (DRS joint, bf16) as a smoke test.

Beside each rate it reports the model FLOPs of one noisy sample and the model-FLOPs
utilisation (MFU). ``flops_per_sample`` is counted once per measured configuration by
``torch.utils.flop_counter.FlopCounterMode`` over a small batch of the configuration's
own sampling engine (eager: a compiled row is counted on its eager network, same
precision), divided by the batch, so it is what one sample actually runs: denoised RS one
UNet pass and one classifier call, DRS joint one UNet pass and two branch classifier
calls on half-images, DRS split two UNet passes and two classifier calls; it is split into
``flops_per_sample_denoiser`` and ``flops_per_sample_classifier`` (by module). The counter
counts matmuls, convolutions and the attention kernels it has formulas for (elementwise
work, group norms included, is not counted); NNPACK is off while counting, as on the CPU
its convolutions were otherwise counted differently from run to run. ``mfu`` = samples_per_s x
flops_per_sample / ``peak_flops``, the device's dense peak from :data:`PEAK_FLOPS` matched
by ``torch.cuda.get_device_name()``: fp32 rows against the TF32 peak (whether TF32 was on
is in the JSON's ``tf32``), bf16 rows against the bf16 peak. On the CPU or an unknown
device ``peak_flops`` and ``mfu`` are null and ``peak_source`` says why.
``peak_memory_gib`` / ``peak_memory_bytes`` are ``torch.cuda.max_memory_allocated()`` over
the timed batches, reset before each configuration's (null on the CPU).

Precisions (issue 24): ``fp32`` and ``bf16`` run the engine's step eagerly, bf16 under
one autocast over the whole step (denoiser and classifiers); ``bf16+compile`` compiles
the whole step (:mod:`denoised_drs.vote_step`, mode "default", the certify script's
default on CUDA) and ``bf16+cudagraphs`` with mode "reduce-overhead" (CUDA only). A
compiled row counts the graphs it compiled (``graphs``) and the CUDA graphs inductor
skipped (``cudagraph_skips``), and is timed after two warm-up calls (CUDA graph trees
record on the second). ``auto_batch`` measures DRS joint, bf16, compiled, at
``batch="auto"``: the batch chosen from free memory and its rate (before the
CUDA-graph rows, whose memory pools would shrink it). ``--presets`` and
``--precisions`` select what runs (bf16 always: the hours need it).

Eager fp32 and bf16 and the smoke test run first for every preset, ``torch.compile``
last: compile time is the least predictable part. The JSON is rewritten after every
step, so a run cut short keeps what it measured; ``--budget SECONDS`` skips the
compiled measurements once that much time has passed (recorded as skipped). On one
H200 the suite before issue 24 took 359 s (results/gpu/gpu_suite.json).

Weights are random, built from the key manifests of the official checkpoints
(``--manifests``, default ``tests/data``, which carries them) and loaded through the same
strict official-layout path as the real files, so sizes and speed are the real
ones; nothing is downloaded. ``--tiny`` runs the same code with small UNets (built
from their flags, no manifest needed) and small classifiers on the CPU, so that a
test can keep this script working.

From the bf16 rates it then computes ``expected_gpu_hours`` for every command of
docs/reproduce.md, by that document's formula: images x (N0 + N) / R / 3600 per sigma,
R being the measured noisy samples per second of the row's preset and mode. R counts
noisy samples, not denoiser calls, so DRS split's two denoiser calls per sample are
already in its (lower) R and take no extra factor. The classifiers measured are
ResNet-110 and ResNet-50; Carlini's ViT-B/16 and BEiT-L cost more, so those rows are
lower bounds. With ``--tiny`` the hours only exercise the arithmetic (CPU, small models).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from denoised_drs.atomic_file import atomic_write  # noqa: E402
from denoised_drs.cli import run_script  # noqa: E402
from denoised_drs.errors import check_output_file  # noqa: E402


@dataclass(frozen=True)
class Preset:
    """One denoiser + classifier pairing to measure."""

    name: str
    denoiser: str  # a denoised_drs.diffusion preset
    manifest: str | None  # key manifest of the official checkpoint (None: from the flags)
    image_size: int
    classifier: str  # a registry architecture
    classifier_size: int
    num_classes: int
    batch: int  # noisy samples per forward pass


FULL = (
    Preset("cifar10-50M", "cifar10-uncond-50M", "cifar10_uncond_50M_500K.keys.json", 32,
           "cifar_resnet110", 32, 10, 500),
    Preset("imagenet-552M", "imagenet256-uncond", "256x256_diffusion_uncond.keys.json", 224,
           "resnet50", 224, 1000, 16),
)
TINY = (
    Preset("cifar10-50M", "improved-small", None, 32, "cifar_resnet20", 32, 10, 4),
    Preset("imagenet-552M", "guided-small", None, 32, "cifar_resnet20", 48, 10, 4),
)
PRECISIONS = ("fp32", "bf16", "bf16+compile", "bf16+cudagraphs")
COMPILE_MODE = {"bf16+compile": "default", "bf16+cudagraphs": "reduce-overhead"}
"""The compiled precisions and their ``torch.compile`` mode (the whole per-batch step is
compiled: denoised_drs.vote_step)."""
EAGER_PRECISIONS = ("fp32", "bf16")
MODES = {"rs": {"mode": "rs"}, "drs_joint": {"mode": "drs", "denoise": "joint"},
         "drs_split": {"mode": "drs", "denoise": "split"}}
SIGMA = 0.25
FLOP_COUNT_SAMPLES = 2  # noisy samples run under FlopCounterMode per configuration

# Dense (no sparsity) peak FLOP/s per GPU, from the vendors' datasheets (the sparse
# figures halved): H100 SXM 989 TFLOP/s bf16, 494.7 TF32 (NVIDIA H100 datasheet);
# H100 PCIe 756 bf16, 378 TF32 (same datasheet); H200 (SXM) the H100 SXM's, 989 / 494.7
# (NVIDIA H200 datasheet); A100 (40 GB and 80 GB, SXM and PCIe) 312 bf16, 156 TF32
# (NVIDIA A100 datasheet). fp32 rows use the TF32 peak, bf16 rows the bf16 peak.
PEAK_FLOPS = {
    "H100 SXM": {"bf16": 989e12, "tf32": 494.7e12},
    "H100 PCIe": {"bf16": 756e12, "tf32": 378e12},
    "H200": {"bf16": 989e12, "tf32": 494.7e12},
    "A100": {"bf16": 312e12, "tf32": 156e12},
}


@dataclass(frozen=True)
class ReproduceRow:
    """One loop of docs/reproduce.md: a command per sigma, each certifying ``images``."""

    preset: str  # a Preset name: whose measured rate applies
    mode: str  # a MODES key
    images: int
    sigmas: tuple[float, ...]
    note: str = ""


# The commands' shared settings: --N0 100 --N 100000 --autocast bf16, compiled (on CUDA
# the default).
REPRODUCE_N0, REPRODUCE_N, REPRODUCE_PRECISION = 100, 100_000, "bf16+compile"
CIFAR10_IMAGES = len(range(0, 10_000, 5))  # --skip 5 over the 10,000 test images
IMAGENET_IMAGES = len(range(0, 50_000, 100))  # --skip 100 over the 50,000 val images
CARLINI = "ViT-B/16 / BEiT-L classifier costs more than the measured ResNet: a lower bound"
REPRODUCE_ROWS = {
    "DRS joint, CIFAR-10": ReproduceRow("cifar10-50M", "drs_joint", CIFAR10_IMAGES, (0.18, 0.36)),
    "DRS joint, ImageNet": ReproduceRow("imagenet-552M", "drs_joint", IMAGENET_IMAGES,
                                        (0.25, 0.50)),
    "DRS split, CIFAR-10": ReproduceRow("cifar10-50M", "drs_split", CIFAR10_IMAGES, (0.18, 0.36)),
    "DRS split, ImageNet": ReproduceRow("imagenet-552M", "drs_split", IMAGENET_IMAGES,
                                        (0.25, 0.50)),
    "denoised RS, CIFAR-10": ReproduceRow("cifar10-50M", "rs", CIFAR10_IMAGES, (0.25, 0.50)),
    "denoised RS, ImageNet": ReproduceRow("imagenet-552M", "rs", IMAGENET_IMAGES, (0.25, 0.50)),
    "Carlini CIFAR-10": ReproduceRow("cifar10-50M", "rs", CIFAR10_IMAGES, (0.25, 0.50, 1.00),
                                     CARLINI),
    "Carlini ImageNet": ReproduceRow("imagenet-552M", "rs", IMAGENET_IMAGES, (0.25, 0.50, 1.00),
                                     CARLINI),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the JSON to write")
    parser.add_argument("--tiny", action="store_true", help="small random models on the CPU")
    parser.add_argument("--manifests", default=str(REPO / "tests" / "data"),
                        help="folder of the *.keys.json manifests (full size only)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="timed seconds per measurement (default 5, --tiny 0: one batch)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds after which the compiled measurements still to run are "
                             "skipped (recorded as such in the JSON; default: none skipped)")
    parser.add_argument("--device", default=None, help="default: cuda (full size), cpu (--tiny)")
    parser.add_argument("--presets", nargs="+", choices=[p.name for p in FULL], default=None,
                        help="measure only these presets (default: all)")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=None,
                        help="measure only these precisions (default: all; the eager ones "
                             "always run first, and the hours need bf16)")
    parser.add_argument("--no-auto-batch", dest="auto_batch", action="store_false",
                        help="skip the DRS joint measurement at --batch auto")
    args = parser.parse_args(argv)
    args.precisions = tuple(p for p in PRECISIONS if args.precisions is None
                            or p in args.precisions or p == "bf16")
    if args.seconds is None:
        args.seconds = 0.0 if args.tiny else 5.0
    if not (math.isfinite(args.seconds) and args.seconds >= 0):
        raise ValueError(f"--seconds must be a non-negative number, got {args.seconds}")
    args.device = args.device or ("cpu" if args.tiny else "cuda")
    if args.budget is not None and not (math.isfinite(args.budget) and args.budget >= 0):
        raise ValueError(f"--budget must be a non-negative number, got {args.budget}")
    return args


def random_state_dict(shapes: dict[str, list[int]], seed: int) -> dict[str, torch.Tensor]:
    """Random tensors (std 0.02) of the given shapes, reproducibly: speed is all we measure."""
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(shape, generator=generator) * 0.02 for key, shape in shapes.items()}


def build_network(preset: Preset, manifests: Path | None) -> nn.Module:
    """The preset's UNet with random weights, loaded strictly in the official layout."""
    from denoised_drs.diffusion.presets import get_preset

    spec = get_preset(preset.denoiser)
    if preset.manifest is None:
        shapes = spec.build_network().openai_state_dict_shapes()
    else:
        path = Path(manifests) / preset.manifest
        if not path.is_file():
            raise FileNotFoundError(f"key manifest not found: {path} (pass --manifests DIR)")
        shapes = json.loads(path.read_text())["state_dict"]
    return spec.build_network(random_state_dict(shapes, seed=0))


def build_denoiser(preset: Preset, network: nn.Module, precision: str,
                   device: torch.device) -> nn.Module:
    from denoised_drs.diffusion import OneShotDenoiser
    from denoised_drs.diffusion.presets import get_preset

    spec = get_preset(preset.denoiser)
    # One chunk size for every mode: split's 2B images run as two B-image calls.
    return OneShotDenoiser(
        network, spec.alphas_cumprod(), SIGMA, timestep_scale=spec.timestep_scale,
        chunk_size=preset.batch, autocast_dtype=None if precision == "fp32" else torch.bfloat16,
    ).to(device)


def build_classifier(preset: Preset) -> nn.Module:
    from denoised_drs.models import create_model

    torch.manual_seed(1)
    normalization = "cifar10" if preset.num_classes == 10 else "imagenet"
    return create_model(preset.classifier, num_classes=preset.num_classes,
                        normalization=normalization,
                        input_size=(preset.classifier_size, preset.classifier_size)).eval()


def precision_settings(precision: str) -> dict[str, Any]:
    """The pipeline settings of a :data:`PRECISIONS` entry: autocast for the whole step
    (denoiser and classifiers), and the compiled step or not (never by default, so
    that eager rows stay eager on a GPU too)."""
    compile_mode = COMPILE_MODE.get(precision)
    return {"autocast": None if precision == "fp32" else "bf16",
            "compile": compile_mode is not None, "compile_mode": compile_mode}


def make_pipeline(preset: Preset, denoiser: nn.Module, classifier: nn.Module, mode: str,
                  device: torch.device, precision: str = "fp32", backend: str = "inductor",
                  **settings: Any):
    from denoised_drs.pipeline import Pipeline

    models = ({"classifier": classifier} if MODES[mode]["mode"] == "rs"
              else {"classifier_l": classifier, "classifier_r": classifier})
    pipe = Pipeline(**MODES[mode], **models, denoiser=denoiser, sigma=SIGMA,
                    num_classes=preset.num_classes, classifier_size=preset.classifier_size,
                    interpolation="bicubic", device=str(device),
                    **{"batch": preset.batch, **precision_settings(precision), **settings})
    pipe.smoothed.step.compile_backend = backend
    return pipe


def peak_row(device_name: str) -> str | None:
    """The :data:`PEAK_FLOPS` row of a ``torch.cuda.get_device_name()``, or None.

    "NVIDIA H200" -> H200; "NVIDIA H100 PCIe" -> H100 PCIe; any other H100 ("NVIDIA H100
    80GB HBM3", "NVIDIA H100 SXM5 80GB") -> H100 SXM; "NVIDIA A100-SXM4-80GB",
    "NVIDIA A100-PCIE-40GB" -> A100. NVL parts (other clocks) are not in the table."""
    name = device_name.upper()
    if "NVL" in name:
        return None
    if "H200" in name:
        return "H200"
    if "H100" in name:
        return "H100 PCIe" if "PCIE" in name else "H100 SXM"
    if "A100" in name:
        return "A100"
    return None


def peak_flops(device_name: str | None, precision: str) -> tuple[float | None, str]:
    """(dense peak FLOP/s, where it comes from) for a precision of :data:`PRECISIONS`:
    the TF32 peak for fp32, the bf16 peak otherwise; (None, why) off the table."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    if device_name is None:
        return None, "not a CUDA device"
    row = peak_row(device_name)
    if row is None:
        return None, f"unknown device {device_name!r}"
    column = "tf32" if precision == "fp32" else "bf16"
    return PEAK_FLOPS[row][column], f"{row} {column} dense"


_DENOISER_MODULE = re.compile(r"^[^.]+(\.classifiers\.\d+)?\.(denoiser|denoisers\.\d+)$")


def count_flops(pipe, image: torch.Tensor, samples: int = FLOP_COUNT_SAMPLES) -> dict[str, float]:
    """Model FLOPs per noisy sample of the pipeline's sampling engine, total and by model.

    Runs ``samples`` noisy samples under FlopCounterMode and divides by ``samples``;
    the denoiser's share is what its module (the voter's ``denoiser`` or ``denoisers.j``)
    ran, the classifiers' the rest."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.backends.nnpack.flags(enabled=False), counter:
        pipe.smoothed.sample_counts(image, samples, samples, seed=0)
    total = counter.get_total_flops()
    denoiser = sum(sum(ops.values()) for name, ops in counter.get_flop_counts().items()
                   if _DENOISER_MODULE.match(name))
    return {"flops_per_sample": total / samples,
            "flops_per_sample_denoiser": denoiser / samples,
            "flops_per_sample_classifier": (total - denoiser) / samples}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compile_counters() -> dict[str, int]:
    """Dynamo's and inductor's process-wide counts of graphs compiled and of CUDA graphs
    skipped (a skipped one runs the compiled kernels without replay)."""
    from torch._dynamo.utils import counters

    return {"graphs": int(counters["stats"]["unique_graphs"]),
            "cudagraph_skips": sum(counters["inductor"].get(k, 0)
                                   for k in counters["inductor"] if "cudagraph_skip" in k)}


def measure(pipe, image: torch.Tensor, batch: int, seconds: float,
            device: torch.device) -> dict[str, Any]:
    """Noisy samples per second of the pipeline's sampling engine, after warm-up batches
    (two for a compiled step: CUDA graph trees warm up on the first call and record on
    the second); a compiled row also says how many graphs it compiled and CUDA graphs
    it skipped."""
    smoothed = pipe.smoothed
    before = compile_counters()
    for _ in range(2 if pipe.compile_mode is not None else 1):
        smoothed.sample_counts(image, batch, batch, seed=0)  # warm-up (and compilation)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    samples, start = 0, time.perf_counter()
    while True:
        smoothed.sample_counts(image, batch, batch, seed=1, start=samples)
        samples += batch
        synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    after = compile_counters()
    compiled = ({} if pipe.compile_mode is None else
                {key: after[key] - before[key] for key in after})
    return {"samples_per_s": samples / elapsed, "samples": samples, "seconds": elapsed,
            "peak_memory_gib": None if peak is None else peak / 2**30,
            "peak_memory_bytes": peak, **compiled}


def add_mfu(result: dict[str, Any], flops: dict[str, float], device_name: str | None,
            precision: str) -> dict[str, Any]:
    """``result`` with the FLOPs per sample, the device's peak and the MFU added."""
    peak, source = peak_flops(device_name, precision)
    mfu = None if peak is None else result["samples_per_s"] * flops["flops_per_sample"] / peak
    return {**result, **flops, "peak_flops": peak, "peak_source": source, "mfu": mfu}


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    rate = {mode: results[mode]["samples_per_s"] for mode in MODES}
    return {"drs_joint/rs": rate["drs_joint"] / rate["rs"],
            "drs_split/rs": rate["drs_split"] / rate["rs"],
            "drs_split/drs_joint": rate["drs_split"] / rate["drs_joint"]}


def smoke_test(preset: Preset, denoiser: nn.Module, classifier: nn.Module,
               device: torch.device) -> dict[str, Any]:
    """Certify two random images (DRS joint): the whole path runs and gives sane records."""
    pipe = make_pipeline(preset, denoiser, classifier, "drs_joint", device, "bf16",
                         n0=preset.batch, n=2 * preset.batch)
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(2, 3, preset.image_size, preset.image_size, generator=generator)
    pipe.check_image_shape(images.shape[1:])
    records = pipe.certify(images, [0, 1])
    ok = all(r.n_used == 2 * preset.batch and r.nonfinite == 0 and r.radius >= 0 for r in records)
    return {"ok": ok,
            "records": [{"predict": r.predict, "radius": r.radius, "radius_paper": r.radius_paper,
                                   "time": r.time, "nonfinite": r.nonfinite, "n_used": r.n_used}
                                  for r in records]}


def reproduce_precision(precisions: dict[str, Any]) -> str:
    """The precision whose rates the hours use: the commands' own (bf16, compiled: the
    default on CUDA) where it was measured, else eager bf16."""
    measured = precisions.get(REPRODUCE_PRECISION, {})
    return REPRODUCE_PRECISION if "skipped" not in measured and measured else "bf16"


def expected_gpu_hours(presets: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per docs/reproduce.md row: GPU hours = images x (N0 + N) / R / 3600 per sigma,
    R the measured samples/s of the row's preset and mode (:func:`reproduce_precision`);
    ``hours`` sums the sigmas."""
    rows = {}
    for name, row in REPRODUCE_ROWS.items():
        if row.preset not in presets:  # --presets left it out
            continue
        precisions = presets[row.preset]["precisions"]
        precision = reproduce_precision(precisions)
        rate = precisions[precision][row.mode]["samples_per_s"]
        per_sigma = row.images * (REPRODUCE_N0 + REPRODUCE_N) / rate / 3600
        rows[name] = {"preset": row.preset, "mode": row.mode, "precision": precision,
                      "images": row.images, "n0": REPRODUCE_N0, "n": REPRODUCE_N,
                      "sigmas": list(row.sigmas), "samples_per_s": rate,
                      "hours_per_sigma": per_sigma, "hours": per_sigma * len(row.sigmas),
                      "note": row.note}
    return rows


def print_hours(rows: dict[str, dict[str, Any]]) -> None:
    """The table of docs/reproduce.md, filled in."""
    print("| row | preset, mode, precision | R (samples/s) | GPU hours per sigma | all sigmas |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        sigmas = ", ".join(f"{s:g}" for s in row["sigmas"])
        print(f"| {name} | {row['preset']}, {row['mode']}, {row['precision']} | "
              f"{row['samples_per_s']:.1f} | "
              f"{row['hours_per_sigma']:.2f} | {row['hours']:.2f} ({sigmas}) |")


def describe(preset: Preset, backend: str) -> dict[str, Any]:
    return {
        "denoiser": preset.denoiser, "parameters": None,
        "image_size": preset.image_size, "classifier": preset.classifier,
        "classifier_size": preset.classifier_size, "batch": preset.batch,
        "compile_backend": backend, "precisions": {}, "seconds": 0.0,
    }


def run_precisions(preset: Preset, precisions: tuple[str, ...], out: dict[str, Any],
                   args: argparse.Namespace, device: torch.device, smoke: bool) -> None:
    """Measure ``precisions`` (and certify the smoke images) into ``out``, in place."""
    start = time.perf_counter()
    network = build_network(preset, None if args.tiny else Path(args.manifests)).to(device).eval()
    out["parameters"] = sum(p.numel() for p in network.parameters())
    classifier = build_classifier(preset)
    image = torch.rand(3, preset.image_size, preset.image_size,
                       generator=torch.Generator().manual_seed(3))
    backend = out["compile_backend"]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    for precision in precisions:
        denoiser = build_denoiser(preset, network, precision, device)
        # The FLOPs are counted on the eager step (a compiled one runs the same model).
        eager_precision = "fp32" if precision == "fp32" else "bf16"
        results = {}
        for mode in MODES:
            pipe = make_pipeline(preset, denoiser, classifier, mode, device, precision, backend)
            result = measure(pipe, image, preset.batch, args.seconds, device)
            flops = count_flops(make_pipeline(preset, denoiser, classifier, mode, device,
                                              eager_precision), image)
            results[mode] = add_mfu(result, flops, device_name, precision)
        out["precisions"][precision] = {**results, "ratios": ratios(results)}
        print(f"{preset.name} {precision}: " + ", ".join(
            f"{mode} {r['samples_per_s']:.1f}/s"
            + ("" if r["mfu"] is None else f" ({100 * r['mfu']:.1f}% MFU)")
            for mode, r in results.items()), flush=True)
    if smoke:
        out["smoke"] = smoke_test(preset, build_denoiser(preset, network, "bf16", device),
                                  classifier, device)
    out["seconds"] += time.perf_counter() - start
    del network, classifier
    if device.type == "cuda":
        torch.cuda.empty_cache()


def over_budget(report: dict[str, Any], preset: Preset, what: str, args: argparse.Namespace,
                start: float) -> bool:
    """Whether ``--budget`` is spent; if so ``what`` (a precision or "auto_batch") of
    ``preset`` is recorded as skipped."""
    elapsed = time.perf_counter() - start
    if args.budget is None or elapsed <= args.budget:
        return False
    skipped = {"skipped": f"{elapsed:.0f} s spent, over --budget {args.budget:g} s"}
    entry = report["presets"][preset.name]
    if what in PRECISIONS:
        entry["precisions"][what] = skipped
    else:
        entry[what] = skipped
    print(f"{preset.name} {what}: skipped (over --budget)", flush=True)
    return True


def measure_auto_batch(preset: Preset, args: argparse.Namespace, device: torch.device,
                       backend: str) -> dict[str, Any]:
    """DRS joint, bf16, compiled, at ``batch="auto"`` (the largest batch that fits in free
    memory on CUDA, of at most N = 100,000 samples; on the CPU the CPU default capped at
    two preset batches, eager: there it only checks the code): the batch chosen, how, and
    its rate."""
    precision = "bf16+compile" if device.type == "cuda" else "bf16"
    network = build_network(preset, None if args.tiny else Path(args.manifests)).to(device).eval()
    classifier = build_classifier(preset)
    denoiser = build_denoiser(preset, network, precision, device)
    image = torch.rand(3, preset.image_size, preset.image_size,
                       generator=torch.Generator().manual_seed(3))
    n = 2 * preset.batch if args.tiny else REPRODUCE_N
    pipe = make_pipeline(preset, denoiser, classifier, "drs_joint", device, precision,
                         backend, batch="auto", n0=min(REPRODUCE_N0, n), n=n)
    pipe.check_image_shape(tuple(image.shape))
    result = measure(pipe, image, pipe.batch, args.seconds, device)
    choice = pipe.batch_choice
    print(f"{preset.name} auto batch: {pipe.batch_note}; {result['samples_per_s']:.1f}/s",
          flush=True)
    measured = {} if choice is None else {
        "per_sample_bytes": choice.per_sample_bytes, "fixed_bytes": choice.fixed_bytes,
        "free_bytes": choice.free_bytes}
    batch, note = pipe.batch, pipe.batch_note
    del network, classifier, denoiser, pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {**result, "batch": batch, "choice": note, **measured}


def measure_auto_batches(report: dict[str, Any], presets: list[Preset],
                         args: argparse.Namespace, device: torch.device, backend: str,
                         out: Path, start: float) -> None:
    """:func:`measure_auto_batch` for each preset not measured yet (unless
    ``--no-auto-batch``, or over ``--budget``)."""
    for preset in presets if args.auto_batch else ():
        entry = report["presets"][preset.name]
        if "auto_batch" in entry or over_budget(report, preset, "auto_batch", args, start):
            continue
        entry["auto_batch"] = measure_auto_batch(preset, args, device, backend)
        write_report(report, out, start)


def write_report(report: dict[str, Any], out: Path, start: float) -> None:
    """Write what is measured so far: a run cut short still leaves its JSON."""
    report["total_seconds"] = time.perf_counter() - start
    with atomic_write(out, "w") as handle:
        handle.write(json.dumps(report, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_output_file(args.out)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA is not available here; run with --tiny (CPU) or on a GPU machine")
    start = time.perf_counter()
    report: dict[str, Any] = {
        "tiny": args.tiny,
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else platform.processor() or "cpu"),
        "torch": torch.__version__, "sigma": SIGMA, "seconds_per_measurement": args.seconds,
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32,
                 "cudnn": torch.backends.cudnn.allow_tf32},
        "peak_flops_table": PEAK_FLOPS,
        "presets": {},
    }
    out = Path(args.out)
    presets = [p for p in (TINY if args.tiny else FULL)
               if args.presets is None or p.name in args.presets]
    backend = "eager" if args.tiny else "inductor"
    # Eager precisions and the smoke test of every preset first, compilation last: its
    # compile time is the least predictable part.
    for preset in presets:
        report["presets"][preset.name] = describe(preset, backend)
        eager = tuple(p for p in EAGER_PRECISIONS if p in args.precisions)
        run_precisions(preset, eager, report["presets"][preset.name], args, device, smoke=True)
        write_report(report, out, start)
    for precision in (p for p in COMPILE_MODE if p in args.precisions):
        if precision == "bf16+cudagraphs":
            # Before the CUDA-graph rows, whose private memory pools would shrink the batch.
            measure_auto_batches(report, presets, args, device, backend, out, start)
        for preset in presets:
            if precision == "bf16+cudagraphs" and device.type != "cuda":
                report["presets"][preset.name]["precisions"][precision] = {
                    "skipped": "CUDA graphs need a CUDA device"}
                continue
            if over_budget(report, preset, precision, args, start):
                continue
            run_precisions(preset, (precision,), report["presets"][preset.name], args,
                           device, smoke=False)
            write_report(report, out, start)
    measure_auto_batches(report, presets, args, device, backend, out, start)
    report["expected_gpu_hours"] = expected_gpu_hours(report["presets"])
    print_hours(report["expected_gpu_hours"])
    write_report(report, out, start)
    print(f"wrote {out} ({report['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    run_script(main, __file__)
