"""Several instances on one landing root: registration, heartbeats, takeover, fencing.

Each ``ingestd run`` registers itself in ``ingestd.instances`` and heartbeats every
third of ``lease_seconds`` on a connection of its own. Holding a company means owning
its ``ingestd.company_leases`` row, taken (with a new epoch) on the same session that
holds the company's advisory lock and does its work.

A paused or cut-off process keeps its sessions, so its advisory locks alone would hold
its companies for ever. Hence the heartbeat: a live peer that sees one older than the
lease expires that instance (``instance.expired``), ending the sessions its leases
name (their transactions roll back, their locks go) and freeing its leases; its claims
are then recovered by whoever takes the company next.

Fencing: before the commit of a file's transaction (in that transaction, the lease row
locked FOR SHARE) and before every move or write in the landing folders, ``guard``
checks that the lease is still this one. The lease is handed down in the file's
context (``lifecycle.context``), never looked up. A worker that wakes after losing it finds its
session ended or its epoch gone, logs ``instance.fenced`` and touches nothing more; its
instance registers again under a new id and carries on.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog
from psycopg.pq import TransactionStatus

from ingestd import __version__
from ingestd.db import leases
from ingestd.db.database import Database
from ingestd.errors import Fenced

log = structlog.get_logger("ingestd.fleet")


@dataclass
class Lease:
    company: str
    instance_id: str
    epoch: int
    conn: psycopg.Connection[Any]  # the session that holds it and does the work
    file: str | None = None  # the last file guarded, for the log


def guard(lease: Lease, file: str) -> None:
    """Before a commit, move or write for ``file``: raise ``Fenced`` unless ``lease``
    still holds.

    Within a transaction the lease row stays locked FOR SHARE until it ends, so the
    check holds up to the commit; a peer expiring us ends the session first."""
    lease.file = file
    conn = lease.conn
    if conn.info.transaction_status != TransactionStatus.IDLE:
        # In the file's transaction: the row lock lasts until its commit. No savepoint:
        # a failure here ends that transaction anyway.
        held = leases.owned(conn, lease.company, lease.instance_id, lease.epoch, lock=True)
    else:
        # Between transactions nothing commits after the check: one statement in
        # autocommit, one round trip (a transaction of its own would cost three).
        autocommit, conn.autocommit = conn.autocommit, True
        try:
            held = leases.owned(conn, lease.company, lease.instance_id, lease.epoch)
        finally:
            if not conn.broken and not conn.closed:  # else the error says it all
                conn.autocommit = autocommit
    if not held:
        raise Fenced(f"{lease.company}: lease epoch {lease.epoch} lost")


class Fleet:
    """This instance: its row, its heartbeat thread and the takeover of stale peers."""

    def __init__(self, db: Database, lease_seconds: float,
                 on_expired: Callable[[list[str]], None] | None = None) -> None:
        self.db = db
        self.lease_seconds = lease_seconds
        self.on_expired = on_expired  # (companies taken from an expired peer)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.instance_id = db.instance_id  # as in its connections' application_name
        self._stop = threading.Event()
        self._beat_now = threading.Event()  # a fenced worker: re-register at once
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._failing = False

    @staticmethod
    def _new_id() -> str:
        return uuid.uuid4().hex[:12]

    # -- registration and heartbeat ----------------------------------------------------

    def start(self) -> None:
        self._register(self._connection())
        self._thread = threading.Thread(target=self._loop, name="ingestd-heartbeat",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._beat_now.set()
        if self._thread is not None:
            self._thread.join(10)
        try:
            leases.deregister(self._connection(), self.instance_id)
        except psycopg.Error:
            pass  # a peer expires the row after the lease
        if self._conn is not None:
            self._conn.close()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = self.db.connect(autocommit=True)
        return self._conn

    def _register(self, conn: psycopg.Connection[Any], previous: str | None = None) -> None:
        leases.register(conn, self.instance_id, self.host, self.pid, __version__)
        log.info("instance.registered", instance=self.instance_id, host=self.host,
                 pid=self.pid, version=__version__, previous=previous)

    def _loop(self) -> None:
        while True:
            self._beat_now.wait(self.lease_seconds / 3)
            self._beat_now.clear()
            if self._stop.is_set():
                return
            try:
                self.beat()
            except psycopg.Error as exc:
                if not self._failing:
                    log.warning("instance.heartbeat_failed", instance=self.instance_id,
                                error=str(exc))
                self._failing = True
                if self._conn is not None and self._conn.broken:
                    self._conn.close()
                self._check_pool()
            else:
                self._failing = False

    def _check_pool(self) -> None:
        """The pool's idle connections may be as dead as the heartbeat's (a failover):
        find them out now, not when a file gets one; their replacements, and the next
        beat, end the sessions the server kept for them."""
        try:
            self.db.pool.check()
        except psycopg.Error:
            pass  # the database is away: the next beat tries again

    def beat(self) -> None:
        """One heartbeat, then the takeover of every peer whose heartbeat is too old."""
        conn = self._connection()
        # Sessions of ours whose connections broke and that the server kept hold nothing
        # for long: ended here, at the latest one beat after they broke.
        self.db.end_dead_sessions(conn)
        if not leases.heartbeat(conn, self.instance_id):
            # Expired by a peer while we were away: our leases are gone (workers that
            # still think otherwise are fenced). Carry on as a new instance.
            previous, self.instance_id = self.instance_id, self._new_id()
            self._register(conn, previous)
        for stale_id in leases.stale(conn, self.instance_id, self.lease_seconds):
            gone = leases.expire(conn, stale_id, self.instance_id, self.lease_seconds)
            if gone is None:
                continue
            log.warning("instance.expired", instance=gone.id, host=gone.host, pid=gone.pid,
                        companies=gone.companies, by=self.instance_id,
                        lease_seconds=self.lease_seconds)
            if self.on_expired is not None:
                self.on_expired(gone.companies)

    # -- holding a company -------------------------------------------------------------

    def lost(self, lease: Lease) -> bool:
        """Whether ``lease`` is known to be gone."""
        return self.owns(lease) is False

    def owns(self, lease: Lease) -> bool | None:
        """Whether ``lease`` still holds, asked on a fresh session; None if unknown."""
        try:
            with self.db.pool.connection(timeout=5) as conn:
                return leases.owned(conn, lease.company, lease.instance_id, lease.epoch)
        except psycopg.Error:
            return None

    @contextmanager
    def holding(self, conn: psycopg.Connection[Any], company: str) -> Iterator[Lease | None]:
        """Take the company's lease on ``conn`` (autocommit); yield it, or None.

        A worker fenced inside ends here: ``instance.fenced`` is logged and the body's
        exception swallowed (the caller sees a normal exit)."""
        instance_id = self.instance_id
        epoch = leases.acquire(conn, company, instance_id)
        if epoch is None:
            yield None
            return
        lease = Lease(company, instance_id, epoch, conn)
        try:
            yield lease
        except Fenced:
            self._fenced(lease)
        except Exception:
            # Our session ended or our claim was taken over (a psycopg error, a file that
            # vanished, a recovery that failed for it), or else something unrelated went
            # wrong: a fresh session tells which.
            if not self.lost(lease):
                raise
            self._fenced(lease)
        finally:
            if not conn.closed and not conn.broken:
                try:
                    conn.rollback()
                    leases.release(conn, company, instance_id, epoch)
                    conn.commit()
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    pass  # the session is gone: a lease whose session is gone is free

    def _fenced(self, lease: Lease) -> None:
        self._beat_now.set()
        log.warning("instance.fenced", company=lease.company, file=lease.file,
                    epoch=lease.epoch, instance=lease.instance_id,
                    reason="lease lost while away: nothing more written for this file")

