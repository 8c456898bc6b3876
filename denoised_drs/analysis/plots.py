"""Plots as matplotlib ``Figure`` objects, and writing them as PNG files.

The figures are built on the Agg canvas directly (no pyplot, no global backend
switch, no display); matplotlib is imported only when a figure is built. Only
:func:`save_png` touches the file system (through the package's one atomic writer).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from denoised_drs.analysis.bound_curves import (
    REFERENCE_DIMENSIONS,
    check_dimension,
    drs_radius_upper_bound,
    kway_radius_upper_bound,
    rs_radius_upper_bound,
)
from denoised_drs.analysis.metrics import Run, certified_accuracy
from denoised_drs.atomic_file import atomic_write

if TYPE_CHECKING:  # matplotlib is imported lazily, only by the plotting functions
    from matplotlib.figure import Figure


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


def radius_bounds_figure(
    dims: ArrayLike | None = None,
    p_a: float = 0.999,
    noise_norm: float = 1.0,
    family: str = "gaussian",
    parts: Sequence[int] | None = None,
) -> Figure:
    """Figure 1(b): RS and DRS (``m = n = d/2``) radius upper bounds against ``d``.

    With ``parts`` (Gaussian noise only) the curves are those of k equal parts for each
    k listed (:func:`~denoised_drs.analysis.bound_curves.kway_radius_upper_bound`;
    k = 1 is RS, k = 2 DRS). Log-log axes, so every curve is a straight line of slope
    -1/2; the CIFAR-10 and ImageNet input sizes are marked.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if dims is None:
        dims = np.geomspace(16, 4 * max(REFERENCE_DIMENSIONS.values()), 400)
    dims = check_dimension(dims)
    if dims.ndim != 1 or dims.size < 2:
        raise ValueError("dims must be a 1-d array of at least two dimensions")
    rs = rs_radius_upper_bound(dims, p_a, noise_norm, family)
    if parts is None:
        curves = [(r"RS: $U_{RS}(d)$", rs),
                  (r"DRS: $U_{DRS}(d/2, d/2)$",
                   drs_radius_upper_bound(dims, p_a, noise_norm, family=family))]
    else:
        if family != "gaussian":
            raise ValueError("k-part curves are for Gaussian noise (family 'gaussian')")
        curves = [(rf"$k = {k}$ parts of $d/{k}$",
                   kway_radius_upper_bound(dims, k, p_a, noise_norm)) for k in parts]

    figure = Figure(figsize=(6.4, 4.4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, curve in curves:
        axes.loglog(dims, curve, label=label)
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
    "certified_accuracy_figure",
    "figure_png_bytes",
    "radius_bounds_figure",
    "radius_grid",
    "save_png",
]
