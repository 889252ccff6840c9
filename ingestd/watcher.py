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
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from ingestd import landing
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


def _key(st: os.stat_result) -> Key:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _last_change(st: os.stat_result) -> float:
    """Wall-clock time of the file's last change that we can see in its inode."""
    return max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 + _TIMESTAMP_SLACK


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        state: str | None = None
        # IN_MODIFY means data was written; a bare create is not a write (a file renamed
        # in from elsewhere shows up as created, and it will never be closed here).
        if isinstance(event, FileModifiedEvent):
            state = WRITING
        elif isinstance(event, FileClosedEvent):  # IN_CLOSE_WRITE only
            state = CLOSED
        # A change made through this kernel (not a mere open or read): the file's
        # timestamps are on our clock.
        changed = state is not None or isinstance(event, (FileCreatedEvent, FileAttribEvent))
        self.watcher.poke(Path(os.fsdecode(event.src_path)), state, event=changed)
        if event.dest_path:  # a rename: the new name's writer has finished with it
            self.watcher.poke(Path(os.fsdecode(event.dest_path)), CLOSED, event=True)


class Watcher:
    def __init__(self, settings: Settings, on_ready: Callable[[Drop], bool],
                 on_rescan: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.root = settings.landing_root.absolute()
        self.on_ready = on_ready  # newly queued?
        self.on_rescan = on_rescan
        self._pending: dict[Path, tuple[str | None, bool]] = {}  # path -> state, local
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

    def alive(self) -> bool:
        """Observer thread and our loop both running, and the loop not wedged."""
        return (self._observer.is_alive() and self._thread.is_alive()
                and time.monotonic() - self.last_loop < 30)

    def rescan(self) -> None:
        self._scan_now.set()
        self._wake.set()

    # -- input --------------------------------------------------------------------

    def poke(self, path: Path, state: str | None = None, *, event: bool = False) -> None:
        """Something happened at ``path`` (called from watchdog's thread); ``state`` is
        WRITING or CLOSED when the event says so; ``event``: inotify said it."""
        if landing.inbox_company(path, self.root) is None:
            return  # not a drop (a hidden folder is no company; the scans skip it too)
        name = path.name
        local = event and not self.settings.polling_observer
        if self.settings.marker_mode and name.endswith(landing.MARKER_SUFFIX):
            path = path.with_name(name[: -len(landing.MARKER_SUFFIX)])
            local = False  # an event about the marker says nothing of the drop's clock
        elif landing.is_in_flight(name) or landing.is_companion(name, self.settings.marker_mode):
            return
        with self._lock:
            old = self._pending.get(path)
            if old is None:
                self._pending[path] = (state, local)
            else:  # events arrive in order: the last state wins
                self._pending[path] = (old[0] if state is None else state, old[1] or local)
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
                for path, (state, local) in pending.items():
                    self._observe(path, seen, state, local)
                due = self._check_settled()
            # The loop must survive anything (a folder that vanished mid-scan, a bug):
            # if it stops, no file is ever taken again; the next round looks afresh.
            except Exception:
                log.exception("watcher.error")
            wake = min(next_scan, due if due is not None else next_scan,
                       time.monotonic() + _MAX_SLEEP)
            self._wake.wait(max(0.0, wake - time.monotonic()))

    def _observe(self, path: Path, seen: float, state: str | None = None,
                 local: bool = False) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self._candidates.pop(path, None)
            return
        if not stat.S_ISREG(st.st_mode):
            # symlink, FIFO, device, socket, directory: never opened; the lifecycle fails it
            self._candidates.pop(path, None)
            self._emit(path, st.st_mtime_ns)
            return
        key = _key(st)
        cand = self._candidates.get(path)
        if cand is None or cand.key != key:
            writing = cand.writing if cand is not None else False
            cand = self._candidates[path] = _Candidate(key, seen, writing, local)
        elif local:
            cand.local = True  # inotify saw this very version of the file change
        if state is not None:
            cand.writing = state == WRITING
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
        ready: list[tuple[int, str, Path]] = []
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
                cand = self._candidates[path] = _Candidate(key, now, cand.writing)
            at: float | None = self._ready_at(cand, st, now, wall)
            if at is not None and at <= now and self.settings.marker_mode and not \
                    os.path.lexists(path.with_name(path.name + landing.MARKER_SUFFIX)):
                at = None  # the marker's creation pokes the drop
            if at is None or at > now:
                cand.due = at
                if at is not None:
                    next_due = at if next_due is None else min(next_due, at)
                continue
            if cand.writing:
                log.warning("file.assumed_closed", company=landing.inbox_company(path, self.root),
                            file=path.name, stable_s=round(now - cand.stable_since, 1))
            del self._candidates[path]
            ready.append((st.st_mtime_ns, path.name, path))
        # Oldest first: an idle worker takes the first file handed to it, and files that
        # settle together (a start-up scan, say) must still go in drop order.
        for mtime_ns, _, path in sorted(ready):
            self._emit(path, mtime_ns)
        return next_due

    def _emit(self, path: Path, mtime_ns: int) -> None:
        drop = landing.drop(path, mtime_ns)
        if self.on_ready(drop):  # False: already queued, seen again by a rescan
            log.info("file.ready", company=drop.company, file=drop.name)
