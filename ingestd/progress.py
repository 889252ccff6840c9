"""How far each file in hand has got, and whether the worker holding it is stuck.

A worker blocked in a system call (a hung NFS read, a half-open database socket)
is a live thread, so "every worker thread is alive" says nothing about it. Each
file in hand therefore gets a ``Handle``: the appliers ``advance`` it after every
chunk and bounded waits (a carrier retry's back-off, a carrier request with its
time-out) call ``alive``. A handle that has not moved for ``stuck_seconds`` marks a
stuck worker; the daemon then stops feeding systemd's watchdog.

The ``Tracker`` also reports: every ``progress_seconds`` a ``file.progress`` log line
per file in hand for longer than that, and the figures in ``ingestd.in_hand`` (on
connections of their own, outside the file's transaction), which is what
``ingestd status`` reads from any shell, host or instance.

Thread safety: a handle is written by its worker (and that worker's carrier threads)
and read by the reporter and the supervisor; each field is a single attribute store,
which is atomic in CPython, and a reader only needs a recent value, not a consistent
pair. The tracker's set of handles is guarded by a lock.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
import structlog
from psycopg_pool import ConnectionPool

from ingestd.db import in_hand

log = structlog.get_logger("ingestd.progress")


class Handle:
    """One file in hand."""

    def __init__(self, company: str, file: str, claim_id: str, bytes_total: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.company = company
        self.file = file
        self.claim_id = claim_id
        self.bytes_total = bytes_total
        self.rows_done = 0
        self.bytes_done = 0
        self.started_at = datetime.now(UTC)
        self._clock = clock
        self.started = clock()
        self.last_progress = self.started
        self.row_deleted = False  # its in_hand row went with the file's last commit

    def advance(self, rows_done: int, bytes_done: int | None = None) -> None:
        """The file is read up to ``bytes_done`` and ``rows_done`` rows are decided."""
        self.rows_done = rows_done
        if bytes_done is not None:
            self.bytes_done = min(bytes_done, self.bytes_total)
        self.last_progress = self._clock()

    def alive(self) -> None:
        """Progress without rows: a wait that is bounded has started or ended."""
        self.last_progress = self._clock()

    def idle_s(self, now: float | None = None) -> float:
        return (self._clock() if now is None else now) - self.last_progress

    def elapsed_s(self, now: float | None = None) -> float:
        return (self._clock() if now is None else now) - self.started

    def rates(self, now: float | None = None) -> tuple[float, float | None]:
        """(rows per second so far, seconds left at the byte rate so far or None)."""
        elapsed = max(self.elapsed_s(now), 1e-9)
        eta = None
        if self.bytes_done > 0 and self.bytes_total > 0:
            eta = elapsed * (self.bytes_total - self.bytes_done) / self.bytes_done
        return self.rows_done / elapsed, eta


class _NoProgress(Handle):
    """For work nobody watches (``ingestd check``, tests of a processor alone)."""

    def __init__(self) -> None:
        super().__init__("", "", "", 0)

    def advance(self, rows_done: int, bytes_done: int | None = None) -> None:
        pass

    def alive(self) -> None:
        pass


NO_PROGRESS: Handle = _NoProgress()


Listener = Callable[[str, Handle], None]  # ("begin" | "end", handle)


class Tracker:
    """The files in hand of this process; reports them to the log and the database."""

    def __init__(self, *, progress_seconds: float, stuck_seconds: float,
                 pool: ConnectionPool[psycopg.Connection[Any]] | None = None,
                 log_lines: bool = True) -> None:
        self.progress_seconds = progress_seconds
        self.stuck_seconds = stuck_seconds
        self._pool = pool
        self._log_lines = log_lines
        self._handles: dict[str, Handle] = {}
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._db_failing = False
        self.host = socket.gethostname()
        self.pid = os.getpid()

    # -- the workers' side ---------------------------------------------------------

    def begin(self, company: str, file: str, claim_id: str, bytes_total: int) -> Handle:
        handle = Handle(company, file, claim_id, bytes_total)
        self._db(lambda conn: in_hand.insert(
            conn, claim_id=claim_id, company=company, file=file, host=self.host, pid=self.pid,
            started_at=handle.started_at, bytes_total=bytes_total))
        with self._lock:
            self._handles[claim_id] = handle
        self._notify("begin", handle)
        return handle

    def end(self, handle: Handle) -> None:
        with self._lock:
            self._handles.pop(handle.claim_id, None)
        if not handle.row_deleted:
            self._db(lambda conn: in_hand.delete(conn, handle.claim_id, self._owner(handle)))
        self._notify("end", handle)

    def delete_row(self, conn: psycopg.Connection[Any], handle: Handle) -> None:
        """The handle's row deleted on ``conn``, in a transaction the caller commits: a
        finished file's row goes with its last commit (one round trip fewer). The caller
        says ``row_deleted`` once that commit is through; until then ``end`` deletes it."""
        if self._pool is not None:
            in_hand.delete(conn, handle.claim_id, self._owner(handle))

    @staticmethod
    def row_deleted(handle: Handle) -> None:
        handle.row_deleted = True

    def _owner(self, handle: Handle) -> in_hand.Owner:
        return in_hand.Owner(self.host, self.pid, handle.started_at)

    def discard(self, claim_id: str) -> None:
        """Forget a claim's row left by a dead owner (recovery finishes the claim)."""
        self._db(lambda conn: in_hand.discard(conn, claim_id))

    @contextmanager
    def tracking(self, company: str, file: str, claim_id: str,
                 bytes_total: int) -> Iterator[Handle]:
        """``begin`` … ``end``; the handle is handed down in the file's context."""
        handle = self.begin(company, file, claim_id, bytes_total)
        try:
            yield handle
        finally:
            self.end(handle)

    # -- the watchers' side --------------------------------------------------------

    def in_hand(self) -> list[Handle]:
        with self._lock:
            return sorted(self._handles.values(), key=lambda h: h.started)

    def stuck(self) -> list[Handle]:
        now = time.monotonic()
        return [h for h in self.in_hand() if h.idle_s(now) > self.stuck_seconds]

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _notify(self, event: str, handle: Handle) -> None:
        for listener in self._listeners:
            try:
                listener(event, handle)
            except Exception:  # a watcher's bug (the progress bar) must not fail the file
                log.exception("progress.listener_failed")

    # -- reporting -----------------------------------------------------------------

    def start(self) -> None:
        """Remove this host's rows left by processes that are gone, then report."""
        self._db(self._clean_host)
        self._thread = threading.Thread(target=self._report_loop, name="ingestd-progress",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        # Whatever is still in hand rolls back when this process exits.
        self._db(lambda conn: in_hand.delete_for(conn, self.host, [self.pid]))

    def _clean_host(self, conn: psycopg.Connection[Any]) -> None:
        gone = [pid for pid in in_hand.pids_of(conn, self.host)
                if pid == self.pid or not _pid_alive(pid)]
        if gone:
            in_hand.delete_for(conn, self.host, gone)

    def _report_loop(self) -> None:
        while not self._stop.wait(self.progress_seconds):
            try:
                self.report()
            except Exception:  # the reporter thread must outlive any one bad round
                log.exception("progress.report_failed")

    def report(self) -> None:
        handles = self.in_hand()
        now = time.monotonic()
        rows = []
        for h in handles:
            stuck = h.idle_s(now) > self.stuck_seconds
            rows.append(in_hand.Progress(h.claim_id, self._owner(h), h.rows_done, h.bytes_done,
                                         stuck))
            if self._log_lines and h.elapsed_s(now) >= self.progress_seconds:
                rows_per_s, eta = h.rates(now)
                log.info("file.progress", company=h.company, file=h.file, claim=h.claim_id,
                         rows_done=h.rows_done, bytes_done=h.bytes_done,
                         bytes_total=h.bytes_total, rows_per_s=round(rows_per_s, 1),
                         eta_s=None if eta is None else round(eta, 1))
        if rows:
            self._db(lambda conn: in_hand.update(conn, rows))

    def _db(self, work: Callable[[psycopg.Connection[Any]], object]) -> None:
        """Progress is for people watching: a database problem must not fail the file."""
        if self._pool is None:
            return
        try:
            # One round trip where the work allows, and no wait for the WAL flush: these
            # rows are for people watching, and a server crash ends what they describe.
            with self._pool.connection() as conn, conn.pipeline():
                conn.execute("SET LOCAL synchronous_commit = off")
                work(conn)
                conn.commit()
        except psycopg.Error as exc:
            if not self._db_failing:
                log.warning("progress.db_error", error=str(exc))
            self._db_failing = True
        else:
            self._db_failing = False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
