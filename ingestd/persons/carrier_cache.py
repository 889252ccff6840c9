"""Carrier lookups cached in PostgreSQL with a time-to-live (ingestd.carrier_cache).

The cache is shared by all companies, so it is read and written on a connection of
its own in short transactions, never inside a file's long transaction: otherwise one
company's file would wait on another's uncommitted row, and a rolled-back file would
throw away lookups already paid for. Transient failures are never cached.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg

from ingestd.errors import TRANSIENT_LOOKUP_FAILURE, RowError
from ingestd.persons.carrier import CarrierLookup, CarrierResult


def cached_lookup(conn: psycopg.Connection[Any], carrier: CarrierLookup, numbers: Iterable[str],
                  ttl: float) -> dict[str, CarrierResult]:
    """``conn`` must not be inside a file's transaction (see the module docstring)."""
    wanted = sorted(set(numbers))
    found: dict[str, CarrierResult] = {}
    with conn.transaction():
        for mdn, name, cls, msg in conn.execute(
            "SELECT mdn, carrier, error_class, message FROM ingestd.carrier_cache"
            " WHERE mdn = ANY(%s) AND checked_at > now() - make_interval(secs => %s)",
            (wanted, ttl),
        ):
            found[mdn] = CarrierResult(name, RowError(cls, msg) if cls else None)
    missing = [n for n in wanted if n not in found]
    if not missing:
        return found
    fresh = carrier.lookup_many(missing)  # no transaction open while on the network
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
    found.update(fresh)
    return found
