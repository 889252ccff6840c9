"""The rules of a subject contacts CSV (docs/formats.md section 2): where its row errors
are decided. The SQL is ``store.py``'s.

Chunk-oriented: sections are taken in batches of about ``settings.chunk_size`` rows;
the stored contacts a batch names are fetched with one query, every section is
resolved in Python in file order (so a later section sees what an earlier one in
the same file did), and the batch's changes are written in bulk. Memory is bounded
by the batch, not the file.

"Created or updated by this file" is recognised without remembering codes: both
set ``modified_at = now()``, the transaction's start, which no other transaction
shares. Such a contact needs no precondition (docs/formats.md: only contacts that
existed before this file do), and its stored ``modified_at`` no longer tells when
it last changed *before* this file, which is why it must not be compared.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime

from ingestd.apply_context import ApplyContext
from ingestd.contacts.reader import (
    HEADERS_FILE_MAX_BYTES,
    TREATMENT_ID,
    ContactRow,
    Section,
    Value,
    open_contacts,
    parse_headers_file,
)
from ingestd.contacts.store import (
    CONTACT_COLUMNS,
    CONTACT_UPDATABLE,
    IMMUTABLE,
    TREATMENT_UPDATABLE,
    Contact,
    Store,
)
from ingestd.db.ledger import RowResults
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

PRECONDITION_REQUIRED = "Precondition Required"  # HTTP 428: no If-Unmodified-Since
PRECONDITION_FAILED = "Precondition Failed"  # HTTP 412: modified after it


class ContactsProcessor:
    format = "contacts"

    def apply(self, ctx: ApplyContext) -> None:
        unmodified_since = _read_headers(ctx)
        with open_contacts(ctx.path, ctx.settings.max_line_bytes) as reader:
            ctx.columns = list(reader.columns)
            store = Store(ctx.conn, ctx.company.schema)
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

    def resolve(self, batch: list[Section], contacts: dict[str, Contact]) -> None:
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

    def _update(self, contact: Contact, section: Section) -> RowError | None:
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

    def _precondition(self, contact: Contact) -> RowError | None:
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


def _create(section: Section) -> Contact:
    values: dict[str, Value] = dict.fromkeys(CONTACT_COLUMNS)
    values.update(section.contact)  # abTests stays None when the header lacks it
    treatments = {str(t[TREATMENT_ID]): dict(t) for t in section.treatments}
    return Contact(uuid.uuid4(), values, treatments, None, new=True, touched=True)


def _immutable_error(contact: Contact, section: Section) -> RowError | None:
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
