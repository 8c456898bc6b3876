"""One-line errors and output paths checked before work: the library side of the CLI contract.

Bad input raises ValueError with a one-line message, which
:func:`denoised_drs.cli.run_script` turns into ``<script>: error: <message>`` and exit 2.
:func:`first_line` summarises a foreign exception in one line, :func:`is_main_process`
says which process of a launch prints it; :func:`check_output_file`
and :func:`check_distinct_outputs` refuse output paths before any work when they cannot
be written as files or when two outputs of one run would land in the same file.
"""

from __future__ import annotations

import numbers
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def is_integer(value: Any) -> bool:
    """Whether ``value`` is an integer (Python or numpy), a bool excluded: True is no count."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """Whether ``value`` is a real number (Python or numpy), a bool excluded."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message, or its type name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def is_main_process() -> bool:
    """Whether this process speaks for its launch (``RANK`` and ``LOCAL_RANK`` 0 or unset):
    under a multi-process launcher every process meets the same error, one prints it."""
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def check_output_file(path: str | os.PathLike) -> None:
    """Raise ValueError unless ``path`` can be written as a file (checked before work).

    The path must be new or an existing regular file (symbolic links followed): a
    directory, a device node such as ``/dev/null``, a FIFO or a socket is refused,
    since writing a result there either fails late or silently loses it. A path
    spelled as a directory (ending in a separator, ``.`` or ``..``) is refused even
    when nothing exists there yet: ``Path("res/")`` is ``res``, so the result would
    become a file named like the intended folder.
    """
    spelled = os.fspath(path)
    if spelled == "":
        raise ValueError("an output path is empty")
    if os.path.basename(spelled) in ("", ".", ".."):  # "" after a trailing separator
        raise ValueError(f"cannot write {spelled}: it names a directory; pass a file path")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cannot write {path}: it is a directory; pass a file path")
    if path.parent.exists() and not path.parent.is_dir():
        raise ValueError(f"cannot write {path}: {path.parent} is not a directory")
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    except OSError as error:
        raise ValueError(f"cannot write {path}: {first_line(error)}") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"cannot write {path}: it exists and is not a regular file")


def _identity(path: Path) -> tuple:
    # Hard links and symlinks of one existing file share (device, inode); a new
    # path is identified by its resolved spelling.
    try:
        info = path.stat()
        return ("inode", info.st_dev, info.st_ino)
    except OSError:
        return ("path", os.path.realpath(path))


def check_distinct_outputs(outputs: Mapping[str, str | os.PathLike]) -> None:
    """Raise ValueError when two outputs of one run (``{role: path}``) are the same file.

    Different spellings, symbolic links and hard links of one file all count as the
    same file, so e.g. ``--out m.pt --log ./m.pt`` is refused before any work.
    """
    seen: dict[tuple, str] = {}
    for role, path in outputs.items():
        key = _identity(Path(path))
        if key in seen:
            raise ValueError(
                f"{seen[key]} and {role} name the same file ({path}); give them different paths"
            )
        seen[key] = role


__all__ = ["check_distinct_outputs", "check_output_file", "first_line", "is_integer",
           "is_main_process", "is_real"]
