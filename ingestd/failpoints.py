"""Named crash points for the crash-recovery tests (and the chaos suite to come).

``INGESTD_FAILPOINT=NAME`` makes the process SIGKILL itself when it reaches
``hit(NAME)``: the most honest way to test "whatever is killed when". Unset in
production, where ``hit`` is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

BEFORE_COMMIT = "before_commit"  # rows written, ledger row written, not committed
AFTER_COMMIT = "after_commit"  # committed, sidecars not written, file not moved
AFTER_SIDECARS = "after_sidecars"  # sidecars written, file not moved


def hit(name: str) -> None:
    if os.environ.get("INGESTD_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
