"""Noticing finished uploads: watchdog events, a start-up scan and a periodic rescan.

Emits paths that are *ready* (docs/design.md): a regular file whose name passes the
filters, that was closed after its last write, and whose size and mtime have not
changed for the settle period. Both are needed: a writer may pause longer than
the settle period with the file open (a slow SFTP upload), and a close alone
proves nothing (an aborted upload closes the file too).

"Closed after write" comes from inotify (IN_MODIFY … IN_CLOSE_WRITE). The polling
observer (NFS/CIFS) has no such events and relies on the settle period alone,
as do files found by a scan that no event told us about. A close event lost to an
inotify overflow would block a file forever, so a file that has been stable for
``write_timeout_seconds`` while looking open is taken anyway, with a warning.
Non-regular entries (symlinks, FIFOs, devices, directories) are emitted at once,
flagged by the lifecycle as failures, and never opened here. In marker mode a
marker counts whatever it is; one that is not a regular file fails its drop.

Readiness is exact, not polled: a file's last change is the later of its mtime and
ctime (ctime moves with every write, ``utime`` and rename, and cannot be set back),
and the loop sleeps until that moment plus the settle period, woken early by any
event. Those timestamps are trusted only when inotify reported a change to the file
itself: then it was written through this kernel, on this clock. A file found by a
scan or by the polling observer (NFS, CIFS: another machine's clock, which may be
behind) must in addition be seen unchanged by us for the settle period. Either way a
timestamp in the future waits until it is settle_seconds in the past (clock skew).
"""

from __future__ import annotations

import importlib
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from watchdog.events import (
    EVENT_TYPE_CLOSED_NO_WRITE,
    EVENT_TYPE_OPENED,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from ingestd import held, landing, readiness
from ingestd.readiness import Arrival, Settled
from ingestd.settings import Settings
from ingestd.work import Drop

log = structlog.get_logger("ingestd.watcher")


def _no_move_pairing() -> None:
    """Stop watchdog holding an IN_MOVED_FROM back for 0.5 s to pair it with its
    IN_MOVED_TO. Its queue is FIFO, so every event behind an unpaired one (each claim,
    whose target folder is watched too late or not at all) waited too, and with many
    renames each pairing scanned the whole queue. We need no pairs: a move pokes its
    source and its destination alike."""
    for module, cls in (("watchdog.observers.inotify_move_event_grouper",
                         "InotifyMoveEventGrouper"),  # watchdog 6+
                        ("watchdog.observers.inotify_buffer", "InotifyBuffer")):  # 4, 5
        try:
            target = getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError):
            continue
        if hasattr(target, "delay"):
            target.delay = 0


_no_move_pairing()


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
# The loop runs at least this often, so that alive() sees it running.
_MAX_SLEEP = 5.0

Key = tuple[int, int, int]  # size, mtime_ns, ctime_ns


@dataclass
class _Candidate:
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
    held_at: float = 0.0  # wall-clock time it was first held
    open_logged: bool = False  # file.writer_open said for this version


def _key(st: os.stat_result) -> Key:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _last_change(st: os.stat_result) -> float:
    """Wall-clock time of the file's last change that we can see in its inode."""
    return max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 + _TIMESTAMP_SLACK


_READS = frozenset({EVENT_TYPE_OPENED, EVENT_TYPE_CLOSED_NO_WRITE})


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _READS:
            return  # a read changes nothing (our own lease checks open files, too)
        state: str | None = None
        arrival: str | None = None
        # IN_MODIFY means data was written; a bare create is not a write (a file renamed
        # in from elsewhere shows up as created, and it will never be closed here).
        if isinstance(event, FileModifiedEvent):
            state, arrival = WRITING, WRITTEN
        elif isinstance(event, FileClosedEvent):  # IN_CLOSE_WRITE only
            state, arrival = CLOSED, WRITTEN
        elif isinstance(event, FileCreatedEvent):
            # An unpaired IN_MOVED_TO shows up as a create too; writes, if any, follow.
            arrival = CREATED
        # A change made through this kernel (not a mere open or read): the file's
        # timestamps are on our clock.
        changed = state is not None or isinstance(event, (FileCreatedEvent, FileAttribEvent))
        self.watcher.poke(Path(os.fsdecode(event.src_path)), state, event=changed,
                          arrival=arrival)
        if event.dest_path:  # a rename: the new name's writer has finished with it
            self.watcher.poke(Path(os.fsdecode(event.dest_path)), CLOSED, event=True,
                              arrival=MOVED_IN)


class Watcher:
    def __init__(self, settings: Settings, on_ready: Callable[[Drop], bool],
                 on_rescan: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.root = settings.landing_root.absolute()
        self.on_ready = on_ready  # newly queued?
        self.on_rescan = on_rescan
        # path -> state, local, arrival (the events' last word on each)
        self._pending: dict[Path, tuple[str | None, bool, str | None]] = {}
        self._held: dict[str, list[dict[str, object]]] = {}  # company -> as last written
        self._lock = threading.Lock()
        self._wake = threading.Event()  # an event or a stop: look now
        self._candidates: dict[Path, _Candidate] = {}
        self._stop = threading.Event()
        self._scan_now = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ingestd-watcher", daemon=True)
        self._observer = (PollingObserver(timeout=settings.polling_interval)
                          if settings.polling_observer else Observer())
        self.last_loop = time.monotonic()

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # Recursive on the root: company folders created later are watched at once.
        self._observer.schedule(_Handler(self), str(self.root), recursive=True)
        self._observer.start()
        self._scan_now.set()  # the start-up scan
        # Logged first: whatever the loop sees, it sees after this line.
        log.info("watcher.started", root=str(self.root),
                 observer=type(self._observer).__name__)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._observer.stop()
        self._observer.join(timeout=5)
        self._thread.join(timeout=5)
        for company in list(self._held):  # nobody holds them any more
            try:
                held.write(landing.company_dirs_of(self.root, company), [])
            except OSError:
                pass

    def alive(self) -> bool:
        """Observer thread and our loop both running, and the loop not wedged."""
        return (self._observer.is_alive() and self._thread.is_alive()
                and time.monotonic() - self.last_loop < 30)

    def rescan(self) -> None:
        self._scan_now.set()
        self._wake.set()

    # -- input --------------------------------------------------------------------

    def poke(self, path: Path, state: str | None = None, *, event: bool = False,
             arrival: str | None = None) -> None:
        """Something happened at ``path`` (called from watchdog's thread, or a file given
        back unclaimed); ``state`` is WRITING or CLOSED when the event says so;
        ``event``: inotify said it; ``arrival``: MOVED_IN, WRITTEN or CREATED."""
        if landing.inbox_company(path, self.root) is None:
            return  # not a drop (a hidden folder is no company; the scans skip it too)
        name = path.name
        local = event and not self.settings.polling_observer
        if self.settings.marker_mode and name.endswith(landing.MARKER_SUFFIX):
            path = path.with_name(name[: -len(landing.MARKER_SUFFIX)])
            local = False  # an event about the marker says nothing of the drop's clock
            arrival = None  # nor of how the drop was written
        elif landing.is_in_flight(name) or landing.is_companion(name, self.settings.marker_mode):
            return
        with self._lock:
            old = self._pending.get(path)
            if old is None:
                self._pending[path] = (state, local, arrival)
            else:  # events arrive in order: the last state wins
                self._pending[path] = (old[0] if state is None else state, old[1] or local,
                                       old[2] if arrival is None else arrival)
        self._wake.set()

    def _scan(self) -> None:
        for dirs in landing.company_dirs(self.root):
            try:
                entries = list(os.scandir(dirs.inbox))
            except OSError:
                continue
            for entry in entries:
                self.poke(Path(entry.path))

    # -- the loop -----------------------------------------------------------------

    def _loop(self) -> None:
        next_scan = 0.0
        while not self._stop.is_set():
            self.last_loop = time.monotonic()
            due: float | None = None
            try:
                self._wake.clear()
                if self._scan_now.is_set() or time.monotonic() >= next_scan:
                    self._scan_now.clear()
                    self._scan()
                    next_scan = time.monotonic() + self.settings.rescan_seconds
                    if self.on_rescan:
                        self.on_rescan()
                with self._lock:
                    pending, self._pending = self._pending, {}
                # One moment for the whole batch: files seen together (a start-up scan)
                # settle together and are handed over together, oldest first.
                seen = time.monotonic()
                for path, (state, local, arrival) in pending.items():
                    self._observe(path, seen, state, local, arrival)
                due = self._check_settled()
                self._publish_held()
            # The loop must survive anything (a folder that vanished mid-scan, a bug):
            # if it stops, no file is ever taken again; the next round looks afresh.
            except Exception:
                log.exception("watcher.error")
            wake = min(next_scan, due if due is not None else next_scan,
                       time.monotonic() + _MAX_SLEEP)
            self._wake.wait(max(0.0, wake - time.monotonic()))

    def _observe(self, path: Path, seen: float, state: str | None = None,
                 local: bool = False, arrival: str | None = None) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self._candidates.pop(path, None)
            return
        if not stat.S_ISREG(st.st_mode):
            # symlink, FIFO, device, socket, directory: never opened; the lifecycle fails it
            self._candidates.pop(path, None)
            self._emit(path, readiness.settled(st))
            return
        key = _key(st)
        cand = self._candidates.get(path)
        if cand is None or cand.key != key:
            writing = cand.writing if cand is not None else False
            was = cand.arrival if cand is not None else "unknown"
            cand = self._candidates[path] = _Candidate(key, seen, writing, local, arrival=was)
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

    def _ready_at(self, cand: _Candidate, st: os.stat_result, now: float,
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

    def _check_settled(self) -> float | None:
        """Emit what is ready; return when to look again (monotonic), None: on an event."""
        now = time.monotonic()
        wall = time.time()
        ready: list[tuple[int, str, Path, Settled]] = []
        next_due: float | None = None
        for path, cand in list(self._candidates.items()):
            if cand.due is None or cand.due > now:
                if cand.due is not None:
                    next_due = cand.due if next_due is None else min(next_due, cand.due)
                continue
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                del self._candidates[path]
                continue
            key = _key(st)
            if key != cand.key:  # still being written, even if no event told us
                cand = self._candidates[path] = _Candidate(key, now, cand.writing,
                                                           arrival=cand.arrival)
            at: float | None = self._ready_at(cand, st, now, wall)
            if at is not None and at <= now and self.settings.marker_mode and not \
                    os.path.lexists(path.with_name(path.name + landing.MARKER_SUFFIX)):
                at = None  # the marker's creation pokes the drop
            if at is None or at > now:
                cand.due = at
                if at is not None:
                    next_due = at if next_due is None else min(next_due, at)
                continue
            if readiness.writer_open(path):
                # Settled, but a writer still holds it open (a paused upload whose writes
                # we did not see): never taken while open. Looked at again now and then,
                # since a polling observer sees no close.
                if not cand.open_logged and (now - cand.stable_since
                                             > self.settings.write_timeout_seconds):
                    cand.open_logged = True  # a stuck client: the operator should know
                    log.warning("file.writer_open", company=path.parent.parent.name,
                                file=path.name, stable_s=round(now - cand.stable_since, 1))
                at = now + max(self.settings.settle_seconds, 1.0)
                cand.due = at
                next_due = at if next_due is None else min(next_due, at)
                continue
            if cand.writing:
                log.warning("file.assumed_closed",
                            company=landing.inbox_company(path, self.root), file=path.name,
                            stable_s=round(now - cand.stable_since, 1))
            held_until = self._hold(path, cand, now)
            if held_until is not None:
                cand.due = held_until
                next_due = held_until if next_due is None else min(next_due, held_until)
                continue
            del self._candidates[path]
            facts = readiness.settled(st, cand.arrival, maybe_partial=bool(cand.partial))
            ready.append((st.st_mtime_ns, path.name, path, facts))
        # Oldest first: an idle worker takes the first file handed to it, and files that
        # settle together (a start-up scan, say) must still go in drop order.
        for _, _, path, facts in sorted(ready, key=lambda r: (r[0], r[1])):
            self._emit(path, facts)
        return next_due

    # -- likely partial uploads -----------------------------------------------------

    def _hold(self, path: Path, cand: _Candidate, now: float) -> float | None:
        """Until when a settled file is held as a likely partial upload, or None.

        Likely partial: written in place (not renamed in from an in-flight name; a file
        no event told us about counts as written in place), and its last record has no
        line break, which is where a killed upload almost always stops. It waits
        ``partial_grace_seconds`` for the client's retry to replace it (a newer version
        is a new candidate: its clock starts again), then goes on, flagged.
        """
        grace = self.settings.partial_grace_seconds
        if grace <= 0 or self.settings.marker_mode or cand.arrival == "renamed":
            return None
        if cand.partial is None:
            cand.partial = readiness.ends_without_line_break(path)
        if not cand.partial:
            return None
        if cand.held_until is None:
            cand.held_until, cand.held_at = now + grace, time.time()
            log.warning("file.maybe_partial", company=path.parent.parent.name,
                        file=path.name, size=cand.key[0], arrival=cand.arrival,
                        grace_s=grace,
                        reason="written in place and its last record has no line break: "
                               "held for a newer upload, then applied with a warning")
        return cand.held_until if cand.held_until > now else None

    def _publish_held(self) -> None:
        """Write each company's held files where ``ingestd status`` reads them, when
        they changed."""
        by_company: dict[str, list[dict[str, object]]] = {}
        now = time.monotonic()
        for path, cand in self._candidates.items():
            if cand.held_until is not None and cand.held_until > now:
                by_company.setdefault(path.parent.parent.name, []).append({
                    "file": landing.display_name(path.name), "size": cand.key[0],
                    "since": held.iso(cand.held_at),
                    "until": held.iso(cand.held_at + self.settings.partial_grace_seconds),
                })
        for company in set(by_company) | set(self._held):
            files = sorted(by_company.get(company, []), key=lambda f: str(f["file"]))
            if files == self._held.get(company, []):
                continue
            try:
                held.write(landing.company_dirs_of(self.root, company), files)
            except OSError as exc:
                log.warning("watcher.held_not_written", company=company, error=str(exc))
                continue
            if files:
                self._held[company] = files
            else:
                self._held.pop(company, None)

    def held_count(self) -> int:
        return sum(len(f) for f in list(self._held.values()))  # read from another thread

    def _emit(self, path: Path, facts: Settled) -> None:
        drop = landing.drop(path, facts.mtime_ns, facts)
        if self.on_ready(drop):  # False: already queued, seen again by a rescan
            log.info("file.ready", company=drop.company, file=drop.name)

