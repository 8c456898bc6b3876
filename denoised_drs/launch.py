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
"""

from __future__ import annotations

import logging
import subprocess
import sys


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
