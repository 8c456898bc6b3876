"""``accelerate launch`` with the scripts' error contract: a bad input ends in one line.

    python -m denoised_drs.launch [accelerate launch options] SCRIPT [SCRIPT ARGS]

takes exactly the arguments of ``accelerate launch``. Why it exists: when the
script exits non-zero, ``accelerate launch`` re-raises that exit as its own
traceback (``subprocess.CalledProcessError`` from its single-process and CPU
launcher, torch.distributed's ``ChildFailedError`` from the multi-GPU one), after
the script's own one-line error; ``--quiet`` hides it but turns exit status 2 into
1. Here the same launcher runs in-process, a child's failure ends with the child's
exit status and nothing more on stderr (the script has already said what went
wrong, once: see :func:`denoised_drs.cli.run_script`), and accelerate's notice about
defaulted launch settings is not printed.

The processes of a launch join in a rendezvous that torch.distributed would wait 30
minutes for; a ``WORLD_SIZE`` left in the environment without a launcher would make a
lone process wait that long for peers that never come. The scripts therefore join
inside :func:`bounded_rendezvous`, which ends the process with one line and exit
status 2 when the join takes longer than ``DENOISED_DRS_RENDEZVOUS_TIMEOUT`` seconds
(default 60).
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from denoised_drs.errors import is_main_process

RENDEZVOUS_TIMEOUT_ENV = "DENOISED_DRS_RENDEZVOUS_TIMEOUT"
"""The environment variable holding the rendezvous timeout in seconds."""
DEFAULT_RENDEZVOUS_TIMEOUT = 60.0
"""Seconds the processes of a launch wait for each other when the variable is unset."""


def rendezvous_timeout() -> float:
    """``$DENOISED_DRS_RENDEZVOUS_TIMEOUT`` in seconds, or 60 when unset.

    Raises ValueError (one line) unless it is a positive finite number.
    """
    text = os.environ.get(RENDEZVOUS_TIMEOUT_ENV)
    if text is None:
        return DEFAULT_RENDEZVOUS_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise ValueError(
            f"{RENDEZVOUS_TIMEOUT_ENV} must be a positive number of seconds, got {text!r}"
        )
    return value


@contextmanager
def bounded_rendezvous(script: str) -> Iterator[None]:
    """Run the block (the join of a launch's processes), but at most the rendezvous timeout.

    Armed only when ``WORLD_SIZE`` is set, i.e. when the block may wait for peers. If
    the block has not finished within :func:`rendezvous_timeout` seconds, the main
    process prints ``<script>: error: <why>`` and every process exits with status 2
    at once: the wait happens inside torch.distributed's C++ store, which neither an
    exception nor a signal handler can interrupt, and the scripts join before they
    write anything, so nothing is left half-written.
    """
    timeout = rendezvous_timeout()
    world = os.environ.get("WORLD_SIZE")
    if world is None:
        yield
        return

    def give_up() -> None:
        if is_main_process():
            print(
                f"{Path(script).name}: error: the {world} processes of WORLD_SIZE={world} did "
                f"not all join within {timeout:g} s; unset WORLD_SIZE if no launcher started "
                f"them, or set {RENDEZVOUS_TIMEOUT_ENV} to wait longer",
                file=sys.stderr, flush=True,
            )
        os._exit(2)

    watchdog = threading.Timer(timeout, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        with warnings.catch_warnings():
            # accelerate's advice on OMP_NUM_THREADS is two lines of stderr in front of
            # the one line a failed join ends with; the thread count is the user's choice.
            warnings.filterwarnings("ignore", message="OMP_NUM_THREADS/MKL_NUM_THREADS unset")
            yield
    finally:
        watchdog.cancel()


def _child_status(error: BaseException) -> int | None:
    """The failed child's exit status of a launcher exception, or None if it is not one."""
    if isinstance(error, subprocess.CalledProcessError):
        return error.returncode
    failures = getattr(error, "failures", None)  # torch.distributed.elastic ChildFailedError
    if isinstance(failures, dict) and failures:
        first = min(failures.values(), key=lambda failure: failure.timestamp)
        return int(first.exitcode) if first.exitcode > 0 else 1
    return None


def main(argv: list[str] | None = None) -> int:
    """Run ``accelerate launch argv``; return its status (a failed child's own status)."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    args = launch_command_parser().parse_args(argv)
    logging.getLogger("accelerate.commands.launch").setLevel(logging.ERROR)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        launch_command(args)
    except Exception as error:
        status = _child_status(error)
        if status is None:
            raise
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
