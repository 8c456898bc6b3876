"""Certified accuracy, ACR, Table-1-style tables, plots and the Figure 1(b) bound curves.

Input is the certify output in Cohen's format (docs/design.md, section 7), whose
columns :mod:`denoised_drs.results` defines: a tab-separated file whose header starts
``idx label predict radius correct time``, one row per image, ``predict = -1`` for
abstain, ``correct`` 0/1 per row, ``radius`` the certified (sound) radius. Extra
columns may follow; a ``radius_paper`` column (the DRS paper's non-certified radius
for joint denoising) can be tabulated as a separate, clearly labelled row, never in
place of ``radius``.

One job per module:

* :mod:`.reading`: :func:`load_results`, a validated :class:`Results`, and
  :func:`load_run`, the rows so far of a run still in its part files;
* :mod:`.metrics`: certified accuracy, ACR and samples per image (definitions there),
  :class:`Run` and :func:`certified_table`;
* :mod:`.tables`: Markdown and LaTeX tables;
* :mod:`.plots`: matplotlib figures and PNG files;
* :mod:`.bound_curves`: the largest radius RS and DRS can certify against the
  input dimension.

Everything but plotting is pure numpy; matplotlib is imported only when a figure is
built, and only :func:`save_png` writes files.
"""

from denoised_drs.analysis.bound_curves import (
    BOUND_FAMILIES,
    REFERENCE_DIMENSIONS,
    drs_radius_upper_bound,
    kway_radius_upper_bound,
    rs_radius_upper_bound,
)
from denoised_drs.analysis.metrics import (
    DEFAULT_RADII,
    PAPER_RADIUS_SUFFIX,
    CertifiedTable,
    Run,
    average_certified_radius,
    certified_accuracy,
    certified_table,
    runs_from_results,
)
from denoised_drs.analysis.plots import (
    certified_accuracy_figure,
    figure_png_bytes,
    radius_bounds_figure,
    radius_grid,
    save_png,
)
from denoised_drs.analysis.reading import Results, load_results, load_run
from denoised_drs.analysis.tables import escape_latex, escape_markdown, to_latex, to_markdown

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
    "kway_radius_upper_bound",
    "escape_latex",
    "escape_markdown",
    "figure_png_bytes",
    "load_results",
    "load_run",
    "radius_bounds_figure",
    "radius_grid",
    "rs_radius_upper_bound",
    "runs_from_results",
    "save_png",
    "to_latex",
    "to_markdown",
]
