"""How far each file in hand has got, and whether the worker holding it is stuck.

A worker blocked in a system call (a hung NFS read, a half-open database socket)
is a live thread, so "every worker thread is alive" says nothing about it. Each
file in hand therefore gets a ``Handle``: the appliers ``advance`` it after every
chunk and bounded waits (a carrier retry's back-off, a carrier request with its
time-out) call ``alive``. A handle that has not moved for ``stuck_seconds`` marks a
stuck worker; the daemon then stops feeding systemd's watchdog.

Four parts, one job each, put together by ``Tracker``:

* ``Registry``: the handles of this process's files in hand, and who listens;
* ``StuckDetector``: which of them have not moved for ``stuck_seconds``;
* ``InHandRows``: the ``ingestd.in_hand`` rows (on connections of their own, outside
  the file's transaction), which is what ``ingestd status`` reads from any shell,
  host or instance. A file gets its row at the first progress tick it is still in
  hand at, so a small file, done between two ticks, costs no statement for it; the
  lifecycle deletes a finished file's row, if it has one, in its last commit;
* ``Reporter``: every ``progress_seconds`` a ``file.progress`` log line per file in
  hand for longer than that, and the figures into the rows.

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
        # Its in_hand row: written at a progress tick (under the lock, so that a file
        # finishing meanwhile either sees the row or stops it being written), never
        # once the file is finished, gone with the file's last commit.
        self.row_lock = threading.Lock()
        self.row_written = False
        self.row_closed = False
        self.row_deleted = False

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


class InHandRows:
    """This process's files in hand as rows of ``ingestd.in_hand``. Progress is for
    people watching: a database problem is logged once, never raised."""

    def __init__(self, pool: ConnectionPool[psycopg.Connection[Any]] | None) -> None:
        self._pool = pool
        self._failing = False
        self.host = socket.gethostname()
        self.pid = os.getpid()

    def publish(self, progress: list[tuple[Handle, bool]]) -> None:
        """At a progress tick: a row for each file in hand that has none yet, then
        each file's figures and whether it is stuck (``progress``) into the rows."""
        for handle, _ in progress:
            if not handle.row_written:
                self._insert(handle)
        self.update([self.progress(h, stuck) for h, stuck in progress if h.row_written])

    def _insert(self, handle: Handle) -> None:
        with handle.row_lock:
            if handle.row_closed:
                return  # finished meanwhile: its row would outlive it
            handle.row_written = self._db(lambda conn: in_hand.insert(
                conn, claim_id=handle.claim_id, company=handle.company, file=handle.file,
                host=self.host, pid=self.pid, started_at=handle.started_at,
                bytes_total=handle.bytes_total))

    @staticmethod
    def close(handle: Handle) -> bool:
        """The file is finished: no row is written for it any more. True if it has
        one, for the caller to delete."""
        with handle.row_lock:
            handle.row_closed = True
            return handle.row_written and not handle.row_deleted

    def delete(self, handle: Handle) -> None:
        """Its row, if it has one that did not go with the file's last commit."""
        if self.close(handle):
            self._db(lambda conn: in_hand.delete(conn, handle.claim_id, self._owner(handle)))

    def delete_with(self, conn: psycopg.Connection[Any], handle: Handle) -> None:
        """The handle's row (``close`` said it has one) deleted on ``conn``, in a
        transaction the caller commits: a finished file's row goes with its last commit
        (one round trip fewer). The caller says ``deleted`` once that commit is
        through; until then ``delete`` does it."""
        if self._pool is not None:
            in_hand.delete(conn, handle.claim_id, self._owner(handle))

    @staticmethod
    def deleted(handle: Handle) -> None:
        handle.row_deleted = True

    def discard(self, claim_id: str) -> None:
        """Forget a claim's row left by a dead owner (recovery finishes the claim)."""
        self._db(lambda conn: in_hand.discard(conn, claim_id))

    def update(self, rows: list[in_hand.Progress]) -> None:
        if rows:
            self._db(lambda conn: in_hand.update(conn, rows))

    def progress(self, handle: Handle, stuck: bool) -> in_hand.Progress:
        return in_hand.Progress(handle.claim_id, self._owner(handle), handle.rows_done,
                                handle.bytes_done, stuck)

    def clean_host(self) -> None:
        """Remove this host's rows left by processes that are gone."""
        def clean(conn: psycopg.Connection[Any]) -> None:
            gone = [pid for pid in in_hand.pids_of(conn, self.host)
                    if pid == self.pid or not _pid_alive(pid)]
            if gone:
                in_hand.delete_for(conn, self.host, gone)
        self._db(clean)

    def delete_all(self) -> None:
        # Whatever is still in hand rolls back when this process exits.
        self._db(lambda conn: in_hand.delete_for(conn, self.host, [self.pid]))

    def _owner(self, handle: Handle) -> in_hand.Owner:
        return in_hand.Owner(self.host, self.pid, handle.started_at)

    def _db(self, work: Callable[[psycopg.Connection[Any]], object]) -> bool:
        """Whether ``work`` committed."""
        if self._pool is None:
            return False
        try:
            # One round trip where the work allows, and no wait for the WAL flush: these
            # rows are for people watching, and a server crash ends what they describe.
            with self._pool.connection() as conn, conn.pipeline():
                conn.execute("SET LOCAL synchronous_commit = off")
                work(conn)
                conn.commit()
        except psycopg.Error as exc:
            if not self._failing:
                log.warning("progress.db_error", error=str(exc))
            self._failing = True
            return False
        self._failing = False
        return True


class Registry:
    """The handles of this process's files in hand; listeners hear of each begin and end."""

    def __init__(self, rows: InHandRows) -> None:
        self._rows = rows
        self._handles: dict[str, Handle] = {}
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    def begin(self, company: str, file: str, claim_id: str, bytes_total: int) -> Handle:
        handle = Handle(company, file, claim_id, bytes_total)
        with self._lock:
            self._handles[claim_id] = handle
        self._notify("begin", handle)
        return handle

    def end(self, handle: Handle) -> None:
        with self._lock:
            self._handles.pop(handle.claim_id, None)
        self._rows.delete(handle)
        self._notify("end", handle)

    @contextmanager
    def tracking(self, company: str, file: str, claim_id: str,
                 bytes_total: int) -> Iterator[Handle]:
        """``begin`` … ``end``; the handle is handed down in the file's context."""
        handle = self.begin(company, file, claim_id, bytes_total)
        try:
            yield handle
        finally:
            self.end(handle)

    def in_hand(self) -> list[Handle]:
        with self._lock:
            return sorted(self._handles.values(), key=lambda h: h.started)

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _notify(self, event: str, handle: Handle) -> None:
        for listener in self._listeners:
            try:
                listener(event, handle)
            except Exception:  # a watcher's bug (the progress bar) must not fail the file
                log.exception("progress.listener_failed")


class StuckDetector:
    """A busy worker whose file has not moved for ``stuck_seconds`` is stuck."""

    def __init__(self, registry: Registry, stuck_seconds: float) -> None:
        self._registry = registry
        self.stuck_seconds = stuck_seconds

    def is_stuck(self, handle: Handle, now: float) -> bool:
        return handle.idle_s(now) > self.stuck_seconds

    def stuck(self) -> list[Handle]:
        now = time.monotonic()
        return [h for h in self._registry.in_hand() if self.is_stuck(h, now)]


class Reporter:
    """Every ``progress_seconds``: a ``file.progress`` line per file in hand for longer
    than that (unless ``log_lines`` is off: a progress bar shows it), and the rows."""

    def __init__(self, registry: Registry, detector: StuckDetector, rows: InHandRows, *,
                 progress_seconds: float, log_lines: bool = True) -> None:
        self._registry = registry
        self._detector = detector
        self._rows = rows
        self.progress_seconds = progress_seconds
        self._log_lines = log_lines
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="ingestd-progress",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.wait(self.progress_seconds):
            try:
                self.report()
            except Exception:  # the reporter thread must outlive any one bad round
                log.exception("progress.report_failed")

    def report(self) -> None:
        now = time.monotonic()
        progress = []
        for h in self._registry.in_hand():
            progress.append((h, self._detector.is_stuck(h, now)))
            if self._log_lines and h.elapsed_s(now) >= self.progress_seconds:
                rows_per_s, eta = h.rates(now)
                log.info("file.progress", company=h.company, file=h.file, claim=h.claim_id,
                         rows_done=h.rows_done, bytes_done=h.bytes_done,
                         bytes_total=h.bytes_total, rows_per_s=round(rows_per_s, 1),
                         eta_s=None if eta is None else round(eta, 1))
        self._rows.publish(progress)


class Tracker:
    """The four parts put together, as ``ingestd run`` and ``ingestd ingest`` use them."""

    def __init__(self, *, progress_seconds: float, stuck_seconds: float,
                 pool: ConnectionPool[psycopg.Connection[Any]] | None = None,
                 log_lines: bool = True) -> None:
        self.rows = InHandRows(pool)
        self.registry = Registry(self.rows)
        self.detector = StuckDetector(self.registry, stuck_seconds)
        self.reporter = Reporter(self.registry, self.detector, self.rows,
                                 progress_seconds=progress_seconds, log_lines=log_lines)
        # The registry's side, as the workers and the progress bar use it.
        self.begin, self.end = self.registry.begin, self.registry.end
        self.tracking, self.in_hand = self.registry.tracking, self.registry.in_hand
        self.listen, self.stuck = self.registry.listen, self.detector.stuck
        self.report = self.reporter.report

    @property
    def host(self) -> str:
        return self.rows.host

    @host.setter
    def host(self, host: str) -> None:
        self.rows.host = host

    @property
    def pid(self) -> int:
        return self.rows.pid

    def start(self) -> None:
        """Remove this host's rows left by processes that are gone, then report."""
        self.rows.clean_host()
        self.reporter.start()

    def stop(self) -> None:
        self.reporter.stop()
        self.rows.delete_all()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
