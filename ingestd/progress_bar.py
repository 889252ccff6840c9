"""`ingestd ingest` on a terminal: a progress bar (rich) for the file in hand.

Off a terminal there is no bar: the tracker's ``file.progress`` log lines say the same
in a form a log collector keeps.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)

from ingestd.progress import Handle, Tracker

_REFRESH_S = 0.1


@contextmanager
def bar(tracker: Tracker, stream: TextIO,
        log_to: Callable[[TextIO], None]) -> Iterator[None]:
    """Show the tracker's files on ``stream`` (a terminal) while the block runs.

    ``log_to(stream)`` re-points the log at rich's stand-in for ``sys.stderr`` while
    the bar is shown, so log lines print above the bar instead of through it.
    """
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[rows]} rows"), DownloadColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(file=stream), redirect_stderr=True) as view:
        tasks: dict[str, TaskID] = {}
        lock = threading.Lock()

        def on_event(event: str, h: Handle) -> None:
            with lock:
                if event == "begin":
                    tasks[h.claim_id] = view.add_task(h.file, total=h.bytes_total or None,
                                                      rows=0)
                elif (task := tasks.pop(h.claim_id, None)) is not None:
                    # Read to its end (or failed, which the answer line says).
                    view.update(task, completed=h.bytes_total, rows=h.rows_done)

        def follow() -> None:
            while not stop.wait(_REFRESH_S):
                with lock:
                    for h in tracker.in_hand():
                        if (task := tasks.get(h.claim_id)) is not None:
                            view.update(task, completed=h.bytes_done, rows=h.rows_done)

        stop = threading.Event()
        tracker.listen(on_event)
        follower = threading.Thread(target=follow, name="ingestd-progress-bar", daemon=True)
        follower.start()
        log_to(sys.stderr)  # rich's proxy while the bar is live
        try:
            yield
        finally:
            stop.set()
            follower.join()
            log_to(stream)
