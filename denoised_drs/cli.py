"""The one way the command-line scripts end: a result, or one line on stderr.

Bad input (a missing or unreadable file, an impossible setting, a usage error, a
batch or setting that does not fit in memory) raises ValueError, OSError or an
out-of-memory error (MemoryError, torch's OutOfMemoryError, the CPU allocator's
RuntimeError) somewhere below the script; :func:`run_script` turns it into
``<script>: error: <message>`` and exit status 2, never a traceback. Anything else
is a bug: one line naming the exception, exit status 1, and the traceback when the
environment sets ``DENOISED_DRS_TRACEBACK=1``. Under a multi-process launcher every
process meets the same bad input; only the main one (``RANK`` 0 or unset) prints.

The library's side of that contract (:func:`~denoised_drs.errors.first_line` and the
output-path checks) lives in :mod:`denoised_drs.errors`, so that no library module
imports this one.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from denoised_drs.errors import first_line, is_main_process


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are a ValueError, so they end in one line and exit 2."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise ValueError(" ".join(message.split()))


def _is_out_of_memory(error: BaseException) -> bool:
    # Python's MemoryError (numpy, lists, a huge bytes object); torch's OutOfMemoryError
    # (CUDA), a RuntimeError recognised by name because torch.OutOfMemoryError exists
    # only from torch 2.5 (torch.cuda.OutOfMemoryError from 1.13); and the CPU
    # allocator's plain RuntimeError, whose message names the failed allocation.
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError" or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error)
    )


def run_script(main: Callable[[], int | None], script: str) -> NoReturn:
    """Call ``main()`` and exit with its status, or with one line of error."""
    name = Path(script).name

    def fail(message: str, status: int) -> NoReturn:
        if is_main_process():
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
