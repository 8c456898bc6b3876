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
Computed radii are rounded *down* to 6 decimals, so a printed radius never exceeds the
certified one; a radius that is one of the run's target radii (adaptive certification
with ``radii``) is a setting, not a computed value, and is written exactly (shortest
round trip), so that it reads back as that very float.

Every part file ``OUT.part<rank>`` has an identity file ``OUT.part<rank>.id`` holding
the hash of the configuration of the run that wrote it (:func:`identity_line`); a part
file is merged, appended to or deleted only when that hash is this run's, so another
run's file that happens to be named like a part is never taken in.
"""

from __future__ import annotations

import math
import os
import re
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
LOOK_COLUMNS = ("n_look", "alpha_look")
"""Adaptive runs only: the sample count and the share of alpha of the look whose bounds
the row reports, so that each ``pA`` column can be recomputed from its ``count``."""


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
    n_look: int = 0
    alpha_look: float = 0.0

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
            n_look=cert.n_look,
            alpha_look=cert.alpha_look,
        )


def columns_for(details: Sequence[str], looks: bool = False) -> tuple[str, ...]:
    """The header of a result file whose scheme has the detail columns ``details``
    (:meth:`denoised_drs.scheme.Scheme.columns`); ``looks`` (adaptive runs) appends
    :data:`LOOK_COLUMNS`. A fixed-n run is one look at ``N`` and all of alpha, so its
    files keep the columns they always had."""
    return (*BASE_COLUMNS, *details, *TRAILING_COLUMNS, *(LOOK_COLUMNS if looks else ()))


def floor_decimals(value: float, decimals: int = 6) -> str:
    """``value`` rounded towards minus infinity, so a printed bound stays a bound."""
    # Exact decimal arithmetic: math.floor(value * 10**6) can round the product up
    # to the next integer and print a value one unit above the bound.
    return str(Decimal(value).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_FLOOR))


def format_radius(radius: float, targets: Sequence[float] = ()) -> str:
    """``radius`` as written in the radius column: exactly (shortest round trip) when it
    is one of the target radii ``targets``, else floored to 6 decimals.

    Either way the text reads back as a float no larger than ``radius``.
    """
    radius = float(radius)
    # A target is the user's own number, certified as a whole: flooring 0.3 to
    # 0.299999 would make a run that certified every target read as certifying none.
    return repr(radius) if radius in targets else floor_decimals(radius)


def format_row(record: CertifyRecord, details: Sequence[str],
               targets: Sequence[float] = (), looks: bool = False) -> str:
    """``record`` as one line of the file whose header is ``columns_for(details, looks)``;
    ``targets`` are the run's target radii (see :func:`format_radius`)."""
    cells = [
        str(record.idx),
        str(record.label),
        str(record.predict),
        format_radius(record.radius, tuple(float(t) for t in targets)),
        str(record.correct),
        f"{record.time:.3f}",
        *(floor_decimals(p, 8) for p in record.p_lower),
        *(str(c) for c in record.counts_top),
    ]
    if PAPER_RADIUS_COLUMN in details:
        cells.append(floor_decimals(record.radius_paper or 0.0))
    cells += [str(record.nonfinite), str(record.n_used)]
    if looks:
        # alpha_look exactly (shortest round trip): it is a share of the user's alpha,
        # a setting, and the bounds are recomputed from it.
        cells += [str(record.n_look), repr(float(record.alpha_look))]
    return "\t".join(cells)


def part_path(out: Path, rank: int) -> Path:
    return out.with_name(f"{out.name}.part{rank}")


def identity_path(part: Path) -> Path:
    """The file beside the part file ``part`` that names the run which wrote it."""
    return part.with_name(part.name + ".id")


def identity_line(identity: str) -> str:
    """The content of an identity file for the run whose configuration hash is ``identity``."""
    return f"denoised_drs run {identity}\n"


def _ranked(out: Path, suffix: str) -> list[Path]:
    """Files named exactly ``OUT.part<rank><suffix>`` (decimal rank), by rank."""
    prefix = out.name + ".part"
    if not out.parent.is_dir():
        return []
    found = []
    for entry in os.scandir(out.parent):
        name = entry.name
        rank = name[len(prefix):len(name) - len(suffix)]
        if (name.startswith(prefix) and name.endswith(suffix) and rank.isascii()
                and rank.isdigit()):
            found.append((int(rank), name))  # the name as found: "part01" is no "part1"
    return [out.with_name(name) for _, name in sorted(found)]


def existing_parts(out: Path) -> list[Path]:
    """The part files of ``out``: exactly ``OUT.part<rank>`` (decimal rank), by rank.

    Matched by name, never as a glob pattern: an output named ``r[1].tsv`` or
    ``a*.tsv`` must neither miss its own parts nor take another run's.
    """
    return _ranked(out, "")


def complete_lines(path: Path) -> list[str]:
    """The complete (newline-terminated) non-empty lines of ``path``; a torn last line
    (no newline: the writer died mid-row) is dropped. ValueError if ``path`` is not UTF-8
    text."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text result file (it is not UTF-8)") from None
    lines = text.split("\n")
    return [line for line in lines[:-1] if line]


_INTEGER = re.compile(r"-?[0-9]+")
_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")


def _integer(cell: str, low: int) -> str | None:
    # A 64-bit bound on the length also keeps int() below Python's digit limit.
    if len(cell) > 20 or not _INTEGER.fullmatch(cell):
        return "not a 64-bit integer"
    return None if int(cell) >= low else f"below {low}"


def _number(cell: str, low: float, high: float = math.inf) -> str | None:
    # Only the decimal forms the writer prints: no "nan", "inf", spaces or underscores.
    if not _DECIMAL.fullmatch(cell) or not math.isfinite(float(cell)):
        return "not a finite decimal number"
    return None if low <= float(cell) <= high else f"outside [{low}, {high}]"


def cell_problem(column: str, cell: str) -> str | None:
    """Why ``cell`` cannot be this library's value of ``column``, or None if it can.

    Every column the writer produces is a number: counts and labels integers (``predict``
    -1 for an abstention), ``correct`` 0 or 1, probabilities and alpha shares in [0, 1],
    radii and times non-negative; a column this function does not know must hold a
    finite number.
    """
    if column == "correct":
        return None if cell in ("0", "1") else "not 0 or 1"
    if column == "predict":
        return _integer(cell, -1)
    if column.startswith("count") or column in ("idx", "label", "nonfinite", N_USED_COLUMN,
                                                "n_look"):
        return _integer(cell, 0)
    if column.startswith("pA") or column == "alpha_look":
        return _number(cell, 0.0, 1.0)
    if column in ("radius", PAPER_RADIUS_COLUMN, "time"):
        return _number(cell, 0.0)
    return _number(cell, -math.inf)


def row_problem(cells: Sequence[str], header: Sequence[str]) -> str | None:
    """Why ``cells`` cannot be a row this library wrote under ``header``, or None."""
    if len(cells) != len(header):
        return f"{len(cells)} fields, the header has {len(header)}"
    for column, cell in zip(header, cells):
        problem = cell_problem(column, cell)
        if problem:
            return f"its {column} {cell[:20]!r} is {problem}"
    return None


def read_rows(paths: Iterable[Path], header: Sequence[str]) -> dict[int, str]:
    """Rows by idx from result files with this ``header`` (first occurrence wins).

    A torn last line is not a row (see :func:`complete_lines`); any other line that is
    not a row this library writes (:func:`row_problem`) raises ValueError naming the
    file and line, so a damaged row is never taken as a result.
    """
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
            problem = row_problem(line.split("\t"), header)
            if problem:
                raise ValueError(
                    f"{path} line {number} is not a result row of this run ({problem}); "
                    "use another output path"
                )
            rows.setdefault(int(line.split("\t", 1)[0]), line)
    return rows


def check_parts(out: Path, header: Sequence[str], identity: str) -> dict[int, str]:
    """The rows of ``out`` and its part files, by idx, once every part is this run's.

    Raises ValueError (one line, nothing written) when an identity file of ``out``
    (``OUT.part<rank>.id``, with or without its part) names another run than
    ``identity``, or when a row is damaged (:func:`read_rows`). A part file without
    an identity file (written before identities existed) is accepted: the caller
    decides whether it may be this run's.
    """
    for path in [*existing_parts(out), *_ranked(out, ".id")]:
        if not path.is_file():  # a FIFO would block the read, a folder cannot be merged
            raise ValueError(f"{path} is not a regular file; move it away or pass another "
                             "output path")
    for path in _ranked(out, ".id"):
        try:
            with open(path, "rb") as stream:
                theirs = stream.read(200).decode("utf-8", errors="replace")
        except OSError as error:
            raise ValueError(f"cannot read {path}: {error.strerror}") from None
        if theirs != identity_line(identity):
            part = path.with_name(path.name[:-len(".id")])
            raise ValueError(
                f"{part} belongs to another run (its identity file {path.name} does not "
                "match this run's configuration); move it away or pass another output path"
            )
    return read_rows([out, *existing_parts(out)], header)


def write_identity(part: Path, identity: str) -> None:
    """Mark ``part`` as a part file of the run whose configuration hash is ``identity``."""
    with atomic_write(identity_path(part), "w") as stream:
        stream.write(identity_line(identity))


class PartWriter:
    """Append rows to one process's part file, flushing after each row.

    With an ``identity`` (the run's configuration hash) the identity file is written
    first, so a part file that holds rows always names its run.
    """

    def __init__(self, path: Path, header: Sequence[str], identity: str | None = None) -> None:
        self.path = path
        if identity is not None:
            write_identity(path, identity)
        if path.exists():
            # Cut a torn last line left by a killed run before appending. Truncating in
            # place never loses a complete row, whenever this process is killed.
            data = path.read_bytes()
            complete = data.rfind(b"\n") + 1
            if complete < len(data):
                os.truncate(path, complete)
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


def merge(out: Path, header: Sequence[str], identity: str | None = None) -> int:
    """Merge ``out`` and its parts into ``out`` (sorted by idx, atomic) and delete the
    parts and their identity files.

    With an ``identity``, every part must be this run's (:func:`check_parts`), checked
    before anything is written. Returns the number of rows.
    """
    parts = existing_parts(out)
    if identity is None:
        rows = read_rows([out, *parts], header)
    else:
        rows = check_parts(out, header, identity)
    with atomic_write(out, "w") as handle:
        handle.write("\t".join(header) + "\n")
        for idx in sorted(rows):
            handle.write(rows[idx] + "\n")
    for part in parts:
        part.unlink()
    # Identity files whose part is gone (or never written: a process killed between
    # the two) name only parts of this run, which are all merged now.
    for path in _ranked(out, ".id"):
        path.unlink()
    return len(rows)
