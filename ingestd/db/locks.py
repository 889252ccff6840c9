"""PostgreSQL advisory locks: the one place that names them and takes them.

A company's lock (``company``) is what makes one instance at a time claim, apply,
recover, requeue or prune that company's files, however many share a landing root.
Migrations and ``company add`` share ``MIGRATIONS``, so two processes starting at once
do not both create the same tables. Text keys go through ``hashtext``, so the key
space is the same as older versions used: a mixed fleet still excludes itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

Key = int | str

MIGRATIONS: Key = 0x1D6E57D  # arbitrary but fixed: older versions use it too


def company(company_id: str) -> Key:
    return f"ingestd.company:{company_id}"


def company_apply(company_id: str) -> Key:
    """Held for the apply transaction itself, as a second guard beside ``company``."""
    return f"ingestd.company:{company_id}:apply"


def _call(function: str, key: Key) -> tuple[str, tuple[Key]]:
    if isinstance(key, int):
        return f"SELECT {function}(%s::bigint)", (key,)
    return f"SELECT {function}(hashtext(%s))", (key,)


def try_lock(conn: psycopg.Connection[Any], key: Key) -> bool:
    """Take the session lock if nobody holds it; never waits."""
    row = conn.execute(*_call("pg_try_advisory_lock", key)).fetchone()
    return bool(row and row[0])


def lock(conn: psycopg.Connection[Any], key: Key) -> None:
    """Wait for the session lock (in PostgreSQL's queue: no polling)."""
    conn.execute(*_call("pg_advisory_lock", key))


def unlock(conn: psycopg.Connection[Any], key: Key) -> None:
    conn.execute(*_call("pg_advisory_unlock", key))


def xact_lock(conn: psycopg.Connection[Any], key: Key) -> None:
    """Wait for the lock, held until the current transaction ends."""
    conn.execute(*_call("pg_advisory_xact_lock", key))


@contextmanager
def session_lock(conn: psycopg.Connection[Any], key: Key) -> Iterator[None]:
    """Wait for the session lock and hold it across the transactions of the block.

    Taken and released in autocommit, so neither waits inside a transaction and the
    block starts (and leaves the connection) outside one.
    """
    conn.autocommit = True
    conn.execute(*_call("pg_advisory_lock", key))
    try:
        conn.autocommit = False
        yield
    finally:
        conn.autocommit = True
        unlock(conn, key)
        conn.autocommit = False
