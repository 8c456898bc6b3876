"""A certificate: what CERTIFY returns for one image, and how it is assembled.

Shared by the fixed-sample engine (:mod:`denoised_drs.smoothing`) and adaptive
certification (:mod:`denoised_drs.adaptive`), so both report the same fields from
the same rules. The sampling stages are part of every noise seed key
(:mod:`denoised_drs.noise`): selection, estimation and PREDICT's samples never share a
noise block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from denoised_drs.errors import is_integer, is_real

if TYPE_CHECKING:
    from denoised_drs.scheme import Scheme

ABSTAIN = -1
"""The prediction of an abstention (Cohen's ``Smooth.ABSTAIN``)."""

SELECTION, ESTIMATION, PREDICTION = 0, 1, 2
"""Sampling stages, in the noise seed key."""

MAX_SAMPLES = 10**9
"""The most samples per image of any one stage (``n0``, ``n``, PREDICT's ``n``).

Ten thousand times the DRS paper's n = 100,000 and a thousand times the largest n of
Cohen et al. (10^6), yet still a run that can finish: at 10,000 samples a second
(a small classifier on one GPU) 10^9 samples take about 28 hours per image. It stays
below a noise stream's 2^32 samples (:mod:`denoised_drs.noise`), so an accepted run
never runs out of noise midway, and every count (at most ``MAX_SAMPLES`` times the
number of branches) stays far from int64 overflow. A larger request (e.g. 2^63, which
would sample forever) is refused before any work."""


@dataclass(frozen=True)
class Certificate:
    """The outcome of CERTIFY for one image.

    ``prediction`` is the certified class or -1 (abstain); ``radius`` the sound l2
    radius (0.0 when abstaining). ``top_class`` is the class chosen from the
    selection samples (reported even when abstaining), ``counts_top[j]`` how many of
    the ``n`` estimation samples branch ``j`` gave it, and ``p_lower[j]`` the
    Clopper-Pearson lower bound on that probability at ``alpha_look / num_branches``.
    ``radius_paper`` is set where the scheme's rule reports the paper's uncertified
    radius (:meth:`~denoised_drs.scheme.Scheme.paper_radius`: coupled branches, the
    DRS paper's ``sigma (z_l + z_r) / sqrt(2)``; three or more independent branches,
    its Eq. 30 saddle value), which is NOT certified.
    ``nonfinite`` counts the votes (sample, branch) whose logits held a NaN or
    had no finite maximum (:data:`~denoised_drs.voters.NONFINITE_VOTE`),
    over the ``n0`` selection samples and every estimation sample drawn (``n_used``)
    of every branch; none counts for any class, so each estimation one counts
    against the top class. ``n_used`` is the number of estimation samples drawn
    (``n`` for :meth:`SmoothedClassifier.certify`, at most the maximum adaptively).
    ``alpha_look`` is the share of ``alpha`` that the look behind the bounds spent
    (its ``n`` samples are :attr:`n_look`): each ``p_lower[j]`` is the Clopper-Pearson
    bound of ``counts_top[j]`` out of ``n_look`` at ``alpha_look / num_branches``, so
    the row can be recomputed. Fixed-n CERTIFY is one look: ``alpha_look == alpha``.

    Unpacks like Cohen's ``(prediction, radius)`` tuple.
    """

    prediction: int
    radius: float
    top_class: int
    counts_top: tuple[int, ...]
    p_lower: tuple[float, ...]
    n0: int
    n: int
    alpha: float
    kind: str
    alpha_look: float
    radius_paper: float | None = None
    nonfinite: int = 0
    n_used: int = 0

    @property
    def n_look(self) -> int:
        """The estimation samples of the look the bounds come from (the same as ``n``;
        named beside ``alpha_look``)."""
        return self.n

    @property
    def abstained(self) -> bool:
        return self.prediction == ABSTAIN

    def __iter__(self):
        yield self.prediction
        yield self.radius


def check_counts(n0: int | None, n: int, alpha: float, batch_size: int) -> None:
    """Raise ValueError unless the sample counts lie in [1, MAX_SAMPLES], alpha in (0, 1)
    and the batch size is positive."""
    for name, value in (("n0", n0), ("n", n), ("batch_size", batch_size)):
        if value is not None and not is_integer(value):
            raise TypeError(f"{name} must be an integer, got {value!r}")
    if not is_real(alpha):
        raise TypeError(f"alpha must be a number, got {alpha!r}")
    if n < 1 or (n0 is not None and n0 < 1):
        raise ValueError(f"sample counts must be positive, got n0={n0}, n={n}")
    if n > MAX_SAMPLES or (n0 is not None and n0 > MAX_SAMPLES):
        raise ValueError(
            f"sample counts must be at most {MAX_SAMPLES:,} per image, got n0={n0}, n={n}"
        )
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")


def build_certificate(
    scheme: Scheme,
    abstain: bool,
    radius: float,
    top_class: int,
    counts_top: Sequence[int] | np.ndarray,
    p_lower: Sequence[float] | np.ndarray,
    *,
    n0: int,
    n: int,
    alpha: float,
    alpha_look: float,
    nonfinite: int,
    n_used: int,
) -> Certificate:
    """The :class:`Certificate` of a smoothed classifier of ``scheme``, from a decision
    already taken on its bounds.

    ``abstain`` and ``radius`` are the outcome (the radius 0.0 when abstaining);
    ``counts_top``, ``p_lower`` and ``n`` the per-branch counts and bounds behind it,
    the bounds taken at ``alpha_look / num_branches`` (the look's share of ``alpha``).
    Where the scheme's rule reports one, ``radius_paper`` is added: the paper's
    formula on the same bounds (0.0 when abstaining), which is NOT certified.
    """
    return Certificate(
        prediction=ABSTAIN if abstain else top_class,
        radius=radius,
        top_class=top_class,
        counts_top=tuple(int(c) for c in counts_top),
        p_lower=tuple(float(p) for p in p_lower),
        n0=n0,
        n=n,
        alpha=alpha,
        kind=scheme.kind.value,
        alpha_look=float(alpha_look),
        radius_paper=scheme.paper_radius(p_lower, abstain),
        nonfinite=nonfinite,
        n_used=n_used,
    )
