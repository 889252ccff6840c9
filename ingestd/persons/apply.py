"""Applying a Person Import, a chunk at a time: the rules of its rows (no SQL here).

Per chunk: each record is checked alone (shape, id syntax, mdn, custom values: the
kernels, else ``RowChecks``), and ``Triage`` sorts the rows decided in bulk from those
resolved one at a time; one lookup (``PersonsStore.lookup``) finds every stored person
any row names, by any id, as identifier or as data; rows are then resolved in Python in
file order against that picture (``Rules``), so a later row sees what an earlier row did,
and each row's outcome is recorded at once; finally the chunk's creates and changes go to
``PersonsStore.write``. Row errors are values, raised in ``Rules.resolve`` in the order
FORMATS.md fixes ("one error a row").

Lookups and writes run on a database thread of the worker's own, in file order, while this
thread checks the next chunk's records or resolves the current one: PostgreSQL and
Python work at the same time (psycopg releases the GIL while it waits).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ingestd import columns, errors
from ingestd.apply_context import ApplyContext
from ingestd.batch_loop import run_batches
from ingestd.db.worker import DatabaseThread
from ingestd.errors import RowError, quoted
from ingestd.partner_files import open_partner_file
from ingestd.persons.bulk_updates import Updates, ext_only, named_people, no_updates, updates_of
from ingestd.persons.carrier import CarrierResult, OfflineCarrierLookup
from ingestd.persons.custom_fields import FieldDefinition, convert, explain
from ingestd.persons.field_store import list_fields
from ingestd.persons.kernels import ID_COLUMNS, Bulk, Kernels, no_bulk
from ingestd.persons.phones import explain_invalid_mdn, normalize_mdn
from ingestd.persons.reader import (
    IDENTIFYING,
    Record,
    check_person_key,
    open_persons,
    parse_person_id,
)
from ingestd.persons.store import Ids, Person, PersonsStore

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


def lookup_carriers(ctx: ApplyContext, numbers: set[str]) -> dict[str, CarrierResult]:
    """The carrier of each number (the context's lookup caches where it should)."""
    return ctx.carrier.lookup_many(numbers, alive=ctx.progress.alive)


@dataclass(slots=True)
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


_ROW_ATTR = {"external_person_id": "ext", "mdn": "mdn", "vibes_device_id": "device"}


@dataclass(slots=True)
class _Chunk:
    """A chunk's records after the checks that need no database: rows decided in bulk
    (``bulk``) and rows decided one at a time (``slow``, by position, in file order)."""

    records: list[Record]
    slow: list[tuple[int, _Row]]
    bulk: Bulk  # creates
    updates: Updates = field(default_factory=no_updates)


class _Picture:
    """The chunk's picture of the company's persons, by every unique id."""

    def __init__(self, stored: list[Person]) -> None:
        self.by_id: dict[int, Person] = {}
        self.by_key: dict[str, Person] = {}
        self.by_ext: dict[str, Person] = {}
        self.by_mdn: dict[str, Person] = {}
        self.by_device: dict[str, Person] = {}
        self.tables: dict[str, dict[Any, Person]] = {
            "person_id": self.by_id, "person_key": self.by_key,
            "external_person_id": self.by_ext, "mdn": self.by_mdn,
            "vibes_device_id": self.by_device,
        }
        self.changed: list[Person] = []
        self.new: list[Person] = []
        self.freed: set[str] = set()  # external and device ids given up in this chunk
        self.handoff = False  # an existing person took an id another one gave up
        for p in stored:
            self.add(p)

    def written(self) -> None:
        """What the picture changed is stored now: its people are stored ones from here on
        (their real ids given), and later changes are written anew."""
        for p in self.changed:
            p.has_custom = p.has_custom or bool(p.patch)
        for p in (*self.changed, *self.new):
            p.new = p.touched = p.ids_changed = False
            p.patch = {}
        for p in self.new:
            self.add(p)
        self.changed, self.new = [], []
        self.freed = set()
        self.handoff = False

    def add(self, p: Person) -> None:
        self.by_id[p.person_id] = p
        if p.person_key:
            self.by_key[p.person_key] = p
        if p.external_person_id:
            self.by_ext[p.external_person_id] = p
        if p.mdn:
            self.by_mdn[p.mdn] = p
        if p.vibes_device_id:
            self.by_device[p.vibes_device_id] = p


class RowChecks:
    """A record's checks that need no database: shape, id syntax, mdn format, custom
    values (the per-cell code every row the kernels do not pass gets)."""

    def __init__(self, fields: list[str], region: str, multi_delim: str,
                 definitions: dict[str, FieldDefinition]) -> None:
        self.region = region
        self.multi_delim = multi_delim
        self.definitions = definitions
        self.custom_cols = [(i, name) for i, name in enumerate(fields) if name not in IDENTIFYING]
        # Where each id column is, so a row reads its ids without a lookup by name.
        pos = {name: i for i, name in enumerate(fields)}
        self.id_pos = tuple(pos.get(name) for name in IDENTIFYING)

    def prepare(self, record: Record) -> _Row:
        row = _Row(record, error=record.error)
        if row.error:
            if not row.error.detail:
                # The reader's message is already the row's own reason (counts, CSV error).
                msg = row.error.message
                row.error = _at(row.error, "", msg[:1].lower() + msg[1:])
            return row
        self._identify(row)
        if row.error is None:
            self._convert_custom(row)
        return row

    def _identify(self, row: _Row) -> None:
        """The row's ids, and which one names its person (``by``, ``ident``)."""
        v = row.record.values
        pid_raw, key_raw, ext_raw, mdn_raw, device_raw = [
            "" if i is None else v[i].strip() for i in self.id_pos]
        pid = parse_person_id(pid_raw) if pid_raw else None
        if isinstance(pid, RowError):
            row.error = _at(pid, "person_id", _person_id_detail(pid_raw))
            return
        key = check_person_key(key_raw) if key_raw else None
        if isinstance(key, RowError):
            row.error = _at(key, "person_key", f"{quoted(key_raw)} is not a lowercase UUID")
            return
        row.ext = ext_raw or None
        row.device = device_raw or None
        if mdn_raw:
            mdn = normalize_mdn(mdn_raw, self.region)
            if isinstance(mdn, RowError):
                row.mdn_error = _at(mdn, "mdn", explain_invalid_mdn(mdn_raw, self.region))
            else:
                row.mdn = mdn
        # The first id given wins (FORMATS.md's order, IDENTIFYING's).
        if pid is not None:
            row.by, row.ident = "person_id", pid
        elif key is not None:
            row.by, row.ident = "person_key", key
        elif row.ext:
            row.by, row.ident = "external_person_id", row.ext
        elif mdn_raw:
            row.by, row.ident = "mdn", row.mdn or mdn_raw
        elif row.device:
            row.by, row.ident = "vibes_device_id", row.device
        else:
            row.error = ERR_CREATE

    def _convert_custom(self, row: _Row) -> None:
        """The row's custom values (``custom``), or the first that fails (``custom_error``)."""
        v = row.record.values
        for i, name in self.custom_cols:
            raw = v[i]
            if raw == "":
                continue  # an empty cell never changes anything
            defn = self.definitions.get(name)
            if defn is None:
                row.custom_error = _at(ERR_FIELD_NOT_FOUND, name, f"no custom field named {name}")
                return
            value_or_error = convert(defn, raw, self.multi_delim)
            if isinstance(value_or_error, RowError):
                row.custom_error = _at(value_or_error, name, explain(defn, raw, self.multi_delim))
                return
            row.custom[name] = value_or_error


class Triage:
    """Which of a chunk's rows the kernels decide in bulk and which go row by row: the
    rows the kernels do not pass, and those that share an id value with another row of
    the chunk or with a stored person."""

    def __init__(self, kernels: Kernels, rows: RowChecks, chunk_rows: int) -> None:
        self.kernels = kernels
        self.rows = rows
        self.worth = columns.Worth(chunk_rows)  # whether the next chunk's kernels are worth running

    def check(self, records: list[Record]) -> _Chunk:
        """A chunk's checks that need no database: its kernels first; the rows they do not
        pass, and rows that share an id value with another row of the chunk, row by row."""
        if self.worth(len(records)):
            bulk, others = self.kernels.check(records)
        else:
            bulk, others = no_bulk(), list(range(len(records)))
        slow = [(i, self.rows.prepare(records[i])) for i in others]
        chunk = _Chunk(records, slow, bulk)
        if len(bulk):
            shared = None
            for name in ID_COLUMNS:
                col = bulk.values(name)
                counts = pc.value_counts(col)
                repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
                named = {v for _, r in slow if r.error is None
                         and (v := getattr(r, _ROW_ATTR[name]))}
                names = pa.concat_arrays([repeated, pa.array(list(named), type=col.type)])
                hit = pc.is_in(getattr(bulk, name), value_set=names)
                shared = hit if shared is None else pc.or_(shared, hit)
            assert shared is not None
            self.demote(chunk, shared)
        return chunk

    def demote(self, chunk: _Chunk, mask: pa.Array) -> None:
        """Take the bulk rows of ``mask`` out of the bulk, to be resolved row by row."""
        self._demote_rows(chunk, chunk.bulk.index.filter(mask).to_pylist())
        chunk.bulk = chunk.bulk.keep(pc.invert(mask))

    def _demote_rows(self, chunk: _Chunk, which: list[int]) -> None:
        if which:
            chunk.slow.extend((i, self.rows.prepare(chunk.records[i])) for i in which)
            chunk.slow.sort(key=lambda pair: pair[0])

    def chunk_ids(self, chunk: _Chunk) -> Ids:
        """Every id the chunk's rows name (``ids``), the bulk's included."""
        ids = self.ids([r for _, r in chunk.slow])
        for name in ID_COLUMNS if len(chunk.bulk) else ():
            text = columns.json_array(getattr(chunk.bulk, name))
            if text is not None:
                ids.json[name] = text
        return ids

    def unstored(self, chunk: _Chunk, stored: list[Person]) -> None:
        """Bulk rows that name a stored person (the anti-join): updates by
        external_person_id alone stay in bulk (``bulk_updates``) unless another row of the
        chunk names that person; every other one goes row by row."""
        if not len(chunk.bulk) or not stored:
            return
        bulk = chunk.bulk
        taken = None
        for name in ID_COLUMNS:
            values = [v for p in stored if (v := getattr(p, name))]
            hit = pc.is_in(getattr(bulk, name), value_set=pa.array(values, type=bulk.mdn.type))
            taken = hit if taken is None else pc.or_(taken, hit)
        assert taken is not None
        updating = pc.and_(taken, ext_only(bulk))
        others = pc.and_(taken, pc.invert(updating))
        updates = updates_of(bulk.keep(updating), stored)
        chunk.bulk = bulk.keep(pc.invert(updating))
        self.demote(chunk, others.filter(pc.invert(updating)))
        # Every row left row by row is known now: an update whose person one of them names
        # joins them, so the two are decided in file order.
        clash = pc.is_in(updates.person_id,
                         value_set=named_people((r for _, r in chunk.slow), stored))
        chunk.updates = updates.keep(pc.invert(clash))
        self._demote_rows(chunk, updates.index.filter(clash).to_pylist())
        # Mostly rows about stored people that cannot be decided in bulk: the kernels'
        # work is thrown away, so the next chunks go row by row.
        self.worth.wasted((pc.sum(others).as_py() or 0) + len(updates) - len(chunk.updates),
                          len(bulk))

    @staticmethod
    def ids(rows: list[_Row]) -> Ids:
        """Every id the rows name, as identifier or as data (rows that failed are left out)."""
        ids = Ids()
        for r in rows:
            if r.error is not None:
                continue
            if r.by == "person_id":
                ids.person_ids.add(r.ident)
            elif r.by == "person_key":
                ids.person_keys.add(r.ident)
            if r.ext:
                ids.external_ids.add(r.ext)
            if r.mdn:
                ids.mdns.add(r.mdn)
            if r.device:
                ids.device_ids.add(r.device)
        return ids


class Rules:
    """Each row decided against the chunk's picture of the company's persons, in file
    order: the row errors that need the stored persons are raised in ``resolve``."""

    def __init__(self, ctx: ApplyContext, created_here: Callable[[int], bool],
                 offline: OfflineCarrierLookup | None) -> None:
        self.ctx = ctx
        self.created_here = created_here  # whether an earlier row created this person_id
        # Offline, a +1 mobile number's lookup is known without asking (no carrier name).
        self.offline = offline

    def carrier_error(self, mdn: str, looked: CarrierResult) -> RowError | None:
        if looked.error is None:
            return None
        # The shared cache keeps only class and message, so a cached result has no
        # detail; only permanent results are cached.
        return _at(looked.error, "mdn", looked.detail or (
            f"mdn {mdn} is not a mobile on a valid carrier (an earlier lookup)"))

    @staticmethod
    def new_mdns(rows: list[_Row], picture: _Picture) -> set[str]:
        """Every mdn that may be new to its person, to look up in one batch before resolving
        (so a remote lookup's calls run concurrently; a few rows that are rejected later
        get looked up for nothing)."""
        return {r.mdn for r in rows if r.error is None and r.mdn and r.mdn not in picture.by_mdn}

    @staticmethod
    def _move(person: Person, picture: _Picture, value: str, old: str | None,
              table: dict[Any, Person]) -> None:
        if old is not None:
            table.pop(old, None)
            picture.freed.add(old)
        if not person.new and value in picture.freed:
            picture.handoff = True
        person.ids_changed = True

    def resolve(self, row: _Row, picture: _Picture,
                lookups: dict[str, CarrierResult]) -> RowError | None:
        """Decide one row against the chunk's picture; on success, change the picture."""
        assert row.by is not None
        person = picture.tables[row.by].get(row.ident) if row.by != "mdn" or row.mdn else None
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
                who = ("the person an earlier row created"
                       if person.person_id < 0 or self.created_here(person.person_id)
                       else f"person {person.person_id}")
                return _at(ERR_MDN_CHANGE, "mdn", f"{who} already has mdn {person.mdn}")
            owner = picture.by_mdn.get(row.mdn)
            if owner is not None and owner is not person:
                return _at(ERR_MDN_TAKEN, "mdn", f"mdn {row.mdn} belongs to another person")
        for column, value, table in (("external_person_id", row.ext, picture.by_ext),
                                     ("vibes_device_id", row.device, picture.by_device)):
            if value:
                owner = table.get(value)
                if owner is not None and owner is not person:
                    return _at(ERR_UNIQUE, column, f"{quoted(value)} belongs to another person")
        new_mdn = row.mdn if row.mdn and (person is None or person.mdn != row.mdn) else None
        carrier: str | None = None
        if new_mdn:
            looked = lookups.get(new_mdn)
            if looked is None:  # not expected: every candidate was looked up
                looked = lookup_carriers(self.ctx, {new_mdn})[new_mdn]
            error = self.carrier_error(new_mdn, looked)
            if error is not None:
                return error
            carrier = looked.carrier
        if person is None:
            # Real id and key are assigned when the chunk is written.
            person = Person(-(len(picture.by_id) + 1), None, None, None, None, None, new=True)
            picture.new.append(person)
        elif not person.touched:
            picture.changed.append(person)
        person.touched = True
        self._take(person, picture, row, new_mdn, carrier)
        return None

    @staticmethod
    def _take(person: Person, picture: _Picture, row: _Row, new_mdn: str | None,
              carrier: str | None) -> None:
        """Give ``person`` the row's ids and values; a changed external or device id frees
        the old one for a later row."""
        if row.ext and row.ext != person.external_person_id:
            Rules._move(person, picture, row.ext, person.external_person_id, picture.by_ext)
            person.external_person_id = row.ext
        if row.device and row.device != person.vibes_device_id:
            Rules._move(person, picture, row.device, person.vibes_device_id, picture.by_device)
            person.vibes_device_id = row.device
        if new_mdn:
            person.mdn, person.carrier = new_mdn, carrier
            person.ids_changed = True
        if row.custom:
            person.patch.update(row.custom)
        picture.add(person)


def _triage_and_rules(ctx: ApplyContext, fields: list[str], multi_delim: str,
                      store: PersonsStore) -> tuple[Triage, Rules]:
    """A file's triage and rules, for its fields and the company's custom fields."""
    region = ctx.company.default_region or ctx.settings.default_region
    definitions = {d.name: d for d in list_fields(ctx.conn, ctx.company.id)}
    kernels = Kernels(fields, region, multi_delim, definitions, IDENTIFYING)
    offline = (ctx.carrier if isinstance(ctx.carrier, OfflineCarrierLookup)
               and kernels.mdn_kernel.country_code == 1 else None)
    return (Triage(kernels, RowChecks(fields, region, multi_delim, definitions),
                   ctx.settings.chunk_size),
            Rules(ctx, store.created_here, offline))


class PersonsProcessor:
    format = "persons"

    def apply(self, ctx: ApplyContext) -> None:
        with open_partner_file(ctx.path) as fh:
            reader = open_persons(fh, ctx.settings.max_line_bytes)
            ctx.columns = list(reader.fields)
            ctx.warnings.extend(reader.warnings)
            ctx.extra["delimiter"] = reader.delimiter
            ctx.extra["multi_select_delimiter"] = reader.multi_select_delimiter
            store = PersonsStore(ctx.conn, ctx.company.schema)
            triage, rules = _triage_and_rules(ctx, reader.fields,
                                              reader.multi_select_delimiter, store)
            with _Database(store) as db:
                ctx.results.send_with(db.send)
                try:
                    run_batches(ctx, _Steps(ctx, triage, rules, db),
                                reader.chunks(ctx.settings.chunk_size), lambda: fh.tell())
                finally:
                    ctx.results.send_with(None)

    @staticmethod
    def _resolve(ctx: ApplyContext, rules: Rules, db: _Database, chunk: _Chunk,
                 stored: list[Person]) -> None:
        """Resolve the chunk's rows against the people their lookup found, and queue the
        outcome's write.

        A row naming a person_id that a person created by an earlier row of the chunk may
        have (ids are given at write time) first has what is pending written, so it finds
        that person as it would had each row been applied alone; then the same picture
        goes on, with the people just written as stored ones. Bulk rows create one person
        each, with ids nobody else in the chunk or the table has: only their mdn's lookup
        can still reject them.
        """
        results = ctx.results
        picture = _Picture(stored)
        bulk_at = chunk.bulk.index.to_pylist()
        wanted = rules.new_mdns([r for _, r in chunk.slow], picture)
        if rules.offline is None:
            wanted.update(chunk.bulk.values("mdn").to_pylist())
        lookups = lookup_carriers(ctx, wanted) if wanted else {}
        next_id: int | None = None
        written = 0  # rows before this position have been written
        # person_ids decided as no pending create's, with how many creates came before
        absent: list[tuple[int, int]] = []
        for i, row in chunk.slow:
            if row.error is None and row.by == "person_id" and row.ident not in picture.by_id:
                pending = len(picture.new) + (
                    bisect.bisect_left(bulk_at, i) - bisect.bisect_left(bulk_at, written))
                if pending:
                    next_id = db.next_id() if next_id is None else next_id
                    # The pending creates get the next ids of the sequence, as nobody else
                    # takes any while the company is held (the write checks it did not).
                    if next_id <= row.ident < next_id + pending:
                        PersonsProcessor._write(rules, chunk, db, picture, written, i,
                                                lookups, results, absent).result()
                        picture.written()
                        written, next_id, absent = i, None, []
                    else:
                        absent.append((row.ident, pending))
                if row.ident not in picture.by_id and rules.created_here(row.ident):
                    # A person a bulk row of this chunk created: not in the picture.
                    for p in db.lookup(Ids(person_ids={row.ident})).result():
                        picture.add(p)
            created = len(picture.new)
            error = row.error or rules.resolve(row, picture, lookups)
            if error is None:
                if len(picture.new) > created:
                    picture.new[-1].row = i
                results.accept(row.record.number, row.record.values)
            else:
                results.reject(row.record.number, error, row.record.values)
        if len(chunk.updates):
            results.accept_many(pc.add(chunk.updates.index, chunk.records[0].number))
        PersonsProcessor._write(rules, chunk, db, picture, written, len(chunk.records),
                                lookups, results, absent, chunk.updates)

    @staticmethod
    def _write(rules: Rules, chunk: _Chunk, db: _Database, picture: _Picture, start: int,
               stop: int, lookups: dict[str, CarrierResult], results: Any,
               absent: list[tuple[int, int]], updates: Updates | None = None) -> Future[None]:
        """Queue the write of the picture's changes and of the bulk rows from position
        ``start`` to ``stop``; ``absent``: (person_id, k) for rows told that none of the
        first k new people has it; ``updates``: the chunk's bulk updates (their people
        are nobody else's in the chunk, so they go with any of its writes)."""
        bulk = chunk.bulk
        if start or stop < len(chunk.records):
            bulk = bulk.keep(pc.and_(pc.greater_equal(bulk.index, start),
                                     pc.less(bulk.index, stop)))
        bulk = PersonsProcessor._bulk_carriers(rules, chunk, bulk, lookups, results)
        return db.write(picture.changed, picture.new, picture.handoff, bulk, absent, updates)

    @staticmethod
    def _bulk_carriers(rules: Rules, chunk: _Chunk, bulk: Bulk,
                       lookups: dict[str, CarrierResult], results: Any) -> Bulk:
        """The bulk rows' outcomes: each creates its person, unless its mdn's lookup fails;
        returns the creates, each with its carrier."""
        if not len(bulk):
            return bulk
        records = chunk.records
        if rules.offline is not None:
            rules.offline.nanp_mobiles(len(bulk) - bulk.mdn.null_count)
            # Its carrier stays null: phonenumbers names none for NANP numbers.
        else:
            carriers, rejected = [], []
            for at, mdn in zip(bulk.index.to_pylist(), bulk.mdn.to_pylist(), strict=True):
                looked = lookups[mdn] if mdn is not None else None
                error = rules.carrier_error(mdn, looked) if looked and mdn else None
                if error is not None:
                    record = records[at]
                    results.reject(record.number, error, record.values)
                carriers.append(looked.carrier if looked else None)
                rejected.append(error is not None)
            bulk.carrier = pa.array(carriers, type=bulk.mdn.type)
            if any(rejected):
                bulk = bulk.keep(pc.invert(pa.array(rejected)))
        # Records are numbered one after another within a chunk.
        results.accept_many(pc.add(bulk.index, records[0].number))
        return bulk


class _Steps:
    """A Person Import's steps in the batch loop (``ingestd.batch_loop``)."""

    def __init__(self, ctx: ApplyContext, triage: Triage, rules: Rules,
                 db: _Database) -> None:
        self.ctx, self.triage, self.rules, self.db = ctx, triage, rules, db

    def check(self, records: list[Record]) -> _Chunk:
        return self.triage.check(records)

    def look_up(self, chunk: _Chunk) -> Future[list[Person]]:
        return self.db.lookup(self.triage.chunk_ids(chunk))

    def resolve(self, chunk: _Chunk, stored: list[Person]) -> None:
        self.triage.unstored(chunk, stored)
        PersonsProcessor._resolve(self.ctx, self.rules, self.db, chunk, stored)


class _Database(DatabaseThread):
    """The file's connection, used by one thread of its own, in the order asked (row
    results' batches too, through ``RowResults.send_with``)."""

    def __init__(self, store: PersonsStore) -> None:
        super().__init__("persons-db")
        self.store = store

    def lookup(self, ids: Ids) -> Future[list[Person]]:
        return self.run(self.store.lookup, ids)

    def write(self, changed: list[Person], new: list[Person], handoff: bool,
              bulk: Bulk, absent: list[tuple[int, int]],
              updates: Updates | None) -> Future[None]:
        return self.run(self.store.write, changed, new, handoff, bulk, absent, updates)

    def next_id(self) -> int:
        return self.run(self.store.next_id).result()
