"""Named crash points for the crash-recovery tests (and the chaos suite to come).

``INGESTD_FAILPOINT=NAME`` makes the process SIGKILL itself when it reaches
``hit(NAME)``: the most honest way to test "whatever is killed when". A hang point
instead blocks the thread that reaches it for ever, like a system call that never
returns (a dead NFS server), which is what the stuck-worker watchdog must catch.
Unset in production, where ``hit`` is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading

BEFORE_COMMIT = "before_commit"  # rows written, ledger row written, not committed
AFTER_COMMIT = "after_commit"  # committed, sidecars not written, file not moved
AFTER_SIDECARS = "after_sidecars"  # sidecars written, file not moved
HANG_IN_APPLY = "hang_in_apply"  # blocks the worker for ever inside apply

_HANGS = frozenset({HANG_IN_APPLY})


def hit(name: str) -> None:
    if os.environ.get("INGESTD_FAILPOINT") == name:
        if name in _HANGS:
            threading.Event().wait()
        os.kill(os.getpid(), signal.SIGKILL)
