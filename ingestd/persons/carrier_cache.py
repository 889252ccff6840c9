"""Carrier lookups cached in PostgreSQL with a time-to-live (ingestd.carrier_cache).

``CachedCarrierLookup`` is an adapter: it wraps another ``CarrierLookup`` and is one
itself, so the applier never knows whether it is cached. `ingestd check` gets the
inner lookup alone: a dry run writes nothing, not even the cache.

The cache is shared by all companies, so it is read and written on a connection of
its own (from ``pool``) in short transactions, never inside a file's long transaction:
otherwise one company's file would wait on another's uncommitted row, and a rolled-back
file would throw away lookups already paid for. Transient failures are never cached.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from ingestd.errors import TRANSIENT_LOOKUP_FAILURE, RowError
from ingestd.persons.carrier import (
    Alive,
    CarrierLookup,
    CarrierResult,
    OfflineCarrierLookup,
    nobody_watching,
)


class CachedCarrierLookup:
    def __init__(self, inner: CarrierLookup, pool: ConnectionPool[psycopg.Connection[Any]],
                 ttl: float) -> None:
        self.inner = inner
        self._pool = pool
        self._ttl = ttl

    def lookup_many(self, numbers: Iterable[str], *,
                    alive: Alive = nobody_watching) -> dict[str, CarrierResult]:
        wanted = sorted(set(numbers))
        if not wanted:
            return {}
        with self._pool.connection() as conn:
            found = self._read(conn, wanted)
            missing = [n for n in wanted if n not in found]
            if not missing:
                return found
            # no transaction open on the network
            fresh = self.inner.lookup_many(missing, alive=alive)
            self._write(conn, fresh)
        found.update(fresh)
        return found

    def _read(self, conn: psycopg.Connection[Any], wanted: list[str]) -> dict[str, CarrierResult]:
        found: dict[str, CarrierResult] = {}
        with conn.transaction():
            for mdn, name, cls, msg in conn.execute(
                "SELECT mdn, carrier, error_class, message FROM ingestd.carrier_cache"
                " WHERE mdn = ANY(%s) AND checked_at > now() - make_interval(secs => %s)",
                (wanted, self._ttl),
            ):
                found[mdn] = CarrierResult(name, RowError(cls, msg) if cls else None)
        return found

    @staticmethod
    def _write(conn: psycopg.Connection[Any], fresh: dict[str, CarrierResult]) -> None:
        rows = [(n, r.carrier, r.error.error_class if r.error else None,
                 r.error.message if r.error else None)
                for n, r in sorted(fresh.items())
                if not (r.error and r.error.error_class == TRANSIENT_LOOKUP_FAILURE)]
        if rows:
            # Sorted, in one short transaction: concurrent writers cannot deadlock.
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO ingestd.carrier_cache (mdn, carrier, error_class, message)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT (mdn) DO UPDATE SET"
                    " carrier = EXCLUDED.carrier, error_class = EXCLUDED.error_class,"
                    " message = EXCLUDED.message, checked_at = now()", rows)


def cached(inner: CarrierLookup, pool: ConnectionPool[psycopg.Connection[Any]],
           ttl: float) -> CarrierLookup:
    """``inner`` behind the shared cache, unless it answers locally (offline: phonenumbers'
    metadata is faster than a round trip to the cache)."""
    if isinstance(inner, OfflineCarrierLookup):
        return inner
    return CachedCarrierLookup(inner, pool, ttl)
