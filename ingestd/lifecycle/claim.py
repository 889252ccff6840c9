"""Taking a file: hold its company (lock and lease), claim it, or give it back.

A claim is an atomic rename into .processing/<claim>/: whoever renames first has the
file. Its companions (NAME.csv.headers, NAME.done) travel with it, and go first.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import structlog

from ingestd import landing, readiness
from ingestd.db import locks
from ingestd.db.database import Database
from ingestd.errors import LandingError, NotSettled
from ingestd.fleet import Fleet, Lease
from ingestd.landing import CompanyDirs
from ingestd.lifecycle.context import Claim, FileContext, Held

log = structlog.get_logger("ingestd.lifecycle")


@contextmanager
def hold(db: Database, fleet: Fleet | None, dirs: CompanyDirs, *,
         wait: bool = False) -> Iterator[Held | None]:
    """Hold the company's session advisory lock (and lease), or yield None if someone
    else has it; ``wait``: wait for the lock instead (``ingestd ingest``).

    Several instances may share a landing root: whoever holds the lock is the only
    one claiming, applying or recovering that company's files, which keeps drop order.
    """
    key = locks.company(dirs.company)
    with db.pool.connection() as conn:
        conn.autocommit = True
        if wait:
            locks.lock(conn, key)
        # Not free: perhaps held by a session of ours whose connection broke and that the
        # server kept (a partition); ended, it frees the lock.
        elif not locks.try_lock(conn, key) and not (db.end_dead_sessions(conn)
                                                    and locks.try_lock(conn, key)):
            yield None
            return
        try:
            # The lease decides when its holder stops heartbeating (fleet.py).
            with _lease(fleet, conn, dirs.company) as (got, lease):
                conn.autocommit = False
                yield Held(dirs, conn, lease) if got else None
        finally:
            if not conn.closed and not conn.broken:
                try:
                    conn.rollback()
                    conn.autocommit = True
                    locks.unlock(conn, key)
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    pass  # the session is gone (a restart), and its lock with it


@contextmanager
def _lease(fleet: Fleet | None, conn: psycopg.Connection[Any],
           company: str) -> Iterator[tuple[bool, Lease | None]]:
    """Whether the company is ours, and its lease; without a fleet (the CLI) the
    advisory lock alone decides. A fence inside is logged and swallowed there."""
    if fleet is None:
        yield True, None
        return
    with fleet.holding(conn, company) as lease:
        yield lease is not None, lease


def claim(held: Held, path: Path, name: str | None, marker_mode: bool,
          settled: readiness.Settled | None = None,
          claim_id: str | None = None) -> Claim | None:
    """Atomic rename into .processing/<claim>/; None if someone else took it first.
    ``name``: the name to keep, when ``path`` is a staged copy; ``claim_id``: the
    claim's name when it is decided already (an HTTP request's).

    ``settled``: the file as the watcher judged it ready. It may have waited in the
    queue behind a long file while the partner began a new upload under the same name
    (``put`` writes in place), so it is looked at again here: NotSettled if it changed
    since, or if a writer has it open (a read lease, held over the rename, so a writer
    opening it in that instant is seen too)."""
    dirs = held.dirs
    try:
        dirs.ensure()
    except PermissionError as exc:
        # The company folder is root-owned (SFTP chroot): an admin makes these.
        raise LandingError(
            f"cannot create {exc.filename}: {exc.strerror}; create .processing (0700), "
            "done/ and failed/ for the ingestd user (docs/operations.md: SFTP accounts)"
        ) from exc
    taken = Claim(dirs, claim_id or landing.new_claim_id(), name or path.name, settled=settled)
    held.guard(taken.name)
    if settled is not None and (reason := readiness.unsettled_reason(path, settled)):
        raise NotSettled(reason)
    try:
        with readiness.read_lease(path) as lease:
            if not _rename_in(taken, path, marker_mode):
                return None
            if lease.broken():
                unclaim(FileContext(held, taken))
                raise NotSettled("a writer opened it while it was being claimed")
    except readiness.WriterOpen:
        raise NotSettled("a writer still has it open") from None
    log.info("file.claimed", company=dirs.company, file=taken.name, claim=taken.claim_id)
    return taken


def _rename_in(taken: Claim, path: Path, marker_mode: bool) -> bool:
    """The file and its companions into the claim folder; False if the file is gone."""
    taken.dir.mkdir(mode=0o700)
    # The .headers companion goes first: it must travel with its CSV.
    for comp in landing.companions(path.parent, path.name, marker_mode):
        try:
            os.rename(comp, taken.dir / (taken.name + comp.name[len(path.name):]))
        except FileNotFoundError:
            pass
    try:
        os.rename(path, taken.path)
    except FileNotFoundError:
        for comp in taken.dir.iterdir():  # give companions back
            os.rename(comp, path.parent / (path.name + comp.name[len(taken.name):]))
        taken.dir.rmdir()
        return False
    return True


def unclaim(ctx: FileContext) -> None:
    """Put the claimed file and its companions back into the inbox."""
    taken = ctx.claim
    # The file first, its companions after: a crash in between leaves a claim with
    # only companions, which recovery gives back (never a file without its companion).
    for p in sorted(taken.dir.iterdir(), key=lambda p: p.name != taken.name):
        ctx.guard()
        target = taken.dirs.inbox / p.name
        if os.path.lexists(target):
            target = taken.dirs.inbox / landing.unique_name(taken.dirs.inbox, p.name)
        os.rename(p, target)
    taken.dir.rmdir()


def give_back(held: Held, claim_dir: Path) -> None:
    """A claim that holds only companions (a crash while claiming or giving back):
    they rejoin their file in the inbox."""
    for p in list(claim_dir.iterdir()):
        held.guard(p.name)
        target = held.dirs.inbox / p.name
        if os.path.lexists(target):  # the partner sent a new one meanwhile: theirs wins
            p.unlink()
        else:
            os.rename(p, target)
    claim_dir.rmdir()
