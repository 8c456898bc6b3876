"""Confidence bounds and radius formulas against scipy and closed-form oracles."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import beta, binom, norm

from denoised_drs.bounds import (
    LOG_SPACE_ALPHA,
    branch_alpha,
    clopper_pearson_lower,
    clopper_pearson_upper,
    coupled_radius,
    drs_abstains,
    drs_radius,
    rs_abstains,
    rs_radius,
)
from denoised_drs.modes import CertificateKind
from denoised_drs.partition import get_partition
from denoised_drs.results import BASE_COLUMNS, columns_for
from denoised_drs.scheme import Scheme, certified_radius, rule_for


@pytest.mark.parametrize("n", [1, 10, 100_000])
@pytest.mark.parametrize("alpha", [1e-12, 1e-3, 0.05])
def test_clopper_pearson_edges_match_scipy(n, alpha):
    assert clopper_pearson_lower(0, n, alpha) == 0.0
    # k = n has the closed form alpha ** (1 / n), strictly below one.
    top = clopper_pearson_lower(n, n, alpha)
    assert top == pytest.approx(alpha ** (1.0 / n), rel=1e-9)
    assert top < 1.0
    assert np.isfinite(rs_radius(top, 0.5))
    k = max(1, n // 3)
    assert clopper_pearson_lower(k, n, alpha) == pytest.approx(beta.ppf(alpha, k, n - k + 1),
                                                               rel=1e-12)


def test_clopper_pearson_is_vectorised_and_monotone():
    k = np.arange(0, 101)
    bounds = clopper_pearson_lower(k, 100, 0.001)
    assert bounds.shape == (101,)
    assert np.all(np.diff(bounds) > 0)
    assert np.all(bounds <= k / 100)
    uppers = clopper_pearson_upper(k, 100, 0.001)
    assert np.all(uppers >= k / 100)


def test_clopper_pearson_coverage_is_at_least_one_minus_alpha():
    # Exact coverage: sum the binomial probabilities of every k whose bound exceeds p.
    n, alpha = 200, 0.05
    ks = np.arange(n + 1)
    bounds = clopper_pearson_lower(ks, n, alpha)
    for p in np.linspace(0.01, 0.99, 41):
        failure = binom.pmf(ks[bounds > p], n, p).sum()
        assert failure <= alpha + 1e-12


@pytest.mark.parametrize(
    "k, n, alpha", [(-1, 10, 0.1), (11, 10, 0.1), (1, 0, 0.1), (1, 10, 0.0), (1, 10, 1.0),
                    (1.5, 10, 0.1)]
)
def test_clopper_pearson_rejects_impossible_input(k, n, alpha):
    with pytest.raises(ValueError):
        clopper_pearson_lower(k, n, alpha)


def test_radius_formulas_closed_form():
    p = norm.cdf(1.5)
    assert rs_radius(p, 0.25) == pytest.approx(0.375)
    assert drs_radius(p, p, 0.25) == pytest.approx(0.25 * 3.0 / np.sqrt(2))
    assert coupled_radius(p, p, 0.25) == pytest.approx(0.25 * 3.0 / 2)
    # General sigmas: (z_l + z_r) / sqrt(sigma_l^-2 + sigma_r^-2).
    assert drs_radius(p, norm.cdf(0.5), 0.25, 0.5) == pytest.approx(2.0 / np.sqrt(16 + 4))
    with pytest.raises(ValueError):
        rs_radius(0.9, 0.0)
    with pytest.raises(ValueError):
        drs_radius(0.9, 0.9, 0.25, -1.0)


def test_abstain_rules():
    assert rs_abstains(0.5) and not rs_abstains(0.51)
    assert drs_abstains(0.5, 0.5)
    assert drs_abstains(0.3, 0.7)
    assert not drs_abstains(0.3, 0.75)
    # One branch below 1/2 is fine as long as the sum of z's is positive.
    abstain, radius = certified_radius("independent", [0.3, 0.99], [0.25, 0.25])
    assert not abstain and radius > 0
    assert certified_radius("rs", [0.5], [0.25]) == (True, 0.0)
    assert certified_radius("coupled", [0.0, 0.999], [0.25, 0.25]) == (True, 0.0)
    with pytest.raises(ValueError):
        certified_radius("coupled", [0.9, 0.9], [0.25, 0.5])
    with pytest.raises(ValueError):
        certified_radius("rs", [0.9, 0.9], [0.25, 0.25])
    # Bounds a finite sample cannot give (1, NaN, outside [0, 1]) are refused rather
    # than turned into an infinite or NaN radius.
    for kind, bad in (("rs", [1.0]), ("rs", [float("nan")]), ("independent", [0.9, 1.0]),
                      ("coupled", [-0.1, 0.9]), ("independent", [float("nan"), 0.9])):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            certified_radius(kind, bad, [0.25] * len(bad))


def test_branch_alpha_is_bonferroni():
    assert branch_alpha(0.001, 2) == pytest.approx(0.0005)
    assert branch_alpha(0.001, 1) == 0.001


def test_two_pixel_counterexample_only_coupled_radius_is_sound():
    # docs/design.md, section 4: a "denoiser" that replaces both pixels by their mean, then
    # f_l = f_r = sign(pixel). Exact smoothed probabilities, so no sampling error.
    sigma = 0.25
    x_l, x_r = 0.3, 0.1
    p = norm.cdf((x_l + x_r) / (np.sqrt(2) * sigma))
    true_radius = (x_l + x_r) / np.sqrt(2)  # move both pixels by (x_l + x_r) / 2
    assert coupled_radius(p, p, sigma) == pytest.approx(true_radius)
    assert drs_radius(p, p, sigma) == pytest.approx(x_l + x_r)
    assert drs_radius(p, p, sigma) > true_radius


probabilities = st.floats(min_value=0.501, max_value=1 - 1e-9)
sigmas = st.floats(min_value=0.01, max_value=2.0)


@settings(max_examples=200, deadline=None)
@given(p_l=probabilities, p_r=probabilities, sigma=sigmas, sigma_r=sigmas)
def test_radius_properties(p_l, p_r, sigma, sigma_r):
    independent = drs_radius(p_l, p_r, sigma)
    # Equal sigmas: Eq. 13 is sqrt(2) times the mean of the two RS radii.
    assert independent == pytest.approx(
        (rs_radius(p_l, sigma) + rs_radius(p_r, sigma)) / np.sqrt(2))
    # The coupled radius is the independent one divided by sqrt(2): never larger.
    assert coupled_radius(p_l, p_r, sigma) == pytest.approx(independent / np.sqrt(2))
    # Larger bounds never shrink a radius.
    assert (drs_radius(min(p_l + 1e-4, 1 - 1e-12), p_r, sigma, sigma_r)
            >= drs_radius(p_l, p_r, sigma, sigma_r))
    # Two independent branches beat the better single branch at the harmonic sigma.
    harmonic = 1 / np.sqrt(sigma**-2 + sigma_r**-2)
    general = drs_radius(p_l, p_r, sigma, sigma_r)
    assert general > max(rs_radius(p_l, harmonic), rs_radius(p_r, harmonic))
    # Swapping the branches changes nothing; scaling both sigmas scales the radius.
    assert drs_radius(p_r, p_l, sigma_r, sigma) == pytest.approx(general)
    assert drs_radius(p_l, p_r, 2 * sigma, 2 * sigma_r) == pytest.approx(2 * general)


@pytest.mark.parametrize(
    "kind, radius, detail_columns",
    [
        (CertificateKind.RS, lambda p, s: rs_radius(p[0], s), ("pA", "count")),
        (CertificateKind.INDEPENDENT, lambda p, s: drs_radius(p[0], p[1], s),
         ("pA_l", "pA_r", "count_l", "count_r")),
        (CertificateKind.COUPLED, lambda p, s: coupled_radius(p[0], p[1], s),
         ("pA_l", "pA_r", "count_l", "count_r", "radius_paper")),
    ],
)
def test_each_certificate_kind_has_its_radius_and_result_columns(kind, radius, detail_columns):
    # The configuration and the result files name kinds by value; each kind must
    # apply its own radius and write one bound and count per branch it certifies.
    branches = 1 if kind is CertificateKind.RS else 2
    p_lower = (0.9, 0.8)[:branches]
    abstain, certified = certified_radius(kind.value, p_lower, [0.25] * branches)
    assert not abstain and certified == pytest.approx(radius(p_lower, 0.25))
    scheme = Scheme(get_partition("rs" if branches == 1 else "drs"), rule_for(kind.value),
                    [0.25] * branches)
    assert columns_for(scheme.columns()) == (*BASE_COLUMNS, *detail_columns, "nonfinite",
                                             "n_used")
    with pytest.raises(ValueError):
        rule_for("paper")


# Computed with mpmath at 50 digits: bisection on the regularised incomplete beta.
EXACT_99990_OF_100000_AT_1E_300 = 0.99260932391280371


@pytest.mark.parametrize(
    "k, n, alpha, exact",
    [
        (99990, 100_000, 1e-300, EXACT_99990_OF_100000_AT_1E_300),
        # k = n: alpha ** (1 / n). k = 2 and p tiny: P(X >= 2) = C(n, 2) p^2 (1 + O(n p)).
        (10, 10, 1e-300, 1e-30),
        (2, 10, 1e-200, np.sqrt(1e-200 / 45)),
        (5, 1_000_000, 1e-80, (1e-80 * 120 / np.prod(np.arange(999_996, 1_000_001.0))) ** 0.2),
    ],
)
def test_clopper_pearson_is_right_for_extreme_alpha(k, n, alpha, exact):
    # scipy's beta.ppf returns 0.99283 (too high: not a valid bound) for the first.
    bound = clopper_pearson_lower(k, n, alpha)
    assert bound <= exact
    assert bound == pytest.approx(exact, rel=2e-6)


def test_clopper_pearson_log_space_switch_is_seamless():
    alphas = np.geomspace(LOG_SPACE_ALPHA * 1e3, LOG_SPACE_ALPHA * 1e-3, 13)
    bounds = clopper_pearson_lower(7, 1000, alphas)
    assert np.all(np.diff(bounds) < 0)
    assert bounds[6] == pytest.approx(beta.ppf(LOG_SPACE_ALPHA, 7, 994), rel=1e-12)
    assert bounds[7] == pytest.approx(beta.ppf(alphas[7], 7, 994), rel=2e-6)
    assert np.all(bounds[7:] < beta.ppf(alphas[7:], 7, 994))
    # Broadcasting over mixed alphas gives the scalar results.
    mixed = clopper_pearson_lower([0, 3, 99990], [10, 10, 100_000], [1e-300, 1e-3, 1e-300])
    assert mixed.tolist() == [0.0, clopper_pearson_lower(3, 10, 1e-3),
                              clopper_pearson_lower(99990, 100_000, 1e-300)]


@pytest.mark.parametrize("bad", [float("nan"), -0.1, 1.5])
def test_radius_formulas_and_abstain_rules_refuse_impossible_probabilities(bad):
    # A NaN used to become a NaN radius, and rs_abstains(NaN) said "do not abstain".
    calls = [
        lambda: rs_radius(bad, 0.25),
        lambda: drs_radius(0.9, bad, 0.25),
        lambda: drs_radius(bad, 0.9, 0.25, 0.5),
        lambda: coupled_radius(bad, 0.9, 0.25),
        lambda: rs_abstains(bad),
        lambda: drs_abstains(0.9, bad),
        lambda: rs_radius(np.array([0.9, bad]), 0.25),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            call()
    assert rs_radius(1.0, 0.25) == np.inf and coupled_radius(0.0, 0.9, 0.25) == -np.inf
