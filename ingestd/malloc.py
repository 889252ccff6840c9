"""glibc's malloc arenas, limited from inside the process (issue 16, section 7).

glibc gives each thread that allocates under contention an arena of its own, up to
8 per core, and an arena's freed memory mostly stays mapped. The daemon runs ~25
threads (workers, their database threads, the watcher, progress, heartbeat, the pool),
so every thread that once touched a medium file's buffers keeps its own high-water
mark: RSS climbs in steps and never comes back down.

``MALLOC_ARENA_MAX`` in the environment would cure it, but glibc reads it once, when
the process starts: setting ``os.environ`` later does nothing, and an ``Environment=``
line in the unit only covers systemd. ``mallopt(M_ARENA_MAX, n)`` does the same from
inside, and applies to every arena created afterwards; ``limit_arenas`` is called by
``ingestd run`` before any thread starts, so it holds under systemd and for a daemon
started by hand alike. A ``MALLOC_ARENA_MAX`` set by the operator wins (glibc has read
it already). ``trim`` gives freed memory at the top and in the middle of every arena
back to the kernel (``malloc_trim``, glibc 2.8+).

Not glibc (musl, macOS): nothing to do, and nothing done. ctypes is the only way to
reach mallopt from Python; no library wraps it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_ARENA_MAX = -8  # from glibc's malloc.h


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") else None


_LIBC = _libc()


def limit_arenas(arena_max: int) -> int | None:
    """Allow at most ``arena_max`` malloc arenas (0: glibc's default). Returns the limit
    now in force, or None when it cannot be set here (not glibc, or left to the
    environment's MALLOC_ARENA_MAX)."""
    if _LIBC is None or arena_max <= 0:
        return None
    if os.environ.get("MALLOC_ARENA_MAX"):
        return None  # the operator's own, read by glibc at start-up
    if _LIBC.mallopt(ctypes.c_int(M_ARENA_MAX), ctypes.c_int(arena_max)) != 1:
        return None
    return arena_max


def trim() -> bool:
    """Return free heap memory to the kernel; False when not possible here."""
    if _LIBC is None or not hasattr(_LIBC, "malloc_trim"):
        return False
    _LIBC.malloc_trim(ctypes.c_size_t(0))
    return True
