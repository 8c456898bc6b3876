"""Reading certify output files (Cohen's TSV format) for analysis, with full validation.

The columns are those of :mod:`denoised_drs.results`, the one definition of the result
schema: a file must start with its ``BASE_COLUMNS``; any further column is kept by
name. The columns this library writes are validated against what it can write:
``radius_paper`` (the DRS paper's non-certified radius for joint denoising) like
``radius``, bounds (``pA``, ``pA_<branch>``, ``alpha_look``) in [0, 1], counts
(``count``, ``count_<branch>``, ``nonfinite``, ``n_used``, ``n_look``) non-negative
integers, no count above ``n_used``.

Two things are read beside the rows:

* a torn last line (no newline: a row being written, or a process killed mid-write)
  is never a result: it is left out and named in :attr:`Results.left_out`;
* the configuration a run saves beside its result (``OUT.config.json``): an adaptive
  run with target ``radii`` reports the largest target certified, which rows written
  before targets were recorded exactly hold floored to 6 decimals; such a radius is
  read as the target it stands for (:func:`saved_targets`).
"""

from __future__ import annotations

import json
import math
import os
import re
import reprlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from denoised_drs.results import (
    BASE_COLUMNS,
    LOOK_COLUMNS,
    N_USED_COLUMN,
    PAPER_RADIUS_COLUMN,
    existing_parts,
    floor_decimals,
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
    ``left_out`` names (``path:line``) the torn last lines left out of the rows.
    """

    path: str
    idx: np.ndarray
    label: np.ndarray
    predict: np.ndarray
    radius: np.ndarray
    correct: np.ndarray
    time: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    left_out: tuple[str, ...] = ()

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
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
            raise ValueError(f"step must be a positive integer, got {step!r}")
        if step > np.iinfo(np.int64).max:
            # Beyond int64, numpy's % would overflow: Python integers are exact.
            keep = np.fromiter((int(i) % step == 0 for i in self.idx), bool, len(self))
        else:
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
    value = _parse_float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(text)
    return value


# Plain decimal numbers only: float() and int() would also take "1_000", "nan" or
# non-ASCII digits, which no writer of result files produces.
_FLOAT = re.compile(r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")
# "3.0" too: some writers produce it for integer columns.
_INT = re.compile(r"^(-?[0-9]+)(?:\.0*)?$")
_INT64 = np.iinfo(np.int64)


def _parse_float(text: str) -> float:
    if not _FLOAT.match(text):
        raise ValueError(text)
    return float(text)


def _parse_int(text: str) -> int:
    match = _INT.match(text)
    if not match:
        raise ValueError(text)
    value = int(match[1])
    if not _INT64.min <= value <= _INT64.max:  # the int64 arrays of Results hold it
        raise ValueError(text)
    return value


def _parse_count(text: str) -> int:
    value = _parse_int(text)
    if value < 0:
        raise ValueError(text)
    return value


def _parse_class(text: str) -> int:
    """A predicted class: a class index, or -1 for abstain."""
    value = _parse_int(text)
    if value < -1:
        raise ValueError(text)
    return value


def _parse_radius(text: str) -> float:
    value = _parse_float(text)
    if value < 0 or value == math.inf:
        raise ValueError(text)
    return value


def _parse_probability(text: str) -> float:
    value = _parse_float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(text)
    return value


_PARSERS = {
    **dict(
        zip(BASE_COLUMNS,
            (_parse_count, _parse_count, _parse_class, _parse_radius, _parse_int, _parse_seconds))
    ),
    PAPER_RADIUS_COLUMN: _parse_radius,
    "nonfinite": _parse_count,
    N_USED_COLUMN: _parse_count,
    "n_look": _parse_count,
    "alpha_look": _parse_probability,
}
"""How each known column's text becomes a value (``BASE_COLUMNS`` in their order)."""
# Per-branch columns of the scheme (denoised_drs.scheme.detail_columns): RS has "pA
# count", two parts "pA_l ... count_r", k parts "pA_1 ... count_k".
_BRANCH_PARSERS = ((re.compile(r"^pA(?:_[0-9a-z]+)?$"), _parse_probability),
                   (re.compile(r"^count(?:_[0-9a-z]+)?$"), _parse_count))
_COUNT_LIMITED = re.compile(r"^(?:count(?:_[0-9a-z]+)?|n_look)$")
"""Columns that count estimation samples, so never exceed ``n_used``."""
_DTYPES = dict(zip(BASE_COLUMNS, (np.int64, np.int64, np.int64, np.float64, np.int64, np.float64)))


def _parser(name: str):
    parser = _PARSERS.get(name)
    if parser is None:
        parser = next((p for pattern, p in _BRANCH_PARSERS if pattern.match(name)), None)
    return parser


def load_results(path: str | os.PathLike) -> Results:
    """Read and validate one certify TSV (Cohen's format, extra columns allowed).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file
    and line for anything malformed: a path that is not a regular file, a file that is
    not UTF-8 text, a header that
    does not start with ``idx label predict radius correct time``, duplicate column
    names, a row with the wrong number of fields, values that are not plain decimal
    numbers or not integers where integers are due, a negative ``idx`` or ``label``,
    ``predict < -1``, a negative, infinite or NaN radius (also in ``radius_paper``),
    ``correct`` other than 0/1 or different from ``predict == label`` (which catches
    running totals), a negative time, a bound outside [0, 1], a negative count or
    one above ``n_used``, a repeated ``idx``, or a file without rows. Blank lines are
    skipped; a torn last line is left out (:attr:`Results.left_out`). A saved
    configuration beside the file is read as :func:`saved_targets` says.
    """
    path = Path(path)
    if not path.is_file():
        if path.exists():  # a directory, a FIFO (reading it would block), a device
            raise ValueError(f"{path}: not a regular file")
        raise FileNotFoundError(f"{path}: no such file")
    lines, left_out = _numbered_lines(path)
    results = _parse(path, lines)
    return _with_targets(replace(results, left_out=left_out), saved_targets(path))


_PART_NAME = re.compile(r".+\.part[0-9]+")


def _numbered_lines(path: Path) -> tuple[list[tuple[int, str]], tuple[str, ...]]:
    """``(line number, text)`` of the lines of ``path``, and ``path:line`` of a torn last
    line, which is left out.

    Only a part file (``OUT.part<rank>``, appended to row by row) can end in a torn row
    (no line break at its end: a row being written, or a killed process); a finished
    ``OUT`` is written whole and renamed, so its unterminated last line (a file edited
    by hand) is read, and checked, like any other."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file") from None
    lines = text.splitlines(keepends=True)
    left_out = ()
    if lines and lines[-1] == lines[-1].rstrip("\r\n") and _PART_NAME.fullmatch(path.name):
        left_out = (f"{path}:{len(lines)}",)
        lines = lines[:-1]
    return [(number, line.rstrip("\r\n")) for number, line in enumerate(lines, start=1)], left_out


def config_of(path: Path) -> Path | None:
    """The configuration saved beside the result ``path`` (``OUT.config.json``; for a
    part file ``OUT.part<rank>``, that of ``OUT``), or None when there is none."""
    candidates = [path.with_name(path.name + ".config.json")]
    match = re.fullmatch(r"(.+)\.part[0-9]+", path.name)
    if match:
        candidates.append(path.with_name(match[1] + ".config.json"))
    return next((candidate for candidate in candidates if candidate.is_file()), None)


def saved_targets(path: str | os.PathLike) -> tuple[float, ...]:
    """The target radii of the adaptive run whose result is ``path``, from the
    configuration saved beside it (key ``radii``); empty without one.

    A row of such a run holds the largest target certified (or 0), which rows written
    before targets were recorded exactly hold rounded down to 6 decimals; readers map
    a radius equal to a target's 6-decimal floor back to that target, and compare
    every other radius exactly. Raises ValueError naming the configuration when it is
    not a JSON object or its ``radii`` is not null or a list of positive finite numbers.
    """
    config = config_of(Path(path))
    if config is None:
        return ()
    try:
        values = json.loads(config.read_bytes())
    except (ValueError, RecursionError):  # not UTF-8, not JSON, too deep or too long a number
        values = None
    if not isinstance(values, dict):
        raise ValueError(f"{config}: not a JSON object (the configuration saved beside {path})")
    radii = values.get("radii")
    if radii is None:
        return ()
    targets = [_target(r) for r in radii] if isinstance(radii, list) else [None]
    if None in targets:
        raise ValueError(f"{config}: radii must be a list of positive numbers or null, "
                         f"got {reprlib.repr(radii)}")
    return tuple(targets)


def _target(value: object) -> float | None:
    """``value`` as a target radius, or None unless a positive finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        target = float(value)
    except OverflowError:  # an integer beyond any float
        return None
    return target if math.isfinite(target) and target > 0 else None


def _with_targets(results: Results, targets: tuple[float, ...]) -> Results:
    """``results`` with each radius that is a target's 6-decimal floor read as the target.

    Only files written before targets were written exactly need it: those without the
    look columns (every adaptive file since has ``alpha_look``). A floor is read as a
    target only when exactly one target rounds down to it and it is no target itself
    (targets 0.299999 and 0.3 both floor to 0.299999: that row stays 0.299999, never
    more than the run certified)."""
    if not targets or LOOK_COLUMNS[-1] in results.extra:
        return results
    by_floor: dict[float, list[float]] = {}
    for target in targets:
        by_floor.setdefault(float(floor_decimals(target)), []).append(target)
    floors = {floor: found[0] for floor, found in by_floor.items()
              if len(found) == 1 and floor not in targets}
    radius = np.asarray([floors.get(r, r) for r in results.radius.tolist()], dtype=np.float64)
    return replace(results, radius=radius)


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
    parsers = {name: _parser(name) for name in header}
    limited = [name for name in header if _COUNT_LIMITED.match(name)]

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
            parser = parsers[name]
            if parser is None:
                row[name] = text
                continue
            try:
                row[name] = parser(text)
            except ValueError:
                raise ValueError(
                    f"{path}:{number}: bad value {text!r} in column {name!r}"
                ) from None
        if row["correct"] not in (0, 1):
            raise ValueError(f"{path}:{number}: correct must be 0 or 1, got {row['correct']}")
        if row["correct"] != int(row["predict"] == row["label"]):
            raise ValueError(
                f"{path}:{number}: correct={row['correct']} but predict={row['predict']}, "
                f"label={row['label']}"
            )
        if N_USED_COLUMN in row:
            for name in limited:
                if row[name] > row[N_USED_COLUMN]:
                    raise ValueError(f"{path}:{number}: {name} {row[name]} exceeds "
                                     f"{N_USED_COLUMN} {row[N_USED_COLUMN]}")
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
    torn last line (a row being written, or a killed process) is left out
    (:attr:`Results.left_out` names it), and so is a part file with no row yet. Each
    file is checked as by :func:`load_results`; the files must share their header,
    and an image found in two files (``path`` and a part just merged into it) must
    have the same row in both. Raises ``FileNotFoundError`` when there is no such
    file or part file.
    """
    path = Path(path)
    parts = existing_parts(path)
    if not parts:
        return load_results(path)
    header, first = None, None
    left_out: tuple[str, ...] = ()
    rows: dict[int, tuple[str, Path]] = {}
    for file in ([path] if path.is_file() else []) + parts:
        numbered, torn = _numbered_lines(file)
        left_out += torn
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
    results = replace(_parse(path, joined), left_out=left_out)
    return _with_targets(results, saved_targets(path))


def _extra_column(values: list) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except ValueError:
        return np.asarray(values, dtype=str)


__all__ = ["Results", "config_of", "load_results", "load_run", "saved_targets"]
