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

from ingestd import landing
from ingestd.db.liveness import is_connection_error
from ingestd.errors import RecoveryFailed
from ingestd.lifecycle import Outcome
from ingestd.work import Drop, Recover, Work

log = structlog.get_logger("ingestd.scheduler")


class Process(Protocol):
    """``Pipeline.process``: ``then`` gets each outcome and answers the next file."""

    def __call__(self, drop: Drop, *,
                 then: Callable[[Drop, Outcome], Drop | None]) -> Outcome: ...


Key = tuple[int, str]  # (mtime_ns, name): a company's queue is taken in this order
_RECOVER_FIRST: Key = (-1, "")  # a recovery sorts before any real file

# After the database failed a company's file: its turn comes again after this long.
RETRY_SECONDS = 5.0

# How long a worker keeps a company (its lock and lease) for the company's next ready
# files before letting go, so that peers and recoveries get their turn.
HOLD_SECONDS = 1.0


@dataclass
class _Held:
    """A worker's turn with one company: the file in hand, since when, since when held."""

    company: str
    drop: Drop
    t0: float = field(default_factory=time.monotonic)
    since: float = field(default_factory=time.monotonic)


class Scheduler:
    def __init__(self, process: Process,
                 recover: Callable[[Recover], None], workers: int,
                 on_outcome: Callable[[str, Outcome, float], None] | None = None) -> None:
        self._process = process
        self._recover = recover
        self._on_outcome = on_outcome
        self._cond = threading.Condition()
        # company -> what is queued (a drop's path, or None: its recovery) -> (work, key)
        self._ready: dict[str, dict[Path | None, tuple[Work, Key]]] = {}
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

    def submit(self, work: Work) -> bool:
        """Queue a ready file, or a recovery (which comes before the company's files);
        False if it was already queued."""
        if isinstance(work, Drop):
            return self._put(work, (work.mtime_ns, work.name))
        return self._put(work, _RECOVER_FIRST)

    def _put(self, work: Work, key: Key) -> bool:
        slot = work.path if isinstance(work, Drop) else None
        with self._cond:
            queue = self._ready.setdefault(work.company, {})
            if slot in queue:
                queued = queue[slot][0]
                if (isinstance(work, Drop) and isinstance(queued, Drop)
                        and work.settled is not None and work.settled != queued.settled):
                    # judged ready again as a newer version (re-uploaded while queued):
                    # that is what the claim must find, in its own place in drop order
                    queue[slot] = (work, key)
                return False
            queue[slot] = (work, key)
            self._cond.notify()
            return True

    def waiting(self) -> dict[str, list[int]]:
        """Per company, the mtime_ns of each file waiting (0: put back after a busy
        company, of no known age); recoveries are not files."""
        with self._cond:
            return {c: [k[0] for slot, (_, k) in q.items() if slot is not None]
                    for c, q in self._ready.items()}

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

    def _take(self, queue: dict[Path | None, tuple[Work, Key]]) -> Work:
        """The queue's first work, removed from it (the caller holds the lock)."""
        slot = min(queue, key=lambda s: queue[s][1])
        return queue.pop(slot)[0]

    def _next(self) -> tuple[str, Work] | None:
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
                    work = self._take(queue)
                    self._busy.add(company)
                    self.in_hand += 1
                    return company, work
                self._cond.wait(None if wake is None else max(0.01, wake - now))

    def _then(self, held: _Held, done: Drop, outcome: Outcome) -> Drop | None:
        """``done`` finished (or was given back) under its company's lock: count it,
        then keep the lock for the company's next file, if one is ready."""
        self._finished(held.company, outcome, time.monotonic() - held.t0)
        following = self._next_of(held.company, held.since)
        if following is not None:
            held.drop, held.t0 = following, time.monotonic()
        return following

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

    def _next_of(self, company: str, since: float) -> Drop | None:
        """The company's next ready file for the worker that still holds it, or None to
        let go: when stopping, when a recovery comes first, after ``HOLD_SECONDS``."""
        with self._cond:
            queue = self._ready.get(company)
            if self._stopping or not queue or time.monotonic() - since > HOLD_SECONDS:
                return None
            if None in queue:
                return None  # a recovery waits: let go, so that it comes first
            work = self._take(queue)
            return work if isinstance(work, Drop) else None

    def _put_back(self, drop: Drop) -> None:
        """A file the database failed goes back to the head of its company's queue (its
        own place: nothing dropped after it overtakes it), if it is still in the inbox as
        it was queued. Claimed, it is its company's recovery that comes first."""
        try:
            mtime_ns = os.lstat(drop.path).st_mtime_ns
        except OSError:
            return
        if mtime_ns == drop.mtime_ns:  # else written again: queued once it settles
            self._put(drop, (drop.mtime_ns, drop.name))

    def _announce_retry(self, company: str) -> None:
        with self._cond:
            file = self._retrying.pop(company, None)
        if file is not None:
            log.info("file.retry", company=company, file=file)

    def _work(self) -> None:
        while (item := self._next()) is not None:
            company, work = item
            held: _Held | None = None
            backoff = 0.0
            self._announce_retry(company)
            try:
                if isinstance(work, Recover):
                    self._recover(work)
                else:
                    held = _Held(company, work)
                    backoff = self._drops(held)
            # The worker thread must survive anything, or its companies wait for ever:
            # the database may be down, the disk full, or a bug bit. The file is either
            # still in the inbox (retried by the next rescan) or claimed (recovered next).
            except Exception as exc:
                if isinstance(exc, RecoveryFailed):
                    pass  # logged by the recovery, naming the claimed file
                elif is_connection_error(exc):
                    # Rolled back on the server; the file is tried again, first in line.
                    file = None if held is None else held.drop.name
                    log.warning("db.connection_lost", company=company, file=file,
                                error=_one_line(exc), retry_in_s=RETRY_SECONDS)
                    if held is not None:
                        self._put_back(held.drop)
                        with self._cond:
                            self._retrying[company] = held.drop.name
                elif held is None:
                    log.exception("recovery.error", company=company)
                else:
                    log.exception("file.error", company=company, file=held.drop.name)
                self.submit(landing.recover(company))
                backoff = RETRY_SECONDS
            finally:
                self._done(company, backoff)

    def _drops(self, held: _Held) -> float:
        """The company's files from ``held.drop`` on, under one lock; the back-off after."""
        outcome = self._process(held.drop, then=functools.partial(self._then, held))
        backoff = 0.0
        if outcome.status == "busy":
            # another instance holds the company: try again shortly, first in its queue
            self._put(held.drop, (0, held.drop.name))
            backoff = 1.0
        if outcome.status in ("busy", "fenced"):
            self._finished(held.company, outcome, time.monotonic() - held.t0)
        return backoff


def _one_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
