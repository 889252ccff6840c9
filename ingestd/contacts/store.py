"""The SQL of the subject contacts import: the stored contacts a batch names, fetched
with one query, and the batch's changes written in bulk. The rules live in ``apply.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from ingestd.contacts.reader import COLUMNS, TREATMENT_ID, Kind, Level, Value

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

    id: uuid.UUID
    values: dict[str, Value]  # every contact-level column, by CSV name
    treatments: dict[str, dict[str, Value]]  # treatmentId -> every treatment column
    modified_at: datetime | None  # before this file; None when created by it
    new: bool = False  # not stored yet: inserted at the end of the batch
    touched: bool = False  # created or updated by this file (no precondition needed)
    dirty: bool = False  # stored, and updated in this batch
    dirty_treatments: set[str] = field(default_factory=set)


class Store:
    """All SQL of the contacts import: one lookup query and bulk writes per batch."""

    def __init__(self, conn: psycopg.Connection[Any], schema: str) -> None:
        self._conn = conn
        self._contacts = sql.Identifier(schema, "contacts")
        self._treatments = sql.Identifier(schema, "contact_treatments")

    def fetch(self, codes: set[str]) -> dict[str, Contact]:
        """The stored contacts with these codes and their treatments, by code.

        Rows are locked (FOR UPDATE) so nothing else changes them between the
        precondition check and the write.
        """
        if not codes:
            return {}
        query = sql.SQL(
            "SELECT c.id, c.modified_at, c.modified_at = now(), {contact},"
            " t.treatment_id IS NOT NULL, {treatment}"
            " FROM {contacts} c LEFT JOIN {treatments} t ON t.contact_id = c.id"
            " WHERE c.response_tracking_code = ANY(%s)"
            " ORDER BY c.id, t.ordinal FOR UPDATE OF c"
        ).format(
            contact=_columns("c", CONTACT_COLUMNS),
            treatment=_columns("t", TREATMENT_COLUMNS),
            contacts=self._contacts,
            treatments=self._treatments,
        )
        found: dict[str, Contact] = {}
        width = len(CONTACT_COLUMNS)
        for row in self._conn.execute(query, (list(codes),)):
            contact_values = dict(zip(CONTACT_COLUMNS, row[3 : 3 + width], strict=True))
            code = str(contact_values["responseTrackingCode"])
            contact = found.get(code)
            if contact is None:
                touched = bool(row[2])
                found[code] = contact = Contact(
                    row[0], contact_values, {}, None if touched else row[1], touched=touched
                )
            if row[3 + width]:  # the contact has this treatment (LEFT JOIN)
                treatment = dict(zip(TREATMENT_COLUMNS, row[4 + width :], strict=True))
                contact.treatments[str(treatment[TREATMENT_ID])] = treatment
        return found

    def write(self, contacts: Iterable[Contact]) -> None:
        """Insert the batch's new contacts and update the changed stored ones."""
        new: list[Contact] = []
        changed: list[Contact] = []
        for contact in contacts:
            if contact.new:
                new.append(contact)
            elif contact.dirty:
                changed.append(contact)
        if new:
            self._insert(new)
        if changed:
            self._update(changed)

    def _insert(self, contacts: list[Contact]) -> None:
        # COPY: the fastest bulk insert; created_at/modified_at take their default now().
        contact_copy = sql.SQL("COPY {} (id, {}) FROM STDIN").format(
            self._contacts, _columns(None, CONTACT_COLUMNS))
        treatment_copy = sql.SQL("COPY {} (contact_id, ordinal, {}) FROM STDIN").format(
            self._treatments, _columns(None, TREATMENT_COLUMNS))
        with self._conn.cursor() as cur:
            with cur.copy(contact_copy) as copy:
                for c in contacts:
                    copy.write_row((c.id, *(c.values[n] for n in CONTACT_COLUMNS)))
            with cur.copy(treatment_copy) as copy:
                for c in contacts:
                    for ordinal, t in enumerate(c.treatments.values()):
                        copy.write_row((c.id, ordinal, *(t[n] for n in TREATMENT_COLUMNS)))

    def _update(self, contacts: list[Contact]) -> None:
        # One UPDATE ... FROM unnest(arrays) per table: a round trip per batch, not per row.
        contact_rows = [(c.id, *(c.values[n] for n in CONTACT_UPDATABLE)) for c in contacts]
        self._update_from_arrays(
            self._contacts, sql.SQL("t.id = u.key1"), CONTACT_UPDATABLE, contact_rows,
            keys=[sql.SQL("uuid")], stamp=True,
        )
        treatment_rows = [
            (c.id, t, *(c.treatments[t][n] for n in TREATMENT_UPDATABLE))
            for c in contacts
            for t in c.dirty_treatments
        ]
        self._update_from_arrays(
            self._treatments, sql.SQL("t.contact_id = u.key1 AND t.treatment_id = u.key2"),
            TREATMENT_UPDATABLE, treatment_rows, keys=[sql.SQL("uuid"), sql.SQL("text")],
        )

    def _update_from_arrays(
        self, table: sql.Identifier, match: sql.SQL, names: list[str],
        rows: list[tuple[Any, ...]], *, keys: list[sql.SQL], stamp: bool = False,
    ) -> None:
        """Set ``names`` from ``rows`` (key values first, then the names' values)."""
        if not rows:
            return
        key_names = [sql.Identifier(f"key{i + 1}") for i in range(len(keys))]
        value_names = [sql.Identifier(DB_COLUMN[n]) for n in names]
        types = [*keys, *(sql.SQL(_PG_TYPE[COLUMN_KIND[n]]) for n in names)]
        sets: list[sql.Composable] = [sql.SQL("{0} = u.{0}").format(v) for v in value_names]
        if stamp:
            sets.append(sql.SQL("modified_at = now()"))
        query = sql.SQL("UPDATE {table} t SET {sets} FROM unnest({arrays}) AS u({aliases})"
                        " WHERE {match}").format(
            table=table,
            sets=sql.SQL(", ").join(sets),
            arrays=sql.SQL(", ").join(sql.SQL("%s::{}[]").format(ty) for ty in types),
            aliases=sql.SQL(", ").join([*key_names, *value_names]),
            match=match,
        )
        columns = [list(column) for column in zip(*rows, strict=True)]
        self._conn.execute(query, columns)


def _columns(alias: str | None, names: list[str]) -> sql.Composed:
    if alias is None:
        return sql.SQL(", ").join(sql.Identifier(DB_COLUMN[n]) for n in names)
    return sql.SQL(", ").join(sql.Identifier(alias, DB_COLUMN[n]) for n in names)
