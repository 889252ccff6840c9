"""Instances and company leases (ingestd.instances, ingestd.company_leases): all their SQL.

A company is held by the instance named in its lease row, through one session (the
row's ``backend_pid``). The lease counts while that instance is not expired and that
session still exists: a process that died closed its sessions, so its companies are
free at once; a process that is alive but silent (paused, swapped out, cut off) keeps
its sessions, and only a live peer expiring it (and ending those sessions) frees them.
Every time is the database's ``now()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import psycopg
from psycopg.rows import dict_row

# The session recorded in a lease, if it still exists: a pid the server has reused for a
# later session does not count (that one started after the lease was taken).
_SESSION_ALIVE = ("EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = l.backend_pid"
                  " AND coalesce(a.backend_start <= l.acquired_at, true))")


@dataclass(frozen=True, slots=True)
class Expired:
    id: str
    host: str
    pid: int
    companies: list[str]


def register(conn: psycopg.Connection[Any], instance_id: str, host: str, pid: int,
             version: str) -> None:
    conn.execute(
        "INSERT INTO ingestd.instances (id, host, pid, version, backend_pid)"
        " VALUES (%s, %s, %s, %s, pg_backend_pid())",
        (instance_id, host, pid, version))


def heartbeat(conn: psycopg.Connection[Any], instance_id: str) -> bool:
    """Record that the instance is alive; False if a peer has expired it meanwhile."""
    cur = conn.execute(
        "UPDATE ingestd.instances SET heartbeat_at = now(), backend_pid = pg_backend_pid()"
        " WHERE id = %s AND expired_at IS NULL", (instance_id,))
    return cur.rowcount == 1


def deregister(conn: psycopg.Connection[Any], instance_id: str) -> None:
    """A clean stop: its leases are free, its row is gone."""
    with conn.transaction():
        conn.execute("UPDATE ingestd.company_leases SET instance_id = NULL, backend_pid = NULL"
                     " WHERE instance_id = %s", (instance_id,))
        conn.execute("DELETE FROM ingestd.instances WHERE id = %s", (instance_id,))


def stale(conn: psycopg.Connection[Any], me: str, lease_seconds: float) -> list[str]:
    """Instances other than ``me`` whose heartbeat is older than the lease."""
    return [r[0] for r in conn.execute(
        "SELECT id FROM ingestd.instances WHERE id <> %s AND expired_at IS NULL"
        " AND heartbeat_at < now() - make_interval(secs => %s) ORDER BY id",
        (me, lease_seconds))]


def expire(conn: psycopg.Connection[Any], instance_id: str, by: str,
           lease_seconds: float) -> Expired | None:
    """Take a stale instance's companies: mark it expired, end the sessions its leases
    name (their open transactions roll back, their advisory locks go), and free its
    leases with a new epoch. None if it heartbeat meanwhile or another peer was first."""
    with conn.transaction():
        row = conn.execute(
            "UPDATE ingestd.instances SET expired_at = now(), expired_by = %s"
            " WHERE id = %s AND expired_at IS NULL"
            " AND heartbeat_at < now() - make_interval(secs => %s) RETURNING host, pid",
            (by, instance_id, lease_seconds)).fetchone()
        if row is None:
            return None
        # Read before its sessions end: from then on a peer's acquire sees them gone and
        # may take a lease (committed at once) before the update below gets to it; that
        # company was still taken from this instance and is reported with the rest.
        companies = [r[0] for r in conn.execute(
            "SELECT company FROM ingestd.company_leases WHERE instance_id = %s",
            (instance_id,))]
        # Ended first: a paused transaction may hold its lease row FOR SHARE, and the
        # update below waits for that lock. The wait (ms) lets the session go first.
        conn.execute(
            "SELECT pg_terminate_backend(l.backend_pid, 5000) FROM ingestd.company_leases l"
            f" WHERE l.instance_id = %s AND l.backend_pid IS NOT NULL AND {_SESSION_ALIVE}",
            (instance_id,))
        conn.execute(
            "UPDATE ingestd.company_leases SET instance_id = NULL, backend_pid = NULL,"
            " epoch = epoch + 1 WHERE instance_id = %s", (instance_id,))
        # Expired rows stay a day for `ingestd status`, then go.
        conn.execute("DELETE FROM ingestd.instances WHERE expired_at < now() - interval '1 day'")
    return Expired(instance_id, row[0], int(row[1]), sorted(companies))


def server_time(conn: psycopg.Connection[Any]) -> datetime:
    """The server's clock now (not the transaction's start)."""
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return cast(datetime, row[0])


def end_own_sessions(conn: psycopg.Connection[Any], prefix: str, live: list[str],
                     started_before: datetime, quiet_for: float = 0.0) -> list[int]:
    """End this process's sessions that are not live here any more: connections that
    broke on our side while the server kept their sessions (a partition), perhaps with
    the company's advisory lock, an open transaction and row locks. As ``expire`` does
    for a stale peer: once ended, those roll back and go, and the next ``acquire`` of a
    lease the session held bumps its epoch. ``prefix``: the process's
    ``application_name`` prefix; ``live``: its names in use when ``started_before``
    (``server_time``) had passed, so a connection made since is never taken for dead.
    ``quiet_for``: only sessions the server has heard nothing from for that long
    (seconds) before ``started_before``: a connection cut off here has been silent at
    least as long as it took us to give it up, while a live one of ours that some race
    left out of ``live`` has just been used, and is spared. The pids ended."""
    # MATERIALIZED: the terminate must only ever see the rows chosen first.
    return [int(r[0]) for r in conn.execute(
        "WITH dead AS MATERIALIZED (SELECT pid FROM pg_stat_activity"
        " WHERE left(application_name, length(%s)) = %s AND application_name <> ALL(%s)"
        " AND backend_start < %s AND pid <> pg_backend_pid()"
        " AND coalesce(state_change, backend_start) < %s - make_interval(secs => %s))"
        " SELECT pid FROM dead WHERE pg_terminate_backend(pid, 5000)",
        (prefix, prefix, live, started_before, started_before, quiet_for))]


def acquire(conn: psycopg.Connection[Any], company: str, instance_id: str) -> int | None:
    """Hold the company's lease through this connection's session; its epoch, or None
    while a live instance holds it (or ``instance_id`` itself was expired).

    Free means: no holder, an expired holder, a holder whose session is gone, or this
    instance itself (a lease left by one of its own sessions that broke)."""
    row = conn.execute(
        "INSERT INTO ingestd.company_leases AS l (company, instance_id, epoch, backend_pid)"
        " SELECT %(company)s, %(me)s, 1, pg_backend_pid() WHERE EXISTS (SELECT 1 FROM"
        " ingestd.instances WHERE id = %(me)s AND expired_at IS NULL)"
        " ON CONFLICT (company) DO UPDATE SET instance_id = EXCLUDED.instance_id,"
        " epoch = l.epoch + 1, acquired_at = now(), backend_pid = EXCLUDED.backend_pid"
        " WHERE l.instance_id IS NULL OR l.instance_id = %(me)s"
        " OR NOT EXISTS (SELECT 1 FROM ingestd.instances i WHERE i.id = l.instance_id"
        f" AND i.expired_at IS NULL) OR NOT {_SESSION_ALIVE}"
        " RETURNING epoch",
        {"company": company, "me": instance_id}).fetchone()
    return None if row is None else int(row[0])


def owned(conn: psycopg.Connection[Any], company: str, instance_id: str, epoch: int, *,
          lock: bool = False) -> bool:
    """Whether the lease is still this one. ``lock``: hold the row FOR SHARE until the
    transaction ends, so nobody takes the lease before the commit that follows."""
    sql = ("SELECT 1 FROM ingestd.company_leases WHERE company = %s AND instance_id = %s"
           " AND epoch = %s" + (" FOR SHARE" if lock else ""))
    return conn.execute(sql, (company, instance_id, epoch)).fetchone() is not None


def release(conn: psycopg.Connection[Any], company: str, instance_id: str, epoch: int) -> None:
    conn.execute("UPDATE ingestd.company_leases SET instance_id = NULL, backend_pid = NULL"
                 " WHERE company = %s AND instance_id = %s AND epoch = %s",
                 (company, instance_id, epoch))


def instances(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Every instance row (live and recently expired), with its heartbeat age and the
    companies it holds; oldest start first."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT i.id, i.host, i.pid, i.version, i.started_at,"
            " extract(epoch FROM now() - i.heartbeat_at)::float8 AS heartbeat_age_s,"
            " i.expired_at, i.expired_by,"
            " coalesce(array_agg(l.company ORDER BY l.company)"
            "          FILTER (WHERE l.company IS NOT NULL), '{}') AS companies"
            " FROM ingestd.instances i LEFT JOIN ingestd.company_leases l"
            " ON l.instance_id = i.id GROUP BY i.id ORDER BY i.started_at, i.id").fetchall()


def holders(conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    """company -> the instance holding it (id, host, pid)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT l.company, i.id, i.host, i.pid FROM ingestd.company_leases l"
            " JOIN ingestd.instances i ON i.id = l.instance_id").fetchall()
    return {r.pop("company"): r for r in rows}
