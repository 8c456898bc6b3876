"""Theoretical upper bounds of the certifiable l2 radius against the input dimension.

The DRS paper's Figure 1(b) plots "the upper bound of the l2 certified radius
(calculated by Equation 4 and Equation 15) of RS and DRS with sigma = 1/sqrt(d) and
smoothed probability = 0.999". The exact text of Eq. 4 (after Wu et al. 2021; it has a
constant 5e-7 which, per the authors' OpenReview reply, comes from a predefined 1e-6
error margin between estimated and true probability) was not available to us, so the
curves below are our own derivation of the same statement; see
:func:`rs_radius_upper_bound`. :func:`denoised_drs.analysis.plots.radius_bounds_figure`
draws them.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import norm

BOUND_FAMILIES = ("gaussian", "symmetric")


def _kappa(p_a: ArrayLike, family: str) -> np.ndarray:
    p_a = np.asarray(p_a, dtype=np.float64)
    if np.any(~((p_a > 0.5) & (p_a < 1.0))):
        raise ValueError(f"p_a must lie in (1/2, 1), got {p_a}")
    if family == "gaussian":
        return norm.ppf(p_a)
    if family == "symmetric":
        return np.sqrt(p_a / (1.0 - p_a))
    raise ValueError(f"family must be one of {BOUND_FAMILIES}, got {family!r}")


def check_dimension(d: ArrayLike, name: str = "d") -> np.ndarray:
    d = np.asarray(d, dtype=np.float64)
    if np.any(~np.isfinite(d)) or np.any(d <= 0):
        raise ValueError(f"{name} must be positive, got {d}")
    return d


def rs_radius_upper_bound(
    d: ArrayLike, p_a: ArrayLike = 0.999, noise_norm: float = 1.0, family: str = "gaussian"
) -> float | np.ndarray:
    """Largest l2 radius RS can certify from top-class probability ``p_a``, against ``d``.

    ``U_RS(d) = noise_norm / sqrt(d) * kappa(p_a)``, where ``noise_norm`` is the
    total noise magnitude ``sqrt(E||z||^2)`` (so the per-pixel std is
    ``sigma = noise_norm / sqrt(d)``; the paper's Figure 1(b) uses
    ``sigma = 1/sqrt(d)``, i.e. ``noise_norm = 1``), and

    * ``family="gaussian"``: ``kappa = Phi^-1(p_a)``. For isotropic Gaussian noise this
      is exact: Cohen's radius ``sigma Phi^-1(p_a)`` is tight (a half-space base
      classifier with that ``p_a`` flips just beyond it).
    * ``family="symmetric"``: ``kappa = sqrt(p_a / (1 - p_a))``. Valid for every
      origin-symmetric noise with a continuous law and ``E||z||^2 = noise_norm^2``
      (the family of Wu et al. 2021, "Completing the picture: randomized smoothing
      suffers from the curse of dimensionality for a large family of distributions").
      Proof: the variances of ``u.z`` along an orthonormal basis sum to
      ``E||z||^2``, so some unit ``u`` has ``Var(u.z) <= noise_norm^2 / d``. Take the
      half-space base classifier ``{u.z < t}`` with ``P(u.z < t) = p_a``; after a
      shift ``r > t`` along ``u`` its probability is ``P(u.z < t - r) <= P(u.z < 0)
      <= 1/2`` (symmetry), so no radius above ``t`` can be certified from ``p_a``
      alone, and Cantelli's inequality gives ``t <= sqrt(Var(u.z) p_a / (1 - p_a))``.

    Either way the bound has the paper's form, a constant multiplier ``Theta(1/sqrt d)``
    on the noise magnitude: at a fixed noise budget it decays like ``1/sqrt(d)``. This
    is our derivation, not a transcription of the paper's Eq. 4 (whose exact text and
    constant we could not obtain); the shape in ``d`` is the same. Vectorised over
    ``d`` and ``p_a``.
    """
    if not (noise_norm > 0 and math.isfinite(noise_norm)):
        raise ValueError(f"noise_norm must be positive and finite, got {noise_norm}")
    d = check_dimension(d)
    bound = noise_norm / np.sqrt(d) * _kappa(p_a, family)
    return float(bound) if np.ndim(bound) == 0 else bound


def drs_radius_upper_bound(
    d: ArrayLike,
    p_a: ArrayLike = 0.999,
    noise_norm: float = 1.0,
    m: ArrayLike | None = None,
    family: str = "gaussian",
) -> float | np.ndarray:
    """DRS counterpart of :func:`rs_radius_upper_bound` for the split ``m + n = d``.

    Each sub-image is smoothed in its own space (dimension ``m`` resp. ``n = d - m``)
    with the same noise budget ``noise_norm`` as RS in its space, so each branch can
    certify at most ``U_RS(m)`` resp. ``U_RS(n)`` (both at ``p_a``). Combining them as
    in the paper's Eq. 13, ``R = (R_l + R_r) / sqrt(2)``, gives the structure of
    the paper's Eq. 15::

        U_DRS(m, n) = (U_RS(m) + U_RS(n)) / sqrt(2)
                    = noise_norm * kappa(p_a) * (1/sqrt(m) + 1/sqrt(n)) / sqrt(2),

    decaying like ``1/sqrt(m) + 1/sqrt(n)`` instead of ``1/sqrt(d)``. ``m`` defaults
    to ``d / 2`` (the checkerboard split), where ``U_DRS = 2 U_RS(d)``.

    Caveat: Eq. 13's ``/ sqrt(2)`` assumes one sigma for both branches. With the two
    per-branch sigmas this budget implies (``noise_norm / sqrt(m)`` and
    ``noise_norm / sqrt(n)``) the sound Gaussian combination is
    ``(z_l + z_r) / sqrt(sigma_l^-2 + sigma_r^-2) = 2 U_RS(d)`` for every split; the
    two agree at ``m = n`` and the formula above over-states for ``m != n``. It is a
    curve for Figure 1(b), not a certificate.
    """
    d = check_dimension(d)
    m = d / 2.0 if m is None else check_dimension(m, "m")
    if np.any(m >= d):
        raise ValueError(f"need 0 < m < d, got m={m}, d={d}")
    n = d - m
    bound = (
        np.asarray(rs_radius_upper_bound(m, p_a, noise_norm, family))
        + np.asarray(rs_radius_upper_bound(n, p_a, noise_norm, family))
    ) / math.sqrt(2.0)
    return float(bound) if np.ndim(bound) == 0 else bound


def kway_radius_upper_bound(
    d: ArrayLike, k: int, p_a: float = 0.999, noise_norm: float = 1.0
) -> float | np.ndarray:
    """The k-part counterpart (Gaussian noise, ``k`` equal parts of ``d / k`` pixels):
    the largest radius the sound k-way certificate gives when every branch reaches
    ``p_a`` with the per-part noise ``sigma = noise_norm / sqrt(d / k)``.

    It is :func:`denoised_drs.bounds.kway_radius` at ``(p_a, ..., p_a)``: a proven lower
    bound on the attack that flips the k-way vote, tight to about 0.1 percent
    (``benchmarks/bench_kway.py``). k = 1 is :func:`rs_radius_upper_bound` and k = 2
    :func:`drs_radius_upper_bound` at ``m = d / 2`` (both Gaussian); all scale like
    ``1 / sqrt(d)``, so only the factor over ``U_RS(d)`` depends on k. It is at most k,
    the paper's appendix A.3 saddle value ``sigma sum_j z_j / sqrt(k)`` here (3.95 for
    k = 4 at ``p_a = 0.999``): the price of k parts, less information per branch, is
    not in this curve.
    """
    from denoised_drs.bounds import kway_radius

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    d = check_dimension(d)
    # The radius scales with sigma = noise_norm * sqrt(k / d): compute it at sigma = 1.
    bound = noise_norm * np.sqrt(k / d) * kway_radius([p_a] * k, [1.0] * k)
    return float(bound) if np.ndim(bound) == 0 else bound


# Input dimensions of the paper's datasets, marked on the bound plot.
REFERENCE_DIMENSIONS = {"CIFAR-10": 3 * 32 * 32, "ImageNet": 3 * 224 * 224}


__all__ = [
    "BOUND_FAMILIES",
    "REFERENCE_DIMENSIONS",
    "check_dimension",
    "drs_radius_upper_bound",
    "kway_radius_upper_bound",
    "rs_radius_upper_bound",
]
