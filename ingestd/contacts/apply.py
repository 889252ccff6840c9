"""The rules of a subject contacts CSV (docs/formats.md section 2): where its row errors
are decided. The SQL is ``store.py``'s.

Chunk-oriented: sections are taken in batches of about ``settings.chunk_size`` rows;
the stored contacts a batch names are fetched with one query, every section is
resolved in Python in file order (so a later section sees what an earlier one in
the same file did), and the batch's changes are written in bulk. Memory is bounded
by the batch, not the file. Fetches, writes and the row results' COPY run on a database
thread of the file's own, in that order, while this thread reads and checks the next
batch or resolves the current one: PostgreSQL and Python work at the same time.

"Created or updated by this file" is recognised without remembering codes: both
set ``modified_at = now()``, the transaction's start, which no other transaction
shares. Such a contact needs no precondition (docs/formats.md: only contacts that
existed before this file do), and its stored ``modified_at`` no longer tells when
it last changed *before* this file, which is why it must not be compared.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ingestd import columns
from ingestd.apply_context import ApplyContext
from ingestd.batch_loop import run_batches
from ingestd.columns import STRING
from ingestd.contacts.kernels import Bulk, Kernels, no_bulk
from ingestd.contacts.reader import (
    HEADERS_FILE_MAX_BYTES,
    TREATMENT_ID,
    ContactRow,
    ContactsReader,
    Fault,
    RawSection,
    Section,
    Value,
    open_contacts,
    parse_headers_file,
)
from ingestd.contacts.store import (
    CONTACT_COLUMNS,
    CONTACT_UPDATABLE,
    IMMUTABLE,
    TREATMENT_COLUMNS,
    TREATMENT_UPDATABLE,
    Contact,
    Fetched,
    Store,
)
from ingestd.db.ledger import RowResults
from ingestd.db.worker import DatabaseThread
from ingestd.errors import (
    CONTACTS_GLOBAL,
    CONTACTS_PRECONDITION_FAILED,
    CONTACTS_PRECONDITION_REQUIRED,
    CONTACTS_REJECTED,
    CONTACTS_UPDATE_REJECTED,
    FileError,
    RowError,
    quoted,
)
from ingestd.partner_files import open_partner_file
from ingestd.uuid7 import uuid7_block, uuid7s

PRECONDITION_REQUIRED = "Precondition Required"  # HTTP 428: no If-Unmodified-Since
PRECONDITION_FAILED = "Precondition Failed"  # HTTP 412: modified after it


class ContactsProcessor:
    format = "contacts"

    def apply(self, ctx: ApplyContext) -> None:
        ctx.results.rejected_sections = 0  # result.json says how many sections were rejected
        unmodified_since = _read_headers(ctx)
        with open_contacts(ctx.path, ctx.settings.max_line_bytes) as reader:
            ctx.columns = list(reader.columns)
            store = Store(ctx.conn, ctx.company.schema)
            resolver = _Resolver(ctx.results, unmodified_since, reader.names,
                                 whole_request=ctx.whole_request)
            batches = _batches(reader.raw_sections(), ctx.settings.chunk_size)
            with DatabaseThread("contacts-db") as db:
                ctx.results.send_with(db.send)
                try:
                    steps = _Steps(reader, store, resolver, db, ctx.settings.chunk_size)
                    run_batches(ctx, steps, batches, reader.bytes_read)
                finally:
                    ctx.results.send_with(None)


@dataclass(slots=True)
class _Batch:
    """A batch's sections after the checks that need no database: sections created in
    bulk (``bulk``) and sections checked cell by cell (``slow``, by position, in order)."""

    raw: list[RawSection]
    slow: list[tuple[int, Section]]
    bulk: Bulk


class _Steps:
    """A contacts file's steps in the batch loop (``ingestd.batch_loop``): a batch's
    sections checked (its kernels first), the stored contacts it names fetched, its
    sections resolved, its changes written."""

    def __init__(self, reader: ContactsReader, store: Store, resolver: _Resolver,
                 db: DatabaseThread, batch_rows: int) -> None:
        self.reader, self.store, self.resolver, self.db = reader, store, resolver, db
        self.kernels = Kernels(reader.width, reader.positions)
        self.worth = columns.Worth(batch_rows)  # whether the next batch's kernels are worth it

    def check(self, raw: list[RawSection]) -> _Batch:
        if self.worth(sum(len(section) for section in raw)):
            bulk, others = self.kernels.check(raw)
        else:
            bulk, others = no_bulk(), list(range(len(raw)))
        return _Batch(raw, [(i, self.reader.section(raw[i])) for i in others], bulk)

    def look_up(self, batch: _Batch) -> Future[Fetched]:
        codes = {s.code for _, s in batch.slow if s.error is None}
        return self.db.run(self.store.fetch, _json_union(
            orjson.dumps(list(codes)).decode() if codes else None,
            columns.json_array(batch.bulk.code)))

    def resolve(self, batch: _Batch, found: Fetched) -> None:
        contacts = self.store.contacts(found)
        self._unstored(batch, contacts)
        self.resolver.resolve([s for _, s in batch.slow], contacts)
        changes = self.store.encode(contacts.values())
        bulk = batch.bulk
        if len(bulk):
            ids = columns.column(uuid7_block(len(bulk)))
            changes.copied_contacts = bulk.contacts_copy(ids)
            changes.copied_treatments = bulk.treatments_copy(ids)
            self.resolver.accept_bulk(len(bulk.record),
                                      lambda prefix: bulk.accepted_lines(ids, prefix))
        self.db.run(self.store.write, changes)

    def _unstored(self, batch: _Batch, contacts: dict[str, Contact]) -> None:
        """Bulk sections whose contact is stored go section by section (the anti-join)."""
        if not len(batch.bulk) or not contacts:
            return
        stored = pc.is_in(batch.bulk.code, value_set=pa.array(list(contacts), STRING))
        demoted = batch.bulk.at.filter(stored).to_pylist()
        # Mostly updates: the next batches skip the kernels.
        self.worth.wasted(len(demoted), len(batch.bulk))
        if demoted:
            batch.slow.extend((i, self.reader.section(batch.raw[i])) for i in demoted)
            batch.slow.sort(key=lambda pair: pair[0])
            batch.bulk = batch.bulk.keep(pc.invert(stored))


def _json_union(*arrays: str | None) -> str | None:
    """JSON arrays' elements as one JSON array; None when there are none."""
    inner = [a[1:-1] for a in arrays if a is not None]
    return "[" + ",".join(inner) + "]" if inner else None


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


def _batches(sections: Iterable[RawSection], rows: int) -> Iterator[list[RawSection]]:
    """Sections grouped so a batch holds about ``rows`` rows (a section is never split)."""
    batch: list[RawSection] = []
    size = 0
    for section in sections:
        batch.append(section)
        size += len(section)
        if size >= rows:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


# --- resolving sections (no SQL) -------------------------------------------------------


class _Resolver:
    """Decides each section's fate in file order and records its rows' outcomes."""

    def __init__(self, results: RowResults, unmodified_since: datetime | None,
                 names: list[str], *, whole_request: bool = False) -> None:
        self._results = results
        self._unmodified_since = unmodified_since
        self._whole_request = whole_request
        # The immutable columns the header has: a section leaves them as stored when these
        # read alike (one C-level comparison); only then is each column compared, to name
        # the first that differs.
        contact = [n for n in CONTACT_COLUMNS if n in IMMUTABLE and n in names]
        treatment = [n for n in TREATMENT_COLUMNS if n in IMMUTABLE and n in names]
        self._contact_key = _getter(contact)
        self._treatment_key = _getter(treatment)
        self._ids = uuid7s()  # time-ordered: new contacts' ids go to the index's right edge

    def resolve(self, batch: list[Section], contacts: dict[str, Contact]) -> None:
        """Apply the batch's sections to ``contacts`` (code -> contact), which grows."""
        accept = self._results.accept
        for section in batch:
            if section.error is not None:
                fault = section.fault or Fault(section.first.record, "", "")
                self._reject(section, CONTACTS_REJECTED, section.error, fault)
                continue
            contact = contacts.get(section.code)
            if contact is None:
                contacts[section.code] = contact = _create(section, next(self._ids))
            else:
                rejection = self._update(contact, section)
                if rejection is not None:
                    self._reject(section, *rejection)
                    continue
            ref = contact.id
            for row in section.rows:
                accept(row.record, row.fields, ref=ref, keep=True)

    def accept_bulk(self, count: int, lines: Callable[[str], memoryview]) -> None:
        """Record the rows of sections created in bulk (``RowResults.accept_kept``)."""
        self._results.accept_kept(count, lines)

    def _reject(self, section: Section, error_class: str, message: str, fault: Fault) -> None:
        """Reject every row of ``section``: its first row leads (the rejected line of the
        API's answer), the others are taken along; each row's error says which record was
        at fault and, on that record, the column and what was wrong."""
        first, last = section.first, section.rows[-1]
        span = (f"records {first.record}-{last.record}" if last is not first
                else f"record {first.record}")
        along = f"rejected with its section ({span}): record {fault.record} is at fault"
        suffix = f" (record {fault.record})"
        for row in section.rows:
            at_fault = row.record == fault.record
            error = RowError(
                error_class,
                message if at_fault or message.endswith(suffix) or row is first
                else message + suffix,
                fault.column if at_fault else "",
                fault.detail if at_fault else along)
            if row is first:
                self._results.reject(row.record, error, row.fields, rows=len(section.rows))
            else:
                self._results.reject_along(row.record, first.record, error, row.fields)

    def _update(self, contact: Contact,
                section: Section) -> tuple[str, str, Fault] | None:
        precondition = self._precondition(contact, section)
        if precondition is not None and self._whole_request:
            # Over HTTP the whole request is answered 428/412 and nothing of it applied.
            error_class, message, _ = precondition
            raise FileError(error_class, (
                f"{message}: record {section.first.record} updates the contact "
                f"{section.code!r}, which existed before this request"
                + ("" if self._unmodified_since is None else
                   f" and was modified after {self._unmodified_since.isoformat()}")
                + "."))
        rejection = precondition or self._immutable_error(contact, section)
        if rejection is not None:
            return rejection
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

    def _immutable_error(self, contact: Contact,
                         section: Section) -> tuple[str, str, Fault] | None:
        """``_immutable_error``, answered at once when nothing immutable differs."""
        if self._contact_key(section.contact) == self._contact_key(contact.values):
            stored = contact.treatments
            key = self._treatment_key
            for treatment in section.treatments:
                mine = stored.get(str(treatment[TREATMENT_ID]))
                if mine is None or key(mine) != key(treatment):
                    break
            else:
                return None
        return _immutable_error(contact, section)

    def _precondition(self, contact: Contact,
                      section: Section) -> tuple[str, str, Fault] | None:
        if contact.touched or contact.modified_at is None:
            return None
        since = self._unmodified_since
        record = section.first.record
        if since is None:
            return CONTACTS_PRECONDITION_REQUIRED, PRECONDITION_REQUIRED, Fault(
                record, "", f"contact {section.code} existed before this file: an update needs"
                " NAME.csv.headers with If-Unmodified-Since, uploaded before the CSV")
        if _modified_after(contact.modified_at, since):
            return CONTACTS_PRECONDITION_FAILED, PRECONDITION_FAILED, Fault(
                record, "", f"contact {section.code} was modified at "
                f"{contact.modified_at.isoformat()}, after If-Unmodified-Since "
                f"{since.isoformat()}")
        return None


def _modified_after(modified_at: datetime, since: datetime) -> bool:
    # An HTTP date has whole seconds, and HTTP compares Last-Modified at that
    # precision: a contact modified at 12:00:00.4 is not "after" 12:00:00.
    if since.microsecond == 0:
        modified_at = modified_at.replace(microsecond=0)
    return modified_at > since


def _getter(names: list[str]) -> Callable[[dict[str, Value]], tuple[Value, ...]]:
    """The values of ``names`` as one tuple (itemgetter's shape differs for 0 or 1)."""
    if not names:
        return lambda values: ()
    if len(names) == 1:
        name = names[0]
        return lambda values: (values[name],)
    return operator.itemgetter(*names)


def _create(section: Section, contact_id: str) -> Contact:
    values: dict[str, Value] = dict.fromkeys(CONTACT_COLUMNS)
    values.update(section.contact)  # abTests stays None when the header lacks it
    # The section's own dicts: nothing else holds them once it is resolved.
    treatments = {str(t[TREATMENT_ID]): t for t in section.treatments}
    return Contact(contact_id, values, treatments, None, new=True, touched=True)


def _immutable_error(contact: Contact, section: Section) -> tuple[str, str, Fault] | None:
    """The first immutable column the section would change, or an unknown treatment."""
    for name, value in section.contact.items():  # only the header's columns are compared
        if name in IMMUTABLE and contact.values[name] != value:
            return _update_error(
                f"The value for the {name} column differs from the stored contact; "
                "it cannot be changed.", section, section.first, name,
                f"{name} is {_given(section.first, name)}; the stored contact has"
                f" {_shown(contact.values[name])}")
    for row, treatment in zip(section.rows, section.treatments, strict=True):
        treatment_id = str(treatment[TREATMENT_ID])
        stored = contact.treatments.get(treatment_id)
        if stored is None:
            return _update_error(
                f"The contact has no treatment with treatmentId {treatment_id}.", section, row,
                TREATMENT_ID, f"contact {section.code} has no treatment {quoted(treatment_id)}")
        for name, value in treatment.items():
            if name in IMMUTABLE and stored[name] != value:
                return _update_error(
                    f"The value for the {name} column differs from the stored treatment "
                    f"{treatment_id}; it cannot be changed.", section, row, name,
                    f"{name} is {_given(row, name)}; the stored treatment has"
                    f" {_shown(stored[name])}")
    return None


def _update_error(message: str, section: Section, row: ContactRow, column: str,
                  detail: str) -> tuple[str, str, Fault]:
    # The rejected line shows the section's first row: name the record when it is another.
    if row is not section.first:
        message = f"{message} (record {row.record})"
    return CONTACTS_UPDATE_REJECTED, message, Fault(row.record, column, detail)


def _given(row: ContactRow, column: str) -> str:
    return quoted(row.values.get(column, ""))


def _shown(value: Value) -> str:
    """A stored value as a detail shows it."""
    if value is None:
        return "nothing"
    if isinstance(value, datetime):
        return quoted(value.isoformat())
    if isinstance(value, bool):
        return quoted("true" if value else "false")
    return quoted(str(value))
