"""Result files: Cohen's TSV format, written row by row, resumable, merged atomically.

This module is the one home of the result schema: the columns, the record behind a
row (:class:`CertifyRecord`), the writer, and the column names that
:mod:`denoised_drs.analysis` reads.

A run writes one *part* file per process (``OUT.part<rank>``), one row per image,
flushed as soon as the image is certified, so a killed run loses at most the image
in flight. Resuming reads every part and the final file to find the images already
done; a torn last line (the process died mid-write) is dropped. At the end the
main process merges everything into ``OUT``, sorted by ``idx``, through a temporary
file and an atomic rename: ``OUT`` is either absent or complete, never corrupt.

Columns (docs/design.md, section 7): ``idx label predict radius correct time`` and then
the details of the run's scheme (:meth:`denoised_drs.scheme.Scheme.columns`): ``pA
count`` (RS), ``pA_l pA_r count_l count_r`` (two parts) or ``pA_1 ... pA_k count_1 ...
count_k`` (k >= 3 parts), plus ``radius_paper`` where the scheme reports the paper's
uncertified radius (joint denoising; k >= 3 independent parts: Eq. 30), then
``nonfinite`` (votes whose logits were not finite, counted against the top class)
and ``n_used`` (estimation samples drawn: ``N``, or fewer under adaptive sampling).
Radii are rounded *down* to 6 decimals, so a printed radius never exceeds the
certified one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from denoised_drs.atomic_file import atomic_write

if TYPE_CHECKING:  # only read, never built here: results.py stays free of the model code
    from denoised_drs.certificate import Certificate

BASE_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
"""Cohen's columns, which every result file starts with (and analysis requires)."""
PAPER_RADIUS_COLUMN = "radius_paper"
"""The DRS paper's radius for joint denoising: NOT certified, tabulated apart."""
N_USED_COLUMN = "n_used"
TRAILING_COLUMNS = ("nonfinite", N_USED_COLUMN)


@dataclass(frozen=True)
class CertifyRecord:
    """One row of a certification result (Cohen's columns plus the details behind them)."""

    idx: int
    label: int
    predict: int
    radius: float
    correct: int
    time: float
    p_lower: tuple[float, ...]
    counts_top: tuple[int, ...]
    radius_paper: float | None = None
    nonfinite: int = 0
    n_used: int = 0

    @classmethod
    def from_certificate(cls, idx: int, label: int, cert: Certificate,
                         seconds: float) -> CertifyRecord:
        return cls(
            idx=idx,
            label=label,
            predict=cert.prediction,
            radius=cert.radius,
            correct=int(cert.prediction == label),
            time=seconds,
            p_lower=cert.p_lower,
            counts_top=cert.counts_top,
            radius_paper=cert.radius_paper,
            nonfinite=cert.nonfinite,
            n_used=cert.n_used,
        )


def columns_for(details: Sequence[str]) -> tuple[str, ...]:
    """The header of a result file whose scheme has the detail columns ``details``
    (:meth:`denoised_drs.scheme.Scheme.columns`)."""
    return (*BASE_COLUMNS, *details, *TRAILING_COLUMNS)


def floor_decimals(value: float, decimals: int = 6) -> str:
    """``value`` rounded towards minus infinity, so a printed bound stays a bound."""
    # Exact decimal arithmetic: math.floor(value * 10**6) can round the product up
    # to the next integer and print a value one unit above the bound.
    return str(Decimal(value).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_FLOOR))


def format_row(record: CertifyRecord, details: Sequence[str]) -> str:
    """``record`` as one line of the file whose header is ``columns_for(details)``."""
    cells = [
        str(record.idx),
        str(record.label),
        str(record.predict),
        floor_decimals(record.radius),
        str(record.correct),
        f"{record.time:.3f}",
        *(floor_decimals(p, 8) for p in record.p_lower),
        *(str(c) for c in record.counts_top),
    ]
    if PAPER_RADIUS_COLUMN in details:
        cells.append(floor_decimals(record.radius_paper or 0.0))
    cells += [str(record.nonfinite), str(record.n_used)]
    return "\t".join(cells)


def part_path(out: Path, rank: int) -> Path:
    return out.with_name(f"{out.name}.part{rank}")


def existing_parts(out: Path) -> list[Path]:
    """The part files of ``out``: exactly ``OUT.part<rank>`` (decimal rank), by rank.

    Matched by name, never as a glob pattern: an output named ``r[1].tsv`` or
    ``a*.tsv`` must neither miss its own parts nor take another run's.
    """
    prefix = out.name + ".part"
    if not out.parent.is_dir():
        return []
    ranks = []
    for entry in os.scandir(out.parent):
        rank = entry.name[len(prefix):]
        if entry.name.startswith(prefix) and rank.isascii() and rank.isdigit():
            ranks.append(int(rank))
    return [part_path(out, rank) for rank in sorted(ranks)]


def complete_lines(path: Path) -> list[str]:
    """The complete (newline-terminated) lines of ``path``; a torn last line is dropped."""
    text = path.read_text()
    lines = text.split("\n")
    return [line for line in lines[:-1] if line]


def read_rows(paths: Iterable[Path], header: Sequence[str]) -> dict[int, str]:
    """Rows by idx from result files with this ``header`` (first occurrence wins)."""
    expected = "\t".join(header)
    rows: dict[int, str] = {}
    for path in paths:
        if not path.is_file():
            continue
        lines = complete_lines(path)
        if not lines:
            continue
        if lines[0] != expected:
            raise ValueError(
                f"{path} has another header than this run writes; use another output path"
            )
        for number, line in enumerate(lines[1:], start=2):
            cells = line.split("\t")
            if len(cells) != len(header) or not cells[0].isdigit():
                raise ValueError(
                    f"{path} line {number} is not a result row of this run; "
                    "use another output path"
                )
            rows.setdefault(int(cells[0]), line)
    return rows


class PartWriter:
    """Append rows to one process's part file, flushing after each row."""

    def __init__(self, path: Path, header: Sequence[str]) -> None:
        self.path = path
        if path.exists():
            # Drop a torn last line left by a killed run before appending.
            keep = complete_lines(path)
            path.write_text("".join(line + "\n" for line in keep))
        self.handle = open(path, "a")
        if path.stat().st_size == 0:
            self.handle.write("\t".join(header) + "\n")
            self.handle.flush()

    def write(self, line: str) -> None:
        self.handle.write(line + "\n")
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


def merge(out: Path, header: Sequence[str]) -> int:
    """Merge ``out`` and its parts into ``out`` (sorted by idx, atomic) and delete the parts.

    Returns the number of rows.
    """
    parts = existing_parts(out)
    rows = read_rows([out, *parts], header)
    with atomic_write(out, "w") as handle:
        handle.write("\t".join(header) + "\n")
        for idx in sorted(rows):
            handle.write(rows[idx] + "\n")
    for part in parts:
        part.unlink()
    return len(rows)
