"""Subject contacts CSV (docs/formats.md section 2): header check, typed values, sections.

A file is one header row and data rows. Contiguous rows with the same non-blank
``responseTrackingCode`` form a *section* (one contact, one treatment a row). This
module knows nothing of the database: it streams the file, groups rows into
sections and gives each section its first validation error (or ``None``). Whether a
section creates or updates a contact is the processor's business.

Decisions where docs/formats.md is silent (documented here and in the report):

- Required non-blank columns: ``responseTrackingCode`` (the source says so),
  ``subjectId`` (a contact is about a subject) and ``treatmentId`` (it keys the
  treatment that updates are matched by). Any other column may be blank.
- ``creationTimeStamp`` is treated as a contact-level column: it must agree across
  the rows of a section, like ``responseTrackingCode``…``pathTraversed``.
- ``ruleFired`` is "a 0/1 string": one or more ``0``/``1`` digits (the example has
  ``00010`` and ``111101``), or blank.
- Timestamps: ``YYYY-MM-DDTHH:MM[:SS[.fraction]]`` then ``Z``, ``±HH``, ``±HHMM`` or
  ``±HH:MM``; a value without an offset is UTC (the format's values are UTC). A
  fraction finer than microseconds is truncated (PostgreSQL's precision).
- Booleans: ``true``/``false``, case-insensitive. Blank means null.
- ``objectVariables``: tuples split on ``;``, each exactly ``name~~~value~~~dataType``
  with a non-empty name and dataType (the value may be empty).
- Header names are trimmed of spaces; a UTF-8 byte-order mark is tolerated. An
  unknown or repeated column name is a global error (silently dropping a column
  would lose data). ``id``/``ID`` (any case) is ignored.
- Empty lines are skipped and not counted as records.
- No read holds more than ``max_line_bytes`` (``formats.bounded``). A data record
  (its lines, line ends included) longer than that is rejected as a section of its
  own (its code is not read); it is read past to its true end (quotes followed),
  so later records keep their numbers. A longer header row is a global error.
- Rows of one section must not repeat a ``treatmentId`` (treatments are keyed by it).
- A NUL character in any field is invalid (PostgreSQL text cannot hold it).
- Messages name the failing record when it is not the section's first row (the
  rejected line shows only the first row).
"""

from __future__ import annotations

import io
import operator
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from enum import Enum
from pathlib import Path
from typing import BinaryIO, NamedTuple

from ingestd.bounded_csv import (
    DEFAULT_MAX_LINE_BYTES,
    BoundedCsv,
    NotUtf8,
    Oversize,
    Unparsable,
)
from ingestd.errors import CONTACTS_GLOBAL, FileError, quoted
from ingestd.partner_files import open_partner_file

# A typed cell: text, boolean, timestamp, or None for a blank cell.
Value = str | bool | datetime | None


class Kind(Enum):
    TEXT = "text"
    TIMESTAMP = "timestamp"
    BOOLEAN = "boolean"
    RULE_FIRED = "rule_fired"
    OBJECT_VARIABLES = "object_variables"


class Level(Enum):
    CONTACT = "contact"  # repeated on every row of a section
    TREATMENT = "treatment"  # one treatment a row


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    level: Level
    kind: Kind
    immutable: bool  # docs/formats.md's list: must be identical when a contact is updated
    required: bool = False  # must be non-blank


_C, _T = Level.CONTACT, Level.TREATMENT

# In the documented header order. Immutable = exactly docs/formats.md's list.
COLUMNS: tuple[Column, ...] = (
    Column("creationTimeStamp", _C, Kind.TIMESTAMP, immutable=True),
    Column("responseTrackingCode", _C, Kind.TEXT, immutable=True, required=True),
    Column("subjectId", _C, Kind.TEXT, immutable=True, required=True),
    Column("subjectLevel", _C, Kind.TEXT, immutable=True),
    Column("excludeFromContactRule", _C, Kind.BOOLEAN, immutable=False),
    Column("conclusionResponseValue", _C, Kind.TEXT, immutable=False),
    Column("conclusionResponseType", _C, Kind.TEXT, immutable=False),
    Column("objectUri", _C, Kind.TEXT, immutable=True),
    Column("objectRevisionId", _C, Kind.TEXT, immutable=True),
    Column("objectType", _C, Kind.TEXT, immutable=True),
    Column("objectVariables", _C, Kind.OBJECT_VARIABLES, immutable=True),
    Column("receiverId", _C, Kind.TEXT, immutable=True),
    Column("receiverRole", _C, Kind.TEXT, immutable=True),
    Column("channel", _C, Kind.TEXT, immutable=True),
    Column("ruleFired", _C, Kind.RULE_FIRED, immutable=True),
    Column("pathTraversed", _C, Kind.TEXT, immutable=True),
    Column("abTests", _C, Kind.TEXT, immutable=True),
    Column("treatmentId", _T, Kind.TEXT, immutable=True, required=True),
    Column("treatmentRevisionId", _T, Kind.TEXT, immutable=True),
    Column("treatmentGroupId", _T, Kind.TEXT, immutable=True),
    Column("treatmentGroupRevisionId", _T, Kind.TEXT, immutable=True),
    Column("objectNodeId", _T, Kind.TEXT, immutable=True),
    Column("presented", _T, Kind.BOOLEAN, immutable=False),
    Column("presentedTimeStamp", _T, Kind.TIMESTAMP, immutable=False),
    Column("respondedTimeStamp", _T, Kind.TIMESTAMP, immutable=False),
    Column("responseValue", _T, Kind.TEXT, immutable=False),
    Column("responseType", _T, Kind.TEXT, immutable=False),
    Column("responseChannel", _T, Kind.TEXT, immutable=False),
)
COLUMN_BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
OPTIONAL_COLUMNS = frozenset({"abTests"})  # the API page adds it; older exports lack it
CODE = "responseTrackingCode"
TREATMENT_ID = "treatmentId"

# The SAS API's own wording (formats/sas-example-rejected.csv), reused verbatim.
OBJECT_VARIABLES_MESSAGE = (
    "The value for the objectVariables column is not proper. It must be zero or more "
    "groups of name~~~value~~~dataType tuple using semicolon as the delimiter."
)
BLANK_CODE_MESSAGE = "The responseTrackingCode column cannot be blank."
IF_UNMODIFIED_SINCE = "if-unmodified-since"
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP field name (RFC 9110)


@dataclass(slots=True)  # not frozen: a frozen dataclass is slower to make, row after row
class ContactRow:
    """One data row: its record number, its fields as given, and them by column name."""

    record: int
    fields: list[str]
    index: dict[str, int] | None = None  # where the known columns are; None: wrong width

    @property
    def values(self) -> dict[str, str]:
        """Known columns only; empty when the field count is wrong (made when asked: the
        import itself reads the fields by position)."""
        if self.index is None:
            return {}
        return {name: self.fields[i] for name, i in self.index.items()}


# A section's records as read: (record number, its fields or that it was too long).
RawSection = list[tuple[int, list[str] | Oversize]]


class Fault(NamedTuple):
    """What was wrong with a rejected section, for the partner's errors.csv: the record
    at fault, the column (empty when the row as a whole is wrong), and the detail."""

    record: int
    column: str
    detail: str


class _Problem(NamedTuple):
    """A row check's verdict: the API's message, the column at fault, the detail."""

    message: str
    column: str
    detail: str


def _bad_cell(message: str, column: str, raw: str) -> _Problem:
    return _Problem(message, column, f"{column} is {quoted(raw)}" if raw.strip()
                    else f"{column} is blank")


@dataclass(slots=True)
class Section:
    """Contiguous rows of one contact; ``error`` is the first validation error, if any.

    For a valid section, ``contact`` holds the typed contact-level values (only the
    columns the header has) and ``treatments`` one typed dict a row, in row order.
    """

    code: str
    rows: list[ContactRow] = field(default_factory=list)
    error: str | None = None
    fault: Fault | None = None  # with ``error``: the record at fault, its column, what was wrong
    contact: dict[str, Value] = field(default_factory=dict)
    treatments: list[dict[str, Value]] = field(default_factory=list)

    @property
    def first(self) -> ContactRow:
        return self.rows[0]


# --- values -------------------------------------------------------------------------

_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?"
    r"(Z|[+-]\d{2}(?::?\d{2})?)?",
    re.ASCII,
)
_RULE_FIRED = re.compile(r"[01]+", re.ASCII)


def parse_timestamp(text: str) -> datetime | None:
    """An ISO-8601 timestamp as an aware datetime (no offset = UTC); None if invalid."""
    m = _TIMESTAMP.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = m.groups()
    micro = int((fraction or "")[:6].ljust(6, "0"))
    try:
        return datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second or 0),
            micro, tzinfo=_zone(zone),
        )
    except ValueError:  # not a calendar date or time, or an offset of 24h or more
        return None


def _zone(zone: str | None) -> timezone:
    if zone is None or zone == "Z":
        return UTC
    digits = zone[1:].replace(":", "")
    delta = timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0))
    return timezone(-delta if zone[0] == "-" else delta)


def _object_variables_ok(text: str) -> bool:
    for group in text.split(";"):
        parts = group.split("~~~")
        if len(parts) != 3 or not parts[0] or not parts[2]:
            return False
    return True


def _typed(column: Column, raw: str) -> tuple[Value, str | None]:
    """The cell's typed value, or an error message."""
    if "\x00" in raw:
        return None, f"The value for the {column.name} column must not contain a NUL character."
    if not raw.strip():
        if column.required:
            return None, f"The {column.name} column cannot be blank."
        return None, None
    kind = column.kind
    if kind is Kind.TIMESTAMP:
        stamp = parse_timestamp(raw)
        if stamp is None:
            return None, (
                f"The value for the {column.name} column is not proper. It must be an "
                "ISO-8601 timestamp such as 2018-05-13T15:02:40.719Z."
            )
        return stamp, None
    if kind is Kind.BOOLEAN:
        lowered = raw.lower()
        if lowered not in ("true", "false"):
            return None, (
                f"The value for the {column.name} column is not proper. It must be true or false."
            )
        return lowered == "true", None
    if kind is Kind.RULE_FIRED and not _RULE_FIRED.fullmatch(raw):
        return None, (
            "The value for the ruleFired column is not proper. It must be a string of 0 "
            "and 1 digits."
        )
    if kind is Kind.OBJECT_VARIABLES and not _object_variables_ok(raw):
        return None, OBJECT_VARIABLES_MESSAGE
    return raw, None


_CACHED = 64  # longest cell whose verdict is remembered (bounds the cache's memory)
_CACHE_ENTRIES = 4096


class _Typer:
    """``_typed`` for one column, remembering recent verdicts on short cells: a file
    repeats its timestamps, booleans and object variables on row after row."""

    __slots__ = ("cache", "column", "text")

    def __init__(self, column: Column) -> None:
        self.column = column
        self.text = column.kind is Kind.TEXT  # a text cell is itself: nothing to remember
        self.cache: dict[str, tuple[Value, str | None]] = {}

    def __call__(self, raw: str) -> tuple[Value, str | None]:
        if self.text:
            if "\x00" not in raw and raw.strip():
                return raw, None
            return _typed(self.column, raw)
        hit = self.cache.get(raw)
        if hit is not None:
            return hit
        verdict = _typed(self.column, raw)
        if len(raw) <= _CACHED:
            if len(self.cache) >= _CACHE_ENTRIES:
                self.cache.clear()
            self.cache[raw] = verdict
        return verdict


# --- header -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Cell:
    """A known column of the header: where it sits and how its cells are typed."""

    name: str
    position: int
    contact: bool  # contact-level (repeated on every row of a section)
    typed: _Typer
    plain: bool  # optional text: the cell as given, None when blank (unless it has a NUL)


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where each known column sits in a row."""

    width: int
    index: dict[str, int]  # known column name -> position (the id column excluded)
    cells: tuple[_Cell, ...]  # the known columns in header order
    treatment_cells: tuple[_Cell, ...]  # the treatment-level ones
    contact_of: Callable[[list[str]], tuple[str, ...]]  # a row's contact-level cells

    @classmethod
    def from_header(cls, header: list[str]) -> _Layout:
        index: dict[str, int] = {}
        seen: set[str] = set()
        for position, given in enumerate(header):
            name = given.strip()
            key = name.lower() if name.lower() == "id" else name
            if key in seen:
                raise FileError(CONTACTS_GLOBAL, f"The header has the column {name!r} twice.")
            seen.add(key)
            if key == "id":
                continue  # ignored: a new id is generated (docs/formats.md)
            if name not in COLUMN_BY_NAME:
                raise FileError(CONTACTS_GLOBAL, f"The header has an unknown column {name!r}.")
            index[name] = position
        missing = [c.name for c in COLUMNS if c.name not in OPTIONAL_COLUMNS | index.keys()]
        if missing:
            listed = ", ".join(missing)
            raise FileError(CONTACTS_GLOBAL, f"The header lacks the required columns: {listed}.")
        cells = tuple(
            _Cell(name, i, column.level is Level.CONTACT, _Typer(column),
                  column.kind is Kind.TEXT and not column.required)
            for name, i in index.items()
            for column in (COLUMN_BY_NAME[name],)
        )
        contact = [c.position for c in cells if c.contact]  # never fewer than two
        return cls(width=len(header), index=index, cells=cells,
                   treatment_cells=tuple(c for c in cells if not c.contact),
                   contact_of=operator.itemgetter(*contact))

    def code_of(self, fields: list[str]) -> str:
        """The row's tracking code, even from a row of the wrong width (to find its section)."""
        position = self.index[CODE]
        return fields[position] if position < len(fields) else ""


# --- rows and sections --------------------------------------------------------------


class _SectionBuilder:
    """Collects a section's rows, validating each as it comes (first error wins).

    A contact-level cell given exactly as in the section's first (valid) row has that
    row's value and agrees with it, so it is not typed again: checks in header order,
    first error wins, and only such a cell is skipped, so the verdict is the one of
    checking every cell.
    """

    def __init__(self, layout: _Layout, code: str) -> None:
        self._layout = layout
        self._treatment_ids: set[Value] = set()
        self._first: list[str] = []  # the first row's fields, once it passed
        self._first_contact: tuple[str, ...] = ()  # and its contact-level cells
        self.section = Section(code=code)

    def add(self, record: int, fields: list[str]) -> None:
        section = self.section
        layout = self._layout
        fits = len(fields) == layout.width
        section.rows.append(ContactRow(record, fields, layout.index if fits else None))
        if section.error is not None:
            return  # the section is rejected already; keep its rows for the counts
        problem = self._check(fields) if fits else _Problem(
            f"The row has {len(fields)} fields; the header has {layout.width}.", "",
            f"the row has {len(fields)} fields; the header has {layout.width}")
        if problem is not None:
            first = len(section.rows) == 1
            message = problem.message
            section.error = message if first else f"{message} (record {record})"
            section.fault = Fault(record, problem.column, problem.detail)
            section.contact.clear()
            section.treatments.clear()

    def _check(self, fields: list[str]) -> _Problem | None:
        layout = self._layout
        if not fields[layout.index[CODE]].strip():
            return _Problem(BLANK_CODE_MESSAGE, CODE, f"{CODE} is blank")
        first = self._first
        if not first:
            return self._check_first(fields)
        if layout.contact_of(fields) == self._first_contact:
            # The usual later row: its contact cells are the first row's, all of them.
            treatment: dict[str, Value] = {}
            error = _type_cells(layout.treatment_cells, fields, treatment, treatment)
            return error or self._add_treatment(treatment)
        section = self.section
        treatment = {}
        changed: list[tuple[_Cell, Value]] = []  # contact-level cells not as in the first row
        for cell in layout.cells:
            raw = fields[cell.position]
            if cell.contact:
                if raw == first[cell.position]:
                    continue
                value, message = cell.typed(raw)
                if message is not None:
                    return _bad_cell(message, cell.name, raw)
                changed.append((cell, value))
            else:
                value, message = cell.typed(raw)
                if message is not None:
                    return _bad_cell(message, cell.name, raw)
                treatment[cell.name] = value
        for cell, value in changed:
            if section.contact[cell.name] != value:
                return _Problem(
                    f"The rows of this contact disagree on the {cell.name} column.", cell.name,
                    f"{cell.name} is {quoted(fields[cell.position])} here but "
                    f"{quoted(first[cell.position])} in record {section.first.record}")
        return self._add_treatment(treatment)

    def _check_first(self, fields: list[str]) -> _Problem | None:
        contact: dict[str, Value] = {}
        treatment: dict[str, Value] = {}
        error = _type_cells(self._layout.cells, fields, contact, treatment)
        if error is not None:
            return error
        self.section.contact = contact
        self._first = fields
        self._first_contact = self._layout.contact_of(fields)
        return self._add_treatment(treatment)

    def _add_treatment(self, treatment: dict[str, Value]) -> _Problem | None:
        treatment_id = treatment[TREATMENT_ID]
        if treatment_id in self._treatment_ids:
            return _Problem(
                f"The treatmentId {treatment_id} appears more than once in this contact.",
                TREATMENT_ID, f"treatmentId {quoted(str(treatment_id))} is given twice in this"
                " contact")
        self._treatment_ids.add(treatment_id)
        self.section.treatments.append(treatment)
        return None


def _type_cells(cells: tuple[_Cell, ...], fields: list[str], contact: dict[str, Value],
                treatment: dict[str, Value]) -> _Problem | None:
    """Type ``cells`` of a row into ``contact`` and ``treatment``; the first error, if any."""
    for cell in cells:
        raw = fields[cell.position]
        if cell.plain and "\x00" not in raw:  # most cells: what the typer would say, inline
            value: Value = raw if raw.strip() else None
        else:
            value, error = cell.typed(raw)
            if error is not None:
                return _bad_cell(error, cell.name, raw)
        (contact if cell.contact else treatment)[cell.name] = value
    return None


class ContactsReader:
    """Streams a contacts CSV: the header is checked on construction, then ``sections()``.

    Raises ``FileError(CONTACTS_GLOBAL, …)`` for an empty file, a bad header, bytes
    that are not UTF-8 or a CSV the parser cannot read, whenever it meets them.
    """

    def __init__(self, stream: BinaryIO, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self._stream = stream
        self._too_long = f"The row is longer than max_line_bytes ({max_line_bytes} bytes)."
        self._too_long_detail = (f"the row is longer than max_line_bytes ({max_line_bytes}"
                                 " bytes); its fields are not shown")
        self._records = self._data(BoundedCsv(stream, max_line_bytes))
        header = next(self._records, None)
        if header is None:
            raise FileError(CONTACTS_GLOBAL, "The file is empty: a header row is required.")
        if isinstance(header, Oversize):
            raise FileError(
                CONTACTS_GLOBAL,
                f"The header row is longer than max_line_bytes ({max_line_bytes} bytes).",
            )
        self.columns: list[str] = header
        self._layout = _Layout.from_header(header)
        self.names: list[str] = list(self._layout.index)  # the known columns, header order

    def bytes_read(self) -> int:
        """How far the file is read (the reader works a piece ahead of the records)."""
        return self._stream.tell()

    @classmethod
    def from_text(cls, text: str, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> ContactsReader:
        return cls(io.BytesIO(text.encode("utf-8")), max_line_bytes)

    @staticmethod
    def _data(source: BoundedCsv) -> Iterator[list[str] | Oversize]:
        """Non-empty CSV records, with decoding and parsing problems made global errors."""
        try:
            for fields in source.rows():
                if isinstance(fields, Unparsable):
                    raise FileError(
                        CONTACTS_GLOBAL,
                        f"The CSV cannot be read near line {fields.line}: {fields.reason}.",
                    )
                yield fields
        except NotUtf8 as exc:
            raise FileError(
                CONTACTS_GLOBAL,
                f"The file is not UTF-8 text (byte 0x{exc.byte:02x} cannot be decoded).",
            ) from None

    @property
    def width(self) -> int:
        return self._layout.width

    @property
    def positions(self) -> dict[str, int]:
        """Where each known column sits in a row (the ignored id column left out)."""
        return self._layout.index

    def sections(self) -> Iterator[Section]:
        """Sections in file order; a blank-code row is a rejected section of its own."""
        return (self.section(rows) for rows in self.raw_sections())

    def raw_sections(self) -> Iterator[RawSection]:
        """Each section's records as read, in file order (records are numbered one after
        another): contiguous rows with one non-blank code; a blank-code row and a record
        too long to read stand alone."""
        rows: RawSection = []
        code = ""
        for record, fields in enumerate(self._records, start=1):
            if isinstance(fields, Oversize):
                # Its code is unknown: it stands alone, like a blank-code row.
                if rows:
                    yield rows
                    rows = []
                yield [(record, fields)]
                continue
            this = self._layout.code_of(fields)
            if rows and this == code:
                rows.append((record, fields))
                continue
            if rows:
                yield rows
            rows, code = [(record, fields)], this
            if not this.strip():  # blank codes form no section: the row stands (and fails) alone
                yield rows
                rows = []
        if rows:
            yield rows

    def section(self, rows: RawSection) -> Section:
        """A section's rows checked cell by cell (its first error, or its typed values)."""
        record, fields = rows[0]
        if isinstance(fields, Oversize):
            return Section(code="", rows=[ContactRow(record, [])], error=self._too_long,
                           fault=Fault(record, "", self._too_long_detail))
        builder = _SectionBuilder(self._layout, self._layout.code_of(fields))
        for record, fields in rows:
            assert not isinstance(fields, Oversize)  # an oversize record stands alone
            builder.add(record, fields)
        return builder.section


@contextmanager
def open_contacts(
    path: Path, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[ContactsReader]:
    """Open a contacts file for streaming (UTF-8, a byte-order mark tolerated)."""
    with open_partner_file(path) as stream:
        yield ContactsReader(stream, max_line_bytes)


# --- NAME.csv.headers ---------------------------------------------------------------

HEADERS_FILE_MAX_BYTES = 64 * 1024  # it holds a line or two; more is a mistake, not data


def parse_headers_file(text: str) -> datetime | None:
    """The ``If-Unmodified-Since`` of a ``NAME.csv.headers`` file, or None if absent.

    Lines are ``Name: value`` (names case-insensitive, as in HTTP); blank lines and
    other header names are ignored. The value is an HTTP date or an ISO-8601
    timestamp; a bad value, a line that is not ``Name: value`` or the header given
    twice is a global error.
    """
    found: datetime | None = None
    for number, line in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name.strip()):
            raise FileError(
                CONTACTS_GLOBAL, f"Line {number} of the headers file is not 'Name: value'."
            )
        if name.strip().lower() != IF_UNMODIFIED_SINCE:
            continue
        if found is not None:
            raise FileError(CONTACTS_GLOBAL, "The headers file gives If-Unmodified-Since twice.")
        found = _precondition_time(value.strip())
    return found


def _precondition_time(value: str) -> datetime:
    stamp = parse_timestamp(value)
    if stamp is not None:
        return stamp
    try:
        stamp = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        stamp = None
    if stamp is None:
        raise FileError(
            CONTACTS_GLOBAL,
            f"If-Unmodified-Since {value!r} is neither an HTTP date nor an ISO-8601 timestamp.",
        )
    # An HTTP date is GMT; "-0000" (unknown zone) gives a naive datetime: read it as UTC.
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)
