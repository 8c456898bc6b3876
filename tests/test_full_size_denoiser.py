"""The full-size CIFAR-10 50M denoiser (52,546,438 parameters) against the original code.

A random-weight file in the official ``cifar10_uncond_50M_500K.pt`` format is rebuilt
from the key manifest with the seeded recipe of ``tests/data/README.md``, saved with
``torch.save`` like the official file, loaded through the ``cifar10-uncond-50M`` preset
as the pipeline loads the download, and must denoise as improved-diffusion did
(``cifar10_50M_full_reference.pt``). The small references cannot catch a bug that only
the real sizes reach (channel counts, head splits, the 4000-step schedule at these
timesteps).
"""

import json
from pathlib import Path

import pytest
import torch
from module_files import load_module
from reference_data import reference_path

from denoised_drs.diffusion import OneShotDenoiser, load_denoiser_network

# tests/data/README.md: an exact implementation matches to about 3e-6 in float32 on the
# CPU; 1e-4 leaves room for other CPUs' summation orders, yet catches any wrong weight.
TOLERANCE = 1e-4
BENCH_UNET = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_unet.py"


def seeded_state_dict(manifest_path: Path) -> dict[str, torch.Tensor]:
    """Every key of the manifest with the reference's seeded weights: the recipe that
    ``benchmarks/bench_unet.py`` times, so this test also checks the benchmark's weights."""
    return load_module(BENCH_UNET, "bench_unet").reference_weights(manifest_path)[0]


@pytest.fixture(scope="module")
def official_format_file(tmp_path_factory):
    manifest_path = reference_path("cifar10_uncond_50M_500K.keys.json")
    manifest = json.loads(manifest_path.read_text())
    state_dict = seeded_state_dict(manifest_path)
    assert sum(w.numel() for w in state_dict.values()) == manifest["num_parameters"]
    path = tmp_path_factory.mktemp("official") / "cifar10_uncond_50M_500K.pt"
    torch.save(state_dict, path)
    return path


def test_full_size_50M_denoises_as_the_original_code(official_format_file):
    reference = torch.load(
        reference_path("cifar10_50M_full_reference.pt"), map_location="cpu", weights_only=True
    )
    # Loaded once, as the pipeline does, then wrapped per sigma.
    loaded = load_denoiser_network("cifar10-uncond-50M", official_format_file)
    for sigma, t, x_noisy, expected in zip(
        reference["sigmas"], reference["t"], reference["x_noisy"], reference["denoised"]
    ):
        denoiser = OneShotDenoiser(
            loaded.network,
            loaded.alphas_cumprod,
            sigma,
            timestep_scale=loaded.timestep_scale,
            prediction_type=loaded.prediction_type,
        )
        assert denoiser.timestep == t, f"sigma {sigma}"
        denoised = denoiser(x_noisy)
        error = (denoised - expected).abs().max().item()
        assert error < TOLERANCE, f"sigma {sigma}: max |difference| {error:.2e}"
