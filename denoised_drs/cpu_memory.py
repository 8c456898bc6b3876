"""Keep freed CPU memory inside the process, so big activations are not faulted in anew.

Certification runs the same network on batches of the same size thousands of times;
each forward allocates and frees the same large activations. With glibc's default
settings, an allocation above the (dynamic) mmap threshold is a fresh ``mmap``
whose pages the kernel faults in on first touch, and freed heap memory above the
trim threshold goes back to the kernel, so every batch pays for its memory again.
On the 2-core machines this project is developed on, that was about half of the
time of certifying a small CNN (LeNet, n = 10,000 at batch 1,000: 0.56 s -> 0.31 s
per image; the library's SmallCNN: 1.54 s -> 0.84 s).

:func:`keep_freed_memory` raises both thresholds for the whole process. It only
changes where memory comes from, never a result. The cost: memory freed by the
process is kept for reuse instead of being returned to the system, so the
resident size stays near its peak. The command-line scripts call it; library users
call it once at start-up if they certify or train on a CPU.
"""

from __future__ import annotations

import ctypes
import platform

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
"""glibc's largest mmap threshold on 64-bit systems: blocks up to 32 MiB come from the heap."""
TRIM_THRESHOLD = (1 << 31) - 1
"""Free memory at the top of the heap kept before trimming (the largest ``int`` mallopt takes)."""


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds so that freed blocks are reused.

    Returns True when both settings took effect, False where they do not apply
    (not Linux with glibc, e.g. macOS, Windows or musl), leaving the allocator as it
    was. Safe to call more than once.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
