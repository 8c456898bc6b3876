"""Confidence bounds, certified radii and abstain rules: pure, vectorised functions.

Notation follows the papers: ``p_lower`` is a one-sided lower confidence bound on
the probability of the top class, ``z = Phi^-1(p_lower)``, ``sigma`` the noise level
in [0, 1] pixel units, ``alpha`` the probability that the whole certificate is wrong.

Which radius is sound (docs/design.md, section 4 explains why):

* RS (Cohen et al. 2019): ``sigma * z_A``; abstain when ``pA_lower <= 1/2``.
* DRS with independent branches (each base classifier sees only its own noisy
  sub-image; Xia et al. 2024, Eq. 13): ``(z_l + z_r) / sqrt(sigma_l^-2 + sigma_r^-2)``;
  abstain when ``z_l + z_r <= 0``.
* DRS with coupled branches (each branch a function of the whole noisy image, e.g.
  after joint denoising): ``sigma * (z_l + z_r) / 2``; same abstain rule.

In DRS two bounds hold simultaneously, so each must be computed at ``alpha / 2``
(Bonferroni); :func:`branch_alpha` does the split.

Every function refuses (ValueError) probabilities that are NaN or outside [0, 1],
so a NaN can never become a radius or a decision not to abstain.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import brentq
from scipy.special import betaln, logsumexp, xlog1py, xlogy
from scipy.stats import beta, norm

from denoised_drs.modes import CertificateKind

# The largest float below 1: a lower bound from finitely many samples is never 1,
# and clipping here keeps Phi^-1 finite even where floating point would round up.
_BELOW_ONE = np.nextafter(1.0, 0.0)

LOG_SPACE_ALPHA = 1e-50
"""Below this alpha, Clopper-Pearson bounds are solved in log space (see
:func:`clopper_pearson_lower`): scipy's ``beta.ppf`` returns wrong values, silently,
for alpha below about 1e-80 (k = 5, n = 10^6) or 1e-289 (k = 99990, n = 10^5)."""
_LOG_SPACE_MARGIN = 1e-6
"""Relative amount a log-space bound is lowered by, far above its numerical error
(about 1e-9, from ``betaln``), so that it stays a valid lower bound."""


def _scalar_or_array(value: np.ndarray) -> float | np.ndarray:
    return float(value) if np.ndim(value) == 0 else value


def _check_alpha(alpha: ArrayLike) -> np.ndarray:
    alpha = np.asarray(alpha, dtype=np.float64)
    if np.any(~((alpha > 0) & (alpha < 1))):
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    return alpha


def _check_sigma(sigma: ArrayLike, name: str = "sigma") -> np.ndarray:
    sigma = np.asarray(sigma, dtype=np.float64)
    if np.any(~(sigma > 0)) or np.any(~np.isfinite(sigma)):
        raise ValueError(f"{name} must be positive and finite, got {sigma}")
    return sigma


def _check_probability(p: ArrayLike, name: str) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if np.any(~((p >= 0) & (p <= 1))):
        raise ValueError(f"{name} must be probabilities in [0, 1], got {p}")
    return p


def _lower_in_log_space(k: float, n: float, alpha: float) -> float:
    """The ``alpha``-quantile of ``Beta(k, n - k + 1)`` for ``1 <= k <= n``, any alpha.

    Solves ``log P(Binomial(n, p) >= k) = log alpha`` for ``log p`` (the two
    probabilities are equal), summing the binomial tail in log space, so nothing
    underflows. The root is lowered by :data:`_LOG_SPACE_MARGIN` (relative); a
    bound below the smallest normal float is returned as 0.
    """
    j = np.arange(k, n + 1.0)
    log_choose = -np.log1p(n) - betaln(j + 1.0, n - j + 1.0)
    log_alpha = np.log(alpha)

    def excess(log_p: float) -> float:
        p = np.exp(log_p)
        return float(logsumexp(log_choose + xlogy(j, p) + xlog1py(n - j, -p))) - log_alpha

    lowest = np.log(np.finfo(np.float64).tiny)
    if excess(lowest) >= 0:
        return 0.0
    root = brentq(excess, lowest, 0.0, xtol=1e-15, rtol=4 * np.finfo(np.float64).eps)
    return float(np.exp(root) * (1.0 - _LOG_SPACE_MARGIN))


def clopper_pearson_lower(k: ArrayLike, n: ArrayLike, alpha: ArrayLike) -> float | np.ndarray:
    """Exact one-sided Clopper-Pearson lower bound on a binomial proportion.

    With probability at least ``1 - alpha`` over ``k ~ Binomial(n, p)``, the
    returned value is ``<= p``. It is the ``alpha``-quantile of
    ``Beta(k, n - k + 1)``, and 0 when ``k = 0``. For finite ``n`` the bound is
    strictly below 1, so ``Phi^-1`` of it is finite.

    Every alpha in (0, 1) is handled: at or above :data:`LOG_SPACE_ALPHA` the bound is
    scipy's ``beta.ppf``; below it (where ``beta.ppf`` fails silently) it is solved
    in log space, costs ``O(n - k)`` per step of a root-find, and is lowered by a
    relative 1e-6 to absorb numerical error.
    """
    k = np.asarray(k)
    n = np.asarray(n)
    alpha = _check_alpha(alpha)
    if np.any(n < 1) or np.any(k < 0) or np.any(k > n):
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    if np.any(k != np.floor(k)) or np.any(n != np.floor(n)):
        raise ValueError(f"k and n must be whole numbers, got k={k}, n={n}")
    k, n, alpha = np.broadcast_arrays(k.astype(np.float64), n.astype(np.float64), alpha)
    log_space = (alpha < LOG_SPACE_ALPHA) & (k > 0)
    bound = beta.ppf(np.where(log_space, 0.5, alpha), np.maximum(k, 1.0), n - k + 1.0)
    bound = np.where(k > 0, np.minimum(bound, _BELOW_ONE), 0.0)
    flat = bound.reshape(-1)  # a view: np.where returned a fresh contiguous array
    for i in np.flatnonzero(log_space):
        flat[i] = _lower_in_log_space(k.flat[i], n.flat[i], alpha.flat[i])
    return _scalar_or_array(bound)


def clopper_pearson_upper(k: ArrayLike, n: ArrayLike, alpha: ArrayLike) -> float | np.ndarray:
    """Exact one-sided Clopper-Pearson upper bound: ``1 - lower(n - k, n, alpha)``."""
    return _scalar_or_array(1.0 - np.asarray(clopper_pearson_lower(np.asarray(n) - k, n, alpha)))


def branch_alpha(alpha: float, num_branches: int) -> float:
    """Per-bound confidence level when ``num_branches`` bounds must hold at once."""
    _check_alpha(alpha)
    if num_branches < 1:
        raise ValueError(f"num_branches must be at least 1, got {num_branches}")
    return alpha / num_branches


def _z_sum(p_lower_l: ArrayLike, p_lower_r: ArrayLike) -> np.ndarray:
    return norm.ppf(_check_probability(p_lower_l, "p_lower_l")) + norm.ppf(
        _check_probability(p_lower_r, "p_lower_r")
    )


def rs_radius(p_lower: ArrayLike, sigma: ArrayLike) -> float | np.ndarray:
    """Cohen's radius ``sigma * Phi^-1(p_lower)``; meaningful (positive) when ``p_lower > 1/2``.

    ``p_lower`` must lie in [0, 1] (1 gives an infinite radius); NaN is refused.
    """
    sigma = _check_sigma(sigma)
    return _scalar_or_array(sigma * norm.ppf(_check_probability(p_lower, "p_lower")))


def drs_radius(
    p_lower_l: ArrayLike,
    p_lower_r: ArrayLike,
    sigma: ArrayLike,
    sigma_r: ArrayLike | None = None,
) -> float | np.ndarray:
    """DRS radius for independent branches (Xia et al. 2024, Eq. 13, general sigmas).

    ``(z_l + z_r) / sqrt(sigma^-2 + sigma_r^-2)`` with ``z = Phi^-1(p_lower)``;
    ``sigma_r`` defaults to ``sigma``, giving ``sigma (z_l + z_r) / sqrt(2)``. Sound only
    when ``f_l`` depends on ``x_l`` alone and ``f_r`` on ``x_r`` alone, and the two
    bounds hold simultaneously (compute each at ``alpha / 2``). Bounds must lie in
    [0, 1]; NaN is refused.
    """
    sigma = _check_sigma(sigma)
    sigma_r = sigma if sigma_r is None else _check_sigma(sigma_r, "sigma_r")
    z_sum = _z_sum(p_lower_l, p_lower_r)
    return _scalar_or_array(z_sum / np.sqrt(sigma**-2.0 + sigma_r**-2.0))


def coupled_radius(p_lower_l: ArrayLike, p_lower_r: ArrayLike,
                   sigma: ArrayLike) -> float | np.ndarray:
    """Radius ``sigma (z_l + z_r) / 2`` for branches that both see the whole noisy image.

    Each smoothed branch probability ``Phi^-1(p_j(x))`` is ``1/sigma``-Lipschitz in
    ``x``, so the vote can only flip once ``||delta|| / sigma >= (z_l + z_r) / 2``.
    This is the sound radius for joint denoising, where one denoiser call mixes the
    two sub-images. Bounds must lie in [0, 1]; NaN is refused.
    """
    sigma = _check_sigma(sigma)
    z_sum = _z_sum(p_lower_l, p_lower_r)
    return _scalar_or_array(sigma * z_sum / 2.0)


def rs_abstains(p_lower: ArrayLike) -> bool | np.ndarray:
    """RS abstains unless the top class is certified to hold more than half the mass."""
    result = _check_probability(p_lower, "p_lower") <= 0.5
    return bool(result) if result.ndim == 0 else result


def drs_abstains(p_lower_l: ArrayLike, p_lower_r: ArrayLike) -> bool | np.ndarray:
    """DRS abstains unless ``z_l + z_r > 0`` (equivalently ``pl_lower + pr_lower > 1``).

    Decided on the z scale so that a non-abstaining certificate always has a
    strictly positive radius.
    """
    result = ~(_z_sum(p_lower_l, p_lower_r) > 0)
    return bool(result) if result.ndim == 0 else result


def certified_radius(
    kind: CertificateKind | str, p_lower: ArrayLike, sigmas: ArrayLike
) -> tuple[bool, float]:
    """Apply the abstain rule and radius of ``kind`` to per-branch bounds.

    ``p_lower`` and ``sigmas`` hold one entry per branch. Returns
    ``(abstain, radius)`` with ``radius = 0.0`` whenever ``abstain``. Each bound
    must lie in [0, 1): a lower bound from finitely many samples is below 1 (see
    :func:`clopper_pearson_lower`), and 1 or NaN would give an infinite or undefined
    radius.
    """
    kind = CertificateKind(kind)
    p_lower = np.atleast_1d(np.asarray(p_lower, dtype=np.float64))
    if np.any(~((p_lower >= 0) & (p_lower < 1))):
        raise ValueError(f"probability lower bounds must lie in [0, 1), got {p_lower}")
    sigmas = np.atleast_1d(np.asarray(sigmas, dtype=np.float64))
    expected = 1 if kind is CertificateKind.RS else 2
    if p_lower.shape != (expected,) or sigmas.shape != (expected,):
        raise ValueError(
            f"{kind.value} certificates need {expected} bound(s) and sigma(s), "
            f"got {p_lower.shape} and {sigmas.shape}"
        )
    if kind is CertificateKind.RS:
        if rs_abstains(p_lower[0]):
            return True, 0.0
        return False, float(rs_radius(p_lower[0], sigmas[0]))
    if drs_abstains(p_lower[0], p_lower[1]):
        return True, 0.0
    if kind is CertificateKind.INDEPENDENT:
        return False, float(drs_radius(p_lower[0], p_lower[1], sigmas[0], sigmas[1]))
    if sigmas[0] != sigmas[1]:
        raise ValueError(f"coupled certificates need one sigma for both branches, got {sigmas}")
    return False, float(coupled_radius(p_lower[0], p_lower[1], sigmas[0]))


__all__ = [
    "LOG_SPACE_ALPHA",
    "branch_alpha",
    "certified_radius",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "coupled_radius",
    "drs_abstains",
    "drs_radius",
    "rs_abstains",
    "rs_radius",
]
