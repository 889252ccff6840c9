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
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from watchdog.events import (
    FileClosedEvent,
    FileModifiedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from ingestd import landing
from ingestd.settings import Settings

log = structlog.get_logger("ingestd.watcher")


WRITING, CLOSED = "writing", "closed"


@dataclass
class _Candidate:
    key: tuple[int, int]  # size, mtime_ns
    stable_since: float  # monotonic time the key was last seen to change
    writing: bool = False  # written to and not yet closed, as far as inotify told us


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
        self.watcher.poke(Path(os.fsdecode(event.src_path)), state)
        if event.dest_path:  # a rename: the new name's writer has finished with it
            self.watcher.poke(Path(os.fsdecode(event.dest_path)), CLOSED)


class Watcher:
    def __init__(self, settings: Settings, on_ready: Callable[[Path, int], bool],
                 on_rescan: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.root = settings.landing_root.absolute()
        self.on_ready = on_ready  # (path, mtime_ns) -> newly queued?
        self.on_rescan = on_rescan
        self._pending: dict[Path, str | None] = {}
        self._lock = threading.Lock()
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
        self._thread.start()
        log.info("watcher.started", root=str(self.root),
                 observer=type(self._observer).__name__)

    def stop(self) -> None:
        self._stop.set()
        self._observer.stop()
        self._observer.join(timeout=5)
        self._thread.join(timeout=5)

    def alive(self) -> bool:
        """Observer thread and our loop both running, and the loop not wedged."""
        return (self._observer.is_alive() and self._thread.is_alive()
                and time.monotonic() - self.last_loop < 30)

    def rescan(self) -> None:
        self._scan_now.set()

    # -- input --------------------------------------------------------------------

    def poke(self, path: Path, state: str | None = None) -> None:
        """Something happened at ``path`` (called from watchdog's thread); ``state`` is
        WRITING or CLOSED when the event says so."""
        if path.parent.name != landing.INBOX or path.parent.parent.parent != self.root:
            return
        name = path.name
        if self.settings.marker_mode and name.endswith(landing.MARKER_SUFFIX):
            path = path.with_name(name[: -len(landing.MARKER_SUFFIX)])
        elif landing.is_in_flight(name) or landing.is_companion(name, self.settings.marker_mode):
            return
        with self._lock:
            if state is not None or path not in self._pending:
                self._pending[path] = state  # events arrive in order: the last one wins

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
            try:
                if self._scan_now.is_set() or time.monotonic() >= next_scan:
                    self._scan_now.clear()
                    self._scan()
                    next_scan = time.monotonic() + self.settings.rescan_seconds
                    if self.on_rescan:
                        self.on_rescan()
                with self._lock:
                    pending, self._pending = self._pending, {}
                for path, state in pending.items():
                    self._observe(path, state)
                self._check_settled()
            except Exception:
                log.exception("watcher.error")
            self._stop.wait(min(0.2, max(self.settings.settle_seconds / 4, 0.05)))

    def _observe(self, path: Path, state: str | None = None) -> None:
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
        key = (st.st_size, st.st_mtime_ns)
        cand = self._candidates.get(path)
        if cand is None or cand.key != key:
            writing = cand.writing if cand is not None else False
            cand = self._candidates[path] = _Candidate(key, time.monotonic(), writing)
        if state is not None:
            cand.writing = state == WRITING

    def _check_settled(self) -> None:
        now = time.monotonic()
        settle = self.settings.settle_seconds
        ready: list[tuple[int, str, Path]] = []
        for path, cand in list(self._candidates.items()):
            if now - cand.stable_since < settle:
                continue
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                del self._candidates[path]
                continue
            key = (st.st_size, st.st_mtime_ns)
            if key != cand.key:  # still being written, even if no event told us
                self._candidates[path] = _Candidate(key, now, cand.writing)
                continue
            if cand.writing:
                if now - cand.stable_since < self.settings.write_timeout_seconds:
                    continue  # open for writing: the uploader may only be pausing
                log.warning("file.assumed_closed", company=path.parent.parent.name,
                            file=path.name, stable_s=round(now - cand.stable_since, 1))
            if time.time() - st.st_mtime < settle:
                continue  # mtime in the future or just now: wait (clock skew over NFS)
            if self.settings.marker_mode and not os.path.lexists(
                    path.with_name(path.name + landing.MARKER_SUFFIX)):
                continue
            del self._candidates[path]
            ready.append((st.st_mtime_ns, path.name, path))
        # Oldest first: an idle worker takes the first file handed to it, and files that
        # settle together (a start-up scan, say) must still go in drop order.
        for mtime_ns, _, path in sorted(ready):
            self._emit(path, mtime_ns)

    def _emit(self, path: Path, mtime_ns: int) -> None:
        if self.on_ready(path, mtime_ns):  # False: already queued, seen again by a rescan
            log.info("file.ready", company=path.parent.parent.name, file=path.name)
