"""Applies a subject contacts CSV (FORMATS.md section 2) to a company's contacts tables.

Chunk-oriented: sections are taken in batches of about ``settings.chunk_size`` rows;
the stored contacts a batch names are fetched with one query, every section is
resolved in Python in file order (so a later section sees what an earlier one in
the same file did), and the batch's changes are written in bulk. Memory is bounded
by the batch, not the file.

"Created or updated by this file" is recognised without remembering codes: both
set ``modified_at = now()``, the transaction's start, which no other transaction
shares. Such a contact needs no precondition (FORMATS.md: only contacts that
existed before this file do), and its stored ``modified_at`` no longer tells when
it last changed *before* this file, which is why it must not be compared.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from ingestd.apply_context import ApplyContext, RowResults
from ingestd.contacts.reader import (
    COLUMNS,
    HEADERS_FILE_MAX_BYTES,
    TREATMENT_ID,
    ContactRow,
    Kind,
    Level,
    Section,
    Value,
    open_contacts,
    parse_headers_file,
)
from ingestd.errors import (
    CONTACTS_GLOBAL,
    CONTACTS_PRECONDITION_FAILED,
    CONTACTS_PRECONDITION_REQUIRED,
    CONTACTS_REJECTED,
    CONTACTS_UPDATE_REJECTED,
    FileError,
    RowError,
)
from ingestd.partner_files import open_partner_file

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

PRECONDITION_REQUIRED = "Precondition Required"  # HTTP 428: no If-Unmodified-Since
PRECONDITION_FAILED = "Precondition Failed"  # HTTP 412: modified after it


@dataclass(slots=True)
class _Contact:
    """A contact as this batch sees it: stored, or created earlier in this file."""

    id: uuid.UUID
    values: dict[str, Value]  # every contact-level column, by CSV name
    treatments: dict[str, dict[str, Value]]  # treatmentId -> every treatment column
    modified_at: datetime | None  # before this file; None when created by it
    new: bool = False  # not stored yet: inserted at the end of the batch
    touched: bool = False  # created or updated by this file (no precondition needed)
    dirty: bool = False  # stored, and updated in this batch
    dirty_treatments: set[str] = field(default_factory=set)


class ContactsProcessor:
    format = "contacts"

    def apply(self, ctx: ApplyContext) -> None:
        unmodified_since = _read_headers(ctx)
        with open_contacts(ctx.path, ctx.settings.max_line_bytes) as reader:
            ctx.columns = list(reader.columns)
            store = _Store(ctx.conn, ctx.company.schema)
            resolver = _Resolver(ctx.results, unmodified_since)
            for batch in _batches(reader.sections(), ctx.settings.chunk_size):
                contacts = store.fetch({s.code for s in batch if s.error is None})
                resolver.resolve(batch, contacts)
                store.write(contacts.values())
                ctx.progress.advance(ctx.results.rows, reader.bytes_read())


def _read_headers(ctx: ApplyContext) -> datetime | None:
    if ctx.headers_path is None:
        return None
    try:
        with open_partner_file(ctx.headers_path) as stream:
            raw = stream.read(HEADERS_FILE_MAX_BYTES + 1)  # a few lines: never read a huge one
        if len(raw) > HEADERS_FILE_MAX_BYTES:
            raise FileError(
                CONTACTS_GLOBAL,
                f"{ctx.name}.headers is larger than {HEADERS_FILE_MAX_BYTES} bytes.",
            )
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FileError(CONTACTS_GLOBAL, f"{ctx.name}.headers is not UTF-8 text.") from None
    except OSError as exc:
        raise FileError(
            CONTACTS_GLOBAL, f"{ctx.name}.headers cannot be read: {exc.strerror}."
        ) from None
    return parse_headers_file(text)


def _batches(sections: Iterable[Section], rows: int) -> Iterator[list[Section]]:
    """Sections grouped so a batch holds about ``rows`` rows (a section is never split)."""
    batch: list[Section] = []
    size = 0
    for section in sections:
        batch.append(section)
        size += len(section.rows)
        if size >= rows:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


# --- resolving sections (no SQL) -------------------------------------------------------


class _Resolver:
    """Decides each section's fate in file order and records its rows' outcomes."""

    def __init__(self, results: RowResults, unmodified_since: datetime | None) -> None:
        self._results = results
        self._unmodified_since = unmodified_since

    def resolve(self, batch: list[Section], contacts: dict[str, _Contact]) -> None:
        """Apply the batch's sections to ``contacts`` (code -> contact), which grows."""
        for section in batch:
            if section.error is not None:
                self._reject(section, RowError(CONTACTS_REJECTED, section.error))
                continue
            contact = contacts.get(section.code)
            if contact is None:
                contacts[section.code] = contact = _create(section)
            else:
                error = self._update(contact, section)
                if error is not None:
                    self._reject(section, error)
                    continue
            for row in section.rows:
                self._results.accept(row.record, row.fields, ref=str(contact.id), keep=True)

    def _reject(self, section: Section, error: RowError) -> None:
        first = section.first
        self._results.reject(first.record, error, first.fields, rows=len(section.rows))

    def _update(self, contact: _Contact, section: Section) -> RowError | None:
        error = self._precondition(contact) or _immutable_error(contact, section)
        if error is not None:
            return error
        for name in CONTACT_UPDATABLE:
            contact.values[name] = section.contact[name]
        for treatment in section.treatments:
            treatment_id = str(treatment[TREATMENT_ID])
            stored = contact.treatments[treatment_id]
            for name in TREATMENT_UPDATABLE:
                stored[name] = treatment[name]
            contact.dirty_treatments.add(treatment_id)
        contact.dirty = not contact.new
        contact.touched = True
        return None

    def _precondition(self, contact: _Contact) -> RowError | None:
        if contact.touched or contact.modified_at is None:
            return None
        since = self._unmodified_since
        if since is None:
            return RowError(CONTACTS_PRECONDITION_REQUIRED, PRECONDITION_REQUIRED)
        if _modified_after(contact.modified_at, since):
            return RowError(CONTACTS_PRECONDITION_FAILED, PRECONDITION_FAILED)
        return None


def _modified_after(modified_at: datetime, since: datetime) -> bool:
    # An HTTP date has whole seconds, and HTTP compares Last-Modified at that
    # precision: a contact modified at 12:00:00.4 is not "after" 12:00:00.
    if since.microsecond == 0:
        modified_at = modified_at.replace(microsecond=0)
    return modified_at > since


def _create(section: Section) -> _Contact:
    values: dict[str, Value] = dict.fromkeys(CONTACT_COLUMNS)
    values.update(section.contact)  # abTests stays None when the header lacks it
    treatments = {str(t[TREATMENT_ID]): dict(t) for t in section.treatments}
    return _Contact(uuid.uuid4(), values, treatments, None, new=True, touched=True)


def _immutable_error(contact: _Contact, section: Section) -> RowError | None:
    """The first immutable column the section would change, or an unknown treatment."""
    for name, value in section.contact.items():  # only the header's columns are compared
        if name in IMMUTABLE and contact.values[name] != value:
            return _update_error(
                f"The value for the {name} column differs from the stored contact; "
                "it cannot be changed.", section, section.first)
    for row, treatment in zip(section.rows, section.treatments, strict=True):
        treatment_id = str(treatment[TREATMENT_ID])
        stored = contact.treatments.get(treatment_id)
        if stored is None:
            return _update_error(
                f"The contact has no treatment with treatmentId {treatment_id}.", section, row)
        for name, value in treatment.items():
            if name in IMMUTABLE and stored[name] != value:
                return _update_error(
                    f"The value for the {name} column differs from the stored treatment "
                    f"{treatment_id}; it cannot be changed.", section, row)
    return None


def _update_error(message: str, section: Section, row: ContactRow) -> RowError:
    # The rejected line shows the section's first row: name the record when it is another.
    if row is not section.first:
        message = f"{message} (record {row.record})"
    return RowError(CONTACTS_UPDATE_REJECTED, message)


# --- SQL --------------------------------------------------------------------------------


class _Store:
    """All SQL of the contacts import: one lookup query and bulk writes per batch."""

    def __init__(self, conn: psycopg.Connection[Any], schema: str) -> None:
        self._conn = conn
        self._contacts = sql.Identifier(schema, "contacts")
        self._treatments = sql.Identifier(schema, "contact_treatments")

    def fetch(self, codes: set[str]) -> dict[str, _Contact]:
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
        found: dict[str, _Contact] = {}
        width = len(CONTACT_COLUMNS)
        for row in self._conn.execute(query, (list(codes),)):
            contact_values = dict(zip(CONTACT_COLUMNS, row[3 : 3 + width], strict=True))
            code = str(contact_values["responseTrackingCode"])
            contact = found.get(code)
            if contact is None:
                touched = bool(row[2])
                found[code] = contact = _Contact(
                    row[0], contact_values, {}, None if touched else row[1], touched=touched
                )
            if row[3 + width]:  # the contact has this treatment (LEFT JOIN)
                treatment = dict(zip(TREATMENT_COLUMNS, row[4 + width :], strict=True))
                contact.treatments[str(treatment[TREATMENT_ID])] = treatment
        return found

    def write(self, contacts: Iterable[_Contact]) -> None:
        """Insert the batch's new contacts and update the changed stored ones."""
        new: list[_Contact] = []
        changed: list[_Contact] = []
        for contact in contacts:
            if contact.new:
                new.append(contact)
            elif contact.dirty:
                changed.append(contact)
        if new:
            self._insert(new)
        if changed:
            self._update(changed)

    def _insert(self, contacts: list[_Contact]) -> None:
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

    def _update(self, contacts: list[_Contact]) -> None:
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
