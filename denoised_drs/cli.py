"""The one way the command-line scripts end: a result, or one line on stderr.

Bad input (a missing or unreadable file, an impossible setting, a usage error, a
batch that does not fit in memory) raises ValueError, OSError or an allocator's
out-of-memory error somewhere below the script; :func:`run_script` turns it into
``<script>: error: <message>`` and exit status 2, never a traceback. Anything else
is a bug: one line naming the exception, exit status 1, and the traceback when the
environment sets ``DENOISED_DRS_TRACEBACK=1``. Under a multi-process launcher every
process meets the same bad input; only the main one (``RANK`` 0 or unset) prints.

:func:`first_line`, :func:`check_output_file` and :func:`check_distinct_outputs`
are the library's shared pieces of that contract: a foreign exception summarised in
one line, and output paths refused before any work when they cannot be written as
files or when two outputs of one run would land in the same file.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NoReturn


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message, or its type name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_output_file(path: str | os.PathLike) -> None:
    """Raise ValueError unless ``path`` can be written as a file (checked before work).

    The path must be new or an existing regular file (symbolic links followed): a
    directory, a device node such as ``/dev/null``, a FIFO or a socket is refused,
    since writing a result there either fails late or silently loses it.
    """
    path = Path(path)
    if str(path) == "":
        raise ValueError("an output path is empty")
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
            raise ValueError(f"{seen[key]} and {role} name the same file ({path}); give them different paths")
        seen[key] = role


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are a ValueError, so they end in one line and exit 2."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise ValueError(" ".join(message.split()))


def _is_out_of_memory(error: BaseException) -> bool:
    # torch.OutOfMemoryError (CUDA) is a RuntimeError; the CPU allocator raises a
    # plain RuntimeError whose message names the failed allocation.
    return type(error).__name__ == "OutOfMemoryError" or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error)
    )


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def run_script(main: Callable[[], int | None], script: str) -> NoReturn:
    """Call ``main()`` and exit with its status, or with one line of error."""
    name = Path(script).name

    def fail(message: str, status: int) -> NoReturn:
        if _is_main_process():
            print(f"{name}: {message}", file=sys.stderr)
        sys.exit(status)

    try:
        status = main()
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except (ValueError, OSError, NotImplementedError, ImportError) as error:
        fail(f"error: {first_line(error)}", 2)
    except Exception as error:
        if _is_out_of_memory(error):
            fail(f"error: out of memory ({first_line(error)}); pass a smaller --batch", 2)
        if os.environ.get("DENOISED_DRS_TRACEBACK") == "1":
            raise
        fail(f"error: unexpected {type(error).__name__}: {first_line(error)} "
             "(DENOISED_DRS_TRACEBACK=1 shows where)", 1)
    sys.exit(status or 0)
