"""Named crash points for the crash-recovery tests (and the chaos suite to come).

``INGESTD_FAILPOINT=NAME`` makes the process SIGKILL itself when it reaches
``hit(NAME)``: the most honest way to test "whatever is killed when". A hang point
instead blocks the thread that reaches it for ever, like a system call that never
returns (a dead NFS server), which is what the stuck-worker watchdog must catch.
``NAME:stop`` instead SIGSTOPs the process there, once: a paused or swapped-out
instance that still holds its sessions (the several-instances tests resume it).
``NAME:gate:PATH`` holds only the thread that reaches NAME, the rest of the daemon
running on: it creates ``PATH.reached``, then waits until ``PATH`` exists (a race
made deterministic: the test acts while the thread waits, then opens the gate).
``NAME:wait`` makes the thread wait on its database connection there, once (a long
server-side sleep): a worker in ``Connection.wait``, as on a server that stopped
answering, for the tests that then cut the connection.
Unset in production, where ``hit`` is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import psycopg

BEFORE_COMMIT = "before_commit"  # rows written, ledger row written, not committed
AFTER_COMMIT = "after_commit"  # committed, sidecars not written, file not moved
AFTER_SIDECARS = "after_sidecars"  # sidecars written, file not moved
HANG_IN_APPLY = "hang_in_apply"  # blocks the worker for ever inside apply

_HANGS = frozenset({HANG_IN_APPLY})


_stopped: set[str] = set()
_waited: set[str] = set()


def hit(name: str, conn: psycopg.Connection[Any] | None = None) -> None:
    point = os.environ.get("INGESTD_FAILPOINT")
    if point and point.startswith(f"{name}:gate:"):
        gate = point[len(name) + 6:]
        if not os.path.exists(gate):
            with open(gate + ".reached", "a"):
                pass
            while not os.path.exists(gate):
                time.sleep(0.02)  # test-only: polled, like a test's own wait_for
    elif point == f"{name}:stop" and name not in _stopped:
        _stopped.add(name)
        os.kill(os.getpid(), signal.SIGSTOP)
    elif point == f"{name}:wait" and name not in _waited and conn is not None:
        _waited.add(name)
        conn.execute("SELECT pg_sleep(3600)")
    elif point == name:
        if name in _HANGS:
            threading.Event().wait()
        os.kill(os.getpid(), signal.SIGKILL)
