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

from denoised_drs.bounds import clopper_pearson_lower
from denoised_drs.modes import CertificateKind
from denoised_drs.partition import Checkerboard, checkerboard_split
from denoised_drs.smoothing import ABSTAIN, DualSmooth, Smooth, SmoothedClassifier
from denoised_drs.voters import NONFINITE_VOTE

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
    radii = [smooth.certify(x, 100, n, 0.001, 10_000, seed=1).radius
             for n in (1_000, 10_000, 100_000)]
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
    radii = [dual.certify(x, 100, n, 0.001, 10_000, seed=2).radius
             for n in (1_000, 10_000, 100_000)]
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
    dual = DualSmooth(linear_with_margin(half, 0.1, 0.5, 1), linear_with_margin(half, 0.2, 0.5, 2),
                      2, 0.5)
    certs = [dual.certify(x, 37, 250, 0.01, b, seed=9) for b in (3, 64, 250)]
    assert len({(c.top_class, c.counts_top) for c in certs}) == 1
    assert all(sum(dual.sample_counts(x, 250, b, seed=9)[j]) == 250
               for b in (3, 250) for j in (0, 1))


def test_predict_finds_the_class_and_abstains_at_a_tie():
    x = random_image(2)
    confident = Smooth(linear_with_margin(x, 2.0, 0.25, seed=1), 2, 0.25)
    assert confident.predict(x, 200, 0.001, 64) == 1
    # Margin 0: every vote is a fair coin, so a sound test abstains (almost always).
    tie = Smooth(linear_with_margin(x, 0.0, 0.25, seed=1), 2, 0.25)
    outcomes = [tie.predict(x, 400, 0.01, 400, seed=s) for s in range(20)]
    assert outcomes.count(ABSTAIN) >= 18
    left, right = checkerboard_split(x)
    dual = DualSmooth(linear_with_margin(left, 2.0, 0.25, 1),
                      linear_with_margin(right, -0.5, 0.25, 2), 2, 0.25)
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
    smoothed = SmoothedClassifier(MeanDenoiserVoter(), Checkerboard(), 2, (sigma, sigma),
                                  CertificateKind.COUPLED)
    cert = smoothed.certify(x, 100, 200_000, 0.001, 50_000)
    assert cert.prediction == 1
    assert cert.radius <= exact
    assert cert.radius > 0.95 * exact
    assert cert.radius_paper == pytest.approx(np.sqrt(2) * cert.radius)
    assert cert.radius_paper > exact  # the paper's radius over-states robustness here
    prediction, radius = cert
    assert (prediction, radius) == (cert.prediction, cert.radius)


# -- bad input: non-finite values, pixels outside [0, 1], train-mode modules ----------


class Logits(nn.Module):
    """Fixed logits for every sample; non-finite rows are counted as they are emitted."""

    def __init__(self, logits) -> None:
        super().__init__()
        self.logits = torch.tensor(logits, dtype=torch.float32)
        self.nonfinite_rows = 0

    def forward(self, z):
        out = self.logits.expand(z.shape[0], -1).clone()
        self.nonfinite_rows += int((~torch.isfinite(out).all(dim=1)).sum())
        return out


class NanWhenBright(nn.Module):
    """Class 1 wins, except that samples whose first noisy pixel exceeds 0.5 give NaN for
    class 0."""

    def __init__(self) -> None:
        super().__init__()
        self.nonfinite_rows = 0

    def forward(self, z):
        bright = z.flatten(1)[:, 0] > 0.5
        self.nonfinite_rows += int(bright.sum())
        out = torch.tensor([0.0, 1.0]).expand(z.shape[0], 2).clone()
        out[bright, 0] = float("nan")
        return out


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_pixels_are_refused(value):
    x = random_image(0)
    x[0, 3, 4] = value
    smooth = Smooth(linear_with_margin(random_image(0), 2.0, 0.25, seed=1), 2, 0.25)
    with pytest.raises(ValueError, match="non-finite"):
        smooth.certify(x, 10, 10, 0.01, 5)
    with pytest.raises(ValueError, match="non-finite"):
        smooth.predict(x, 10, 0.01, 5)


def test_images_that_are_not_floats_in_unit_range_are_refused():
    x = random_image(0)
    smooth = Smooth(linear_with_margin(x, 2.0, 0.25, seed=1), 2, 0.25)
    for bad in (x * 255, x - 0.5, (x * 255).to(torch.uint8), (x > 0.5).long()):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            smooth.certify(bad, 10, 10, 0.01, 5)
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            smooth.sample_counts(bad, 10, 5)
    with pytest.raises(TypeError, match="Tensor"):
        smooth.certify(x.numpy(), 10, 10, 0.01, 5)
    # The ends of the range and other float dtypes are fine.
    edges = x.clone()
    edges[0, 0, :2] = torch.tensor([0.0, 1.0])
    assert smooth.sample_counts(edges.double(), 10, 5).sum() == 10


def test_non_finite_logits_vote_for_no_class_and_count_against_the_top_class():
    x = random_image(4)
    f = NanWhenBright()
    smooth = Smooth(f, 2, 0.25)
    cert = smooth.certify(x, 50, 400, 0.01, 64, seed=3)
    assert cert.top_class == 1
    assert 0 < cert.nonfinite == f.nonfinite_rows < 450
    f.nonfinite_rows = 0
    counts = smooth.sample_counts(x, 400, 64, seed=3)
    # The sample_counts convention: num - counts.sum(axis=1) is the non-finite count.
    assert counts.shape == (1, 2) and counts[0, 0] == 0
    assert 400 - counts.sum(axis=1)[0] == f.nonfinite_rows > 0
    assert cert.counts_top == (counts[0, 1],)
    assert cert.p_lower[0] == clopper_pearson_lower(counts[0, 1], 400, 0.01)


def test_abstain_has_cohens_name():
    # Code written against Cohen's core.py compares predictions with Smooth.ABSTAIN.
    assert Smooth.ABSTAIN == DualSmooth.ABSTAIN == SmoothedClassifier.ABSTAIN == ABSTAIN == -1


def test_all_non_finite_logits_abstain_instead_of_certifying_the_nan():
    x = random_image(5)
    # argmax picks the NaN (or the +inf), so this was certified as class 1 (or 0).
    for logits in ([0.0, float("nan")], [float("nan"), float("nan")], [float("inf"), 0.0]):
        smooth = Smooth(Logits(logits), 2, 0.25)
        cert = smooth.certify(x, 20, 200, 0.01, 64)
        assert cert.abstained and cert.radius == 0.0
        assert cert.counts_top == (0,) and cert.nonfinite == 220
        assert smooth.predict(x, 200, 0.01, 64) == ABSTAIN == smooth.ABSTAIN
    # One branch non-finite, the other always right: z_l = -inf, so DRS abstains.
    dual = DualSmooth(Logits([float("inf"), 0.0]), Logits([1.0, 0.0]), 2, 0.25)
    cert = dual.certify(x, 20, 200, 0.01, 64)
    assert cert.abstained and cert.counts_top == (0, 200) and cert.nonfinite == 220
    mixed = dual.sample_counts(x, 200, 64, mix_branches=True)
    assert mixed.shape == (1, 2) and mixed[0, 1] == 0 and 0 < mixed.sum() < 200


def test_predict_does_not_let_non_finite_votes_win():
    # Most samples give NaN for class 0 (argmax: 0); the finite ones all vote 1.
    x = torch.full(SHAPE, 0.55)
    smooth = Smooth(NanWhenBright(), 2, 0.25)
    counts = smooth.sample_counts(x, 300, 100, stage=2, mix_branches=True)
    assert counts[0, 0] == 0 and 30 < counts[0, 1] < 150
    assert smooth.predict(x, 300, 0.01, 100) == 1


class FixedVotes(nn.Module):
    """A voter returning ``make(batch_size)`` whatever the input."""

    needs_fresh_noise = False
    certificate = CertificateKind.INDEPENDENT

    def __init__(self, make) -> None:
        super().__init__()
        self.make = make

    def forward(self, noisy_parts, fresh_noise=None):
        return self.make(noisy_parts[0].shape[0])


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda n: torch.ones(n, 1, dtype=torch.long), ValueError, r"shape \(\d+, 1\).*\(\d+, 2\)"),
        (lambda n: torch.ones(n, dtype=torch.long), ValueError, "shape"),
        (lambda n: torch.ones(n, 2, 1, dtype=torch.long), ValueError, "shape"),
        (lambda n: torch.ones(n + 1, 2, dtype=torch.long), ValueError, "shape"),
        (lambda n: torch.ones(n, 2), ValueError, "integer"),
        (lambda n: torch.ones(n, 2, dtype=torch.bool), ValueError, "integer"),
        (lambda n: [[1, 1]] * n, TypeError, "tensor"),
        (lambda n: torch.full((n, 2), -2), ValueError, "num_classes"),
    ],
)
def test_malformed_voter_output_is_refused(make, error, message):
    smoothed = SmoothedClassifier(FixedVotes(make), Checkerboard(), 2, (0.25, 0.25))
    with pytest.raises(error, match=message):
        smoothed.certify(random_image(0), 10, 10, 0.01, 5)


def test_a_voter_may_return_the_non_finite_vote_itself():
    votes = FixedVotes(lambda n: torch.stack([torch.full((n,), NONFINITE_VOTE),
                                              torch.ones(n, dtype=torch.int32)], 1))
    counts = SmoothedClassifier(votes, Checkerboard(), 2,
                                (0.25, 0.25)).sample_counts(random_image(0), 30, 8)
    assert counts.tolist() == [[0, 0], [0, 30]]


def batch_norm_dropout_classifier() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
        nn.Flatten(), nn.Linear(4 * 64, 3),
    )
    # Non-trivial running statistics, so that eval mode differs from batch statistics.
    net[1].running_mean.uniform_(-0.2, 0.2)
    net[1].running_var.uniform_(0.5, 2.0)
    return net


def test_train_mode_modules_run_in_eval_mode_and_keep_their_state():
    x = random_image(6)
    net = batch_norm_dropout_classifier()
    reference = Smooth(batch_norm_dropout_classifier().eval(), 3, 0.25).sample_counts(
        x, 200, 200, seed=2)
    net.train()
    net[3].eval()  # a caller's mix of modes is restored module by module
    stats = {k: v.clone() for k, v in net.state_dict().items()}
    smooth = Smooth(net, 3, 0.25)
    for batch_size in (7, 64, 200):
        assert np.array_equal(smooth.sample_counts(x, 200, batch_size, seed=2), reference)
    smooth.certify(x, 10, 50, 0.01, 16)
    assert all(torch.equal(v, stats[k]) for k, v in net.state_dict().items())
    assert [m.training for m in net] == [True, True, True, False, True, True]
    assert net.training and smooth.voter.training


def test_modes_are_restored_when_the_voter_fails():
    class Fails(nn.Module):
        def forward(self, z):
            assert not self.training
            raise RuntimeError("boom")

    net = nn.Sequential(nn.BatchNorm2d(1), Fails()).train()
    with pytest.raises(ValueError, match="do not fit the models: boom"):
        Smooth(net, 2, 0.25).certify(random_image(0), 10, 10, 0.01, 5)
    assert net.training and net[0].training and net[1].training
