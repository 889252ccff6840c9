"""Files in hand (ingestd.in_hand): one row per claim being worked on, by any instance.

Every statement runs on a connection in autocommit mode, never inside a file's
transaction: the row must be visible to ``ingestd status`` elsewhere while the
file's own work is still uncommitted.

A claim's row is rewritten by the peer that takes the claim over, while the owner it
took it from may still be alive (fenced after a pause). Updates and deletes therefore
name the row's writer (host, pid and the moment it began) as well as the claim, so a
stale owner waking up cannot overwrite or remove its successor's row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row


@dataclass(frozen=True, slots=True)
class Owner:
    """The writer of a claim's row: one ``insert`` by one process."""
    host: str
    pid: int
    started_at: datetime


@dataclass(frozen=True, slots=True)
class Progress:
    claim_id: str
    owner: Owner
    rows_done: int
    bytes_done: int
    stuck: bool


_OWNED = "host = %s AND pid = %s AND started_at = %s"


def insert(conn: psycopg.Connection[Any], *, claim_id: str, company: str, file: str,
           host: str, pid: int, started_at: datetime, bytes_total: int) -> None:
    """A claim taken over by recovery replaces the dead owner's row."""
    conn.execute(
        "INSERT INTO ingestd.in_hand (claim_id, company, file, host, pid, started_at,"
        " bytes_total) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (claim_id) DO UPDATE"
        " SET company = EXCLUDED.company, file = EXCLUDED.file, host = EXCLUDED.host,"
        " pid = EXCLUDED.pid, started_at = EXCLUDED.started_at, rows_done = 0,"
        " bytes_done = 0, bytes_total = EXCLUDED.bytes_total, stuck = false,"
        " updated_at = now()",
        (claim_id, company, file, host, pid, started_at, bytes_total),
    )


def update(conn: psycopg.Connection[Any], rows: Sequence[Progress]) -> None:
    if not rows:
        return
    with conn.cursor() as cur:
        cur.executemany(
            "UPDATE ingestd.in_hand SET rows_done = %s, bytes_done = %s, stuck = %s,"
            " updated_at = now() WHERE claim_id = %s AND " + _OWNED,
            [(p.rows_done, p.bytes_done, p.stuck, p.claim_id, p.owner.host, p.owner.pid,
              p.owner.started_at) for p in rows],
        )


def delete(conn: psycopg.Connection[Any], claim_id: str, owner: Owner) -> None:
    """Remove the claim's row if ``owner`` still wrote it (a peer may have taken over)."""
    conn.execute("DELETE FROM ingestd.in_hand WHERE claim_id = %s AND " + _OWNED,
                 (claim_id, owner.host, owner.pid, owner.started_at))


def discard(conn: psycopg.Connection[Any], claim_id: str) -> None:
    """Remove the claim's row whoever wrote it: for the one recovering the claim."""
    conn.execute("DELETE FROM ingestd.in_hand WHERE claim_id = %s", (claim_id,))


def delete_for(conn: psycopg.Connection[Any], host: str, pids: Iterable[int]) -> int:
    """Remove the rows of these processes of this host (they are gone); return how many."""
    cur = conn.execute("DELETE FROM ingestd.in_hand WHERE host = %s AND pid = ANY(%s)",
                       (host, list(pids)))
    return cur.rowcount


def pids_of(conn: psycopg.Connection[Any], host: str) -> list[int]:
    return [int(r[0]) for r in conn.execute(
        "SELECT DISTINCT pid FROM ingestd.in_hand WHERE host = %s", (host,))]


def for_company(conn: psycopg.Connection[Any], company: str) -> list[dict[str, Any]]:
    """The company's files in hand, oldest first, with how long ago each row was updated."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT file, claim_id, host, pid, started_at, rows_done, bytes_done, bytes_total,"
            " stuck, updated_at, extract(epoch FROM now() - updated_at)::float8 AS age_s"
            " FROM ingestd.in_hand WHERE company = %s ORDER BY started_at, claim_id",
            (company,),
        ).fetchall()
