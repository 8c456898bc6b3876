"""Reading certify output files (Cohen's TSV format) for analysis, with full validation.

The columns are those of :mod:`denoised_drs.results`, the one definition of the result
schema: a file must start with its ``BASE_COLUMNS``; any further column is kept by
name, and ``radius_paper`` (the DRS paper's non-certified radius for joint
denoising) is validated like ``radius``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from denoised_drs.results import (
    BASE_COLUMNS,
    PAPER_RADIUS_COLUMN,
    complete_lines,
    existing_parts,
)

# Python's str(timedelta), which Cohen's certify.py writes: "0:00:01.234567" or
# "2 days, 3:04:05.5".
_TIMEDELTA = re.compile(
    r"^(?:(?P<days>\d+) days?, )?(?P<h>\d+):(?P<m>[0-5]\d):(?P<s>[0-5]\d(?:\.\d+)?)$"
)


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
        return self._rows(keep)

    def restricted_to(self, indices: np.ndarray) -> Results:
        """The rows whose ``idx`` is in ``indices``: to compare an unfinished run
        (a ``.part`` file) with finished ones on the same images."""
        keep = np.isin(self.idx, indices)
        if not keep.any():
            raise ValueError(f"{self.path}: none of its images is among the images kept")
        return self._rows(keep)

    def _rows(self, keep: np.ndarray) -> Results:
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

_PARSERS = {
    **dict(
        zip(BASE_COLUMNS,
            (_parse_int, _parse_int, _parse_int, _parse_radius, _parse_int, _parse_seconds))
    ),
    PAPER_RADIUS_COLUMN: _parse_radius,
}
"""How each known column's text becomes a value (``BASE_COLUMNS`` in their order)."""
_DTYPES = dict(zip(BASE_COLUMNS, (np.int64, np.int64, np.int64, np.float64, np.int64, np.float64)))


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
    return _parse(path, _numbered_lines(path))


def _numbered_lines(path: Path) -> list[tuple[int, str]]:
    with open(path, encoding="utf-8") as handle:
        return list(enumerate(handle.read().splitlines(), start=1))


def _parse(path: Path, lines: list[tuple[int, str]]) -> Results:
    """The checks of :func:`load_results` on ``(line number, text)`` pairs of ``path``."""
    numbered = [(number, line) for number, line in lines if line.strip()]
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
    seen_idx: dict[int, int] = {}
    for number, line in numbered[1:]:
        fields = [value.strip() for value in line.rstrip("\r\n").split("\t")]
        if len(fields) != len(header):
            raise ValueError(
                f"{path}:{number}: expected {len(header)} tab-separated fields, got {len(fields)}"
            )
        row = {}
        for name, text in zip(header, fields):
            parser = _PARSERS.get(name)
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
    base = {name: np.asarray(columns[name], dtype=_DTYPES[name]) for name in BASE_COLUMNS}
    return Results(path=str(path), **base, extra=extra)


def load_run(path: str | os.PathLike) -> Results:
    """The results of the run writing ``path``: the file itself when the run is
    finished, else its rows so far, joined and sorted by ``idx``.

    A running or interrupted run keeps its rows in part files ``path.part<rank>``, one
    per process, and, if it extends an earlier run (a larger ``--max``), in ``path``
    too; the run merges them into ``path`` when it ends. As when the run resumes, a
    torn last line of a part file (a row being written, or a killed process) is left
    out, and so is a part file with no row yet. Each file is checked as by
    :func:`load_results`; the files must share their header, and an image found in two
    files (``path`` and a part just merged into it) must have the same row in both.
    Raises ``FileNotFoundError`` when there is no such file or part file.
    """
    path = Path(path)
    parts = existing_parts(path)
    if not parts:
        return load_results(path)
    sources = [(path, _numbered_lines(path))] if path.is_file() else []
    sources += [(part, list(enumerate(complete_lines(part), start=1))) for part in parts]
    header, first = None, None
    rows: dict[int, tuple[str, Path]] = {}
    for file, numbered in sources:
        lines = [line for _, line in numbered if line.strip()]
        if file != path and len(lines) <= 1:
            continue  # a process that has not finished an image yet
        indices = _parse(file, numbered).idx.tolist()
        if header is None:
            header, first = lines[0], file
        elif lines[0] != header:
            raise ValueError(f"{path}: {file} has other columns than {first}")
        for line, idx in zip(lines[1:], indices):
            seen = rows.setdefault(idx, (line, file))
            if seen[0] != line:
                raise ValueError(f"{path}: image {idx} has different rows in {seen[1]} and {file}")
    if header is None:
        raise ValueError(f"{path}: no result rows yet in its part files")
    joined = [(0, header)] + [(0, rows[idx][0]) for idx in sorted(rows)]
    return _parse(path, joined)


def _extra_column(values: list) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except ValueError:
        return np.asarray(values, dtype=str)


__all__ = ["Results", "load_results", "load_run"]
