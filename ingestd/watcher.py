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

Three parts: ``watches`` (which folders are watched; events into pokes), ``settling``
(when a candidate is ready) and ``partial_holds`` (likely partial uploads held back);
this module's ``Watcher`` runs them on one loop thread.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from ingestd import landing
from ingestd.partial_holds import PartialHolds
from ingestd.readiness import Settled
from ingestd.settings import Settings
from ingestd.settling import Settling
from ingestd.watches import InboxWatches
from ingestd.work import Drop

log = structlog.get_logger("ingestd.watcher")

# The loop runs at least this often, so that alive() sees it running.
_MAX_SLEEP = 5.0


class Watcher:
    def __init__(self, settings: Settings, on_ready: Callable[[Drop], bool],
                 on_rescan: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.root = settings.landing_root.absolute()
        self.on_ready = on_ready  # newly queued?
        self.on_rescan = on_rescan
        # path -> state, local, arrival (the events' last word on each)
        self._pending: dict[Path, tuple[str | None, bool, str | None]] = {}
        self._folders: set[Path] = set()  # company folders whose watches may be stale
        self._lock = threading.Lock()
        self._wake = threading.Event()  # an event or a stop: look now
        self._stop = threading.Event()
        self._scan_now = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ingestd-watcher", daemon=True)
        self._holds = PartialHolds(settings, self.root)
        self._settling = Settling(settings, self._holds)
        self._watches = InboxWatches(settings, self.root, self._poke_event,
                                     self._folder_changed)
        self.last_loop = time.monotonic()

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._watches.start()
        for dirs in landing.company_dirs(self.root):
            self._watches.ensure(dirs.root)
        self._scan_now.set()  # the start-up scan, after the watches: nothing in between
        # Logged first: whatever the loop sees, it sees after this line.
        log.info("watcher.started", root=str(self.root),
                 observer=self._watches.observer_name)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._watches.stop()
        self._thread.join(timeout=5)
        self._holds.release()

    def alive(self) -> bool:
        """Observer thread and our loop both running, and the loop not wedged."""
        return (self._watches.alive() and self._thread.is_alive()
                and time.monotonic() - self.last_loop < 30)

    def rescan(self) -> None:
        self._scan_now.set()
        self._wake.set()

    def held_count(self) -> int:
        return self._holds.count()

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

    def _poke_event(self, path: Path, state: str | None, event: bool,
                    arrival: str | None) -> None:
        self.poke(path, state, event=event, arrival=arrival)

    def _folder_changed(self, folder: Path) -> None:
        company = landing.watched_company(folder, self.root)
        if company is not None:
            with self._lock:
                self._folders.add(company)
            self._wake.set()

    def _scan(self, inbox: Path) -> None:
        try:
            entries = list(os.scandir(inbox))
        except OSError:
            return
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
                    self._rescan()
                    next_scan = time.monotonic() + self.settings.rescan_seconds
                due = self._round()
            # The loop must survive anything (a folder that vanished mid-scan, a bug):
            # if it stops, no file is ever taken again; the next round looks afresh.
            except Exception:
                log.exception("watcher.error")
            wake = min(next_scan, due if due is not None else next_scan,
                       time.monotonic() + _MAX_SLEEP)
            self._wake.wait(max(0.0, wake - time.monotonic()))

    def _rescan(self) -> None:
        """Every inbox looked at (and watched, should a watch have missed its folder)."""
        for dirs in landing.company_dirs(self.root):
            self._watches.ensure(dirs.root)
            self._scan(dirs.inbox)
        if self.on_rescan:
            self.on_rescan()

    def _round(self) -> float | None:
        """What happened since the last round looked at; return when to look again."""
        with self._lock:
            folders, self._folders = self._folders, set()
        for company in sorted(folders):
            if self._watches.ensure(company):
                self._scan(company / landing.INBOX)  # put there before it was watched
        with self._lock:
            pending, self._pending = self._pending, {}
        # One moment for the whole batch: files seen together (a start-up scan) settle
        # together and are handed over together, oldest first.
        seen = time.monotonic()
        for path, (state, local, arrival) in pending.items():
            facts = self._settling.observe(path, seen, state, local, arrival)
            if facts is not None:
                self._emit(path, facts)
        ready, due = self._settling.check()
        for path, facts in ready:
            self._emit(path, facts)
        self._holds.publish(self._settling.candidates)
        return due

    def _emit(self, path: Path, facts: Settled) -> None:
        drop = landing.drop(path, facts.mtime_ns, facts)
        if self.on_ready(drop):  # False: already queued, seen again by a rescan
            log.info("file.ready", company=drop.company, file=drop.name)
