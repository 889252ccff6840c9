"""The only way ingestd opens a file on a partner's behalf.

The daemon runs outside the partner's SFTP chroot, so whatever a path leads to, the
daemon could read it: a symlink to another company's drop or to the env file, a FIFO
that blocks ``open()`` forever, ``/dev/zero`` that never ends, a hard link to a file
the partner never wrote. So a partner's path is only read when it is a regular file
with one name, checked by ``lstat`` before the open and by ``fstat`` on the opened
descriptor (the same inode), and opened without following a symlink and without
blocking. Anything else raises ``NotARegularFile`` (a ``FileError``) before a byte
is read, and its message carries nothing from the file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import BinaryIO

from ingestd import errors
from ingestd.errors import FileError
from ingestd.landing import display_name

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class NotARegularFile(FileError):
    """A partner's path that is not a regular file with a single name."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        super().__init__(
            errors.NOT_A_REGULAR_FILE,
            f"{display_name(path.name)} is {what}; ingestd reads only regular files "
            "with a single name and did not open it")


def _kind(st: os.stat_result) -> str | None:
    """What is wrong with this entry, or None for a regular file with one name."""
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    if st.st_nlink != 1:
        # A hard link may name a file from anywhere the partner can reach but never wrote.
        return f"a hard link (the file has {st.st_nlink} names)"
    return None


def check(path: Path) -> os.stat_result:
    """``lstat`` the path; raise NotARegularFile unless it is a regular file with one
    name. For entries that are moved but never read (a marker)."""
    st = os.lstat(path)
    what = _kind(st)
    if what is not None:
        raise NotARegularFile(path, what)
    return st


def open_partner_file(path: Path) -> BinaryIO:
    """Open a partner's file for reading (binary, blocking reads), or raise
    NotARegularFile without reading anything. OSError (missing, no permission)
    passes through."""
    before = check(path)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # became a symlink after the lstat
            raise NotARegularFile(path, "a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        what = _kind(st)
        if what is None and (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            what = "replaced by another file while it was being opened"
        if what is not None:
            raise NotARegularFile(path, what)
        # Non-blocking only guarded the open (a FIFO); reads of a regular file block.
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
