"""Per-company FIFO queues and a pool of workers.

One file at a time per company (a later file overrides an earlier one, so order
matters), companies in parallel. Within a company the next file is the ready one
with the oldest (mtime, name). Row contents are none of its business.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from ingestd.landing import PROCESSING, CompanyDirs
from ingestd.lifecycle import Outcome, RecoveryFailed
from ingestd.readiness import Settled

log = structlog.get_logger("ingestd.scheduler")


Next = tuple[Path, Settled | None]  # a file and how it was when judged ready


class Process(Protocol):
    """``Pipeline.process``: ``then`` gets each outcome and answers the next file."""

    def __call__(self, path: Path, *, then: Callable[[Path, Outcome], Next | None],
                 facts: Settled | None = None) -> Outcome: ...

RECOVER = PROCESSING  # queue entry name meaning "recover this company's claims first"

# How long a worker keeps a company (its lock and lease) for the company's next ready
# files before letting go, so that peers and recoveries get their turn.
HOLD_SECONDS = 1.0


@dataclass
class _Held:
    """A worker's turn with one company: the file in hand, since when, since when held."""

    company: str
    path: Path
    facts: Settled | None = None
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
        self._facts: dict[Path, Settled] = {}  # queued files as the watcher judged them
        self._busy: set[str] = set()
        self._not_before: dict[str, float] = {}  # company -> monotonic time (back-off)
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, name=f"ingestd-worker-{i}",
                                          daemon=True) for i in range(workers)]
        self.processed = 0
        self.in_hand = 0

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def submit(self, path: Path, mtime_ns: int, facts: Settled | None = None) -> bool:
        """Queue a ready file; False if it was already queued (then ``facts``, a newer
        version judged ready, replace the queued ones)."""
        company = path.parent.name if path.name == RECOVER else path.parent.parent.name
        with self._cond:
            queue = self._ready.setdefault(company, {})
            if facts is not None:
                self._facts[path] = facts
            if path in queue:
                return False
            queue[path] = (mtime_ns, path.name)
            self._cond.notify()
            return True

    def submit_ready(self, path: Path, facts: Settled) -> bool:
        """The watcher's hand-over: a file judged ready, in drop order by its mtime."""
        return self.submit(path, facts.mtime_ns, facts)

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

    def _next(self) -> tuple[str, Path, Settled | None] | None:
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
                    del queue[path]
                    self._busy.add(company)
                    self.in_hand += 1
                    return company, path, self._facts.pop(path, None)
                self._cond.wait(None if wake is None else max(0.01, wake - now))

    def _then(self, held: _Held, done: Path, outcome: Outcome) -> Next | None:
        """``done`` finished (or was given back) under its company's lock: count it,
        then keep the lock for the company's next file, if one is ready."""
        self._finished(held.company, outcome, time.monotonic() - held.t0)
        following = self._next_of(held.company, held.since)
        if following is not None:
            held.path, held.facts, held.t0 = *following, time.monotonic()
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

    def _next_of(self, company: str, since: float) -> Next | None:
        """The company's next ready file for the worker that still holds it, or None to
        let go: when stopping, when a recovery comes first, after ``HOLD_SECONDS``."""
        with self._cond:
            queue = self._ready.get(company)
            if self._stopping or not queue or time.monotonic() - since > HOLD_SECONDS:
                return None
            path = min(queue, key=queue.__getitem__)
            if path.name == RECOVER:
                return None
            del queue[path]
            return path, self._facts.pop(path, None)

    def _work(self) -> None:
        while (item := self._next()) is not None:
            company, path, facts = item
            backoff = 0.0
            held = _Held(company, path, facts)
            try:
                if path.name == RECOVER:
                    self._recover(CompanyDirs(path.parent))
                    continue
                outcome = self._process(path, then=functools.partial(self._then, held),
                                        facts=facts)
                path = held.path  # the last file taken under the lock
                if outcome.status == "busy":
                    # another instance holds the company: try again shortly
                    self.submit(path, 0, held.facts)
                    backoff = 1.0
                if outcome.status in ("busy", "fenced"):
                    self._finished(company, outcome, time.monotonic() - held.t0)
            except Exception as exc:
                path = held.path
                # The database may be down, or the disk full. The file is either still in
                # the inbox (retried by the next rescan) or claimed (recovered next time).
                if isinstance(exc, RecoveryFailed):
                    pass  # logged by the recovery, naming the claimed file
                elif path.name == RECOVER:
                    log.exception("recovery.error", company=company)
                else:
                    log.exception("file.error", company=company, file=path.name)
                dirs = CompanyDirs(path.parent if path.name == RECOVER else path.parent.parent)
                self.submit_recovery(dirs)
                backoff = 5.0
            finally:
                self._done(company, backoff)
