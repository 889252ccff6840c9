"""Which folders the observer watches, and what its events say of the files in them.

Only where a drop can appear: the landing root (a company folder made or moved in),
each company's inbox, and a company's folder while it has no inbox (for the one made
next). Each watch is on one folder, not below it (watchdog 7 reads them all through
one inotify instance and thread, plus a small emitter thread each). ``.processing/``,
``done/`` and ``failed/`` are never watched: every file the daemon claims, applies
and moves, and every sidecar it writes, would otherwise be a stream of events to read
and throw away, on the threads the workers share the interpreter with.

A folder created or replaced is watched when its event arrives, or at the latest at
the next rescan, which also finds a watch whose folder was swapped for another.
"""

from __future__ import annotations

import importlib
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watchdog.events import (
    EVENT_TYPE_CLOSED_NO_WRITE,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MOVED,
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

from ingestd import landing
from ingestd.settings import Settings
from ingestd.settling import CLOSED, CREATED, MOVED_IN, WRITING, WRITTEN


def _no_move_pairing() -> None:
    """Stop watchdog holding an IN_MOVED_FROM back for 0.5 s to pair it with its
    IN_MOVED_TO. Its queue is FIFO, so every event behind an unpaired one (each claim,
    whose target folder is not watched) waited too, and with many renames each pairing
    scanned the whole queue. We need no pairs: a move pokes its source and its
    destination alike."""
    try:
        module = importlib.import_module("watchdog.observers.inotify_move_event_grouper")
    except ImportError:
        return  # no inotify here (the polling observer pairs nothing)
    grouper = getattr(module, "InotifyMoveEventGrouper", None)
    if grouper is not None and hasattr(grouper, "delay"):
        grouper.delay = 0


_no_move_pairing()

_READS = frozenset({EVENT_TYPE_OPENED, EVENT_TYPE_CLOSED_NO_WRITE})
_FOLDER_CHANGES = frozenset({EVENT_TYPE_CREATED, EVENT_TYPE_MOVED, EVENT_TYPE_DELETED})

# (path, state, event, arrival): see Watcher.poke
Poke = Callable[[Path, "str | None", bool, "str | None"], None]


class _Handler(FileSystemEventHandler):
    def __init__(self, poke: Poke, folder_changed: Callable[[Path, bool], None]) -> None:
        self.poke = poke
        self.folder_changed = folder_changed  # (folder, whether it was deleted or moved away)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _READS:
            return  # a read changes nothing (our own lease checks open files, too)
        if event.is_directory and event.event_type in _FOLDER_CHANGES:
            gone = event.event_type != EVENT_TYPE_CREATED
            self.folder_changed(Path(os.fsdecode(event.src_path)), gone)
            if event.dest_path:
                self.folder_changed(Path(os.fsdecode(event.dest_path)), False)
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
        self.poke(Path(os.fsdecode(event.src_path)), state, changed, arrival)
        if event.dest_path:  # a rename: the new name's writer has finished with it
            self.poke(Path(os.fsdecode(event.dest_path)), CLOSED, True, MOVED_IN)


def _folder_id(path: Path) -> int | None:
    """The inode of the folder at ``path`` (not a symlink), or None."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_ino if stat.S_ISDIR(st.st_mode) else None


class InboxWatches:
    """The observer and its watches. ``ensure`` is called by one thread (the
    watcher's loop); the handler runs on watchdog's."""

    def __init__(self, settings: Settings, root: Path, poke: Poke,
                 folder_changed: Callable[[Path], None]) -> None:
        self.root = root
        self._observer = (PollingObserver(timeout=settings.polling_interval)
                          if settings.polling_observer else Observer())
        self._folder_changed = folder_changed
        self._handler = _Handler(poke, self._changed)
        self._watched: dict[Path, tuple[int, Any]] = {}  # folder -> its inode, the watch
        # Folders deleted or moved away since the last look (told on watchdog's thread).
        # A folder made again at once often gets the inode just freed, so the inode
        # alone cannot tell that a watch is on a folder that is gone.
        self._gone: set[Path] = set()
        self._gone_lock = threading.Lock()

    def _changed(self, folder: Path, gone: bool) -> None:
        if gone and (folder.parent == self.root or folder.name == landing.INBOX):
            with self._gone_lock:
                self._gone.add(folder)
        self._folder_changed(folder)

    @property
    def observer_name(self) -> str:
        return type(self._observer).__name__

    def start(self) -> None:
        # The root is watched for company folders only: what happens in them is each
        # company's own watch's business.
        self._observer.schedule(self._handler, str(self.root), recursive=False)
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)

    def alive(self) -> bool:
        return bool(self._observer.is_alive())

    def ensure(self, company: Path) -> bool:
        """Watch the company's inbox, or while it has none its folder (to see one made).
        True: its inbox is newly watched, and files put there before are to be scanned."""
        inbox = company / landing.INBOX
        with self._gone_lock:
            gone, self._gone = self._gone, set()
        for folder in gone & {inbox, company}:
            self._unwatch(folder)  # its watch is on the folder that went
        with self._gone_lock:
            self._gone |= gone - {inbox, company}
        if _folder_id(inbox) is not None:
            fresh = self._watch(inbox)
            self._unwatch(company)
            return fresh
        self._unwatch(inbox)
        if self._watch(company) and _folder_id(inbox) is not None:
            return self.ensure(company)  # made before its folder was watched
        return False

    def _watch(self, folder: Path) -> bool:
        folder_id = _folder_id(folder)
        if folder_id is None:
            return False
        old = self._watched.get(folder)
        if old is not None and old[0] == folder_id:
            return False
        self._unwatch(folder)  # a folder of that name replaced: its watch saw the last one
        watch = self._observer.schedule(self._handler, str(folder), recursive=False)
        self._watched[folder] = (folder_id, watch)
        return True

    def _unwatch(self, folder: Path) -> None:
        old = self._watched.pop(folder, None)
        if old is not None:
            try:
                self._observer.unschedule(old[1])
            except (KeyError, OSError):
                pass  # its folder is gone, and watchdog has let go of it already
