"""Certified accuracy, average certified radius (ACR) and samples per image.

Definitions (over all ``N`` rows of a result file, abstains included):

* certified accuracy at ``r``: ``#{i : correct_i = 1 and radius_i >= r} / N``. An
  abstain has ``correct = 0`` and so never counts, not even at ``r = 0``.
* ACR (average certified radius, Zhai et al. 2020, MACER): ``sum_i radius_i *
  correct_i / N``, i.e. the mean over *all* test points, wrong and abstained ones
  contributing 0 (not the mean over correct points only).
* samples per image: the mean of the ``n_used`` column (estimation samples drawn;
  fewer than ``N`` under adaptive certification), shown when a file has it.

A :class:`Run` is one row of a table or one curve of a plot; :func:`certified_table`
computes the numbers of a Table-1-style table, which :mod:`.tables` formats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from denoised_drs.analysis.reading import Results
from denoised_drs.results import N_USED_COLUMN

PAPER_RADIUS_SUFFIX = " (paper radius, not certified)"
DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def _check_correct_radius(correct: ArrayLike, radius: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    correct = np.asarray(correct)
    radius = np.asarray(radius, dtype=np.float64)
    if correct.ndim != 1 or correct.shape != radius.shape or correct.size == 0:
        raise ValueError(
            f"correct and radius must be non-empty 1-d arrays of one length, got shapes "
            f"{correct.shape} and {radius.shape}"
        )
    if not np.all((correct == 0) | (correct == 1)):
        raise ValueError("correct must hold only 0 and 1")
    if np.any(np.isnan(radius)) or np.any(radius < 0):
        raise ValueError("radius must be non-negative")
    return correct.astype(bool), radius


def _check_radii(radii: ArrayLike) -> np.ndarray:
    radii = np.atleast_1d(np.asarray(radii, dtype=np.float64))
    if radii.ndim != 1 or np.any(~np.isfinite(radii)) or np.any(radii < 0):
        raise ValueError(f"radii must be finite and non-negative, got {radii}")
    return radii


def certified_accuracy(correct: ArrayLike, radius: ArrayLike, radii: ArrayLike) -> np.ndarray:
    """Fraction of all rows with ``correct == 1`` and ``radius >= r``, for each ``r``.

    The denominator is the number of rows, abstains and wrong predictions included;
    ``radius >= r`` is inclusive, so a point certified at exactly ``r`` counts at ``r``.
    Returns an array shaped like ``radii`` (1-d), values in [0, 1].
    """
    correct, radius = _check_correct_radius(correct, radius)
    radii = _check_radii(radii)
    hits = correct[None, :] & (radius[None, :] >= radii[:, None])
    return hits.mean(axis=1)


def average_certified_radius(correct: ArrayLike, radius: ArrayLike) -> float:
    """ACR: ``sum(radius * correct) / N`` over all ``N`` rows (Zhai et al. 2020).

    Wrong predictions and abstains contribute 0 but do count in ``N``.
    """
    correct, radius = _check_correct_radius(correct, radius)
    return float(np.where(correct, radius, 0.0).sum() / correct.size)


@dataclass(frozen=True)
class Run:
    """One row of a table / one line of a plot.

    ``certified`` is False for rows built from a non-certified radius (the DRS
    paper's ``radius_paper``); such rows are shown but never bolded as best.
    ``n_used`` holds the estimation samples drawn per image, when known.
    """

    name: str
    correct: np.ndarray
    radius: np.ndarray
    certified: bool = True
    n_used: np.ndarray | None = None


def runs_from_results(results: Results, name: str, paper_radius: bool = False) -> list[Run]:
    """The certified run of ``results``; with ``paper_radius`` also its paper-radius row.

    The paper-radius row is named ``name + " (paper radius, not certified)"`` and
    marked ``certified=False``. Asking for it on a file without a ``radius_paper``
    column returns only the certified run (nothing to show), so mixed RS/DRS runs can
    be tabulated together.
    """
    n_used = results.extra.get(N_USED_COLUMN)
    if n_used is not None and n_used.dtype.kind != "f":
        raise ValueError(f"{results.path}: the {N_USED_COLUMN} column must hold numbers")
    runs = [Run(name, results.correct, results.radius, n_used=n_used)]
    if paper_radius and results.radius_paper is not None:
        runs.append(
            Run(name + PAPER_RADIUS_SUFFIX, results.correct, results.radius_paper, False, n_used)
        )
    return runs


@dataclass(frozen=True)
class CertifiedTable:
    """Certified accuracy (%) per run and radius, and ACR per run."""

    names: tuple[str, ...]
    radii: np.ndarray
    accuracy_percent: np.ndarray  # (runs, radii)
    acr: np.ndarray  # (runs,)
    certified: tuple[bool, ...]
    mean_n_used: np.ndarray | None = None  # (runs,), NaN where unknown; None if never known


def certified_table(runs: Sequence[Run], radii: ArrayLike = DEFAULT_RADII) -> CertifiedTable:
    """Compute the numbers of a Table-1-style table (one row per run)."""
    if not runs:
        raise ValueError("need at least one run")
    if not all(isinstance(run, Run) for run in runs):
        raise TypeError(f"runs must be Run objects, got {sorted({type(r).__name__ for r in runs})}")
    radii = _check_radii(radii)
    accuracy = np.stack(
        [100.0 * certified_accuracy(run.correct, run.radius, radii) for run in runs]
    )
    acr = np.asarray([average_certified_radius(run.correct, run.radius) for run in runs])
    mean_n_used = None
    if any(run.n_used is not None for run in runs):
        mean_n_used = np.asarray(
            [np.nan if run.n_used is None else float(np.mean(run.n_used)) for run in runs]
        )
    return CertifiedTable(
        names=tuple(run.name for run in runs),
        radii=radii,
        accuracy_percent=accuracy,
        acr=acr,
        certified=tuple(run.certified for run in runs),
        mean_n_used=mean_n_used,
    )


__all__ = [
    "DEFAULT_RADII",
    "PAPER_RADIUS_SUFFIX",
    "CertifiedTable",
    "Run",
    "average_certified_radius",
    "certified_accuracy",
    "certified_table",
    "runs_from_results",
]
