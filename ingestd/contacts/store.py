"""The SQL of the subject contacts import: the stored contacts a batch names, fetched
with one query, and the batch's changes written in bulk. The rules live in ``apply.py``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg import sql

from ingestd.contacts.reader import CODE, COLUMNS, TREATMENT_ID, Kind, Level, Value

# The tables' columns, by CSV column name (0002_contacts.sql).
DB_COLUMN: dict[str, str] = {
    "creationTimeStamp": "creation_timestamp",
    "responseTrackingCode": "response_tracking_code",
    "subjectId": "subject_id",
    "subjectLevel": "subject_level",
    "excludeFromContactRule": "exclude_from_contact_rule",
    "conclusionResponseValue": "conclusion_response_value",
    "conclusionResponseType": "conclusion_response_type",
    "objectUri": "object_uri",
    "objectRevisionId": "object_revision_id",
    "objectType": "object_type",
    "objectVariables": "object_variables",
    "receiverId": "receiver_id",
    "receiverRole": "receiver_role",
    "channel": "channel",
    "ruleFired": "rule_fired",
    "pathTraversed": "path_traversed",
    "abTests": "ab_tests",
    "treatmentId": "treatment_id",
    "treatmentRevisionId": "treatment_revision_id",
    "treatmentGroupId": "treatment_group_id",
    "treatmentGroupRevisionId": "treatment_group_revision_id",
    "objectNodeId": "object_node_id",
    "presented": "presented",
    "presentedTimeStamp": "presented_timestamp",
    "respondedTimeStamp": "responded_timestamp",
    "responseValue": "response_value",
    "responseType": "response_type",
    "responseChannel": "response_channel",
}
CONTACT_COLUMNS = [c.name for c in COLUMNS if c.level is Level.CONTACT]
TREATMENT_COLUMNS = [c.name for c in COLUMNS if c.level is Level.TREATMENT]
CONTACT_UPDATABLE = [c.name for c in COLUMNS if c.level is Level.CONTACT and not c.immutable]
TREATMENT_UPDATABLE = [c.name for c in COLUMNS if c.level is Level.TREATMENT and not c.immutable]
IMMUTABLE = frozenset(c.name for c in COLUMNS if c.immutable)
COLUMN_KIND = {c.name: c.kind for c in COLUMNS}
_PG_TYPE = {Kind.TIMESTAMP: "timestamptz", Kind.BOOLEAN: "boolean"} | dict.fromkeys(
    (Kind.TEXT, Kind.RULE_FIRED, Kind.OBJECT_VARIABLES), "text"
)


@dataclass(slots=True)
class Contact:
    """A contact as this batch sees it: stored, or created earlier in this file."""

    id: str  # a uuid, as text (as the accepted rows name it)
    values: dict[str, Value]  # every contact-level column, by CSV name
    treatments: dict[str, dict[str, Value]]  # treatmentId -> every treatment column
    modified_at: datetime | None  # before this file; None when created by it
    new: bool = False  # not stored yet: inserted at the end of the batch
    touched: bool = False  # created or updated by this file (no precondition needed)
    dirty: bool = False  # stored, and updated in this batch
    dirty_treatments: set[str] = field(default_factory=set)


class Store:
    """All SQL of the contacts import: one lookup query and bulk writes per batch.

    Creates are COPYed; updates are one set-based UPDATE per table whose rows come as
    one JSON parameter (orjson-encoded: one string, no per-value dumpers).
    """

    def __init__(self, conn: psycopg.Connection[Any], schema: str) -> None:
        self._conn = conn
        contacts = sql.Identifier(schema, "contacts")
        treatments = sql.Identifier(schema, "contact_treatments")
        # Contacts and treatments apart: the join would repeat a contact's columns on each
        # of its treatments' rows, and they would be read that many times.
        self._fetch_contacts = sql.SQL(
            "SELECT id::text, modified_at, modified_at = now(), {contact} FROM {contacts}"
            " WHERE response_tracking_code = ANY(ARRAY(SELECT jsonb_array_elements_text(%s)))"
            " FOR UPDATE"
        ).format(contact=_columns(None, CONTACT_COLUMNS), contacts=contacts)
        self._fetch_treatments = sql.SQL(
            "SELECT contact_id::text, {treatment} FROM {treatments}"
            " WHERE contact_id = ANY(ARRAY(SELECT jsonb_array_elements_text(%s))::uuid[])"
            " ORDER BY contact_id, ordinal"
        ).format(treatment=_columns(None, TREATMENT_COLUMNS), treatments=treatments)
        # COPY: the fastest bulk insert; created_at/modified_at take their default now().
        self._copy_contacts = sql.SQL("COPY {} (id, {}) FROM STDIN").format(
            contacts, _columns(None, CONTACT_COLUMNS))
        self._copy_treatments = sql.SQL("COPY {} (contact_id, ordinal, {}) FROM STDIN").format(
            treatments, _columns(None, TREATMENT_COLUMNS))
        self._update_contacts = _update_from_json(
            contacts, ["id"], CONTACT_UPDATABLE, stamp=True)
        self._update_treatments = _update_from_json(
            treatments, ["contact_id", "treatment_id"], TREATMENT_UPDATABLE)

    def fetch(self, codes: str | None) -> Fetched:
        """The stored rows of the contacts with these codes, a JSON array (``contacts``
        reads them); None: no codes.

        Contact rows are locked (FOR UPDATE) so nothing else changes them, or their
        treatments, between the precondition check and the write. Only the queries run
        here (on the database thread); making contacts of the rows is left to the thread
        that resolves them.
        """
        if codes is None:
            return [], []
        found = self._conn.execute(self._fetch_contacts, (codes,)).fetchall()
        if not found:
            return [], []
        ids = orjson.dumps([row[0] for row in found]).decode()
        return found, self._conn.execute(self._fetch_treatments, (ids,)).fetchall()

    @staticmethod
    def contacts(fetched: Fetched) -> dict[str, Contact]:
        """The contacts of ``fetch``'s rows and their treatments, by code."""
        rows, treatment_rows = fetched
        by_id: dict[str, Contact] = {}
        found: dict[str, Contact] = {}
        code = CONTACT_COLUMNS.index(CODE)
        for row in rows:
            touched = bool(row[2])
            values = dict(zip(CONTACT_COLUMNS, row[3:], strict=True))
            contact = Contact(row[0], values, {}, None if touched else row[1], touched=touched)
            by_id[contact.id] = found[row[3 + code]] = contact
        treatment_id = TREATMENT_COLUMNS.index(TREATMENT_ID)
        for row in treatment_rows:
            by_id[row[0]].treatments[row[1 + treatment_id]] = dict(
                zip(TREATMENT_COLUMNS, row[1:], strict=True))
        return found

    @staticmethod
    def encode(contacts: Iterable[Contact]) -> Changes:
        """The batch's new contacts and the changes of its stored ones, ready to send
        (made by the thread that resolved them, so ``write`` mostly sends)."""
        changes = Changes()
        contact_rows: list[list[Any]] = []
        treatment_rows: list[list[Any]] = []
        for c in contacts:
            if c.new:
                changes.contacts.append((c.id, *_CONTACT_VALUES(c.values)))
                changes.treatments.extend(
                    (c.id, ordinal, *_TREATMENT_VALUES(t))
                    for ordinal, t in enumerate(c.treatments.values()))
            elif c.dirty:
                contact_rows.append([c.id, *_CONTACT_UPDATES(c.values)])
                treatment_rows.extend(
                    [c.id, t, *_TREATMENT_UPDATES(c.treatments[t])] for t in c.dirty_treatments)
        if contact_rows:
            changes.contact_updates = orjson.dumps(contact_rows).decode()
        if treatment_rows:
            changes.treatment_updates = orjson.dumps(treatment_rows).decode()
        return changes

    def write(self, changes: Changes) -> None:
        """Insert the batch's new contacts and update the changed stored ones."""
        with self._conn.cursor() as cur:
            if changes.contacts or changes.copied_contacts:
                # Rows decided in bulk come as COPY text; the others go through psycopg's C
                # formatter: the least time holding the GIL here.
                with cur.copy(self._copy_contacts) as copy:
                    if changes.copied_contacts:
                        copy.write(changes.copied_contacts)
                    for row in changes.contacts:
                        copy.write_row(row)
                with cur.copy(self._copy_treatments) as copy:
                    if changes.copied_treatments:
                        copy.write(changes.copied_treatments)
                    for row in changes.treatments:
                        copy.write_row(row)
            if changes.contact_updates:
                cur.execute(self._update_contacts, (changes.contact_updates,))
            if changes.treatment_updates:
                cur.execute(self._update_treatments, (changes.treatment_updates,))


# What ``fetch`` returns: the contacts' rows, their treatments' rows.
Fetched = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]


@dataclass(slots=True)
class Changes:
    """A batch's writes, ready to send: the rows of the new contacts and their
    treatments, JSON arrays of the stored ones' updates."""

    contacts: list[tuple[Any, ...]] = field(default_factory=list)
    treatments: list[tuple[Any, ...]] = field(default_factory=list)
    contact_updates: str = ""
    treatment_updates: str = ""
    # New contacts and their treatments as COPY text, made in bulk (``kernels.Bulk``).
    copied_contacts: bytes | memoryview = b""
    copied_treatments: bytes | memoryview = b""


def _values(names: list[str]) -> Callable[[dict[str, Value]], tuple[Value, ...]]:
    """The values of ``names`` (two or more) as one tuple, in C."""
    assert len(names) > 1
    return operator.itemgetter(*names)


_CONTACT_VALUES = _values(CONTACT_COLUMNS)
_TREATMENT_VALUES = _values(TREATMENT_COLUMNS)
_CONTACT_UPDATES = _values(CONTACT_UPDATABLE)
_TREATMENT_UPDATES = _values(TREATMENT_UPDATABLE)


def _update_from_json(table: sql.Identifier, keys: list[str], names: list[str], *,
                      stamp: bool = False) -> sql.Composed:
    """``UPDATE table SET names`` from a JSON array of [keys..., names...] arrays."""
    key_types = {"id": "uuid", "contact_id": "uuid", "treatment_id": "text"}
    columns = [*((k, key_types[k]) for k in keys),
               *((DB_COLUMN[n], _PG_TYPE[COLUMN_KIND[n]]) for n in names)]
    fields = sql.SQL(", ").join(
        sql.SQL("(e->>{})::{} AS {}").format(sql.Literal(i), sql.SQL(ty), sql.Identifier(c))
        for i, (c, ty) in enumerate(columns)
    )
    sets: list[sql.Composable] = [
        sql.SQL("{0} = u.{0}").format(sql.Identifier(DB_COLUMN[n])) for n in names]
    if stamp:
        sets.append(sql.SQL("modified_at = now()"))
    match = sql.SQL(" AND ").join(sql.SQL("t.{0} = u.{0}").format(sql.Identifier(k)) for k in keys)
    return sql.SQL(
        "UPDATE {table} t SET {sets} FROM (SELECT {fields} FROM jsonb_array_elements(%s) e) u"
        " WHERE {match}"
    ).format(table=table, sets=sql.SQL(", ").join(sets), fields=fields, match=match)


def _columns(alias: str | None, names: list[str]) -> sql.Composed:
    if alias is None:
        return sql.SQL(", ").join(sql.Identifier(DB_COLUMN[n]) for n in names)
    return sql.SQL(", ").join(sql.Identifier(alias, DB_COLUMN[n]) for n in names)
