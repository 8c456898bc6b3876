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

* k branches (DESIGN.md section 9): :func:`kway_radius`, a proven lower bound for
  independent branches (k = 1 and 2 are the two radii above) and the exact coupled
  radius rounded down; abstain when the bounds sum to at most ``k / 2``.

In DRS two bounds hold simultaneously, so each must be computed at ``alpha / 2``
(Bonferroni); :func:`branch_alpha` does the split (``alpha / k`` for k branches).

Every function refuses (ValueError) probabilities that are NaN or outside [0, 1],
so a NaN can never become a radius or a decision not to abstain.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import brentq
from scipy.special import betaln, logsumexp, ndtr, ndtri, xlog1py, xlogy
from scipy.stats import beta, norm

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
    if not (np.issubdtype(k.dtype, np.number) and np.issubdtype(n.dtype, np.number)) or (
        k.dtype == bool or n.dtype == bool
    ):
        raise TypeError(f"k and n must be numbers, got k={k!r}, n={n!r}")
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


# ---------------------------------------------------------------------------
# k branches (DESIGN.md section 9)
# ---------------------------------------------------------------------------

_EPS = float(np.finfo(np.float64).eps)
_PPF_SLACK = 1e-12
"""Absolute slack, times ``1 + |u|``, on every ``Phi^-1`` value: a thousand times the
error of scipy's ``ndtri`` (cephes documents a relative error below 1e-15; the tests
check the brackets against mpmath)."""
_U_STEP = 0.1
"""Table sub-intervals are cut wherever ``Phi^-1(p - delta)`` crosses a multiple of this
step below ``z``, so that each is short where the cost curves sharply."""
_GRID_BITS = 20
"""The cell width keeps this many significant bits, so every ``i * h`` is exact."""
_REFINE = 4
"""Fine cells per coarse cell (a power of two: the coarse width is exact too)."""
_MU_SPAN = 5.0
_MU_MOVES = 5
"""The multiplier search scans ``[centre / span, centre * span]`` and moves the range
(at most this many times) while the best value lies at one end."""
_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)


def _check_branches(p_lower: ArrayLike, sigmas: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p_lower, dtype=np.float64)
    sigmas = np.asarray(sigmas, dtype=np.float64)
    if p.ndim != 1 or sigmas.ndim != 1 or p.size != sigmas.size or p.size < 1:
        raise ValueError(
            "p_lower and sigmas must be sequences of one equal length k >= 1, "
            f"got shapes {p.shape} and {sigmas.shape}"
        )
    bad = np.flatnonzero(~((p >= 0) & (p <= 1)))
    if bad.size:
        raise ValueError(f"p_lower must lie in [0, 1], got {p[bad[0]]} for branch {bad[0]}")
    bad = np.flatnonzero(~((sigmas > 0) & np.isfinite(sigmas)))
    if bad.size:
        raise ValueError(
            f"sigmas must be positive and finite, got {sigmas[bad[0]]} for branch {bad[0]}")
    return p, sigmas


def _pdf(u: np.ndarray) -> np.ndarray:
    return _INV_SQRT_2PI * np.exp(-0.5 * u * u)


def _pdf_max(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``max phi(u)`` over ``lo <= u <= hi``: phi at the point of the interval nearest 0."""
    return _pdf(np.where((lo <= 0) & (hi >= 0), 0.0, np.minimum(np.abs(lo), np.abs(hi))))


def _ppf_bounds(p: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Floats ``lo <= Phi^-1(p - delta) <= hi`` (exact reals), for floats ``0 <= delta``.

    ``p - delta`` and, for ``p >= 1/2``, ``(1 - p) + delta`` (``1 - p`` is exact there)
    are rounded once each, so widening them by 4 ulp brackets the exact argument; the
    upper tail is used where it is the smaller, so that ``Phi^-1`` stays well conditioned.
    ``ndtri``'s own error is covered by :data:`_PPF_SLACK`. ``p - delta <= 0`` gives
    ``-inf`` (no such drop exists).
    """
    q = np.maximum(p - delta, 0.0)
    t = (1.0 - p) + delta
    tail = (p >= 0.5) & (t <= 0.5)
    with np.errstate(divide="ignore", invalid="ignore"):
        hi = np.where(tail, -ndtri(t * (1 - 4 * _EPS)), ndtri(q * (1 + 4 * _EPS)))
        lo = np.where(tail, -ndtri(t * (1 + 4 * _EPS)), ndtri(q * (1 - 4 * _EPS)))
    finite_hi, finite_lo = np.isfinite(hi), np.isfinite(lo)
    hi = np.where(finite_hi, hi + _PPF_SLACK * (1 + np.abs(np.where(finite_hi, hi, 0.0))), hi)
    lo = np.where(finite_lo, lo - _PPF_SLACK * (1 + np.abs(np.where(finite_lo, lo, 0.0))), lo)
    return lo, hi


def _grid_step(s_low: float, cells: int) -> float:
    """The largest float with :data:`_GRID_BITS` significant bits and ``cells * h <= s_low``."""
    exponent = np.frexp(s_low / cells)[1] - _GRID_BITS
    mantissa = np.floor(np.ldexp(s_low / cells, -exponent))
    while np.ldexp(mantissa, exponent) * cells > s_low:
        mantissa -= 1
    return float(np.ldexp(mantissa, exponent))


class _CellTables:
    """Lower bounds on ``min (c_j(delta) - mu delta)`` over every cell of every branch.

    ``c_j(delta) = (sigma_j (z_j - Phi^-1(p_j - delta)))^2`` is the squared norm branch j
    needs to lower its probability by ``delta``; cell ``i`` is ``[i h, (i + 1) h)``. Each
    cell is cut into sub-intervals (cell edges plus the points where ``Phi^-1(p_j - delta)``
    crosses ``z_j - m`` :data:`_U_STEP`); on a sub-interval ``[a, a + w]`` with ``u``-range
    ``I`` everything that does not depend on ``mu`` is computed once here: a lower bound
    on ``c_j(a)`` and ``c_j(a + w)``, on the slope ``c_j'(a)``, and lower and upper bounds
    on the curvature ``c_j'' = 2 sigma^2 (1 - (z - u) u) / phi(u)^2`` over ``I``, all
    from interval bounds on ``z`` and ``u`` (:func:`_ppf_bounds`).
    """

    def __init__(self, p: np.ndarray, sigmas: np.ndarray, h: float, n_cells: np.ndarray):
        k = len(p)
        counts = n_cells + 1
        branch = np.repeat(np.arange(k), counts)
        edges = (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)) * h
        z_lo, z_hi = _ppf_bounds(p, np.zeros(k))
        top = n_cells * h
        with np.errstate(divide="ignore"):
            u_end = np.maximum(ndtri(np.maximum(p - top, 0.0)), -40.0)
        steps = np.maximum(np.ceil((z_lo - u_end) / _U_STEP), 0).astype(np.int64)
        u_branch = np.repeat(np.arange(k), steps)
        u = z_lo[u_branch] - _U_STEP * (
            np.arange(steps.sum()) - np.repeat(np.cumsum(steps) - steps, steps) + 1)
        pu = p[u_branch]
        cuts = np.where(u > 0, ndtr(-u) - (1.0 - pu), pu - ndtr(u))  # where Phi^-1 = u
        inside = (cuts > 0) & (cuts < top[u_branch])
        branch = np.concatenate([branch, u_branch[inside]])
        delta = np.concatenate([edges, cuts[inside]])
        order = np.lexsort((delta, branch))
        branch, delta = branch[order], delta[order]
        new = np.ones(len(delta), dtype=bool)
        new[1:] = (branch[1:] != branch[:-1]) | (delta[1:] != delta[:-1])
        branch, delta = branch[new], delta[new]

        lo, hi = _ppf_bounds(p[branch], delta)
        s2 = (sigmas * sigmas)[branch]
        gap = np.maximum(z_lo[branch] - hi, 0.0)
        cost = s2 * gap * gap
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            slope = 2.0 * s2 * gap / _pdf_max(lo, hi)
        slope = np.where(np.isfinite(slope), slope, 0.0)  # 0 is a valid lower bound

        pair = branch[1:] == branch[:-1]
        j = branch[:-1][pair]
        a = delta[:-1][pair]
        self.w = w = delta[1:][pair] - a
        c_a, c_b, self.s_a = cost[:-1][pair], cost[1:][pair], slope[:-1][pair]
        u_lo, u_hi = lo[1:][pair], hi[:-1][pair]
        zc, dz = z_lo[j], (z_hi - z_lo)[j]
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            # 1 - (z - u) u = (u - z/2)^2 + 1 - z^2/4; z's uncertainty moves it by <= dz |u|.
            u_abs = np.maximum(np.abs(u_lo), np.abs(u_hi))
            vertex = (np.clip(zc / 2, u_lo, u_hi) - zc / 2) ** 2
            far = np.maximum((u_lo - zc / 2) ** 2, (u_hi - zc / 2) ** 2)
            base = 1.0 - zc * zc / 4
            rounding = 8 * _EPS * (far + 1.0 + zc * zc / 4) + dz * u_abs
            num_min = np.nan_to_num(vertex + base - rounding, nan=-np.inf)
            num_max = np.nan_to_num(far + base + rounding, nan=np.inf)
            kappa = 2.0 * (sigmas * sigmas)[j] * num_min / np.where(
                num_min >= 0, _pdf_max(u_lo, u_hi), _pdf(u_abs)) ** 2
        # phi underflows to 0 far out in the tail: -inf is a valid (useless) lower bound.
        kappa = np.nan_to_num(kappa, nan=-np.inf, posinf=-np.inf)
        self.convex = kappa > 0
        self.kappa = np.where(self.convex, kappa, 0.0)
        self.inv_kappa = np.where(self.convex, 1.0 / np.where(self.convex, kappa, 1.0), 0.0)
        # Every candidate in entries() is lowered by 16 eps times the magnitude of its
        # terms, far more than the rounding of the few operations that form it. Infinite
        # costs (no such drop) give infinite entries without ever forming inf - inf.
        finite = np.isfinite(c_a)
        c_a = np.where(finite, c_a, 0.0)
        self.w_up, self.w_err = w * (1 + 16 * _EPS), 16 * _EPS * w
        self.a_up = a * (1 + 16 * _EPS)
        self.crude = np.where(finite, c_a * (1 - 16 * _EPS), np.inf)
        taylor_err = 16 * _EPS * (c_a + self.s_a * w + np.abs(kappa) * w * w)
        self.taylor = np.where(finite, c_a - taylor_err, np.inf)
        end = c_a + self.s_a * w + 0.5 * kappa * w * w - taylor_err
        self.taylor_end = np.where(finite, end, np.inf)
        concave = (num_max <= 0) & np.isfinite(c_b) & finite
        c_b = np.where(concave, c_b, 0.0)
        self.end_a = np.where(concave, c_a - 16 * _EPS * (c_a + c_b), -np.inf)
        self.end_b = np.where(concave, c_b - 16 * _EPS * (c_a + c_b), -np.inf)

        cell = np.floor(a / h).astype(np.int64)
        cell -= cell * h > a
        cell += (cell + 1) * h <= a
        offsets = np.concatenate([[0], np.cumsum(n_cells)[:-1]])
        group = offsets[j] + cell
        self.starts = np.flatnonzero(np.concatenate([[True], group[1:] != group[:-1]]))
        self.offsets, self.n_cells = offsets, n_cells

    def entries(self, mus: np.ndarray) -> np.ndarray:
        """``(len(mus), total cells)``, for ``mus >= 0``: each entry a lower bound on
        ``min c_j(delta) - mu delta`` over its cell, the largest of three candidates."""
        mu = mus[:, None]
        mu_err = mu * self.w_err
        # c_j increases: c(a + g) - mu g >= c(a) - mu w.
        best = self.crude - mu * self.w_up
        # Taylor: c(a + g) >= c(a) + c'(a) g + kappa g^2 / 2, minimised over 0 <= g <= w:
        # at the vertex (clipped) if kappa > 0, else at an end.
        g = np.clip((mu - self.s_a) * self.inv_kappa, 0.0, self.w)
        convex = self.taylor + g * ((self.s_a - mu) + 0.5 * self.kappa * g) - mu_err
        other = np.minimum(self.taylor - mu_err, self.taylor_end - mu * self.w_up)
        best = np.maximum(best, np.where(self.convex, convex, other))
        # Where c'' <= 0 the minimum of a concave function is at an end (-inf elsewhere).
        best = np.maximum(best, np.minimum(self.end_a, self.end_b - mu * self.w_up))
        return np.minimum.reduceat(best - mu * self.a_up, self.starts, axis=1)


def _min_plus(values: np.ndarray, table: np.ndarray, first: int = 0) -> np.ndarray:
    """``out[:, b - first] = min_i values[:, b - i] + table[:, i]`` over ``0 <= i <= b``,
    for ``first <= b < values.shape[1]`` (``table`` no wider than ``values``)."""
    rows, width = values.shape
    n = table.shape[1]
    padded = np.full((rows, n - 1 + width), np.inf)
    padded[:, n - 1:] = values
    stride_r, stride_c = padded.strides
    windows = np.ndarray((rows, width - first, n), buffer=padded, offset=first * stride_c,
                         strides=(stride_r, stride_c, stride_c))
    return (windows + table[:, None, ::-1]).min(axis=2)


class _KwayProblem:
    """The exact-sum dynamic program at one cell width, for a batch of multipliers."""

    def __init__(self, tables: _CellTables, h: float, cells: int, k: int, s_low: float,
                 s_high: float, group: int = 1):
        self.tables, self.group, self.h, self.s_low = tables, group, h, s_low
        # A drop vector with sum S >= s_low >= cells * h has k cell indices with
        # cells - k + 1 <= sum i_j <= S / h <= s_high / h.
        self.low, self.high = cells - k + 1, int(np.floor(s_high / h))
        counts = -(-tables.n_cells // group)
        starts = [off + group * np.arange(n) for off, n in zip(tables.offsets, counts)]
        self.starts = np.concatenate(starts)
        self.bounds = np.concatenate([[0], np.cumsum(counts)])

    def values(self, mus: np.ndarray, full: bool = False) -> np.ndarray:
        """``min sum_j A_j(i_j)`` over index vectors with each sum ``b``, one column per ``b``
        in ``[low, high]`` (every ``b`` from 0 with ``full``), one row per multiplier."""
        entries = self.tables.entries(mus)
        if self.group > 1:
            entries = np.minimum.reduceat(entries, self.starts, axis=1)
        width = self.high + 1
        tables = [entries[:, start:min(stop, start + width)]
                  for start, stop in zip(self.bounds[:-1], self.bounds[1:])]
        best = np.full((len(mus), width), np.inf)
        best[:, :tables[0].shape[1]] = tables[0]
        for table in tables[1:-1]:
            best = _min_plus(best, table)
        if len(tables) > 1:
            best = _min_plus(best, tables[-1], 0 if full else self.low)
        return best if full else best[:, self.low - width:]

    def bounds_at(self, mus: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
        """Proven lower bounds on the squared norm of any attack whose cell indices sum to
        ``b``, one row per multiplier, one column per ``b`` in ``[low, high]``:
        ``mu s_low`` plus the programme's value, lowered by a bound on its rounding."""
        values = (mus * self.s_low)[:, None] + (self.values(mus) if values is None else values)
        margin = 1e-12 + 64 * len(self.bounds) * _EPS
        scale = np.abs(values) + (8 * len(self.bounds) * np.abs(mus) * self.s_low)[:, None]
        return values - np.where(np.isfinite(values), margin * scale, 0.0)


def _independent_kway(p: np.ndarray, sigmas: np.ndarray) -> float:
    """Lower bound on the independent-branch radius for any k (see :func:`kway_radius`)."""
    k = len(p)
    s_mid = math.fsum(p) - k / 2  # math.fsum rounds correctly; the subtraction is exact
    s_low, s_high = s_mid - k * 2.0**-52, s_mid + k * 2.0**-52
    if not s_low > 2 * (s_high - s_low):
        return 0.0  # abstain, or a margin so thin that the radius is below 1e-14
    moved = p > 0  # a branch at p = 0 has nothing left to lose
    p, sigmas = p[moved], sigmas[moved]
    k = len(p)
    coarse = min(4 * int(2 * max(k, 8) * math.sqrt(max(k, 8) / k)), 256)
    h = _grid_step(s_low, _REFINE * coarse)
    n_cells = np.floor(np.minimum(p, s_high) / h).astype(np.int64) + 1
    tables = _CellTables(p, sigmas, h, np.minimum(n_cells, int(np.floor(s_high / h)) + 1))
    rough = _KwayProblem(tables, h * _REFINE, coarse, k, s_low, s_high, group=_REFINE)
    exact = _KwayProblem(tables, h, _REFINE * coarse, k, s_low, s_high)

    # Every multiplier gives a valid bound for every index sum b, so the bound is the least
    # over b of the best multiplier for that b. The multipliers only decide how tight it
    # is. Search on the coarse cells: start at the slope of the value function at mu = 0,
    # scan a geometric range (moved while the best lies at one end), zoom around the best;
    # then the fine cells at the best multiplier of each of the most binding sums b.
    zero = np.zeros(1)
    at_zero = rough.values(zero, full=True)[0]
    needed = np.minimum.accumulate(at_zero[::-1])[::-1]
    m = min(k, rough.low)
    centre = (needed[rough.low] - needed[rough.low - m]) / (m * rough.h)
    if not (np.isfinite(centre) and centre > 0):
        centre = 1.0
    tried, found = [zero], [rough.bounds_at(zero, at_zero[None, rough.low:])]
    for _ in range(_MU_MOVES):
        mus = centre * np.geomspace(1 / _MU_SPAN, _MU_SPAN, 8)
        tried.append(mus)
        found.append(rough.bounds_at(mus))
        best = int(np.argmax(found[-1].min(axis=1)))
        if 0 < best < 7:
            break
        centre = mus[best] * _MU_SPAN if best else mus[best] / _MU_SPAN
    centre = np.concatenate(tried)[int(np.argmax(np.vstack(found).min(axis=1)))]
    tried.append(centre * _MU_SPAN ** (np.array([-1.0, -0.5, 0.5, 1.0]) / 7))
    found.append(rough.bounds_at(tried[-1]))
    mus, found = np.concatenate(tried), np.vstack(found)
    per_sum = found.max(axis=0)
    picks: list[float] = []
    for b in np.argsort(per_sum):
        mu = float(mus[int(np.argmax(found[:, b]))])
        if mu not in picks:
            picks.append(mu)
        if len(picks) == 4:
            break
    fine = exact.bounds_at(np.array(picks)).max(axis=0).min()
    squared = max(float(per_sum.min()), float(fine))
    if not 0.0 < squared < np.inf:
        return 0.0
    return float(np.nextafter(np.sqrt(squared), 0.0))


def _coupled_kway(p: np.ndarray, sigmas: np.ndarray) -> float:
    """Lower bound on the coupled-branch radius for any k (see :func:`kway_radius`)."""
    k = len(p)
    z_low = _ppf_bounds(p, np.zeros(k))[0]

    def keeps(r: float) -> bool:
        # True only if sum_j Phi(z_j - r / sigma_j) > k / 2 holds exactly: the argument
        # is lowered past its rounding, ndtr's error is far below the 1e-12 margin.
        shift = r / sigmas
        with np.errstate(invalid="ignore"):
            x = z_low - shift - 4 * _EPS * (np.abs(z_low) + shift)
        return math.fsum(ndtr(np.nan_to_num(x, nan=-np.inf))) * (1 - 1e-12) > k / 2

    if not keeps(0.0):
        return 0.0
    finite = np.isfinite(z_low)
    low, high = 0.0, float(np.max(sigmas[finite] * (np.maximum(z_low[finite], 0) + 40)))
    for _ in range(200):
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        if keeps(middle):
            low = middle
        else:
            high = middle
    return low


def kway_radius(p_lower: ArrayLike, sigmas: ArrayLike, coupled: bool = False) -> float:
    """Certified l2 radius of a vote over k smoothed branches; 0.0 where the scheme abstains.

    Branch ``j`` smooths its classifier with noise ``sigmas[j]``; ``p_lower[j]`` is a lower
    confidence bound on its top-class probability (take each at ``alpha / k``, see
    :func:`branch_alpha`, so that all k hold at once). The vote sums the branch
    probabilities, so it keeps the top class while ``sum_j Phi(z_j - d_j / sigma_j) > k / 2``,
    ``z_j = Phi^-1(p_lower[j])``, where ``d_j`` bounds how far branch j's ``Phi^-1`` may move
    times ``sigma_j`` (DESIGN.md section 9). The scheme abstains, and 0.0 is returned,
    when ``sum_j p_lower[j] <= k / 2`` (for k >= 3 also when the sum exceeds k / 2 by too
    little to tell apart in floating point: about 1e-15 k, or 1e-12 k for coupled
    branches).

    * ``coupled=False`` (each classifier sees only its own sub-image, ``d_j`` the norm of
      the perturbation of sub-image j): a proven lower bound on ``min ||d||_2`` subject to
      ``sum_j Phi(z_j - d_j / sigma_j) <= k / 2``, ``d >= 0``. k = 1 returns
      :func:`rs_radius`, k = 2 the closed form :func:`drs_radius`,
      ``(z_1 + z_2) / sqrt(sigma_1^-2 + sigma_2^-2)``; k >= 3 the method below: about 3 ms
      for k <= 8, typically within 0.1 percent of the best attack found, within 2 percent
      on 1,000 random vectors; looser (up to about 5 percent) when every branch is sure
      and k is even, which drives the attack deep into the tails of half the branches
      (``benchmarks/bench_kway.py`` measures both).
    * ``coupled=True`` (each branch a function of the whole noisy image, e.g. joint
      denoising; ``d_j = ||delta||``): the smallest ``r`` with
      ``sum_j Phi(z_j - r / sigma_j) <= k / 2``, rounded down: bisection on the monotone
      sum, returning the lower end of the final bracket, where the sum is proven to exceed
      k / 2 with ``z_j`` rounded down and a relative 1e-12 margin. k = 1 returns
      :func:`rs_radius`, k = 2 with equal sigmas :func:`coupled_radius`.

    Soundness of the independent bound for k >= 3. Write an attack through the drops
    ``delta_j = p_j - Phi(z_j - d_j / sigma_j)`` in ``[0, p_j)``: reaching ``delta_j`` costs at
    least ``c_j(delta_j) = (sigma_j (z_j - Phi^-1(p_j - delta_j)))^2``, increasing, and a flip
    needs ``sum_j delta_j >= S = sum_j p_j - k / 2``; shrinking drops lowers costs, so the
    squared radius ``R^2`` is the infimum over drops with ``sum_j delta_j = S`` exactly and
    every ``delta_j <= S``. There, for any real ``mu``,
    ``sum_j c_j(delta_j) = mu S + sum_j (c_j(delta_j) - mu delta_j)``. Cut ``[0, S]`` into cells
    ``[i h, (i + 1) h)`` with ``N h <= S``: the cells ``i_j`` holding a feasible drop have
    ``N - k + 1 <= b = sum_j i_j <= S / h``, so ``R^2 >= min_b max_mu (mu S + min sum_j
    A_j(i_j))``, the inner minimum over index vectors with sum ``b``, for any ``A_j(i)``
    below ``c_j - mu delta`` on cell ``i``: a min-plus convolution of k tables over the index
    sum (dynamic programming; ``N`` = 256 to 416 cells for k <= 8, after a search on cells
    4 times wider). Every ``mu`` gives a valid bound for every ``b``; ``mu`` only sets how
    tight it is, so it is searched. ``A_j(i)`` is the least, over sub-intervals
    ``[a, a + w]`` of the cell (cut also where ``Phi^-1(p_j - delta)`` crosses
    ``z_j - 0.1 m``), of the largest of three lower bounds on
    ``min_{0 <= g <= w} c_j(a + g) - mu (a + g)``: ``c_j(a) - mu (a + w)`` (``c_j``
    increases); the minimum of ``c_j(a) + c_j'(a) g + kappa g^2 / 2 - mu (a + g)`` (Taylor
    with ``kappa <= c_j''`` on the sub-interval, bounded from
    ``c_j'' = 2 sigma_j^2 (1 - (z_j - u) u) / phi(u)^2`` over its range of ``u``); and, where
    ``c_j'' <= 0`` throughout, the lesser end value. Floating point: ``h`` has 20
    significant bits, so every ``i h`` is exact; ``S`` is bracketed around a correctly
    rounded sum (``math.fsum``); every ``Phi^-1`` is replaced by an interval holding the
    exact value (arguments widened by 4 ulp, then by ``1e-12 (1 + |u|)``, a thousand
    times ``ndtri``'s error), and costs, slopes and curvatures are taken at the unfavourable
    ends; each table entry is lowered by a bound on its own rounding, the programme's
    value by a relative ``1e-12 + 64 k eps`` of its magnitude; the square root (correctly
    rounded) is stepped down one ulp (``np.nextafter`` toward 0). Each step can only
    lower the result, so it never exceeds the exact minimum.

    ``p_lower`` must lie in [0, 1] and ``sigmas`` be positive and finite, one of each
    per branch (ValueError otherwise). A bound of exactly 1 (not reachable from finitely
    many samples) is read as the largest float below 1, a finite ``z`` of about 8.2;
    lowering a bound can only lower the radius, so this is sound.
    """
    p, sigmas = _check_branches(p_lower, sigmas)
    p = np.minimum(p, _BELOW_ONE)
    k = len(p)
    if k == 1:
        return 0.0 if rs_abstains(p[0]) else float(rs_radius(p[0], sigmas[0]))
    if k == 2 and not (coupled and sigmas[0] != sigmas[1]):
        if drs_abstains(p[0], p[1]):
            return 0.0
        if coupled:
            return float(coupled_radius(p[0], p[1], sigmas[0]))
        return float(drs_radius(p[0], p[1], sigmas[0], sigmas[1]))
    return _coupled_kway(p, sigmas) if coupled else _independent_kway(p, sigmas)


__all__ = [
    "LOG_SPACE_ALPHA",
    "branch_alpha",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "coupled_radius",
    "drs_abstains",
    "drs_radius",
    "kway_radius",
    "rs_abstains",
    "rs_radius",
]
