"""The sampling engine against closed-form oracles: linear base classifiers.

For f(x) = [w.x + b > 0], the smoothed probability of class 1 is
Phi(margin / (sigma ||w||)) with margin = w.x + b, and the exact minimal l2
perturbation that flips g is margin / ||w|| for RS and
(m_l/||w_l|| + m_r/||w_r||) / sqrt(2) for DRS with one linear classifier per branch.
A certified radius must never exceed these, and must approach them as n grows.
"""

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from denoised_drs.certify import CertificateKind, clopper_pearson_lower
from denoised_drs.partition import Checkerboard, checkerboard_split
from denoised_drs.smoothing import ABSTAIN, DualSmooth, Smooth, SmoothedClassifier

SHAPE = (1, 8, 8)


class Linear(nn.Module):
    """Two-class linear classifier on the flattened input: class 1 iff w.x + b > 0."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.flatten().clone(), requires_grad=False)
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(score), score], dim=1)

    def margin(self, x: torch.Tensor) -> float:
        return float(x.flatten() @ self.w + self.b)


def linear_with_margin(x: torch.Tensor, target_z: float, sigma: float, seed: int) -> Linear:
    """A random direction w, with b set so the smoothed z-score at x is target_z."""
    w = torch.randn(x.numel(), generator=torch.Generator().manual_seed(seed))
    b = target_z * sigma * float(w.norm()) - float(x.flatten() @ w)
    return Linear(w, b)


def random_image(seed: int, shape=SHAPE) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("trial", range(12))
def test_rs_radius_never_exceeds_exact_distance(trial):
    sigma = 0.25
    x = random_image(trial)
    f = linear_with_margin(x, target_z=0.2 + 0.25 * trial, sigma=sigma, seed=100 + trial)
    true_radius = f.margin(x) / float(f.w.norm())
    cert = Smooth(f, 2, sigma).certify(x, 50, 2000, 0.01, 500, seed=trial)
    assert cert.prediction in (1, ABSTAIN)
    assert cert.radius <= true_radius
    if cert.prediction == ABSTAIN:
        assert cert.radius == 0.0


def test_rs_radius_approaches_exact_distance_as_n_grows():
    sigma = 0.5
    x = random_image(7)
    f = linear_with_margin(x, target_z=1.0, sigma=sigma, seed=3)
    true_radius = f.margin(x) / float(f.w.norm())
    smooth = Smooth(f, 2, sigma)
    radii = [smooth.certify(x, 100, n, 0.001, 10_000, seed=1).radius for n in (1_000, 10_000, 100_000)]
    assert radii[0] < radii[1] < radii[2] <= true_radius
    assert radii[2] > 0.97 * true_radius


def two_branch_oracle(x, z_l, z_r, sigma, sigma_r, seed):
    x_l, x_r = checkerboard_split(x)
    f_l = linear_with_margin(x_l, z_l, sigma, seed)
    f_r = linear_with_margin(x_r, z_r, sigma_r, seed + 1)
    distance_l = f_l.margin(x_l) / float(f_l.w.norm())
    distance_r = f_r.margin(x_r) / float(f_r.w.norm())
    # Flip iff a/sigma + b/sigma_r >= z_l + z_r for a = ||delta_l||, b = ||delta_r||.
    exact = (distance_l / sigma + distance_r / sigma_r) / np.sqrt(sigma**-2 + sigma_r**-2)
    return f_l, f_r, exact


@pytest.mark.parametrize("trial", range(12))
def test_drs_radius_never_exceeds_exact_distance(trial):
    sigma = 0.25
    sigma_r = sigma if trial % 2 else 0.4
    x = random_image(50 + trial)
    rng = np.random.default_rng(trial)
    z_l, z_r = rng.uniform(-0.3, 2.0, size=2)
    f_l, f_r, exact = two_branch_oracle(x, z_l, z_r, sigma, sigma_r, seed=200 + 2 * trial)
    if trial % 2:
        assert exact == pytest.approx(
            (f_l.margin(checkerboard_split(x)[0]) / float(f_l.w.norm())
             + f_r.margin(checkerboard_split(x)[1]) / float(f_r.w.norm())) / np.sqrt(2)
        )
    cert = DualSmooth(f_l, f_r, 2, sigma, sigma_r).certify(x, 50, 2000, 0.01, 700, seed=trial)
    assert cert.prediction in (1, ABSTAIN)
    assert cert.radius <= exact


def test_drs_radius_approaches_exact_distance_as_n_grows():
    sigma = 0.25
    x = random_image(11)
    f_l, f_r, exact = two_branch_oracle(x, 1.2, 0.4, sigma, sigma, seed=5)
    dual = DualSmooth(f_l, f_r, 2, sigma)
    radii = [dual.certify(x, 100, n, 0.001, 10_000, seed=2).radius for n in (1_000, 10_000, 100_000)]
    assert radii[0] < radii[1] < radii[2] <= exact
    assert radii[2] > 0.95 * exact


def test_drs_bounds_use_half_alpha_each():
    x = random_image(1)
    f = linear_with_margin(checkerboard_split(x)[0], 6.0, 0.25, seed=9)
    g = linear_with_margin(checkerboard_split(x)[1], 6.0, 0.25, seed=10)
    cert = DualSmooth(f, g, 2, 0.25).certify(x, 10, 500, 0.002, 100)
    assert cert.counts_top == (500, 500)
    expected = clopper_pearson_lower(500, 500, 0.001)
    assert cert.p_lower == pytest.approx((expected, expected), rel=1e-12)
    assert cert.radius == pytest.approx(0.25 * 2 * norm.ppf(expected) / np.sqrt(2))


def test_counts_do_not_depend_on_batch_size():
    x = random_image(3)
    f = linear_with_margin(x, 0.3, 0.5, seed=4)
    smooth = Smooth(f, 2, 0.5)
    reference = smooth.sample_counts(x, 333, batch_size=333, seed=(5, 17))
    for batch_size in (1, 7, 64, 100, 1000):
        assert np.array_equal(smooth.sample_counts(x, 333, batch_size, seed=(5, 17)), reference)
    assert reference.sum() == 333
    # Another image index gives other noise.
    assert not np.array_equal(smooth.sample_counts(x, 333, 333, seed=(5, 18)), reference)

    half = checkerboard_split(x)[0]
    dual = DualSmooth(linear_with_margin(half, 0.1, 0.5, 1), linear_with_margin(half, 0.2, 0.5, 2), 2, 0.5)
    certs = [dual.certify(x, 37, 250, 0.01, b, seed=9) for b in (3, 64, 250)]
    assert len({(c.top_class, c.counts_top) for c in certs}) == 1
    assert all(sum(dual.sample_counts(x, 250, b, seed=9)[j]) == 250 for b in (3, 250) for j in (0, 1))


def test_predict_finds_the_class_and_abstains_at_a_tie():
    x = random_image(2)
    confident = Smooth(linear_with_margin(x, 2.0, 0.25, seed=1), 2, 0.25)
    assert confident.predict(x, 200, 0.001, 64) == 1
    # Margin 0: every vote is a fair coin, so a sound test abstains (almost always).
    tie = Smooth(linear_with_margin(x, 0.0, 0.25, seed=1), 2, 0.25)
    outcomes = [tie.predict(x, 400, 0.01, 400, seed=s) for s in range(20)]
    assert outcomes.count(ABSTAIN) >= 18
    left, right = checkerboard_split(x)
    dual = DualSmooth(linear_with_margin(left, 2.0, 0.25, 1), linear_with_margin(right, -0.5, 0.25, 2), 2, 0.25)
    assert dual.predict(x, 500, 0.001, 100) == 1


def test_bad_class_indices_and_settings_are_rejected():
    x = random_image(0)

    class TooMany(nn.Module):
        def forward(self, z):
            return torch.zeros(z.shape[0], 5).index_fill_(1, torch.tensor([4]), 1.0)

    with pytest.raises(ValueError, match="num_classes"):
        Smooth(TooMany(), 2, 0.25).certify(x, 10, 10, 0.01, 5)
    smooth = Smooth(linear_with_margin(x, 1.0, 0.25, 0), 2, 0.25)
    for kwargs in ({"alpha": 0.0}, {"alpha": 1.0}, {"n": 0}, {"batch_size": 0}):
        args = {"n0": 10, "n": 10, "alpha": 0.01, "batch_size": 5} | kwargs
        with pytest.raises(ValueError):
            smooth.certify(x, **args)
    with pytest.raises(ValueError, match="sigma"):
        Smooth(TooMany(), 2, 0.0)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        smooth.certify(x[0], 10, 10, 0.01, 5)
    with pytest.raises(ValueError, match="even"):
        DualSmooth(TooMany(), TooMany(), 5, 0.25).certify(torch.rand(1, 5, 4), 10, 10, 0.01, 5)


def test_an_out_of_range_vote_of_one_branch_is_not_counted_for_the_other():
    # Votes are counted in one flat bincount with a row per branch: class
    # num_classes of branch l would be class 0 of branch r. Branch r always votes
    # 0, so a silent spill would raise its count above n and fake a certificate.
    x = random_image(0)

    class ThreeLogits(nn.Module):
        def forward(self, z):
            return torch.zeros(z.shape[0], 3).index_fill_(1, torch.tensor([2]), 1.0)

    class AlwaysZero(nn.Module):
        def forward(self, z):
            return torch.zeros(z.shape[0], 2).index_fill_(1, torch.tensor([0]), 1.0)

    dual = DualSmooth(ThreeLogits(), AlwaysZero(), 2, 0.25)
    with pytest.raises(ValueError, match="num_classes"):
        dual.certify(x, 10, 100, 0.01, 32)
    with pytest.raises(ValueError, match="num_classes"):
        dual.predict(x, 100, 0.01, 32)


class MeanDenoiserVoter(nn.Module):
    """docs/design.md's counterexample (section 4): every pixel -> the image mean, f_j = sign."""

    needs_fresh_noise = False

    def forward(self, noisy_parts, fresh_noise=None):
        merged = Checkerboard().merge(noisy_parts)
        mean = merged.flatten(1).mean(dim=1)
        vote = (mean > 0).long()
        return torch.stack([vote, vote], dim=1)


def test_coupled_certificate_is_sound_where_the_paper_radius_is_not():
    sigma = 0.25
    x = torch.full((1, 2, 2), 0.1)
    # Shifting all 4 pixels by -0.1 flips the mean: the exact radius is ||(0.1,)*4|| = 0.2.
    exact = 0.2
    smoothed = SmoothedClassifier(MeanDenoiserVoter(), Checkerboard(), 2, (sigma, sigma), CertificateKind.COUPLED)
    cert = smoothed.certify(x, 100, 200_000, 0.001, 50_000)
    assert cert.prediction == 1
    assert cert.radius <= exact
    assert cert.radius > 0.95 * exact
    assert cert.radius_paper == pytest.approx(np.sqrt(2) * cert.radius)
    assert cert.radius_paper > exact  # the paper's radius over-states robustness here
    prediction, radius = cert
    assert (prediction, radius) == (cert.prediction, cert.radius)
