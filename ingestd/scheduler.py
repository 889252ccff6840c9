"""Per-company FIFO queues and a pool of workers.

One file at a time per company (a later file overrides an earlier one, so order
matters), companies in parallel. Within a company the next file is the ready one
with the oldest (mtime, name). Row contents are none of its business.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from ingestd.db.liveness import is_connection_error
from ingestd.landing import PROCESSING, CompanyDirs
from ingestd.lifecycle import Outcome, RecoveryFailed

log = structlog.get_logger("ingestd.scheduler")


class Process(Protocol):
    """``Pipeline.process``: ``then`` gets each outcome and answers the next file."""

    def __call__(self, path: Path, *,
                 then: Callable[[Path, Outcome], Path | None]) -> Outcome: ...

RECOVER = PROCESSING  # queue entry name meaning "recover this company's claims first"

# After the database failed a company's file: its turn comes again after this long.
RETRY_SECONDS = 5.0

# How long a worker keeps a company (its lock and lease) for the company's next ready
# files before letting go, so that peers and recoveries get their turn.
HOLD_SECONDS = 1.0


@dataclass
class _Held:
    """A worker's turn with one company: the file in hand, since when, since when held."""

    company: str
    path: Path
    key: tuple[int, str]  # its place in the queue
    t0: float = field(default_factory=time.monotonic)
    since: float = field(default_factory=time.monotonic)


class Scheduler:
    def __init__(self, process: Process,
                 recover: Callable[[CompanyDirs], None], workers: int,
                 on_outcome: Callable[[str, Outcome, float], None] | None = None) -> None:
        self._process = process
        self._recover = recover
        self._on_outcome = on_outcome
        self._cond = threading.Condition()
        self._ready: dict[str, dict[Path, tuple[int, str]]] = {}  # company -> path -> key
        self._busy: set[str] = set()
        self._not_before: dict[str, float] = {}  # company -> monotonic time (back-off)
        self._retrying: dict[str, str] = {}  # company -> the file the database failed
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, name=f"ingestd-worker-{i}",
                                          daemon=True) for i in range(workers)]
        self.processed = 0
        self.in_hand = 0

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def submit(self, path: Path, mtime_ns: int) -> bool:
        """Queue a ready file; False if it was already queued."""
        company = path.parent.name if path.name == RECOVER else path.parent.parent.name
        with self._cond:
            queue = self._ready.setdefault(company, {})
            if path in queue:
                return False
            queue[path] = (mtime_ns, path.name)
            self._cond.notify()
            return True

    def submit_recovery(self, dirs: CompanyDirs) -> None:
        """Ask for the company's leftover claims to be finished before its next file."""
        self.submit(dirs.processing, -1)  # sorts before any real file

    def backlog(self) -> dict[str, int]:
        with self._cond:
            return {c: sum(1 for p in q if p.name != RECOVER) for c, q in self._ready.items()}

    def oldest_ready_mtime_ns(self) -> int | None:
        with self._cond:
            keys = [k[0] for q in self._ready.values() for p, k in q.items() if p.name != RECOVER]
        return min(keys) if keys else None

    def oldest_ready_by_company(self) -> dict[str, int]:
        """Per company with files waiting: the oldest one's mtime_ns (files put back
        after a busy company, queued with 0, have no known age and are left out)."""
        with self._cond:
            found: dict[str, int] = {}
            for c, q in self._ready.items():
                keys = [k[0] for p, k in q.items() if p.name != RECOVER and k[0] > 0]
                if keys:
                    found[c] = min(keys)
            return found

    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads) or self._stopping

    def stopped(self) -> bool:
        """Every worker has ended (none left waiting on anything)."""
        return not any(t.is_alive() for t in self._threads)

    def stop(self, timeout: float) -> bool:
        """Stop taking files; wait up to ``timeout`` for files in hand. True if all finished."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    # -- workers ------------------------------------------------------------------

    def _next(self) -> tuple[str, Path, tuple[int, str]] | None:
        """Wait for a company with work that nobody is working on; None when stopping."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                now = time.monotonic()
                wake: float | None = None
                for company, queue in self._ready.items():
                    if not queue or company in self._busy:
                        continue
                    nb = self._not_before.get(company, 0.0)
                    if nb > now:
                        wake = nb if wake is None else min(wake, nb)
                        continue
                    path = min(queue, key=queue.__getitem__)
                    key = queue.pop(path)
                    self._busy.add(company)
                    self.in_hand += 1
                    return company, path, key
                self._cond.wait(None if wake is None else max(0.01, wake - now))

    def _then(self, held: _Held, done: Path, outcome: Outcome) -> Path | None:
        """``done`` finished (or was given back) under its company's lock: count it,
        then keep the lock for the company's next file, if one is ready."""
        self._finished(held.company, outcome, time.monotonic() - held.t0)
        following = self._next_of(held.company, held.since)
        if following is None:
            return None
        held.path, held.key = following
        held.t0 = time.monotonic()
        return held.path

    def _finished(self, company: str, outcome: Outcome, seconds: float) -> None:
        if outcome.status in ("done", "failed"):
            self.processed += 1
        if self._on_outcome:
            self._on_outcome(company, outcome, seconds)

    def _done(self, company: str, backoff: float = 0.0) -> None:
        with self._cond:
            self._busy.discard(company)
            self.in_hand -= 1
            if backoff:
                self._not_before[company] = time.monotonic() + backoff
            self._cond.notify_all()

    def _next_of(self, company: str, since: float) -> tuple[Path, tuple[int, str]] | None:
        """The company's next ready file for the worker that still holds it, or None to
        let go: when stopping, when a recovery comes first, after ``HOLD_SECONDS``."""
        with self._cond:
            queue = self._ready.get(company)
            if self._stopping or not queue or time.monotonic() - since > HOLD_SECONDS:
                return None
            path = min(queue, key=queue.__getitem__)
            if path.name == RECOVER:
                return None
            return path, queue.pop(path)

    def _put_back(self, held: _Held) -> None:
        """The file the database failed goes back to the head of its company's queue
        (its own place: nothing dropped after it overtakes it), if it is still in the
        inbox as it was queued. Claimed, it is its company's recovery that comes first."""
        try:
            mtime_ns = os.lstat(held.path).st_mtime_ns
        except OSError:
            return
        if held.key[0] not in (0, mtime_ns):
            return  # written again since: the watcher queues it once it settles
        with self._cond:
            self._ready.setdefault(held.company, {})[held.path] = held.key

    def _announce_retry(self, company: str) -> None:
        with self._cond:
            file = self._retrying.pop(company, None)
        if file is not None:
            log.info("file.retry", company=company, file=file)

    def _work(self) -> None:
        while (item := self._next()) is not None:
            company, path, key = item
            backoff = 0.0
            held = _Held(company, path, key)
            self._announce_retry(company)
            try:
                if path.name == RECOVER:
                    self._recover(CompanyDirs(path.parent))
                    continue
                outcome = self._process(path, then=functools.partial(self._then, held))
                path = held.path  # the last file taken under the lock
                if outcome.status == "busy":
                    # another instance holds the company: try again shortly
                    self.submit(path, 0)
                    backoff = 1.0
                if outcome.status in ("busy", "fenced"):
                    self._finished(company, outcome, time.monotonic() - held.t0)
            except Exception as exc:
                path = held.path
                # The database may be down, or the disk full. The file is either still in
                # the inbox (retried by the next rescan) or claimed (recovered next time).
                if isinstance(exc, RecoveryFailed):
                    pass  # logged by the recovery, naming the claimed file
                elif is_connection_error(exc):
                    # Rolled back on the server; the file is tried again, first in line.
                    file = None if path.name == RECOVER else path.name
                    log.warning("db.connection_lost", company=company, file=file,
                                error=_one_line(exc), retry_in_s=RETRY_SECONDS)
                    if file is not None:
                        self._put_back(held)
                        with self._cond:
                            self._retrying[company] = file
                elif path.name == RECOVER:
                    log.exception("recovery.error", company=company)
                else:
                    log.exception("file.error", company=company, file=path.name)
                dirs = CompanyDirs(path.parent if path.name == RECOVER else path.parent.parent)
                self.submit_recovery(dirs)
                backoff = RETRY_SECONDS
            finally:
                self._done(company, backoff)


def _one_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
