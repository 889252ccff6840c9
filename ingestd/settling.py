"""When a file seen in an inbox is ready (docs/design.md): the watcher's candidates.

A candidate is a regular file under its name as last seen (size, mtime, ctime) with
what the events said of it. It is ready once it was closed after its last write and
has not changed for the settle period; see ``ingestd.watcher`` for why both.

Readiness is exact, not polled: a file's last change is the later of its mtime and
ctime (ctime moves with every write, ``utime`` and rename, and cannot be set back),
and the watcher sleeps until that moment plus the settle period, woken early by any
event. Those timestamps are trusted only when inotify reported a change to the file
itself: then it was written through this kernel, on this clock. A file found by a
scan or by the polling observer (NFS, CIFS: another machine's clock, which may be
behind) must in addition be seen unchanged by us for the settle period. Either way a
timestamp in the future waits until it is settle_seconds in the past (clock skew).
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from ingestd import landing, readiness
from ingestd.partial_holds import PartialHolds
from ingestd.readiness import Arrival, Settled
from ingestd.settings import Settings

log = structlog.get_logger("ingestd.watcher")

WRITING, CLOSED = "writing", "closed"
# What an event says of how the file came to be under its name (readiness.Arrival).
MOVED_IN, WRITTEN, CREATED = "moved_in", "written", "created"

# File timestamps come from the kernel's coarse clock, up to one tick behind
# time.time(); a file is never taken that much early.
_COARSE_CLOCK = 5  # CLOCK_REALTIME_COARSE on Linux
try:
    _TIMESTAMP_SLACK = time.clock_getres(_COARSE_CLOCK)
except OSError:
    _TIMESTAMP_SLACK = 0.01

Key = tuple[int, int, int]  # size, mtime_ns, ctime_ns


@dataclass
class Candidate:
    key: Key
    stable_since: float  # monotonic time the key was last seen to change
    writing: bool = False  # written to and not yet closed, as far as inotify told us
    # The key was reported by inotify for this very file: its timestamps are our clock's.
    local: bool = False
    due: float | None = 0.0  # monotonic time of the next look; None: only on an event
    arrival: Arrival = "unknown"
    # Written in place and its last byte is no line feed (asked once per version).
    partial: bool | None = None
    held_until: float | None = None  # monotonic end of its grace period, while held
    writer_open: bool = False  # settled once, but a writer still had it open
    held_at: float = 0.0  # wall-clock time it was first held
    open_logged: bool = False  # file.writer_open said for this version


def _key(st: os.stat_result) -> Key:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _last_change(st: os.stat_result) -> float:
    """Wall-clock time of the file's last change that we can see in its inode."""
    return max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 + _TIMESTAMP_SLACK


class Settling:
    """The candidates, from what was seen of each to which are ready and when to look
    again. Used by the watcher's loop thread alone."""

    def __init__(self, settings: Settings, holds: PartialHolds) -> None:
        self.settings = settings
        self.holds = holds
        self.candidates: dict[Path, Candidate] = {}

    def observe(self, path: Path, seen: float, state: str | None = None,
                local: bool = False, arrival: str | None = None) -> Settled | None:
        """What was seen of ``path`` at ``seen``; the facts of an entry that is no
        regular file, to be handed over at once (the lifecycle fails it, unopened)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self.candidates.pop(path, None)
            return None
        if not stat.S_ISREG(st.st_mode):
            self.candidates.pop(path, None)
            return readiness.settled(st)
        key = _key(st)
        cand = self.candidates.get(path)
        if cand is None or cand.key != key:
            writing = cand.writing if cand is not None else False
            was = cand.arrival if cand is not None else "unknown"
            cand = self.candidates[path] = Candidate(key, seen, writing, local, arrival=was)
        elif local:
            cand.local = True  # inotify saw this very version of the file change
        if state is not None:
            cand.writing = state == WRITING
        if arrival == MOVED_IN or (arrival == CREATED and local):
            # A native create with no write after it is a rename from an unwatched name
            # (or an unpaired one); a write, if it comes, says otherwise.
            cand.arrival = "renamed"
        elif arrival == WRITTEN:
            cand.arrival = "written"
        cand.due = 0.0  # look at it in this round
        return None

    def check(self) -> tuple[list[tuple[Path, Settled]], float | None]:
        """What is ready, oldest first, and when to look again (monotonic; None: on an
        event)."""
        now, wall = time.monotonic(), time.time()
        ready: list[tuple[int, str, Path, Settled]] = []
        next_due: float | None = None
        older = self._settling_soon(now)
        for path, cand in list(self.candidates.items()):
            due = cand.due
            first = older.get(path.parent)
            if due is not None and due <= now and first is not None \
                    and first[0] < (cand.key[1], path.name):
                # An older file of its inbox settles in a moment (found by a scan, it
                # waits out settle_seconds; this one came by an event): both go then,
                # in drop order.
                due = cand.due = first[1]
            if due is not None and due <= now:
                looked = self._look(path, cand, now, wall)
                if isinstance(looked, Settled):
                    ready.append((looked.mtime_ns, path.name, path, looked))
                    continue
                due = looked
            if due is not None:
                next_due = due if next_due is None else min(next_due, due)
        # Oldest first: an idle worker takes the first file handed to it, and files that
        # settle together (a start-up scan, say) must still go in drop order.
        ready.sort(key=lambda r: (r[0], r[1]))
        return [(path, facts) for _, _, path, facts in ready], next_due

    def _settling_soon(self, now: float) -> dict[Path, tuple[tuple[int, str], float]]:
        """Per folder, the oldest file (mtime, name) that is only waiting out its settle
        period (not being written, not held, no writer open), and when it is due."""
        horizon = now + self.settings.settle_seconds + _TIMESTAMP_SLACK
        oldest: dict[Path, tuple[tuple[int, str], float]] = {}
        for path, cand in self.candidates.items():
            due = cand.due
            if due is None or not now < due <= horizon or cand.writing \
                    or cand.writer_open or cand.held_until is not None:
                continue
            key = (cand.key[1], path.name)
            known = oldest.get(path.parent)
            if known is None or key < known[0]:
                oldest[path.parent] = (key, due)
        return oldest

    def _look(self, path: Path, cand: Candidate, now: float,
              wall: float) -> Settled | float | None:
        """The file's facts if it is ready now, else when to look again (None: on an
        event, or never: it is gone)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            del self.candidates[path]
            return None
        key = _key(st)
        if key != cand.key:  # still being written, even if no event told us
            cand = self.candidates[path] = Candidate(key, now, cand.writing,
                                                     arrival=cand.arrival)
        cand.due = self._ready_at(cand, st, now, wall)
        if cand.due <= now and self.settings.marker_mode and not \
                os.path.lexists(path.with_name(path.name + landing.MARKER_SUFFIX)):
            cand.due = None  # the marker's creation pokes the drop
        if cand.due is None or cand.due > now:
            return cand.due
        if readiness.writer_open(path):
            # Settled, but a writer still holds it open (a paused upload whose writes
            # we did not see): never taken while open. Looked at again now and then,
            # since a polling observer sees no close.
            self._log_open(path, cand, now)
            cand.writer_open = True
            cand.due = now + max(self.settings.settle_seconds, 1.0)
            return cand.due
        if cand.writing:
            log.warning("file.assumed_closed", company=landing.drop_company(path),
                        file=path.name, stable_s=round(now - cand.stable_since, 1))
        held_until = self.holds.hold(path, cand, now)
        if held_until is not None:
            cand.due = held_until
            return held_until
        del self.candidates[path]
        return readiness.settled(st, cand.arrival, maybe_partial=bool(cand.partial))

    def _ready_at(self, cand: Candidate, st: os.stat_result, now: float,
                  wall: float) -> float:
        """Monotonic time from which ``cand`` is ready as far as time goes."""
        settle = self.settings.settle_seconds
        # In the future (clock skew) or recent: wait until it is settle_seconds old.
        at = now + (_last_change(st) + settle - wall)
        if not cand.local:
            at = max(at, cand.stable_since + settle)
        if cand.writing:
            # open for writing: the uploader may only be pausing
            at = max(at, cand.stable_since + self.settings.write_timeout_seconds)
        return at

    def _log_open(self, path: Path, cand: Candidate, now: float) -> None:
        if not cand.open_logged and (now - cand.stable_since
                                     > self.settings.write_timeout_seconds):
            cand.open_logged = True  # a stuck client: the operator should know
            log.warning("file.writer_open", company=landing.drop_company(path),
                        file=path.name, stable_s=round(now - cand.stable_since, 1))
