"""kway_radius: closed forms at k <= 2, the DESIGN.md table, attacks, linear oracles and
Monte Carlo coverage, floating point, bad input."""

from pathlib import Path

import numpy as np
import pytest
from module_files import load_module
from scipy.optimize import brentq, minimize
from scipy.special import ndtr, ndtri

from denoised_drs import bounds
from denoised_drs.bounds import (
    branch_alpha,
    clopper_pearson_lower,
    coupled_radius,
    drs_radius,
    kway_radius,
    rs_radius,
)

BENCH = load_module(Path(__file__).resolve().parents[1] / "benchmarks" / "bench_kway.py",
                    "bench_kway_for_tests")


def saddle(z, sigma):
    """The seed paper's Eq. 30 value, sigma * sum z / sqrt(k): not a lower bound."""
    return sigma * np.sum(z) / np.sqrt(len(z))


def test_k1_is_rs_and_k2_is_the_closed_form():
    rng = np.random.default_rng(0)
    for _ in range(200):
        p, sigma = rng.uniform(0.5, 1.0), rng.uniform(0.05, 2.0)
        assert kway_radius([p], [sigma]) == (rs_radius(p, sigma) if p > 0.5 else 0.0)
        p2 = rng.uniform(0.2, 1.0, 2)
        s2 = rng.uniform(0.05, 2.0, 2)
        z = ndtri(p2)
        radius = kway_radius(p2, s2)
        coupled = kway_radius(p2, [s2[0], s2[0]], coupled=True)
        if z.sum() > 0:
            assert radius == drs_radius(p2[0], p2[1], s2[0], s2[1])
            assert radius == pytest.approx((z[0] + z[1]) / np.sqrt(s2[0] ** -2 + s2[1] ** -2),
                                           rel=1e-12)
            assert coupled == coupled_radius(p2[0], p2[1], s2[0])
        else:
            assert radius == coupled == 0.0
    assert kway_radius([0.5], [1.0]) == 0.0
    assert kway_radius([0.3, 0.7], [1.0, 2.0]) == 0.0


def test_the_dynamic_programme_and_the_bisection_agree_with_the_k2_closed_forms():
    # The k >= 3 machinery run at k = 2 must stay below the closed forms, and close.
    rng = np.random.default_rng(1)
    for _ in range(30):
        p = rng.uniform(0.55, 0.9999, 2)
        sigmas = rng.uniform(0.1, 1.0, 2)
        closed = drs_radius(p[0], p[1], sigmas[0], sigmas[1])
        programme = bounds._independent_kway(p, sigmas)
        assert closed * 0.995 <= programme <= closed
        bisection = bounds._coupled_kway(p, np.full(2, sigmas[0]))
        exact = coupled_radius(p[0], p[1], sigmas[0])
        assert exact * (1 - 1e-10) <= bisection <= exact


def test_coupled_radius_is_the_root_rounded_down():
    rng = np.random.default_rng(2)
    for _ in range(30):
        k = int(rng.integers(2, 9))
        p = rng.uniform(0.3, 0.9999, k)
        sigmas = rng.uniform(0.1, 1.0, k)
        radius = kway_radius(p, sigmas, coupled=True)
        z = ndtri(p)
        if p.sum() <= k / 2:
            assert radius == 0.0
            continue
        root = brentq(lambda r, z=z, s=sigmas, k=k: ndtr(z - r / s).sum() - k / 2, 0, 100,
                      xtol=1e-14)
        assert root - 1e-9 * (root + sigmas.max()) <= radius <= root * (1 + 1e-12)
        assert ndtr(z - radius / sigmas).sum() > k / 2  # still keeps the class
        # Coupled branches move together, so their radius is at most the independent one.
        assert radius <= kway_radius(p, sigmas) * (1 + 1e-12)


# DESIGN.md section 9 (sigma = 1): the attack found there, and the sound bound it lists,
# which ours must match or beat; in the first two rows the paper's value is no bound.
@pytest.mark.parametrize("z, attack_norm, design_bound, saddle_fails", [
    ((3.5, 3.5, 3.5), 5.903, 5.88, True),
    ((3.5, 2.0, 0.5), 2.837, 2.830, True),
    ((3.7, 3.7, 3.7, 3.7), 7.155, 7.148, False),
    ((2.0, 2.0, 2.0, 2.0), 4.000, 3.995, False),
])
def test_design_table(z, attack_norm, design_bound, saddle_fails):
    p = ndtr(np.array(z))
    sigmas = np.ones(len(z))
    radius = kway_radius(p, sigmas)
    assert design_bound <= radius <= attack_norm
    best, feasible = BENCH.best_attack(p, sigmas, starts=4, rng=np.random.default_rng(3))
    assert best <= attack_norm + 5e-4
    assert radius <= min(feasible)
    if saddle_fails:
        assert saddle(ndtri(p), 1.0) > best + 0.1


def test_first_row_attack_by_hand():
    # One branch left alone, two pushed to p' = 1/4: norm 2^0.5 (3.5 + 0.6745) = 5.9036.
    p = ndtr(np.full(3, 3.5))
    d = np.array([0.0, 1.0, 1.0]) * (3.5 - ndtri(0.25))
    assert ndtr(ndtri(p) - d).sum() < 1.5
    assert kway_radius(p, np.ones(3)) <= np.linalg.norm(d) < saddle(np.full(3, 3.5), 1.0)


def test_never_above_a_local_attack_on_1000_random_vectors():
    rng = np.random.default_rng(4)
    vectors = BENCH.draw_vectors(1000, -1.0, 4.0, rng)
    gaps, attacked = [], 0
    for p, sigmas in vectors:
        # Starts: one random, one at the optimum of a 100-cell grid; both polished by SLSQP.
        best, feasible = BENCH.best_attack(p, sigmas, starts=1, rng=rng, grid_cells=100,
                                           max_iter=50)
        radius = kway_radius(p, sigmas)
        assert 0.0 < radius, (p, sigmas)
        for norm in feasible:  # each was checked to flip the vote with a margin
            assert radius <= norm, (p, sigmas, radius, norm)
        if feasible:
            attacked += 1
            gaps.append(1 - radius / best)
    # The attacks are good enough for the comparison to bite: the bound sits just below.
    assert attacked >= 990
    assert np.median(gaps) < 0.005 and max(gaps) < 0.05


def test_the_paper_saddle_value_fails_the_same_comparison():
    # The comparison has teeth: with one sigma per vector (the paper's setting) and
    # unequal branches, the Eq. 30 value exceeds an attack found the same way.
    rng = np.random.default_rng(5)
    above = 0
    for p, sigmas in BENCH.draw_vectors(40, 0.0, 4.0, rng):
        sigmas = np.full(len(p), sigmas[0])
        best, _ = BENCH.best_attack(p, sigmas, starts=0, rng=rng, grid_cells=100)
        above += saddle(ndtri(p), sigmas[0]) > best
        assert kway_radius(p, sigmas) <= best
    assert above >= 20


class LinearBranches:
    """k linear branch classifiers on disjoint sub-images: class A where w_j . x_j + b_j > 0.

    Under N(0, sigma_j^2 I) noise branch j votes A with probability
    Phi((w_j . x_j + b_j) / (sigma_j ||w_j||)), and a perturbation of norm d_j lowers that
    to at least Phi(z_j - d_j / sigma_j), with equality along -w_j: the radius problem
    holds exactly, with z_j = margin_j / (sigma_j ||w_j||).
    """

    def __init__(self, margins, sigmas, dims, rng):
        self.sigmas = np.asarray(sigmas, dtype=np.float64)
        self.w = [rng.normal(size=d) for d in dims]
        self.x = [rng.normal(size=d) for d in dims]
        self.b = [m * np.linalg.norm(w) - w @ x for m, w, x in zip(margins, self.w, self.x)]

    def probabilities(self):
        return np.array([ndtr((w @ x + b) / (s * np.linalg.norm(w)))
                         for w, x, b, s in zip(self.w, self.x, self.b, self.sigmas)])

    def sampled_votes(self, n, rng):
        """Votes for A among n noisy copies of each branch's own sub-image."""
        return np.array([
            int((((x + s * rng.normal(size=(n, len(x)))) @ w + b) > 0).sum())
            for w, x, b, s in zip(self.w, self.x, self.b, self.sigmas)])

    def true_radius(self):
        """Smallest ||d|| that flips the vote with exact probabilities: a 2-D grid over
        (d_1, d_2) with d_3 solved exactly, then a local polish (an upper bound on the
        minimum that is feasible, as close as the search gets)."""
        z, s = ndtri(self.probabilities()), self.sigmas

        def third(d12):
            rest = 1.5 - ndtr(z[0] - d12[..., 0] / s[0]) - ndtr(z[1] - d12[..., 1] / s[1])
            with np.errstate(divide="ignore", invalid="ignore"):
                d3 = s[2] * np.maximum(z[2] - ndtri(np.minimum(rest, 1.0)), 0.0)
            return np.where(rest > 0, d3, np.inf)

        def norm(d12):
            return np.sqrt(d12[..., 0] ** 2 + d12[..., 1] ** 2 + third(d12) ** 2)

        axis = [np.linspace(0, s[j] * (z[j] + 6), 301) for j in range(2)]
        grid = np.stack(np.meshgrid(*axis, indexing="ij"), axis=-1)
        start = grid.reshape(-1, 2)[np.argmin(norm(grid))]
        polished = minimize(lambda d: float(norm(np.maximum(d, 0))), start,
                            method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12})
        d12 = np.maximum(polished.x, 0) if polished.fun < norm(start) else start
        d = np.array([d12[0], d12[1], third(d12)]) * (1 + 1e-9)
        assert ndtr(z - d / s).sum() < 1.5  # feasible: an actual flip
        return float(np.linalg.norm(d))


def test_linear_oracle_exact_probabilities():
    rng = np.random.default_rng(6)
    for margins, sigmas in [((1.0, 0.6, 0.1), (0.4, 0.25, 0.5)),
                            ((0.9, 0.9, 0.9), (0.25, 0.25, 0.25)),
                            ((2.0, 0.3, -0.05), (0.5, 0.12, 0.3))]:
        oracle = LinearBranches(margins, sigmas, (6, 9, 4), rng)
        p = oracle.probabilities()
        assert p == pytest.approx(ndtr(np.array(margins) / np.array(sigmas)), rel=1e-12)
        truth = oracle.true_radius()
        radius = kway_radius(p, sigmas)
        assert 0.99 * truth <= radius <= truth


def test_linear_oracle_smoothed_probability_matches_sampling():
    rng = np.random.default_rng(7)
    oracle = LinearBranches((0.5, 0.2, -0.1), (0.5, 0.3, 0.4), (5, 7, 3), rng)
    n = 40_000
    votes = oracle.sampled_votes(n, rng)
    p = oracle.probabilities()
    assert np.all(np.abs(votes / n - p) < 4 * np.sqrt(p * (1 - p) / n))


def test_monte_carlo_coverage_at_a_known_true_radius():
    # Certify from sampled counts with each branch bound at alpha / k; the radius may
    # exceed the true one only when some bound exceeds its probability (rate <= alpha).
    rng = np.random.default_rng(8)
    margins, sigmas = (0.9, 0.6, 0.35), (0.4, 0.5, 0.5)
    oracle = LinearBranches(margins, sigmas, (6, 9, 4), rng)
    p, truth = oracle.probabilities(), oracle.true_radius()
    alpha, trials, n, k = 0.1, 600, 10_000, 3
    counts = rng.binomial(n, p, size=(trials, k))
    lower = clopper_pearson_lower(counts, n, branch_alpha(alpha, k))
    radii = np.array([kway_radius(row, sigmas) for row in lower])
    limit = alpha + 3 * np.sqrt(alpha * (1 - alpha) / trials)
    assert np.mean(radii > truth) <= limit
    # Not vacuous: the certified radii sit close to the truth, so over-stating them by
    # 3 percent would be caught.
    assert np.median(radii) > 0.95 * truth
    assert np.mean(1.03 * radii > truth) > limit


def test_ppf_bounds_bracket_the_exact_quantile():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    rng = np.random.default_rng(9)
    p = np.concatenate([rng.uniform(0, 1, 60), 1 - 10.0 ** rng.uniform(-16, -1, 60),
                        10.0 ** rng.uniform(-300, -1, 30)])
    delta = p * rng.uniform(0, 1, len(p)) * (rng.random(len(p)) < 0.8)
    lo, hi = bounds._ppf_bounds(p, delta)
    for pj, dj, a, b in zip(p, delta, lo, hi):
        q = mpmath.mpf(float(pj)) - mpmath.mpf(float(dj))  # exact: both are floats
        if q <= 0:
            continue
        exact = mpmath.findroot(lambda x, q=q: mpmath.ncdf(x) - q, float(ndtri(float(q))))
        assert a <= exact <= b
        assert b - a <= 1e-10 * (1 + abs(float(exact)))


def test_floating_point_edges():
    # p = 1 reads as the largest float below 1: finite, and no larger than any attack.
    top = kway_radius([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    assert np.isfinite(top) and top == kway_radius([np.nextafter(1.0, 0.0)] * 3, [1.0] * 3)
    assert kway_radius([1.0], [0.5]) == rs_radius(np.nextafter(1.0, 0.0), 0.5)
    # A branch at p = 0 is never moved; sums at or just above k / 2 give 0.
    assert kway_radius([0.0, 1.0, 1.0], [1.0, 1.0, 1.0]) > 0
    assert kway_radius([0.5, 0.5, 0.5], [1.0, 1.0, 1.0]) == 0.0
    assert kway_radius([0.5, 0.5, 0.5 + 2e-16], [1.0] * 3) == 0.0
    # Scale: sigma multiplies every distance.
    p = ndtr(np.array([2.0, 1.0, 0.3, 1.5]))
    base = kway_radius(p, [0.2, 0.4, 0.3, 0.5])
    for scale in (1e-6, 1e6):
        scaled = kway_radius(p, np.array([0.2, 0.4, 0.3, 0.5]) * scale)
        assert scaled == pytest.approx(base * scale, rel=1e-9)
    # Raising a bound never lowers the radius (spot check).
    assert kway_radius(ndtr([2.0, 1.1, 0.3, 1.5]), [0.2, 0.4, 0.3, 0.5]) >= base


@pytest.mark.parametrize("p, sigmas", [
    ([0.9, 0.9], [1.0]),
    ([0.9], [1.0, 1.0]),
    ([], []),
    ([[0.9, 0.9]], [[1.0, 1.0]]),
    ([0.9, 1.1, 0.9], [1.0, 1.0, 1.0]),
    ([0.9, -0.1, 0.9], [1.0, 1.0, 1.0]),
    ([0.9, np.nan, 0.9], [1.0, 1.0, 1.0]),
    ([0.9, 0.9, 0.9], [1.0, 0.0, 1.0]),
    ([0.9, 0.9, 0.9], [1.0, -1.0, 1.0]),
    ([0.9, 0.9, 0.9], [1.0, np.inf, 1.0]),
    ([0.9, 0.9, 0.9], [1.0, np.nan, 1.0]),
])
@pytest.mark.parametrize("coupled", [False, True])
def test_bad_input(p, sigmas, coupled):
    with pytest.raises(ValueError) as error:
        kway_radius(p, sigmas, coupled=coupled)
    assert "\n" not in str(error.value)
