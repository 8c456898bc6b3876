"""Adaptive certification: Cohen's CERTIFY with early stopping, sound under repeated looks.

:func:`certify_adaptive` (called as :meth:`SmoothedClassifier.certify_adaptive`)
gives the certificate of :meth:`~denoised_drs.smoothing.SmoothedClassifier.certify`
from far fewer samples when the outcome is clear early: a misclassified or
abstaining image, or one certified beyond every radius asked for. It works for
every kind the engine has (RS, DRS with independent, coupled or split-denoised
branches, ensembles), since it only reads the engine's vote counts.

Procedure
---------
1. *Selection*: the top class comes from ``n0`` selection samples, exactly as in
   ``certify`` (same noise stream). An unlucky selection costs power, never soundness.
2. *Looks*: estimation samples are drawn in stages up to the look sizes
   ``n_1 < n_2 < ... < n_K = n_max`` of :func:`look_schedule`, a geometric schedule
   (factor :data:`GROWTH`) fixed in advance from ``n0`` and ``n_max`` alone. Look
   ``k`` reads the first ``n_k`` samples of the estimation stream, so the result
   depends on the seed (and through it the image index) only, never on the batch size.
3. *Budget*: :func:`spending` gives look ``k`` the share ``alpha_k`` of ``alpha``,
   ``sum_k alpha_k = alpha``: the final look at ``n_max`` gets :data:`FINAL_SHARE`
   (so fixed-``N`` power is nearly kept), the earlier looks split the rest evenly.
   At look ``k`` each branch's Clopper-Pearson lower bound is taken at
   ``alpha_k / num_branches`` (DRS: both branches read the same samples, so the two
   bounds share the look's budget, as in ``certify``), and the radius of the
   certificate kind is computed from them.
4. *Report*: the largest radius over the looks made (without ``radii``), or the
   largest target radius that any look certified (with ``radii``; abstain when none).

Guarantee (the same as ``certify``): with probability at least ``1 - alpha``, if the
prediction is not -1, the smoothed classifier predicts it everywhere within the
reported radius. Proof: consider all ``K`` looks as if sampling never stopped.
Each look's sample size ``n_k`` is fixed in advance, so its bound on branch ``j``
exceeds the true ``p_j`` with probability at most ``alpha_k / num_branches``; by the
union bound, with probability at least ``1 - sum_k alpha_k = 1 - alpha`` no bound
of any look exceeds the truth, and then every radius computed at any look is sound,
whichever looks were actually made. The classic mistake, a Clopper-Pearson bound at
the full ``alpha`` after every batch, spends ``K * alpha`` and over-certifies; here
no look's bound is ever taken at more than its share (tests/test_adaptive.py shows
the difference).

Which statistic does what
-------------------------
* *In the budget* (the only source of a reported radius): the Clopper-Pearson lower
  bounds at ``alpha_k / num_branches`` of step 3.
* *Stopping only* (any statistic is allowed: a wrong stop lowers a radius, it never
  makes one unsound): the *reach*, the radius the final look would give if each
  branch's top-class frequency at ``n_max`` equalled its Clopper-Pearson *upper*
  bound at level :data:`STOP_LEVEL` from the samples so far. Sampling stops after
  look ``k`` when

  - with ``radii`` (ascending targets): every target is decided, i.e. already
    certified, or above the reach (out of reach);
  - without ``radii``: the reach exceeds the best radius so far by at most the
    ``tolerance`` (l2 radius units; by default ``TOLERANCE_Z * max(sigmas)``, 0.0125
    at sigma 0.25). A larger tolerance stops sooner and gives up more radius; it
    never touches the guarantee.

  The reach is optimistic by construction (an upper bound, and the final look's
  budget), so a stop costs at most about the tolerance, or a target whose final
  certification was unlikely. Sampling always stops at ``n_max``.

What no procedure can save without ``radii``: an image whose ``n`` votes all go to
the top class is certified at most ``sigma * Phi^-1(alpha^(1/n))`` by *any* sound
procedure (for ``p`` above ``alpha^(1/n)``, ``n`` unanimous votes have probability
above ``alpha``), and that bound keeps growing with ``n`` (0.883 at 33,333 samples,
0.953 at 100,000, sigma 0.25, alpha 0.001). On data where most images are unanimous,
radii close to those of ``n_max`` samples need close to ``n_max`` samples
(results/README.md, "Adaptive without radii: the tolerance").

References: Horvath et al., "Boosting Randomized Smoothing with Variance Reduced
Classifiers", ICLR 2022 (adaptive sampling for predetermined radii, alpha spread
over stages); Chen et al., "Input-Specific Robustness Certification for Randomized
Smoothing", 2022 (per-input sample sizes at a bounded radius loss); Voracek and
Hein, "Improving the Accuracy-Robustness Trade-off of Randomized Smoothing with
Confidence Sequences", NeurIPS 2024 (validity at every look).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from denoised_drs.bounds import (
    branch_alpha,
    clopper_pearson_lower,
    clopper_pearson_upper,
)
from denoised_drs.certificate import (
    ABSTAIN,
    ESTIMATION,
    SELECTION,
    Certificate,
    build_certificate,
    check_counts,
)
from denoised_drs.scheme import Scheme

GROWTH = 1.5
"""Each look has about GROWTH times the samples of the one before."""
FIRST_LOOK = 100
"""The first look has max(n0, FIRST_LOOK) samples (or n_max if fewer)."""
FINAL_SHARE = 0.75
"""Share of alpha spent on the final look at n_max (all of it when it is the only look)."""
STOP_LEVEL = 0.01
"""Level of the upper bounds behind the stopping rules (not part of the guarantee)."""
TOLERANCE_Z = 0.05
"""Without radii, by default: stop once more samples are unlikely to add TOLERANCE_Z * sigma
of radius (the largest sigma of the branches)."""


def look_schedule(n0: int, n_max: int) -> tuple[int, ...]:
    """Cumulative estimation sample counts of the looks; the last is ``n_max``.

    Depends on ``n0`` and ``n_max`` only (never on the data or the batch size), as
    the guarantee requires.
    """
    if n0 < 1 or n_max < 1:
        raise ValueError(f"sample counts must be positive, got n0={n0}, n_max={n_max}")
    looks = [min(n_max, max(n0, FIRST_LOOK))]
    # Early looks grow by GROWTH; one that would land within a factor sqrt(GROWTH) of
    # n_max is dropped, so the final look is not a near-copy of the one before.
    while looks[-1] < n_max:
        grown = math.ceil(looks[-1] * GROWTH)
        looks.append(grown if grown * math.sqrt(GROWTH) <= n_max else n_max)
    return tuple(looks)


def spending(alpha: float, num_looks: int) -> np.ndarray:
    """The budget ``alpha_k`` of each look: FINAL_SHARE on the last, the rest evenly;
    sums to alpha."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if num_looks < 1:
        raise ValueError(f"need at least one look, got {num_looks}")
    if num_looks == 1:
        return np.array([alpha])
    early = np.full(num_looks - 1, alpha * (1.0 - FINAL_SHARE) / (num_looks - 1))
    return np.append(early, alpha * FINAL_SHARE)


def check_radii(radii: Sequence[float] | None) -> tuple[float, ...] | None:
    """``radii`` as a tuple of floats, or ValueError unless a non-empty sequence of real
    numbers (not bools or strings), positive, finite as floats, ascending."""
    if radii is None:
        return None
    if not isinstance(radii, (Sequence, np.ndarray)) or isinstance(radii, (str, bytes)):
        raise ValueError(f"radii must be a list of numbers, got {radii!r}")
    if any(isinstance(r, (bool, np.bool_)) or not isinstance(r, numbers.Real) for r in radii):
        raise ValueError(f"radii must be a list of numbers, got {list(radii)}")
    try:
        values = tuple(float(r) for r in radii)
    except OverflowError:  # an integer beyond any float, e.g. 10**400
        raise ValueError(f"radii must be positive finite numbers, got {list(radii)}") from None
    if not values or any(not (math.isfinite(r) and r > 0) for r in values):
        raise ValueError(f"radii must be positive finite numbers, got {list(radii)}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"radii must be strictly ascending, got {list(radii)}")
    return values


def check_tolerance(tolerance: float | None, radii: Sequence[float] | None) -> float | None:
    """``tolerance`` as a float, or ValueError unless positive and finite, and given
    without ``radii`` (with radii the targets decide when to stop)."""
    if tolerance is None:
        return None
    if isinstance(tolerance, (bool, np.bool_)) or not isinstance(tolerance, numbers.Real):
        raise ValueError(f"tolerance must be a number, got {tolerance!r}")
    try:
        value = float(tolerance)
    except OverflowError:
        value = math.inf
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"tolerance must be a positive finite radius, got {value:g}")
    if radii is not None:
        raise ValueError("tolerance applies without radii only (with radii the targets "
                         "decide when sampling stops)")
    return value


@dataclass(frozen=True)
class _Look:
    """The in-budget bounds of one look and the radius they certify."""

    n: int
    alpha: float
    counts_top: np.ndarray
    p_lower: np.ndarray
    abstain: bool
    radius: float


def _reach(counts_top: np.ndarray, n: int, n_max: int, final_alpha: float,
           scheme: Scheme) -> float:
    """Stopping statistic (not in the budget): the final look's radius if each branch's
    frequency at n_max were its upper bound at STOP_LEVEL from the ``n`` samples so far."""
    hoped = np.minimum(n_max, np.ceil(clopper_pearson_upper(counts_top, n, STOP_LEVEL) * n_max))
    p_final = np.atleast_1d(clopper_pearson_lower(hoped, n_max, final_alpha))
    return _score(*scheme.decide(p_final))


def _score(abstain: bool, radius: float) -> float:
    """A radius on one scale with abstaining, which ranks below every certified radius."""
    return -1.0 if abstain else radius


def _decided(best: float, reach: float, radii: tuple[float, ...] | None, tolerance: float) -> bool:
    if radii is None:
        return reach - best <= tolerance
    return all(r <= best or r > reach for r in radii)


def certify_at_looks(
    smoothed,
    x: torch.Tensor,
    n0: int,
    looks: Sequence[int],
    alpha: float,
    alphas: Sequence[float],
    batch_size: int,
    seed: int | Sequence[int] = 0,
    stop: Callable[[np.ndarray, int, float], bool] | None = None,
) -> Certificate:
    """CERTIFY of ``x`` by ``smoothed`` (a SmoothedClassifier) reading the estimation
    samples at the looks ``looks`` (ascending cumulative counts), each with its share
    ``alphas[k]`` of ``alpha`` (the shares sum to it): the one certification procedure.

    Fixed-n CERTIFY is one look at ``n`` with all of alpha; adaptive certification
    the looks of :func:`look_schedule` with :func:`spending`'s shares. After each look
    but the last, ``stop(counts_top, n, best)`` (if given) may end sampling: it sees
    the top class's counts per branch after ``n`` samples and the best score so far
    (-1 for abstain), and can only lower a radius, never make one unsound. The
    certificate reports the best look (its counts, bounds, ``n`` and share
    ``alpha_look``), ``n_used`` the
    estimation samples drawn, and ``nonfinite`` the non-finite votes over the
    selection and every estimation sample drawn.
    """
    scheme: Scheme = smoothed.scheme
    branches = scheme.num_parts
    selection = smoothed.sample_counts(x, n0, batch_size, seed, SELECTION)
    top_class = int(selection.sum(axis=0).argmax())
    counts_top = np.zeros(branches, dtype=np.int64)
    nonfinite = n0 * branches - int(selection.sum())
    drawn = 0
    best: _Look | None = None
    for n, alpha_k in zip(looks, alphas):
        counts = smoothed.sample_counts(x, n - drawn, batch_size, seed, ESTIMATION, start=drawn)
        nonfinite += (n - drawn) * branches - int(counts.sum())
        counts_top = counts_top + counts[:, top_class]
        drawn = n
        p_lower = np.atleast_1d(clopper_pearson_lower(counts_top, n,
                                                      branch_alpha(alpha_k, branches)))
        abstain, radius = scheme.decide(p_lower)
        look = _Look(n, float(alpha_k), counts_top, p_lower, abstain, radius)
        if best is None or _score(abstain, radius) > _score(best.abstain, best.radius):
            best = look
        if n == looks[-1] or (stop is not None and stop(counts_top, n,
                                                        _score(best.abstain, best.radius))):
            break
    return build_certificate(
        scheme,
        best.abstain,
        best.radius,
        top_class,
        best.counts_top,
        best.p_lower,
        n0=n0,
        n=best.n,
        alpha=alpha,
        alpha_look=best.alpha,
        nonfinite=nonfinite,
        n_used=drawn,
    )


def certify_adaptive(
    smoothed,
    x: torch.Tensor,
    n0: int,
    n_max: int,
    alpha: float,
    batch_size: int,
    seed: int | Sequence[int] = 0,
    radii: Sequence[float] | None = None,
    tolerance: float | None = None,
) -> Certificate:
    """Adaptive CERTIFY of ``x`` by ``smoothed`` (a SmoothedClassifier); see the module docstring.

    Returns a :class:`~denoised_drs.certificate.Certificate` whose ``counts_top``,
    ``p_lower`` and ``n`` (``n_look``) are those of the look the radius comes from
    (bounds at that look's ``alpha_k / num_branches``; ``alpha_look`` is that
    ``alpha_k``), ``n_used`` the estimation samples drawn
    and ``nonfinite`` the non-finite votes among the selection and estimation samples
    (sample x branch, counted in no class, hence against the top class). With
    ``radii`` the radius is the largest target certified, and the prediction -1 when
    none is. ``tolerance`` (without ``radii`` only; default ``TOLERANCE_Z *
    max(sigmas)``) is the radius that further samples may still be expected to add
    when sampling stops: a stopping rule, not part of the guarantee.
    """
    check_counts(n0, n_max, alpha, batch_size)
    radii = check_radii(radii)
    tolerance = check_tolerance(tolerance, radii)
    scheme: Scheme = smoothed.scheme
    looks = look_schedule(n0, n_max)
    alphas = spending(alpha, len(looks))
    if tolerance is None:
        tolerance = TOLERANCE_Z * max(scheme.sigmas)
    final_alpha = branch_alpha(alphas[-1], scheme.num_parts)

    def decided(counts_top: np.ndarray, n: int, best: float) -> bool:
        reach = _reach(counts_top, n, n_max, final_alpha, scheme)
        return _decided(best, reach, radii, tolerance)

    cert = certify_at_looks(smoothed, x, n0, looks, alpha, alphas, batch_size, seed, decided)
    if radii is None or cert.abstained:
        return cert
    certified = [r for r in radii if r <= cert.radius]
    if certified:
        return replace(cert, radius=certified[-1])
    return replace(cert, prediction=ABSTAIN, radius=0.0,
                   radius_paper=None if cert.radius_paper is None else 0.0)


__all__ = ["FINAL_SHARE", "GROWTH", "STOP_LEVEL", "TOLERANCE_Z", "certify_adaptive",
           "certify_at_looks", "check_radii", "check_tolerance", "look_schedule", "spending"]
