"""Markdown and LaTeX tables in the layout of the DRS paper's Table 1.

One row per run: certified accuracy (%) at each radius, ACR, and the mean samples per
image when known. The best shown value of each accuracy and ACR column among
certified rows is bold (all of them on ties); a non-certified (paper-radius) row is
shown but never bold.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from denoised_drs.analysis.metrics import CertifiedTable


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


__all__ = ["escape_latex", "escape_markdown", "to_latex", "to_markdown"]
