"""One landing root, one database: the marker that binds a landing root to its database.

Several instances may share a landing root only when they share one database: a file
claimed by an instance on another database is applied there (or fails, "company is
not set up") and is lost to the right one. So the landing root remembers which
database it belongs to, in ``LANDING_ROOT/.ingestd-database``: the server's system
identifier (unique per cluster, kept by a physical replica and so across a
failover) and the database name.

The marker is a dotfile in the landing root itself: no partner can write there (the
root is above every chroot), it is never a drop, and the watcher never looks at it.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from ingestd.errors import IngestdError, WrongDatabase

MARKER = ".ingestd-database"


class Unbindable(IngestdError):
    """The marker cannot be written (the landing root is not writable for us)."""


@dataclass(frozen=True)
class DatabaseIdentity:
    system_identifier: str
    database: str

    def __str__(self) -> str:
        return f"database {self.database!r} on server {self.system_identifier}"


def of_connection(conn: psycopg.Connection[Any]) -> DatabaseIdentity:
    with conn.transaction():  # leaves no transaction open for the caller's next step
        row = conn.execute("SELECT system_identifier::text, current_database()"
                           " FROM pg_control_system()").fetchone()
    assert row is not None
    return DatabaseIdentity(system_identifier=str(row[0]), database=str(row[1]))


def read_marker(landing_root: Path) -> DatabaseIdentity | None:
    """The identity the landing root remembers, or None when it has no marker yet."""
    path = landing_root / MARKER
    try:
        data = json.loads(path.read_text())
        return DatabaseIdentity(system_identifier=str(data["system_identifier"]),
                                database=str(data["database"]))
    except FileNotFoundError:
        return None
    except ValueError:
        if not path.read_text().strip():
            return None  # created empty by tmpfiles.d, filled by the first daemon
        raise WrongDatabase(f"{path} is unreadable; it names the database this landing "
                            "root belongs to: fix or remove it") from None
    except (OSError, KeyError, TypeError) as exc:
        raise WrongDatabase(f"{path} is unreadable ({exc}); it names the database this "
                            "landing root belongs to: fix or remove it") from None


def _bind_marker(landing_root: Path, identity: DatabaseIdentity) -> DatabaseIdentity:
    """Fill the marker if it is missing or empty; return what it names now.

    Under an exclusive lock, so that instances starting together agree on one database.
    An empty marker counts as missing: the packaged tmpfiles.d entry creates it empty,
    owned by the service user, because the landing root itself is root's (sshd's
    ChrootDirectory demands it) and the daemon cannot create files there.
    """
    path = landing_root / MARKER
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    with os.fdopen(fd, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        if not f.read().strip():
            f.seek(0)
            f.truncate()
            f.write(json.dumps({"system_identifier": identity.system_identifier,
                                "database": identity.database}) + "\n")
            f.flush()
            os.fsync(f.fileno())
    found = read_marker(landing_root)
    assert found is not None
    return found


def refuse_new_database(landing_root: Path, state_dir: Path) -> None:
    """Before an embedded database is created: a landing root that already belongs to a
    database cannot belong to a new one (a new cluster has a new system identifier), so
    refuse now rather than after initdb has filled a mistaken state dir."""
    theirs = read_marker(landing_root)
    if theirs is not None:
        root = landing_root.absolute()
        raise WrongDatabase(
            f"landing root {root} belongs to {theirs} (see {root / MARKER}), but state dir "
            f"{state_dir.absolute()} holds no database: check INGESTD_STATE_DIR (a relative "
            "path is relative to the working directory) and INGESTD_DATABASE_URL")


def bind(conn: psycopg.Connection[Any], landing_root: Path, *, create: bool) -> None:
    """Check that ``landing_root`` belongs to the database of ``conn``.

    A landing root without a marker is bound to this database when ``create`` (the
    daemon, ``company add``), and left alone otherwise. Raises ``WrongDatabase`` when
    the marker names another database, ``Unbindable`` when it should write the marker
    and may not.
    """
    ours = of_connection(conn)
    theirs = read_marker(landing_root)
    if theirs is None and create and landing_root.is_dir():
        try:
            theirs = _bind_marker(landing_root, ours)
        except OSError as exc:  # not ours to write (root's), a read-only mount...
            raise Unbindable(f"cannot write {landing_root.absolute() / MARKER}: "
                             f"{exc.strerror or exc}") from None
    if theirs is not None and theirs != ours:
        root = landing_root.absolute()
        raise WrongDatabase(
            f"landing root {root} belongs to {theirs} (see {root / MARKER}), but this "
            f"ingestd is connected to {ours}: check INGESTD_DATABASE_URL and "
            "INGESTD_STATE_DIR")
