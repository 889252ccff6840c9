"""All SQL of a company's persons tables (``persons_base``, ``persons_custom``).

Company migration 0003 explains the split: ids, carrier and the custom fields a person was
created with in ``persons_base``; the custom fields changed since in ``persons_custom``
(merged over those; no row: no change). Per chunk the applier calls ``lookup``
once, then ``write`` once with the people its rows created or changed.

* Creates: ids from the sequence in one query, time-ordered (version 7) person keys made
  here (random keys would scatter inserts over the whole key index), then one COPY into
  ``persons_base``, custom fields included: a new person is one row in one table.
* Updates: set-based statements over the chunk's changes, sent as one JSON parameter. A
  changed custom field rewrites only the person's ``persons_custom`` row, merged in SQL
  (``custom || patch``), so the old values are never read or re-encoded (a person's first
  change is a row COPYed in);
  ``persons_base`` is written only for people whose ids or carrier changed.
* The ids' unique indexes are checked row by row. When a chunk hands an id from one
  existing person to another, every changed id of the chunk is first set to NULL, then to
  its final value, so no order of the rows within the statement can trip the index.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
import pyarrow as pa
from psycopg import sql

from ingestd import columns
from ingestd.persons.kernels import Bulk
from ingestd.uuid7 import uuid7_block, uuid7s

if TYPE_CHECKING:  # bulk_updates builds on this module's Person
    from ingestd.persons.bulk_updates import Updates

_MAX_ID = (1 << 63) - 1
_BASE = ("person_id", "person_key", "external_person_id", "mdn", "vibes_device_id", "carrier",
         "custom")


@dataclass(slots=True)
class Person:
    """One person as a chunk sees it; ``patch`` holds the custom fields its rows set."""

    person_id: int  # negative (a placeholder) for a person created in this chunk
    person_key: str | None  # None until a new person is written
    external_person_id: str | None
    mdn: str | None
    vibes_device_id: str | None
    carrier: str | None
    has_custom: bool = False  # a persons_custom row exists
    new: bool = False
    touched: bool = False  # a row of this chunk accepted it
    ids_changed: bool = False  # an id or the carrier differs from the stored row
    patch: dict[str, Any] = field(default_factory=dict)
    row: int = -1  # a new person: the position in its chunk of the row that created it


@dataclass(slots=True)
class Ids:
    """Every id a chunk's rows name, by kind."""

    person_ids: set[int] = field(default_factory=set)
    person_keys: set[str] = field(default_factory=set)
    external_ids: set[str] = field(default_factory=set)
    mdns: set[str] = field(default_factory=set)
    device_ids: set[str] = field(default_factory=set)
    # More of them as one JSON array text per column (made in C from a column of values).
    json: dict[str, str] = field(default_factory=dict)


class PersonsStore:
    def __init__(self, conn: psycopg.Connection[Any], schema: str) -> None:
        self.conn = conn
        self.base = sql.Identifier(schema, "persons_base")
        self.custom = sql.Identifier(schema, "persons_custom")
        # Whether the person has a persons_custom row comes along: a change then is an
        # UPDATE of it, else a row to COPY in.
        self._select = sql.SQL(
            "SELECT b.person_id, b.person_key::text, b.external_person_id, b.mdn,"
            " b.vibes_device_id, b.carrier, c.person_id IS NOT NULL FROM {t} b"
            " LEFT JOIN {c} c USING (person_id) WHERE b.").format(t=self.base, c=self.custom)
        columns = sql.SQL(", ").join(map(sql.Identifier, _BASE))
        self._copy_base = sql.SQL("COPY {t} ({c}) FROM STDIN").format(t=self.base, c=columns)
        # A chunk's changes go as one JSON array parameter: one C-encoded string, no temp
        # table, no per-row encoding calls.
        changes = sql.SQL(
            "(SELECT (e->>0)::bigint AS person_id, e->>1 AS external_person_id, e->>2 AS mdn,"
            " e->>3 AS vibes_device_id, e->>4 AS carrier FROM jsonb_array_elements(%s) e)")
        self._update_ids = sql.SQL(
            "UPDATE {t} p SET external_person_id = u.external_person_id, mdn = u.mdn,"
            " vibes_device_id = u.vibes_device_id, carrier = u.carrier, updated_at = now()"
            " FROM {u} u WHERE p.person_id = u.person_id").format(t=self.base, u=changes)
        self._free_ids = sql.SQL(
            "UPDATE {t} p SET external_person_id = NULL, vibes_device_id = NULL"
            " FROM {u} u WHERE p.person_id = u.person_id").format(t=self.base, u=changes)
        self._update_custom = sql.SQL(
            "UPDATE {c} c SET custom = c.custom || u.patch, updated_at = now()"
            " FROM (SELECT (e->>0)::bigint AS person_id, e->1 AS patch"
            " FROM jsonb_array_elements(%s) e) u WHERE c.person_id = u.person_id"
        ).format(c=self.custom)
        self._copy_custom = sql.SQL("COPY {c} (person_id, custom) FROM STDIN").format(
            c=self.custom)
        sequence = sql.Identifier(schema, "persons_person_id_seq")
        self._next_id = sql.SQL(
            "SELECT last_value + is_called::int FROM {s}").format(s=sequence)
        # The ids this store gave to new people, as (first, last) ranges: what tells a
        # person an earlier row of the file created, in a few pairs however many people.
        self.created: list[tuple[int, int]] = []
        self._sequence = sql.SQL(
            "SELECT nextval({s}::regclass) FROM generate_series(1, %s)").format(
                s=sql.Literal(sequence.as_string(conn)))

    def lookup(self, ids: Ids) -> list[Person]:
        """Every stored person any of ``ids`` names (custom fields are not read)."""
        # One index scan per kind of id the chunk has, unioned (an OR of ANYs would scan
        # the table); each list goes as a JSON array, one C-encoded string.
        parts, params = [], []
        for column, cast, values in (("person_id", "::bigint[]", ids.person_ids),
                                     ("person_key", "::uuid[]", ids.person_keys),
                                     ("external_person_id", "", ids.external_ids),
                                     ("mdn", "", ids.mdns),
                                     ("vibes_device_id", "", ids.device_ids)):
            more = ids.json.get(column)
            if values or more:
                parts.append(self._select + sql.SQL(
                    "{c} = ANY(ARRAY(SELECT jsonb_array_elements_text(%s)){cast})").format(
                        c=sql.Identifier(column), cast=sql.SQL(cast)))
                text = orjson.dumps(list(values)).decode()
                if more:
                    text = more if not values else f"{text[:-1]},{more[1:]}"
                params.append(text)
        if not parts:
            return []
        rows = self.conn.execute(sql.SQL(" UNION ").join(parts), params)
        return [Person(*row) for row in rows]

    def next_id(self) -> int:
        """The person_id the next new person gets, if nobody else creates one first."""
        row = self.conn.execute(self._next_id).fetchone()
        assert row is not None
        return int(row[0])

    def created_here(self, person_id: int) -> bool:
        """Whether ``write`` created the person with this id."""
        i = bisect.bisect_right(self.created, (person_id, _MAX_ID)) - 1
        return i >= 0 and self.created[i][0] <= person_id <= self.created[i][1]

    def write(self, changed: list[Person], new: list[Person], handoff: bool,
              bulk: Bulk | None = None, absent: Sequence[tuple[int, int]] = (),
              updates: Updates | None = None) -> None:
        """Store a chunk's outcome. ``handoff``: an id moves between two of ``changed``;
        ``bulk``: rows that each create a person, as columns; ``absent``: (person_id, k)
        for rows that were told none of the first k new people (in file order) has it;
        ``updates``: custom fields of stored people, as columns."""
        # A row that repeats what is stored changes nothing, so nothing is written for it.
        changed = [p for p in changed if p.ids_changed or p.patch]
        # Updates first: they may free an external or device id that a new person takes.
        if changed:
            self._update(changed, handoff)
        if updates is not None and len(updates):
            self._patch(updates)
        if new or bulk:
            self._create(new, bulk, absent)

    def _update(self, changed: list[Person], handoff: bool) -> None:
        ids = [(p.person_id, p.external_person_id, p.mdn, p.vibes_device_id, p.carrier)
               for p in changed if p.ids_changed]
        if ids:
            param = (orjson.dumps(ids).decode(),)
            if handoff:
                self.conn.execute(self._free_ids, param)
            self.conn.execute(self._update_ids, param)
        patches = [(p.person_id, p.patch) for p in changed if p.patch and p.has_custom]
        if patches:
            self.conn.execute(self._update_custom, (orjson.dumps(patches).decode(),))
        if any(p.patch and not p.has_custom for p in changed):
            with self.conn.cursor() as cur, cur.copy(self._copy_custom) as copy:
                for p in changed:
                    if p.patch and not p.has_custom:
                        copy.write_row((p.person_id, orjson.dumps(p.patch).decode()))

    def _patch(self, updates: Updates) -> None:
        """The bulk updates' patches, as ``_update`` writes them (built in C)."""
        stored = updates.changing(stored=True)
        if len(stored):
            pairs = columns.joined(columns.concat(
                "[", stored.person_id.cast(columns.STRING), ",", stored.custom, "],"))
            text = "[" + bytes(pairs[:-1]).decode() + "]"
            self.conn.execute(self._update_custom, (text,))
        first = updates.changing(stored=False)
        if len(first):
            with self.conn.cursor() as cur, cur.copy(self._copy_custom) as copy:
                copy.write(columns.copy_lines([first.person_id.cast(columns.STRING),
                                               columns.copy_text(first.custom)]))

    def _create(self, new: list[Person], bulk: Bulk | None,
                absent: Sequence[tuple[int, int]]) -> None:
        """New people get ids and keys in the order of the rows that created them (as a
        row-at-a-time import would), whichever way those rows were decided."""
        n = len(new) + (len(bulk) if bulk else 0)
        ids = [r[0] for r in self.conn.execute(self._sequence, (n,))]
        for person_id, k in absent:
            # Only if something else took ids from the sequence meanwhile (a writer beside
            # ingestd) can an earlier new person get the id a row was told nobody has.
            at = bisect.bisect_left(ids, person_id)
            if at < min(k, len(ids)) and ids[at] == person_id:
                raise SequenceTaken(person_id)
        keys = uuid7_block(n)
        for pid in ids:
            if self.created and self.created[-1][1] == pid - 1:
                self.created[-1] = (self.created[-1][0], pid)
            else:
                self.created.append((pid, pid))
        if bulk and new:
            rows = pa.concat_arrays([bulk.index, pa.array([p.row for p in new], pa.int64())])
            order = columns.ranks(rows)
            bulk_order = order.slice(0, len(bulk))
            new_order = order.slice(len(bulk)).to_pylist()
        else:
            bulk_order, new_order = None, list(range(len(new)))
        for p, rank in zip(new, new_order, strict=True):
            p.person_id, p.person_key = ids[rank], keys[rank]
        with self.conn.cursor() as cur, cur.copy(self._copy_base) as copy:
            for p in new:
                copy.write_row((p.person_id, p.person_key, p.external_person_id, p.mdn,
                                p.vibes_device_id, p.carrier,
                                orjson.dumps(p.patch).decode() if p.patch else "{}"))
            if bulk:
                id_col = pa.array(ids, pa.int64())
                key_col = columns.column(keys)
                if bulk_order is not None:
                    id_col, key_col = id_col.take(bulk_order), key_col.take(bulk_order)
                copy.write(columns.copy_lines([
                    id_col.cast(columns.STRING), key_col,
                    columns.copy_text(bulk.external_person_id), columns.copy_text(bulk.mdn),
                    columns.copy_text(bulk.vibes_device_id), columns.copy_text(bulk.carrier),
                    columns.copy_text(bulk.custom)]))


class SequenceTaken(Exception):
    """The person_id sequence moved under a file (another writer created people)."""

    def __init__(self, person_id: int) -> None:
        super().__init__(f"person_id {person_id} was decided as unknown, then created by"
                         " this file: something beside ingestd takes person_ids meanwhile")


def person_keys(n: int) -> Iterator[str]:
    """``n`` distinct version 7 UUIDs (``ingestd.uuid7``): keys of one batch are consecutive
    and later batches sort after earlier ones, so inserts land at the right edge of the key
    index."""
    return itertools.islice(uuid7s(), n)
