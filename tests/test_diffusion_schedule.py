"""Beta schedules and the sigma -> timestep map (docs/design.md, section 5)."""


import numpy as np
import pytest
import torch
from reference_data import reference_path

from denoised_drs.diffusion.schedule import (
    alphas_cumprod,
    beta_schedule,
    max_supported_sigma,
    noise_to_signal,
    sigma_to_timestep,
)


def reference(name: str) -> dict:
    return torch.load(reference_path(name), map_location="cpu", weights_only=True)


COSINE_4000 = alphas_cumprod(beta_schedule("cosine", 4000))
LINEAR_1000 = alphas_cumprod(beta_schedule("linear", 1000))


@pytest.mark.parametrize(
    "file, abar",
    [("improved_small_reference.pt", COSINE_4000), ("guided_small_reference.pt", LINEAR_1000)],
)
def test_schedules_equal_the_training_code(file, abar):
    expected = reference(file)["alphas_cumprod"].numpy()
    assert abar.dtype == np.float64
    np.testing.assert_array_max_ulp(abar, expected, maxulp=4)


def test_linear_betas_scale_with_T():
    betas = beta_schedule("linear", 2000)
    assert betas.dtype == np.float64 and betas.shape == (2000,)
    assert betas[0] == pytest.approx(0.5e-4) and betas[-1] == pytest.approx(0.01)
    assert np.all(np.diff(betas) > 0)


def test_cosine_betas_are_clipped_and_follow_abar():
    betas = beta_schedule("cosine", 100)
    assert betas.max() == 0.999  # the last step would be 1 without the clip
    abar = alphas_cumprod(betas)
    s = np.arange(1, 100) / 100
    closed_form = (
        np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2 / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
    )
    np.testing.assert_allclose(abar[:-1], closed_form, rtol=1e-12)


@pytest.mark.parametrize(
    "abar, sigma, t",
    [
        (COSINE_4000, 0.25, 1158),
        (COSINE_4000, 0.5, 1984),
        (COSINE_4000, 1.0, 2809),
        (LINEAR_1000, 0.25, 145),
        (LINEAR_1000, 0.5, 259),
        (LINEAR_1000, 1.0, 396),
    ],
)
def test_sigma_to_timestep_reference_values(abar, sigma, t):
    assert sigma_to_timestep(abar, sigma) == t


def test_timestep_is_the_first_at_least_as_noisy():
    ratio = noise_to_signal(LINEAR_1000)
    for sigma in np.random.default_rng(0).uniform(0.01, 2.0, size=50):
        t = sigma_to_timestep(LINEAR_1000, sigma)
        assert ratio[t] >= 2 * sigma > ratio[t - 1]


def test_timestep_is_at_least_one():
    assert noise_to_signal(LINEAR_1000)[0] >= 2e-4  # t = 0 would qualify ...
    assert sigma_to_timestep(LINEAR_1000, 1e-4) == 1  # ... but t >= 1


@pytest.mark.parametrize("sigma", [0.0, -0.1, float("nan"), float("inf")])
def test_non_positive_sigma_is_rejected(sigma):
    with pytest.raises(ValueError, match="sigma must be positive"):
        sigma_to_timestep(LINEAR_1000, sigma)


def test_too_large_sigma_names_the_largest_supported():
    largest = max_supported_sigma(LINEAR_1000)
    assert sigma_to_timestep(LINEAR_1000, largest) == 999
    with pytest.raises(ValueError, match=f"largest supported sigma is {largest:.6g}"):
        sigma_to_timestep(LINEAR_1000, 1.01 * largest)


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="unknown beta schedule"):
        beta_schedule("quadratic", 1000)
    with pytest.raises(ValueError, match="positive integer"):
        beta_schedule("linear", 0)
    with pytest.raises(ValueError, match="betas must lie"):
        alphas_cumprod([0.1, 1.5])
