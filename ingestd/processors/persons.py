"""Applying a Person Import to a company's ``persons`` table, a chunk at a time.

Per chunk: one query finds every existing person any row of the chunk names
(by any id, as identifier or as data); rows are then resolved in Python in file
order against that in-memory picture, so a later row sees what an earlier row
did; finally the chunk's creates go in with COPY and its updates with one
UPDATE … FROM a COPY-filled temp table. Row errors are values, raised here in
``_resolve`` in the order docs/formats.md fixes ("one error a row").
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ingestd import errors
from ingestd.apply_context import ApplyContext
from ingestd.errors import FileError, RowError, quoted
from ingestd.partner_files import open_partner_file
from ingestd.persons.carrier import CarrierResult
from ingestd.persons.custom_fields import FieldDefinition, convert, explain
from ingestd.persons.field_store import list_fields
from ingestd.persons.phones import explain_invalid_mdn, normalize_mdn
from ingestd.persons.reader import (
    IDENTIFYING,
    NO_IDENTIFYING_COLUMN_MESSAGE,
    Record,
    check_person_key,
    open_persons,
    parse_person_id,
)

ERR_NOT_FOUND = RowError(errors.PERSON_NOT_FOUND, errors.MSG_PERSON_NOT_FOUND)
ERR_CREATE = RowError(errors.PERSON_CREATE_REQUIRES, errors.MSG_PERSON_CREATE_REQUIRES,
                      detail="no mdn, vibes_device_id or external_person_id"
                             " to create a person with")
ERR_FIELD_NOT_FOUND = RowError(errors.CUSTOM_FIELD_NOT_FOUND, errors.MSG_CUSTOM_FIELD_NOT_FOUND)
ERR_MDN_CHANGE = RowError(errors.MDN_CHANGE_NOT_ALLOWED, errors.MSG_MDN_CHANGE_NOT_ALLOWED)
ERR_MDN_TAKEN = RowError(errors.MOBILE_PHONE_ALREADY_ASSIGNED,
                         errors.MSG_MOBILE_PHONE_ALREADY_ASSIGNED)
ERR_UNIQUE = RowError(errors.UNIQUE_VIOLATION, errors.MSG_UNIQUE_VIOLATION)


def _at(error: RowError, column: str, detail: str) -> RowError:
    """``error`` (a shared constant) for one row: the column at fault and what was wrong.
    Built only once a row is rejected, so accepted rows never pay for the words."""
    return RowError(error.error_class, error.message, column, detail)


def _person_id_detail(raw: str) -> str:
    if raw.isascii() and raw.isdigit() and raw.strip("0"):
        return f"{quoted(raw)} is larger than the largest person_id"
    return f"{quoted(raw)} is not a positive integer"


_COLUMNS = ("person_id", "person_key", "external_person_id", "mdn", "vibes_device_id",
            "carrier", "custom")


@dataclass
class Person:
    person_id: int
    person_key: str
    external_person_id: str | None
    mdn: str | None
    vibes_device_id: str | None
    carrier: str | None
    custom: dict[str, Any]
    new: bool = False
    dirty: bool = False


@dataclass
class _Row:
    """A record after the checks that need no database."""

    record: Record
    error: RowError | None = None
    by: str | None = None  # the identifying column that wins
    ident: Any = None  # its (parsed) value
    mdn: str | None = None  # E.164
    mdn_error: RowError | None = None
    ext: str | None = None
    device: str | None = None
    custom: dict[str, Any] = field(default_factory=dict)
    custom_error: RowError | None = None


class _Index:
    """The chunk's picture of the company's persons, by every unique id."""

    def __init__(self) -> None:
        self.by_id: dict[int, Person] = {}
        self.by_key: dict[str, Person] = {}
        self.by_ext: dict[str, Person] = {}
        self.by_mdn: dict[str, Person] = {}
        self.by_device: dict[str, Person] = {}

    def add(self, p: Person) -> None:
        self.by_id[p.person_id] = p
        self.by_key[p.person_key] = p
        if p.external_person_id:
            self.by_ext[p.external_person_id] = p
        if p.mdn:
            self.by_mdn[p.mdn] = p
        if p.vibes_device_id:
            self.by_device[p.vibes_device_id] = p

    def find(self, by: str, value: Any) -> Person | None:
        tables: dict[str, dict[Any, Person]] = {
            "person_id": self.by_id, "person_key": self.by_key,
            "external_person_id": self.by_ext, "mdn": self.by_mdn,
            "vibes_device_id": self.by_device,
        }
        return tables[by].get(value)


class PersonsProcessor:
    format = "persons"

    def apply(self, ctx: ApplyContext) -> None:
        with open_partner_file(ctx.path) as fh:
            reader = open_persons(fh, ctx.settings.max_line_bytes)
            ctx.columns = list(reader.fields)
            ctx.warnings.extend(reader.warnings)
            ctx.extra["delimiter"] = reader.delimiter
            ctx.extra["multi_select_delimiter"] = reader.multi_select_delimiter
            chunker = _Chunk(ctx, reader.fields, reader.multi_select_delimiter)
            for chunk in reader.chunks(ctx.settings.chunk_size):
                chunker.run(chunk)
                ctx.progress.advance(ctx.results.rows, fh.tell())


class _Chunk:
    def __init__(self, ctx: ApplyContext, fields: list[str], multi_delim: str) -> None:
        self.ctx = ctx
        self.conn: psycopg.Connection[Any] = ctx.conn
        self.fields = fields
        self.multi_delim = multi_delim
        self.region = ctx.company.default_region or ctx.settings.default_region
        self.table = sql.Identifier(ctx.company.schema, "persons")
        self.definitions: dict[str, FieldDefinition] = {
            d.name: d for d in list_fields(self.conn, ctx.company.id)}
        self.pos = {name: i for i, name in enumerate(fields)}
        self.custom_cols = [(i, name) for i, name in enumerate(fields) if name not in IDENTIFYING]
        self.temp_ready = False
        if not any(name in self.pos for name in IDENTIFYING):
            raise FileError(errors.INVALID_IMPORT_FILE_FORMAT, NO_IDENTIFYING_COLUMN_MESSAGE)

    # -- one chunk --------------------------------------------------------------------

    def run(self, records: list[Record]) -> None:
        rows = [self._prepare(r) for r in records]
        index = self._load([r for r in rows if r.error is None])
        lookups = self._carrier([r for r in rows if r.error is None], index)
        results = self.ctx.results
        for row in rows:
            error = row.error or self._resolve(row, index, lookups)
            if error is None:
                results.accept(row.record.number, row.record.values)
            else:
                results.reject(row.record.number, error, row.record.values)
        self._write(index)

    def _value(self, values: list[str], name: str) -> str:
        i = self.pos.get(name)
        return values[i].strip() if i is not None else ""

    def _prepare(self, record: Record) -> _Row:
        """Checks that need no database: shape, id syntax, mdn format, custom values."""
        row = _Row(record, error=record.error)
        if row.error:
            if not row.error.detail:
                # The reader's message is already the row's own reason (counts, CSV error).
                msg = row.error.message
                row.error = _at(row.error, "", msg[:1].lower() + msg[1:])
            return row
        v = record.values
        pid_raw = self._value(v, "person_id")
        key_raw = self._value(v, "person_key")
        pid = parse_person_id(pid_raw) if pid_raw else None
        if isinstance(pid, RowError):
            row.error = _at(pid, "person_id", _person_id_detail(pid_raw))
            return row
        key = check_person_key(key_raw) if key_raw else None
        if isinstance(key, RowError):
            row.error = _at(key, "person_key", f"{quoted(key_raw)} is not a lowercase UUID")
            return row
        row.ext = self._value(v, "external_person_id") or None
        row.device = self._value(v, "vibes_device_id") or None
        mdn_raw = self._value(v, "mdn")
        if mdn_raw:
            mdn = normalize_mdn(mdn_raw, self.region)
            if isinstance(mdn, RowError):
                row.mdn_error = _at(mdn, "mdn", explain_invalid_mdn(mdn_raw, self.region))
            else:
                row.mdn = mdn
        for by, value in (("person_id", pid), ("person_key", key), ("external_person_id", row.ext),
                          ("mdn", row.mdn or (mdn_raw or None)), ("vibes_device_id", row.device)):
            if value is not None:
                row.by, row.ident = by, value
                break
        if row.by is None:
            row.error = ERR_CREATE
            return row
        for i, name in self.custom_cols:
            raw = v[i]
            if raw == "":
                continue  # an empty cell never changes anything
            defn = self.definitions.get(name)
            if defn is None:
                row.custom_error = _at(ERR_FIELD_NOT_FOUND, name, f"no custom field named {name}")
                break
            value_or_error = convert(defn, raw, self.multi_delim)
            if isinstance(value_or_error, RowError):
                row.custom_error = _at(value_or_error, name, explain(defn, raw, self.multi_delim))
                break
            row.custom[name] = value_or_error
        return row

    def _load(self, rows: list[_Row]) -> _Index:
        """One query for every person any row names, by any of its ids."""
        ids: set[int] = set()
        keys: set[str] = set()
        exts: set[str] = set()
        mdns: set[str] = set()
        devices: set[str] = set()
        for r in rows:
            if r.by == "person_id":
                ids.add(r.ident)
            elif r.by == "person_key":
                keys.add(r.ident)
            if r.ext:
                exts.add(r.ext)
            if r.mdn:
                mdns.add(r.mdn)
            if r.device:
                devices.add(r.device)
        index = _Index()
        # One index lookup per id kind, unioned: an OR of ANYs would scan the table.
        query = sql.SQL(
            "WITH hit AS ("
            " SELECT person_id FROM {t} WHERE person_id = ANY(%s)"
            " UNION SELECT person_id FROM {t} WHERE person_key = ANY(%s::uuid[])"
            " UNION SELECT person_id FROM {t} WHERE external_person_id = ANY(%s)"
            " UNION SELECT person_id FROM {t} WHERE mdn = ANY(%s)"
            " UNION SELECT person_id FROM {t} WHERE vibes_device_id = ANY(%s))"
            " SELECT p.person_id, p.person_key::text, p.external_person_id, p.mdn,"
            " p.vibes_device_id, p.carrier, p.custom FROM {t} p JOIN hit USING (person_id)"
        ).format(t=self.table)
        for rec in self.conn.execute(query, (list(ids), list(keys), list(exts), list(mdns),
                                             list(devices))):
            index.add(Person(*rec))
        return index

    def _carrier(self, rows: list[_Row], index: _Index) -> dict[str, CarrierResult]:
        """Look up, in one batch, every mdn that may be new to its person.

        Done before resolving so the network calls of a chunk run concurrently; a few
        numbers whose rows are later rejected get looked up for nothing.
        """
        wanted = {r.mdn for r in rows if r.mdn and r.mdn not in index.by_mdn}
        return self.ctx.carrier.lookup_many(wanted) if wanted else {}

    def _resolve(self, row: _Row, index: _Index,
                 lookups: dict[str, CarrierResult]) -> RowError | None:
        """Decide one row against the chunk's picture; on success, change the picture."""
        assert row.by is not None
        person = index.find(row.by, row.ident) if row.by != "mdn" or row.mdn else None
        if person is None:
            if row.by in ("person_id", "person_key"):
                return _at(ERR_NOT_FOUND, row.by, f"no person with {row.by} {row.ident}")
            if not (row.mdn or row.device or row.ext or row.mdn_error):
                return ERR_CREATE
        if row.mdn_error:
            return row.mdn_error
        if row.custom_error:
            return row.custom_error
        if row.mdn:
            if person is not None and person.mdn and person.mdn != row.mdn:
                who = ("the person an earlier row created" if person.person_id < 0
                       else f"person {person.person_id}")
                return _at(ERR_MDN_CHANGE, "mdn", f"{who} already has mdn {person.mdn}")
            owner = index.by_mdn.get(row.mdn)
            if owner is not None and owner is not person:
                return _at(ERR_MDN_TAKEN, "mdn", f"mdn {row.mdn} belongs to another person")
        for column, value, table in (("external_person_id", row.ext, index.by_ext),
                                     ("vibes_device_id", row.device, index.by_device)):
            if value:
                owner = table.get(value)
                if owner is not None and owner is not person:
                    return _at(ERR_UNIQUE, column, f"{quoted(value)} belongs to another person")
        new_mdn = row.mdn if row.mdn and (person is None or person.mdn != row.mdn) else None
        carrier: str | None = None
        if new_mdn:
            looked = lookups.get(new_mdn)
            if looked is None:  # not expected: every candidate was looked up
                looked = self.ctx.carrier.lookup_many([new_mdn])[new_mdn]
            if looked.error is not None:
                # The shared cache keeps only class and message, so a cached result has no
                # detail; only permanent results are cached.
                return _at(looked.error, "mdn", looked.detail or (
                    f"mdn {new_mdn} is not a mobile on a valid carrier (an earlier lookup)"))
            carrier = looked.carrier
        if person is None:
            person = Person(person_id=0, person_key=str(uuid.uuid4()), external_person_id=None,
                            mdn=None, vibes_device_id=None, carrier=None, custom={}, new=True)
            person.person_id = -(len(index.by_id) + 1)  # real id assigned at write time
        # A changed external/device id frees the old one for a later row.
        if row.ext and person.external_person_id not in (None, row.ext):
            index.by_ext.pop(person.external_person_id or "", None)
        if row.device and person.vibes_device_id not in (None, row.device):
            index.by_device.pop(person.vibes_device_id or "", None)
        person.external_person_id = row.ext or person.external_person_id
        person.vibes_device_id = row.device or person.vibes_device_id
        if new_mdn:
            person.mdn, person.carrier = new_mdn, carrier
        if row.custom:
            person.custom = {**person.custom, **row.custom}
        person.dirty = True
        index.add(person)
        return None

    # -- writing --------------------------------------------------------------------

    def _write(self, index: _Index) -> None:
        dirty = {id(p): p for p in index.by_key.values() if p.dirty}.values()
        new = [p for p in dirty if p.new]
        changed = [p for p in dirty if not p.new]
        # Updates first: they may free an external or device id that a new person takes.
        if changed:
            if not self.temp_ready:
                self.conn.execute(sql.SQL(
                    "CREATE TEMP TABLE _persons_update ON COMMIT DROP AS"
                    " SELECT {c} FROM {t} WITH NO DATA").format(
                        t=self.table, c=sql.SQL(", ").join(map(sql.Identifier, _COLUMNS))))
                self.temp_ready = True
            else:
                self.conn.execute("TRUNCATE _persons_update")
            self._copy(sql.SQL("COPY _persons_update FROM STDIN"), changed)
            self.conn.execute(sql.SQL(
                "UPDATE {t} p SET external_person_id = u.external_person_id, mdn = u.mdn,"
                " vibes_device_id = u.vibes_device_id, carrier = u.carrier, custom = u.custom,"
                " updated_at = now() FROM _persons_update u WHERE p.person_id = u.person_id"
            ).format(t=self.table))
        if new:
            ids = [r[0] for r in self.conn.execute(
                "SELECT nextval(pg_get_serial_sequence(%s, 'person_id'))"
                " FROM generate_series(1, %s)",
                (self.table.as_string(self.conn), len(new)))]
            for p, pid in zip(new, ids, strict=True):
                p.person_id = pid
            self._copy(sql.SQL("COPY {t} ({c}) FROM STDIN").format(
                t=self.table, c=sql.SQL(", ").join(map(sql.Identifier, _COLUMNS))), new)

    def _copy(self, statement: sql.SQL | sql.Composed, persons: Iterable[Person]) -> None:
        with self.conn.cursor() as cur, cur.copy(statement) as copy:
            for p in persons:
                copy.write_row((p.person_id, p.person_key, p.external_person_id, p.mdn,
                                p.vibes_device_id, p.carrier, json.dumps(p.custom)))
