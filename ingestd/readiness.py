"""What "ready" meant for one file, and the checks that it still holds when it is claimed.

The watcher judges a file ready (settled and closed) and hands these facts down with
it (``Settled``). The file may wait in its company's queue behind a long file, and a
partner may start uploading a new version under the same name meanwhile (an SFTP
``put`` writes the final name in place). So the claim looks again, just before its
rename: the file must be the very version judged ready (size, mtime, ctime, inode)
and no writer may hold it open.

"No writer open" is asked of the kernel with a Linux read lease
(``fcntl(F_SETLEASE, F_RDLCK)``), which is refused with EAGAIN while any process has
the file open for writing. Setting one needs the file's owner or ``CAP_LEASE``; where
it is refused for that (or the file system has no leases: NFS, CIFS) the check is
skipped, said once in the log (``lease.unavailable``), and the settle period and
close events are all there is. No library offers this, hence the few lines here.

A lease holder is sent SIGIO when another process opens the file for writing, and
SIGIO's default action ends the process: ``enable_leases`` (called by ``ingestd run``
from the main thread, before any lease is taken) ignores it. Leases are only taken
once that is done.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

log = structlog.get_logger("ingestd.readiness")

# How the current version of a file came to be under its final name:
# renamed: moved in from another name (an in-flight ``.part``): complete by construction;
# written: inotify saw writes to the final name itself (an in-place upload);
# unknown: found by a scan, or no event said (treated as written in place).
Arrival = Literal["renamed", "written", "unknown"]

Key = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode


@dataclass(frozen=True)
class Settled:
    """A file as it was when judged ready."""

    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    arrival: Arrival = "unknown"
    # Written in place without a final line break, and held for partial_grace_seconds
    # without a newer upload: applied, with a warning in its result.json.
    maybe_partial: bool = False

    @property
    def key(self) -> Key:
        return self.size, self.mtime_ns, self.ctime_ns, self.ino


def key_of(st: os.stat_result) -> Key:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def settled(st: os.stat_result, arrival: Arrival = "unknown",
            maybe_partial: bool = False) -> Settled:
    return Settled(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, arrival,
                   maybe_partial)


def ends_without_line_break(path: Path) -> bool:
    """The file's last byte is not a line feed (an empty file has no last record)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        return size > 0 and os.pread(fd, 1, size - 1) != b"\n"
    except OSError:
        return False
    finally:
        os.close(fd)


# -- read leases ------------------------------------------------------------------------

_enabled = False
_unavailable_logged = False
_log_lock = threading.Lock()


def enable_leases() -> None:
    """Ignore SIGIO (a lease break's signal), then allow leases. Main thread only."""
    global _enabled
    if hasattr(fcntl, "F_SETLEASE") and hasattr(signal, "SIGIO"):
        signal.signal(signal.SIGIO, signal.SIG_IGN)
        _enabled = True


def leases_enabled() -> bool:
    return _enabled


def _unavailable(exc: OSError) -> None:
    global _unavailable_logged
    with _log_lock:
        if _unavailable_logged:
            return
        _unavailable_logged = True
    log.warning("lease.unavailable", error=exc.strerror, errno=exc.errno,
                note="files with a writer still open cannot be told apart; readiness "
                     "rests on close events and settle_seconds (grant CAP_LEASE, or "
                     "run as the files' owner)")


class Lease:
    """A read lease held on an open descriptor; ``broken()``: a writer tried to open."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def broken(self) -> bool:
        if self.fd is None:
            return False
        try:
            # While a lease is being broken, F_GETLEASE answers the type it will become.
            return bool(fcntl.fcntl(self.fd, fcntl.F_GETLEASE) == fcntl.F_UNLCK)
        except OSError:
            return False


class WriterOpen(Exception):
    """The file is open for writing by some process."""


@contextmanager
def read_lease(path: Path) -> Iterator[Lease]:
    """Hold a read lease on ``path`` for the block: raise WriterOpen if a writer has it
    open now. Best effort: a lease that cannot be had for other reasons yields a lease
    that never reports a break."""
    if not _enabled:
        yield Lease(None)
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        yield Lease(None)  # gone, unreadable, a symlink: the claim's own checks say so
        return
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)  # a FIFO or a device has no leases; it is failed unread anyway
            fd = -1
            yield Lease(None)
            return
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                raise WriterOpen(str(path)) from None
            _unavailable(exc)  # EACCES/EPERM: not the owner, no CAP_LEASE; EINVAL: no leases
            os.close(fd)
            fd = -1
            yield Lease(None)
            return
        yield Lease(fd)
    finally:
        if fd >= 0:
            try:
                fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
            except OSError:
                pass
            os.close(fd)


def writer_open(path: Path) -> bool:
    """Some process has ``path`` open for writing (False when that cannot be known)."""
    try:
        with read_lease(path):
            return False
    except WriterOpen:
        return True


def unsettled_reason(path: Path, facts: Settled) -> str | None:
    """Why ``path`` is no longer the file judged ready (``facts``), or None."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None  # gone: the claim's rename says so
    if key_of(st) != facts.key:
        return "it changed after it was judged ready (a newer upload under the same name?)"
    return None
