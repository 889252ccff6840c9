"""All SQL of a company's persons tables (``persons_base``, ``persons_custom``).

Company migration 0003 explains the split: ids and carrier in ``persons_base``, custom
fields in ``persons_custom`` (no row: none). Per chunk the applier calls ``lookup``
once, then ``write`` once with the people its rows created or changed.

* Creates: ids from the sequence in one query, time-ordered (version 7) person keys made
  here (random keys would scatter inserts over the whole key index), then one COPY into
  each table.
* Updates: one COPY into a temp table, then set-based statements. A changed custom field
  rewrites only the person's ``persons_custom`` row, merged in SQL (``custom || patch``),
  so the old values are never read or re-encoded; ``persons_base`` is written only for
  people whose ids or carrier changed.
* The ids' unique indexes are checked row by row. When a chunk hands an id from one
  existing person to another, every changed id of the chunk is first set to NULL, then to
  its final value, so no order of the rows within the statement can trip the index.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

_BASE = ("person_id", "person_key", "external_person_id", "mdn", "vibes_device_id", "carrier")


@dataclass(slots=True)
class Person:
    """One person as a chunk sees it; ``patch`` holds the custom fields its rows set."""

    person_id: int  # negative (a placeholder) for a person created in this chunk
    person_key: str | None  # None until a new person is written
    external_person_id: str | None
    mdn: str | None
    vibes_device_id: str | None
    carrier: str | None
    new: bool = False
    touched: bool = False  # a row of this chunk accepted it
    ids_changed: bool = False  # an id or the carrier differs from the stored row
    patch: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Ids:
    """Every id a chunk's rows name, by kind."""

    person_ids: set[int] = field(default_factory=set)
    person_keys: set[str] = field(default_factory=set)
    external_ids: set[str] = field(default_factory=set)
    mdns: set[str] = field(default_factory=set)
    device_ids: set[str] = field(default_factory=set)


class PersonsStore:
    def __init__(self, conn: psycopg.Connection[Any], schema: str) -> None:
        self.conn = conn
        self.base = sql.Identifier(schema, "persons_base")
        self.custom = sql.Identifier(schema, "persons_custom")
        self._temp_ready = False
        # One index lookup per id kind, unioned: an OR of ANYs would scan the table.
        self._lookup = sql.SQL(
            "WITH hit AS ("
            " SELECT person_id FROM {t} WHERE person_id = ANY(%s)"
            " UNION SELECT person_id FROM {t} WHERE person_key = ANY(%s::uuid[])"
            " UNION SELECT person_id FROM {t} WHERE external_person_id = ANY(%s)"
            " UNION SELECT person_id FROM {t} WHERE mdn = ANY(%s)"
            " UNION SELECT person_id FROM {t} WHERE vibes_device_id = ANY(%s))"
            " SELECT p.person_id, p.person_key::text, p.external_person_id, p.mdn,"
            " p.vibes_device_id, p.carrier FROM {t} p JOIN hit USING (person_id)"
        ).format(t=self.base)
        columns = sql.SQL(", ").join(map(sql.Identifier, _BASE))
        self._copy_base = sql.SQL("COPY {t} ({c}) FROM STDIN").format(t=self.base, c=columns)
        self._copy_custom = sql.SQL("COPY {t} (person_id, custom) FROM STDIN").format(
            t=self.custom)
        self._update_ids = sql.SQL(
            "UPDATE {t} p SET external_person_id = u.external_person_id, mdn = u.mdn,"
            " vibes_device_id = u.vibes_device_id, carrier = u.carrier, updated_at = now()"
            " FROM _persons_update u WHERE p.person_id = u.person_id AND u.ids_changed"
        ).format(t=self.base)
        self._free_ids = sql.SQL(
            "UPDATE {t} p SET external_person_id = NULL, vibes_device_id = NULL"
            " FROM _persons_update u WHERE p.person_id = u.person_id AND u.ids_changed"
        ).format(t=self.base)
        self._merge_custom = sql.SQL(
            "INSERT INTO {c} AS c (person_id, custom)"
            " SELECT person_id, patch FROM _persons_update WHERE patch IS NOT NULL"
            " ON CONFLICT (person_id) DO UPDATE SET custom = c.custom || EXCLUDED.custom,"
            " updated_at = now()"
        ).format(c=self.custom)
        self._sequence = sql.SQL(
            "SELECT nextval(pg_get_serial_sequence({t}, 'person_id'))"
            " FROM generate_series(1, %s)").format(t=sql.Literal(self.base.as_string(conn)))

    def lookup(self, ids: Ids) -> list[Person]:
        """Every stored person any of ``ids`` names (custom fields are not read)."""
        rows = self.conn.execute(self._lookup, (
            list(ids.person_ids), list(ids.person_keys), list(ids.external_ids),
            list(ids.mdns), list(ids.device_ids)))
        return [Person(*row) for row in rows]

    def write(self, changed: list[Person], new: list[Person], handoff: bool) -> None:
        """Store a chunk's outcome. ``handoff``: an id moves between two of ``changed``."""
        # A row that repeats what is stored changes nothing, so nothing is written for it.
        changed = [p for p in changed if p.ids_changed or p.patch]
        # Updates first: they may free an external or device id that a new person takes.
        if changed:
            self._update(changed, handoff)
        if new:
            self._create(new)

    def _update(self, changed: list[Person], handoff: bool) -> None:
        if not self._temp_ready:
            self.conn.execute(
                "CREATE TEMP TABLE _persons_update (person_id bigint, external_person_id text,"
                " mdn text, vibes_device_id text, carrier text, ids_changed boolean,"
                " patch jsonb) ON COMMIT DROP")
            self._temp_ready = True
        else:
            self.conn.execute("TRUNCATE _persons_update")
        any_ids = False
        with self.conn.cursor() as cur, cur.copy("COPY _persons_update FROM STDIN") as copy:
            for p in changed:
                any_ids = any_ids or p.ids_changed
                copy.write_row((p.person_id, p.external_person_id, p.mdn, p.vibes_device_id,
                                p.carrier, p.ids_changed,
                                json.dumps(p.patch) if p.patch else None))
        if any_ids:
            if handoff:
                self.conn.execute(self._free_ids)
            self.conn.execute(self._update_ids)
        self.conn.execute(self._merge_custom)

    def _create(self, new: list[Person]) -> None:
        ids = [r[0] for r in self.conn.execute(self._sequence, (len(new),))]
        for p, pid, key in zip(new, ids, person_keys(len(new)), strict=True):
            p.person_id, p.person_key = pid, key
        with self.conn.cursor() as cur:
            with cur.copy(self._copy_base) as copy:
                for p in new:
                    copy.write_row((p.person_id, p.person_key, p.external_person_id, p.mdn,
                                    p.vibes_device_id, p.carrier))
            with cur.copy(self._copy_custom) as copy:
                for p in new:
                    if p.patch:
                        copy.write_row((p.person_id, json.dumps(p.patch)))


def person_keys(n: int) -> Iterable[str]:
    """``n`` distinct version 7 UUIDs (RFC 9562): the time in ms, then a counter.

    The 74 bits after the time start at a random value with room to count (method 1 of
    RFC 9562 section 6.2), so keys of one batch are consecutive and later batches sort
    after earlier ones: inserts land at the right edge of the key index.
    """
    ms = time.time_ns() // 1_000_000
    start = int.from_bytes(os.urandom(8))  # 64 random bits under a 74-bit counter
    for counter in range(start, start + n):
        rand_a, rand_b = counter >> 62, counter & ((1 << 62) - 1)
        h = f"{(ms << 80) | (7 << 76) | (rand_a << 64) | (2 << 62) | rand_b:032x}"
        yield f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
