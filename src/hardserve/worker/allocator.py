"""The C library's memory allocator in a worker: how many malloc arenas its threads share.

glibc gives each new thread an arena of its own, up to 8 per core. A worker's threads run Python
one at a time (the interpreter's lock), so the extra arenas buy no parallelism; what they do is
spread the app's larger objects (response pieces, bodies) over as many heaps, each of which
glibc grows and trims on its own, and every trimmed page is faulted in again by the next piece.
With 8 app threads streaming freshly made 64 KiB pieces, 2 arenas made 5-6 page faults per
response instead of 22-76 and spent 15-40 % less CPU (docs/performance.md).

ctypes, which the call needs, adds about 0.5 MiB to an idle worker.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt()'s parameter number for the arena count (glibc's malloc.h).
_M_ARENA_MAX = -8


def limit_malloc_arenas(count: int) -> bool:
    """Let this process's threads share at most `count` malloc arenas (glibc's mallopt
    M_ARENA_MAX), for the arenas made from now on; False where the C library takes no such
    setting (not Linux with glibc), and nothing changes."""
    if not sys.platform.startswith("linux"):
        return False  # the parameter number is glibc's; elsewhere it could mean another
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # glibc returns 1 when it took the value; musl's mallopt takes nothing and returns 0.
    return bool(mallopt(_M_ARENA_MAX, count))
