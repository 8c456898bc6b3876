"""Certified accuracy, ACR, Table-1-style tables, plots and the Figure 1(b) bound curves.

Input is the certify output in Cohen's format (docs/design.md, section 7): a tab-separated
file whose header starts ``idx label predict radius correct time``, one row per
image, ``predict = -1`` for abstain, ``correct`` 0/1 per row, ``radius`` the certified
(sound) radius. Extra columns may follow; a ``radius_paper`` column (the DRS paper's
non-certified radius for joint denoising) can be tabulated as a separate, clearly
labelled row, never in place of ``radius``.

Definitions used throughout (over all ``N`` rows of a file, abstains included):

* certified accuracy at ``r``: ``#{i : correct_i = 1 and radius_i >= r} / N``. An
  abstain has ``correct = 0`` and so never counts, not even at ``r = 0``.
* ACR (average certified radius, Zhai et al. 2020, MACER): ``sum_i radius_i *
  correct_i / N``, i.e. the mean over *all* test points, wrong and abstained ones
  contributing 0 (not the mean over correct points only).
* samples per image: the mean of the ``n_used`` column (estimation samples drawn;
  fewer than ``N`` under adaptive certification), shown when a file has it.

Computation is pure numpy; the plotting functions build matplotlib ``Figure`` objects
on the Agg canvas directly (no pyplot, no global backend switch, no display), and
only :func:`save_png` touches the file system.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import norm

from denoised_drs.atomic_file import atomic_write
from denoised_drs.results import BASE_COLUMNS, N_USED_COLUMN, PAPER_RADIUS_COLUMN

if TYPE_CHECKING:  # matplotlib is imported lazily, only by the plotting functions
    from matplotlib.figure import Figure

PAPER_RADIUS_SUFFIX = " (paper radius, not certified)"
DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)

# Python's str(timedelta), which Cohen's certify.py writes: "0:00:01.234567" or
# "2 days, 3:04:05.5".
_TIMEDELTA = re.compile(
    r"^(?:(?P<days>\d+) days?, )?(?P<h>\d+):(?P<m>[0-5]\d):(?P<s>[0-5]\d(?:\.\d+)?)$"
)


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class Results:
    """One certify output file, column by column (row ``i`` is one test image).

    ``time`` is in seconds whatever the file used. ``extra`` holds any further
    columns by name: float arrays where every value parses as a number, string
    arrays otherwise. ``radius_paper`` is validated like ``radius`` when present.
    """

    path: str
    idx: np.ndarray
    label: np.ndarray
    predict: np.ndarray
    radius: np.ndarray
    correct: np.ndarray
    time: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.idx.shape[0])

    @property
    def radius_paper(self) -> np.ndarray | None:
        """The DRS paper's (non-certified) radius column, or ``None`` if absent."""
        return self.extra.get(PAPER_RADIUS_COLUMN)

    def every(self, step: int) -> Results:
        """The rows whose ``idx`` is a multiple of ``step``.

        Results depend only on the seed and the image index, so the every-20th rows of
        an every-10th run are exactly what an every-20th run would have written.
        """
        if step < 1:
            raise ValueError(f"step must be a positive integer, got {step}")
        keep = self.idx % step == 0
        if not keep.any():
            raise ValueError(f"{self.path}: no image index is a multiple of {step}")
        return replace(
            self,
            **{name: getattr(self, name)[keep] for name in BASE_COLUMNS},
            extra={name: values[keep] for name, values in self.extra.items()},
        )


def _parse_seconds(text: str) -> float:
    match = _TIMEDELTA.match(text)
    if match:
        days = int(match["days"] or 0)
        return (
            days * 86400.0 + int(match["h"]) * 3600.0 + int(match["m"]) * 60.0 + float(match["s"])
        )
    value = float(text)  # ValueError for anything else
    if not math.isfinite(value) or value < 0:
        raise ValueError(text)
    return value


def _parse_int(text: str) -> int:
    # int() alone would reject "3.0", which some writers produce for integer columns.
    value = float(text)
    if not value.is_integer():
        raise ValueError(text)
    return int(value)


def _parse_radius(text: str) -> float:
    value = float(text)
    if math.isnan(value) or value < 0 or value == math.inf:
        raise ValueError(text)
    return value


def load_results(path: str | os.PathLike) -> Results:
    """Read and validate one certify TSV (Cohen's format, extra columns allowed).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file
    and line for anything malformed: a header that does not start with
    ``idx label predict radius correct time``, duplicate column names, a row with the
    wrong number of fields, non-numeric or non-integer values, ``predict < -1``, a
    negative, infinite or NaN radius (also in ``radius_paper``), ``correct`` other
    than 0/1 or different from ``predict == label`` (which catches running totals),
    a negative time, a repeated ``idx``, or a file without rows. Blank lines are
    skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()

    numbered = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        raise ValueError(f"{path}: empty file, expected a header {' '.join(BASE_COLUMNS)}")
    header_line, header = numbered[0][0], numbered[0][1].strip().split("\t")
    header = [name.strip() for name in header]
    if tuple(header[: len(BASE_COLUMNS)]) != BASE_COLUMNS:
        raise ValueError(
            f"{path}:{header_line}: header must start with the tab-separated columns "
            f"{' '.join(BASE_COLUMNS)}, got {' '.join(header)!r}"
        )
    if len(set(header)) != len(header):
        raise ValueError(f"{path}:{header_line}: duplicate column names in {' '.join(header)!r}")
    extra_names = header[len(BASE_COLUMNS) :]

    columns: dict[str, list] = {name: [] for name in header}
    parsers = {
        "idx": _parse_int,
        "label": _parse_int,
        "predict": _parse_int,
        "radius": _parse_radius,
        "correct": _parse_int,
        "time": _parse_seconds,
        PAPER_RADIUS_COLUMN: _parse_radius,
    }
    seen_idx: dict[int, int] = {}
    for number, line in numbered[1:]:
        fields = [value.strip() for value in line.rstrip("\r\n").split("\t")]
        if len(fields) != len(header):
            raise ValueError(
                f"{path}:{number}: expected {len(header)} tab-separated fields, got {len(fields)}"
            )
        row = {}
        for name, text in zip(header, fields):
            parser = parsers.get(name)
            if parser is None:
                row[name] = text
                continue
            try:
                row[name] = parser(text)
            except ValueError:
                raise ValueError(
                    f"{path}:{number}: bad value {text!r} in column {name!r}"
                ) from None
        if row["predict"] < -1:
            raise ValueError(
                f"{path}:{number}: predict must be a class index or -1, got {row['predict']}"
            )
        if row["correct"] not in (0, 1):
            raise ValueError(f"{path}:{number}: correct must be 0 or 1, got {row['correct']}")
        if row["correct"] != int(row["predict"] == row["label"]):
            raise ValueError(
                f"{path}:{number}: correct={row['correct']} but predict={row['predict']}, "
                f"label={row['label']}"
            )
        if row["idx"] in seen_idx:
            raise ValueError(
                f"{path}:{number}: idx {row['idx']} already appeared on line {seen_idx[row['idx']]}"
            )
        seen_idx[row["idx"]] = number
        for name in header:
            columns[name].append(row[name])

    if not columns["idx"]:
        raise ValueError(f"{path}: no result rows after the header")

    extra = {name: _extra_column(columns[name]) for name in extra_names}
    return Results(
        path=str(path),
        idx=np.asarray(columns["idx"], dtype=np.int64),
        label=np.asarray(columns["label"], dtype=np.int64),
        predict=np.asarray(columns["predict"], dtype=np.int64),
        radius=np.asarray(columns["radius"], dtype=np.float64),
        correct=np.asarray(columns["correct"], dtype=np.int64),
        time=np.asarray(columns["time"], dtype=np.float64),
        extra=extra,
    )


def _extra_column(values: list) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except ValueError:
        return np.asarray(values, dtype=str)


# --------------------------------------------------------------------------- metrics


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


# --------------------------------------------------------------------------- runs, tables


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


def _best_mask(values: np.ndarray, certified: Sequence[bool], decimals: int) -> np.ndarray:
    """Which cells to bold: the largest *shown* value among certified rows, ties all."""
    shown = np.round(values, decimals)
    eligible = np.asarray(certified, dtype=bool)
    best = np.zeros(values.shape, dtype=bool)
    if not eligible.any():
        return best
    top = shown[eligible].max(axis=0)
    best[eligible] = shown[eligible] == top
    return best


def _cells(
    table: CertifiedTable, acc_decimals: int, acr_decimals: int
) -> list[list[tuple[str, bool]]]:
    acc_best = _best_mask(table.accuracy_percent, table.certified, acc_decimals)
    acr_best = _best_mask(table.acr[:, None], table.certified, acr_decimals)[:, 0]
    rows = []
    for i in range(len(table.names)):
        row = [
            (f"{value:.{acc_decimals}f}", bool(acc_best[i, j]))
            for j, value in enumerate(table.accuracy_percent[i])
        ]
        row.append((f"{table.acr[i]:.{acr_decimals}f}", bool(acr_best[i])))
        if table.mean_n_used is not None:
            mean = table.mean_n_used[i]
            row.append(("-" if np.isnan(mean) else f"{mean:.0f}", False))
        rows.append(row)
    return rows


_MARKDOWN_SPECIAL = re.compile(r"([\\|*_`\[\]<>])")


def escape_markdown(text: str) -> str:
    """Backslash-escape characters that Markdown tables would interpret (``|``, ``*``, ...)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def escape_latex(text: str) -> str:
    """Escape LaTeX's special characters so a run name prints literally."""
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def _samples_header(table: CertifiedTable) -> list[str]:
    return [] if table.mean_n_used is None else ["Samples/img"]


def to_markdown(table: CertifiedTable, acc_decimals: int = 1, acr_decimals: int = 3) -> str:
    """Markdown table in the layout of the DRS paper's Table 1.

    Columns: ``Method``, certified accuracy (%) at each radius, ``ACR``, and the mean
    samples per image (``Samples/img``) when known. The best shown value of each
    accuracy and ACR column among certified rows is ``**bold**`` (all of them on ties).
    """
    header = ["Method"] + [f"{r:.2f}" for r in table.radii] + ["ACR"] + _samples_header(table)
    lines = [
        "| " + " | ".join(header) + " |",
        "|:---|" + "---:|" * (len(header) - 1),
    ]
    for name, cells in zip(table.names, _cells(table, acc_decimals, acr_decimals)):
        shown = [f"**{text}**" if bold else text for text, bold in cells]
        lines.append("| " + " | ".join([escape_markdown(name)] + shown) + " |")
    return "\n".join(lines) + "\n"


def to_latex(table: CertifiedTable, acc_decimals: int = 1, acr_decimals: int = 3) -> str:
    """LaTeX ``tabular`` (booktabs rules) in the layout of the DRS paper's Table 1.

    Best shown value per column among certified rows in ``\\textbf{}`` (ties all).
    Needs ``\\usepackage{booktabs}``.
    """
    samples = _samples_header(table)
    columns = "l" + "c" * len(table.radii) + "c" + "r" * len(samples)
    header = ["Method"] + [f"{r:.2f}" for r in table.radii] + ["ACR"] + samples
    lines = [
        rf"\begin{{tabular}}{{{columns}}}",
        r"\toprule",
        r" & \multicolumn{"
        + str(len(table.radii))
        + r"}{c}{Certified accuracy (\%) at $\ell_2$ radius} & "
        + " & " * len(samples)
        + r"\\",
        " & ".join(header) + r" \\",
        r"\midrule",
    ]
    for name, cells in zip(table.names, _cells(table, acc_decimals, acr_decimals)):
        shown = [rf"\textbf{{{text}}}" if bold else text for text, bold in cells]
        lines.append(" & ".join([escape_latex(name)] + shown) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plots


def radius_grid(
    runs: Sequence[Run], max_radius: float | None = None, points: int = 1001
) -> np.ndarray:
    """A fine grid ``[0, max_radius]``; by default slightly past the largest radius shown."""
    if max_radius is None:
        largest = max((float(np.max(run.radius)) for run in runs), default=0.0)
        max_radius = max(0.25, 1.05 * largest)
    if not (max_radius > 0 and math.isfinite(max_radius)):
        raise ValueError(f"max_radius must be positive, got {max_radius}")
    return np.linspace(0.0, max_radius, points)


def certified_accuracy_figure(
    runs: Sequence[Run], max_radius: float | None = None, title: str | None = None
) -> Figure:
    """Certified accuracy against radius, one labelled step curve per run.

    Non-certified (paper-radius) runs are drawn dashed. Nothing is written or shown.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not runs:
        raise ValueError("need at least one run")
    grid = radius_grid(runs, max_radius)
    figure = Figure(figsize=(6.4, 4.4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for run in runs:
        curve = certified_accuracy(run.correct, run.radius, grid)
        axes.plot(
            grid,
            curve,
            drawstyle="steps-post",
            linestyle="-" if run.certified else "--",
            label=run.name,
        )
    axes.set_xlim(0.0, grid[-1])
    axes.set_ylim(0.0, 1.0)
    axes.set_xlabel(r"$\ell_2$ radius")
    axes.set_ylabel("certified accuracy")
    if title:
        axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right")
    figure.tight_layout()
    return figure


def figure_png_bytes(figure: Figure) -> bytes:
    """Render ``figure`` to PNG in memory (so callers can validate before writing)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def save_png(figure: Figure, path: str | os.PathLike) -> None:
    """Save ``figure`` as a PNG at ``path`` (atomically)."""
    with atomic_write(path) as stream:
        stream.write(figure_png_bytes(figure))


# --------------------------------------------------------------------------- bound curves
#
# The DRS paper's Figure 1(b) plots "the upper bound of the l2 certified radius
# (calculated by Equation 4 and Equation 15) of RS and DRS with sigma = 1/sqrt(d) and
# smoothed probability = 0.999". The exact text of Eq. 4 (after Wu et al. 2021; it has a
# constant 5e-7 which, per the authors' OpenReview reply, comes from a predefined 1e-6
# error margin between estimated and true probability) was not available to us, so the
# curves below are our own derivation of the same statement; see rs_radius_upper_bound.

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


def _check_dimension(d: ArrayLike, name: str = "d") -> np.ndarray:
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
    d = _check_dimension(d)
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
    d = _check_dimension(d)
    m = d / 2.0 if m is None else _check_dimension(m, "m")
    if np.any(m >= d):
        raise ValueError(f"need 0 < m < d, got m={m}, d={d}")
    n = d - m
    bound = (
        np.asarray(rs_radius_upper_bound(m, p_a, noise_norm, family))
        + np.asarray(rs_radius_upper_bound(n, p_a, noise_norm, family))
    ) / math.sqrt(2.0)
    return float(bound) if np.ndim(bound) == 0 else bound


# Input dimensions of the paper's datasets, marked on the bound plot.
REFERENCE_DIMENSIONS = {"CIFAR-10": 3 * 32 * 32, "ImageNet": 3 * 224 * 224}


def radius_bounds_figure(
    dims: ArrayLike | None = None,
    p_a: float = 0.999,
    noise_norm: float = 1.0,
    family: str = "gaussian",
) -> Figure:
    """Figure 1(b): RS and DRS (``m = n = d/2``) radius upper bounds against ``d``.

    Log-log axes, so both curves are straight lines of slope -1/2; the CIFAR-10 and
    ImageNet input sizes are marked.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if dims is None:
        dims = np.geomspace(16, 4 * max(REFERENCE_DIMENSIONS.values()), 400)
    dims = _check_dimension(dims)
    if dims.ndim != 1 or dims.size < 2:
        raise ValueError("dims must be a 1-d array of at least two dimensions")
    rs = rs_radius_upper_bound(dims, p_a, noise_norm, family)
    drs = drs_radius_upper_bound(dims, p_a, noise_norm, family=family)

    figure = Figure(figsize=(6.4, 4.4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.loglog(dims, rs, label=r"RS: $U_{RS}(d)$")
    axes.loglog(dims, drs, label=r"DRS: $U_{DRS}(d/2, d/2)$")
    for name, dim in REFERENCE_DIMENSIONS.items():
        if dims.min() <= dim <= dims.max():
            axes.axvline(dim, color="grey", linestyle=":", linewidth=1)
            axes.annotate(name, (dim, rs.min()), rotation=90, va="bottom", ha="right", fontsize=8)
    axes.set_xlabel("input dimension $d$")
    axes.set_ylabel(r"upper bound of certified $\ell_2$ radius")
    axes.set_title(
        rf"{family} noise, $p_A = {p_a:g}$, $\sigma = {noise_norm:g}/\sqrt{{\mathrm{{dim}}}}$",
        fontsize=10,
    )
    axes.grid(alpha=0.3, which="both")
    axes.legend(loc="upper right")
    figure.tight_layout()
    return figure


__all__ = [
    "BOUND_FAMILIES",
    "DEFAULT_RADII",
    "PAPER_RADIUS_SUFFIX",
    "REFERENCE_DIMENSIONS",
    "CertifiedTable",
    "Results",
    "Run",
    "average_certified_radius",
    "certified_accuracy",
    "certified_accuracy_figure",
    "certified_table",
    "drs_radius_upper_bound",
    "escape_latex",
    "escape_markdown",
    "figure_png_bytes",
    "load_results",
    "radius_bounds_figure",
    "radius_grid",
    "rs_radius_upper_bound",
    "runs_from_results",
    "save_png",
    "to_latex",
    "to_markdown",
]
