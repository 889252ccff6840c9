"""Carrier lookups cached in PostgreSQL with a time-to-live (ingestd.carrier_cache).

Transient failures are never cached: the next file asks again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg

from ingestd.carrier import CarrierLookup, CarrierResult
from ingestd.errors import RowError


def cached_lookup(conn: psycopg.Connection[Any], carrier: CarrierLookup, numbers: Iterable[str],
                  ttl: float) -> dict[str, CarrierResult]:
    wanted = sorted(set(numbers))
    found: dict[str, CarrierResult] = {}
    for mdn, name, cls, msg in conn.execute(
        "SELECT mdn, carrier, error_class, message FROM ingestd.carrier_cache"
        " WHERE mdn = ANY(%s) AND checked_at > now() - make_interval(secs => %s)",
        (wanted, ttl),
    ):
        found[mdn] = CarrierResult(name, RowError(cls, msg) if cls else None)
    missing = [n for n in wanted if n not in found]
    if missing:
        fresh = carrier.lookup_many(missing)
        from ingestd.errors import TRANSIENT_LOOKUP_FAILURE

        rows = [(n, r.carrier, r.error.error_class if r.error else None,
                 r.error.message if r.error else None)
                for n, r in fresh.items() if not (r.error and
                                                  r.error.error_class == TRANSIENT_LOOKUP_FAILURE)]
        if rows:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO ingestd.carrier_cache (mdn, carrier, error_class, message)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT (mdn) DO UPDATE SET"
                    " carrier = EXCLUDED.carrier, error_class = EXCLUDED.error_class,"
                    " message = EXCLUDED.message, checked_at = now()", rows)
        found.update(fresh)
    return found
