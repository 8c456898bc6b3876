"""The one way the command-line scripts end: a result, or one line on stderr.

Bad input (a missing or unreadable file, an impossible setting) raises ValueError or
OSError somewhere below the script; :func:`run_script` turns it into
``<script>: error: <message>`` and exit status 2, never a traceback. Anything else
is a bug: one line naming the exception, exit status 1, and the traceback when the
environment sets ``DENOISED_DRS_TRACEBACK=1``.

:func:`first_line` and :func:`check_output_file` are the library's shared pieces of
that contract: a foreign exception summarised in one line, and an output path
refused before any work when it cannot be written as a file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message, or its type name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_output_file(path: str | os.PathLike) -> None:
    """Raise ValueError unless ``path`` can be written as a file (checked before work)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cannot write {path}: it is a directory; pass a file path")
    if path.parent.exists() and not path.parent.is_dir():
        raise ValueError(f"cannot write {path}: {path.parent} is not a directory")


def run_script(main: Callable[[], int | None], script: str) -> NoReturn:
    """Call ``main()`` and exit with its status, or with one line of error."""
    name = Path(script).name
    try:
        status = main()
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        sys.exit(130)
    except (ValueError, OSError, NotImplementedError, ImportError) as error:
        print(f"{name}: error: {first_line(error)}", file=sys.stderr)
        sys.exit(2)
    except Exception as error:
        if os.environ.get("DENOISED_DRS_TRACEBACK") == "1":
            raise
        print(f"{name}: error: unexpected {type(error).__name__}: {first_line(error)} "
              "(DENOISED_DRS_TRACEBACK=1 shows where)", file=sys.stderr)
        sys.exit(1)
    sys.exit(status or 0)
