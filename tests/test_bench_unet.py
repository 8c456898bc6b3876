"""benchmarks/bench_unet.py --ceiling: the matrix-work bound is computed from real profiles."""

import copy
from pathlib import Path

import pytest
import torch
from module_files import load_module

from denoised_drs.diffusion import OneShotDenoiser, get_preset

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_unet.py"


def load_bench():
    return load_module(SCRIPT, "bench_unet_ceiling")


def test_ceiling_bounds_throughput_by_the_matrix_work():
    bench = load_bench()
    torch.manual_seed(0)
    preset = get_preset("improved-small")
    network = preset.build_network()
    # One network each: the bf16 denoiser holds its weights in bf16.
    networks = {"ours_fp32": network,
                "ours_bf16": copy.deepcopy(network)}
    ours = {name: OneShotDenoiser(networks[name], preset.alphas_cumprod(), 0.5,
                                  timestep_scale=preset.timestep_scale, autocast_dtype=dtype)
            for name, dtype in (("ours_fp32", None), ("ours_bf16", torch.bfloat16))}
    x = torch.rand(2, 3, 32, 32)
    result = bench.ceiling(ours, x, repeats=1, theirs_cpu_seconds=1.0)
    # The flop counter sees every convolution: at least one 3x3 conv of the first layer.
    first = next(m for m in network.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv_flops = 2 * first.weight.numel() * 32 * 32
    assert result["gflop_per_sample"] * 1e9 > first_conv_flops
    for name in ours:
        entry = result[name]
        assert entry["matrix_ms_per_sample"] > 0 and entry["other_ms_per_sample"] > 0
        # Throughput if only the matrix work ran: exactly samples / matrix seconds.
        assert entry["ceiling_samples_per_s"] * entry["matrix_ms_per_sample"] / 1e3 == \
            pytest.approx(1.0)
        assert entry["ceiling_ratio_vs_theirs_fp32"] == \
            pytest.approx(entry["ceiling_samples_per_s"] * 1.0 / 2)
