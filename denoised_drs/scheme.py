"""A smoothing scheme: a partition and the certificate rule its branches earn.

The pipeline builds one :class:`Scheme` per run; the sampling engine, adaptive
certification, the certificate and the result files take it and never ask which
kind it is. A scheme says

* how an image becomes sub-images (its :class:`~denoised_drs.partition.Partition`):
  the number of parts k and the branches' names in result files (none for RS,
  ``l r`` for two parts, ``1 .. k`` beyond);
* the certificate rule (:class:`CertificateRule`): the abstain rule and radius,
  which sigmas it accepts, and whether the paper's uncertified radius is reported
  beside it (``radius_paper``).

Rules (``p_j``: branch j's lower bound, at alpha / k; ``z_j = Phi^-1(p_j)``):

* :class:`RSRule`, one part: ``sigma z``, abstain when ``p <= 1/2``;
* :class:`IndependentRule`, each branch a function of its own sub-image: the sound
  k-way radius :func:`~denoised_drs.bounds.kway_radius` (k = 2: Eq. 13 of the DRS
  paper, ``(z_l + z_r) / sqrt(sigma_l^-2 + sigma_r^-2)``), abstain when
  ``sum_j p_j <= k/2``; for k >= 3 ``radius_paper`` holds the paper's Eq. 30 saddle
  value ``sigma sum_j z_j / sqrt(k)``, which is NOT a lower bound;
* :class:`CoupledRule`, each branch a function of the whole noisy image (joint
  denoising): the smallest r with ``sum_j Phi(z_j - r / sigma) <= k/2`` (k = 2:
  ``sigma (z_l + z_r) / 2``), one sigma for all parts; ``radius_paper`` holds the
  paper's formula on the same bounds (k = 2: ``sigma (z_l + z_r) / sqrt(2)``).

Adding a partition is one class in :mod:`denoised_drs.partition` and one registry
entry; adding a certificate rule is one subclass of :class:`CertificateRule` here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import norm

from denoised_drs.bounds import (
    coupled_radius,
    drs_abstains,
    drs_radius,
    kway_radius,
    rs_abstains,
    rs_radius,
)
from denoised_drs.modes import CertificateKind
from denoised_drs.partition import Partition

RS_COLUMNS = ("pA", "count")
TWO_PART_NAMES = ("l", "r")
MAX_SIGMA = 10.0
"""The largest noise level accepted, in the [0, 1] pixel units of the images.

The literature certifies at sigma 0.12 to 1.0 (Cohen et al.; this project's runs at
0.125 to 0.25); at sigma 1 the noise already spans the whole pixel range, and at 10 it
is ten times larger than any difference between two images. A larger sigma can only be a
mistake (e.g. a value in 0..255 units), and absurd ones (1e30) overflow the radii
downstream; it is refused, with one line, before any work."""


class CertificateRule:
    """How per-branch lower bounds become a decision: abstain or a sound radius."""

    kind: CertificateKind
    """The rule's name in certificates, result configurations and the voters' declarations."""

    def reports_paper_radius(self, num_parts: int) -> bool:
        """Whether results carry the paper's uncertified radius beside the rule's."""
        return False

    def check(self, num_parts: int, sigmas: Sequence[float]) -> None:
        """Raise ValueError if the rule does not apply to ``num_parts`` branches at ``sigmas``."""

    def decide(self, p_lower: np.ndarray, sigmas: np.ndarray) -> tuple[bool, float]:
        """``(abstain, radius)`` for per-branch lower bounds; the radius is 0.0 on abstain."""
        raise NotImplementedError

    def paper_radius(self, p_lower: np.ndarray, sigmas: np.ndarray, abstain: bool) -> float:
        """The paper's (uncertified) radius on the same bounds, where the rule reports one."""
        raise NotImplementedError


def _kway_abstains(p_lower: np.ndarray) -> bool:
    return bool(p_lower.sum() <= p_lower.size / 2)


def _saddle_radius(p_lower: np.ndarray, sigmas: np.ndarray) -> float:
    """The DRS paper's appendix A.3 (Eq. 30) value ``sigma sum_j z_j / sqrt(k)``: a
    saddle point of a non-convex problem, NOT a lower bound. Floored at 0 (a radius):
    the sum of z can be negative while the bounds still sum above k/2."""
    return max(0.0, float(sigmas[0] * norm.ppf(p_lower).sum() / np.sqrt(p_lower.size)))


class RSRule(CertificateRule):
    """Randomized smoothing: one part, ``sigma Phi^-1(p)``, abstain when ``p <= 1/2``."""

    kind = CertificateKind.RS

    def check(self, num_parts: int, sigmas: Sequence[float]) -> None:
        if num_parts != 1:
            raise ValueError(f"an rs certificate needs 1 part, the partition has {num_parts}")

    def decide(self, p_lower: np.ndarray, sigmas: np.ndarray) -> tuple[bool, float]:
        if rs_abstains(p_lower[0]):
            return True, 0.0
        return False, float(rs_radius(p_lower[0], sigmas[0]))


class IndependentRule(CertificateRule):
    """Branches that each see only their own noisy sub-image (any sigmas)."""

    kind = CertificateKind.INDEPENDENT

    def check(self, num_parts: int, sigmas: Sequence[float]) -> None:
        if num_parts < 2:
            raise ValueError(
                f"an independent certificate needs 2 or more parts, the partition has {num_parts}"
            )

    def reports_paper_radius(self, num_parts: int) -> bool:
        return num_parts >= 3  # Eq. 30's saddle value; k = 2 has the exact closed form

    def decide(self, p_lower: np.ndarray, sigmas: np.ndarray) -> tuple[bool, float]:
        if p_lower.size == 2:
            if drs_abstains(p_lower[0], p_lower[1]):
                return True, 0.0
            return False, float(drs_radius(p_lower[0], p_lower[1], sigmas[0], sigmas[1]))
        if _kway_abstains(p_lower):
            return True, 0.0
        return False, kway_radius(p_lower, sigmas)

    def paper_radius(self, p_lower: np.ndarray, sigmas: np.ndarray, abstain: bool) -> float:
        return 0.0 if abstain else _saddle_radius(p_lower, sigmas)


class CoupledRule(CertificateRule):
    """Branches that each depend on the whole noisy image (joint denoising): one sigma."""

    kind = CertificateKind.COUPLED

    def reports_paper_radius(self, num_parts: int) -> bool:
        return True

    def check(self, num_parts: int, sigmas: Sequence[float]) -> None:
        if num_parts < 2:
            raise ValueError(
                f"a coupled certificate needs 2 or more parts, the partition has {num_parts}"
            )
        if len(set(sigmas)) != 1:
            raise ValueError(f"coupled branches need a single sigma, got {tuple(sigmas)}")

    def decide(self, p_lower: np.ndarray, sigmas: np.ndarray) -> tuple[bool, float]:
        if p_lower.size == 2:
            if drs_abstains(p_lower[0], p_lower[1]):
                return True, 0.0
            return False, float(coupled_radius(p_lower[0], p_lower[1], sigmas[0]))
        if _kway_abstains(p_lower):
            return True, 0.0
        return False, kway_radius(p_lower, sigmas, coupled=True)

    def paper_radius(self, p_lower: np.ndarray, sigmas: np.ndarray, abstain: bool) -> float:
        if abstain:
            return 0.0
        if p_lower.size == 2:
            return float(drs_radius(p_lower[0], p_lower[1], sigmas[0]))
        return _saddle_radius(p_lower, sigmas)


RULES: dict[CertificateKind, type[CertificateRule]] = {
    rule.kind: rule for rule in (RSRule, IndependentRule, CoupledRule)
}


def rule_for(kind: CertificateKind | str) -> CertificateRule:
    """The rule of a certificate kind (``rs``, ``independent``, ``coupled``)."""
    return RULES[CertificateKind(kind)]()


class Scheme:
    """A partition and its certificate rule: everything that depends on "which DRS".

    ``sigmas`` (one per part) are checked against the rule. The engine asks it for the
    decision (:meth:`decide`), the certificate for the paper's radius, and the result
    files for their columns (:meth:`columns`).
    """

    def __init__(self, partition: Partition, rule: CertificateRule,
                 sigmas: Sequence[float]) -> None:
        self.partition = partition
        self.rule = rule
        self.sigmas = tuple(_sigma_value(s) for s in sigmas)
        if len(self.sigmas) != partition.num_parts:
            raise ValueError(
                f"need one sigma per part ({partition.num_parts}), got {len(self.sigmas)}"
            )
        if any(not (s > 0 and np.isfinite(s)) for s in self.sigmas):
            raise ValueError(f"sigma must be positive and finite, got {self.sigmas}")
        check_sigma_bound(self.sigmas)
        rule.check(partition.num_parts, self.sigmas)

    @property
    def num_parts(self) -> int:
        return self.partition.num_parts

    @property
    def kind(self) -> CertificateKind:
        return self.rule.kind

    @property
    def branch_names(self) -> tuple[str, ...]:
        """The branches' names in result columns: none for one part, ``l r`` for two,
        ``1 .. k`` beyond."""
        return branch_names(self.num_parts)

    def decide(self, p_lower: Sequence[float] | np.ndarray) -> tuple[bool, float]:
        """``(abstain, radius)`` of the rule on per-branch bounds in [0, 1)."""
        return _decide(self.rule, p_lower, self.sigmas)

    def paper_radius(self, p_lower: Sequence[float] | np.ndarray, abstain: bool) -> float | None:
        """The paper's uncertified radius where the rule reports one, else None."""
        if not self.rule.reports_paper_radius(self.num_parts):
            return None
        return self.rule.paper_radius(np.asarray(p_lower, dtype=np.float64),
                                      np.asarray(self.sigmas), abstain)

    def columns(self) -> tuple[str, ...]:
        """The detail columns of this scheme's result rows (see :mod:`denoised_drs.results`)."""
        return detail_columns(self.num_parts, self.rule.reports_paper_radius(self.num_parts))


def _sigma_value(sigma: object) -> float:
    """``sigma`` as a float; TypeError naming it unless it is a real number (a string,
    even "0.25", or a bool is refused rather than read)."""
    if isinstance(sigma, (str, bytes, bool)):
        raise TypeError(f"sigma must be a number, got {sigma!r}")
    try:
        return float(sigma)
    except (TypeError, ValueError):
        raise TypeError(f"sigma must be a number, got {sigma!r}") from None


def check_sigma_bound(sigmas: Sequence[float]) -> None:
    """Raise ValueError if a sigma exceeds :data:`MAX_SIGMA`."""
    if max(sigmas) > MAX_SIGMA:
        raise ValueError(
            f"sigma must be at most {MAX_SIGMA:g} (pixel values lie in [0, 1]), got "
            f"{', '.join(f'{s:g}' for s in sigmas)}"
        )


def certified_radius(
    kind: CertificateKind | str, p_lower: Sequence[float] | np.ndarray,
    sigmas: Sequence[float] | np.ndarray,
) -> tuple[bool, float]:
    """``(abstain, radius)`` of the rule ``kind`` on per-branch bounds (one per sigma),
    without a partition: the scheme of ``len(sigmas)`` parts whose rule is ``kind``.

    Each bound must lie in [0, 1): a lower bound from finitely many samples is below 1
    (see :func:`~denoised_drs.bounds.clopper_pearson_lower`), and 1 or NaN would give an
    infinite or undefined radius.
    """
    rule = rule_for(kind)
    sigmas = np.atleast_1d(np.asarray(sigmas, dtype=np.float64))
    rule.check(sigmas.size, tuple(sigmas))
    return _decide(rule, p_lower, sigmas)


def _decide(rule: CertificateRule, p_lower: Sequence[float] | np.ndarray,
            sigmas: Sequence[float] | np.ndarray) -> tuple[bool, float]:
    """The rule's decision on bounds checked here; the rule must already have accepted
    ``sigmas`` (:meth:`CertificateRule.check`: a Scheme at construction)."""
    sigmas = np.atleast_1d(np.asarray(sigmas, dtype=np.float64))
    p_lower = np.atleast_1d(np.asarray(p_lower, dtype=np.float64))
    if p_lower.shape != sigmas.shape or p_lower.ndim != 1:
        raise ValueError(
            f"need one bound per sigma, got {p_lower.shape} bound(s) and {sigmas.shape} sigma(s)"
        )
    if np.any(~((p_lower >= 0) & (p_lower < 1))):
        raise ValueError(f"probability lower bounds must lie in [0, 1), got {p_lower}")
    return rule.decide(p_lower, sigmas)


def branch_names(num_parts: int) -> tuple[str, ...]:
    """Branch names in result columns: none for one part, ``l r`` for two, ``1 .. k`` beyond."""
    if num_parts == 1:
        return ()
    if num_parts == 2:
        return TWO_PART_NAMES
    return tuple(str(j) for j in range(1, num_parts + 1))


def detail_columns(num_parts: int, paper_radius: bool) -> tuple[str, ...]:
    """``pA count`` (one part) or ``pA_<b> ... count_<b> ...`` per branch, then
    ``radius_paper`` where the rule reports it."""
    names = branch_names(num_parts)
    if not names:
        return RS_COLUMNS
    columns = (*(f"pA_{b}" for b in names), *(f"count_{b}" for b in names))
    return (*columns, "radius_paper") if paper_radius else columns


__all__ = [
    "CertificateRule",
    "CoupledRule",
    "IndependentRule",
    "MAX_SIGMA",
    "RULES",
    "RSRule",
    "Scheme",
    "branch_names",
    "certified_radius",
    "check_sigma_bound",
    "detail_columns",
    "rule_for",
]
