"""Person Import (``*.persons``): header block, body CSV, records, id syntax.

Pure: no database. ``open_persons`` reads the header block and the field names
and raises ``FileError`` for what fails the whole file; ``PersonsReader.chunks``
then streams the body as numbered ``Record``s, each with its shape error if any.

Reading (docs/formats.md section 1, plus these choices where it is silent):

* The file is read as binary lines (split at LF only) and each line is decoded
  as strict UTF-8 on its own. UTF-8 never uses byte 0x0A inside a multi-byte
  sequence, so this is exactly whole-file decoding, yet memory stays one line
  and an invalid byte is reported with its physical line.
* No read holds more than ``max_line_bytes`` (``formats.bounded``). A body record
  (its lines, line ends included) longer than that is a ``MalformedRow`` "Row is
  longer than max_line_bytes (N bytes)" with no values; it is read past to its
  true end (quotes followed), so later records keep their numbers. A longer
  header line, or a longer field-name row, fails the file.
* A UTF-8 byte-order mark at the start of the file is dropped.
* A header block starts when the first line is ``Name: value`` with ``Name`` an
  HTTP token. Every following line up to a blank one must be a header too; the
  block ends at the first empty line (no characters before the line end). More
  blank lines after it are ordinary blank body lines (skipped, see below).
  A header given twice fails the file. ``Delimiter`` and
  ``Multi-Select-Delimiter`` must be one character after trimming spaces (tab:
  a literal tab, ``tab`` in any case, or ``\\t``), not a quote or line break.
* A file with no header row (empty, only a BOM or blank lines, a header block
  without ``Fields`` and no body) fails with ``InvalidImportFileFormat`` "file has
  no header row". A ``Fields`` header with an empty body is a valid file with no
  records.
* Field names (``Fields`` or header row) are trimmed of spaces. An empty or
  repeated field name fails the file: a column nobody can address, or two
  values for one field, are mistakes to fix at the source.
* Body CSV: RFC 4180 via the ``csv`` module with ``strict=True``. Quotes inside
  an unquoted field are kept as characters (as the module does); text after a
  closing quote (``"ab"c``) and a quote still open at the end of the file are
  errors of that record: ``MalformedRow`` "Row is not valid CSV: ..." with no
  values (the module does not return the partial row). Reading resumes on the
  next physical line. (The csv module's field limit is raised to at least
  ``max_line_bytes``, so a stray quote ends as an over-long record instead.)
* A record holding a NUL character is a ``MalformedRow`` "Row contains a NUL
  character" (PostgreSQL text cannot store NUL); its echoed values show U+FFFD
  in its place.
* Completely empty body lines are skipped and get no record number. (A
  single-column record whose value is empty must be written ``""``, as
  ``write_persons`` does.)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, ParamSpec

from ingestd.bounded_csv import (
    DEFAULT_MAX_LINE_BYTES,
    BoundedCsv,
    LineTooLong,
    NotUtf8,
    Oversize,
    Unparsable,
)
from ingestd.errors import (
    INVALID_IMPORT_FILE_FORMAT,
    INVALID_PERSON_ID,
    INVALID_PERSON_KEY,
    MALFORMED_ROW,
    UNKNOWN_8BIT_ENCODING,
    FileError,
    RowError,
)

IDENTIFYING = ("person_id", "person_key", "external_person_id", "mdn", "vibes_device_id")

# Verbatim from docs/formats.md's file-level table (its "vives" typo included): partners
# match on these strings.
NO_IDENTIFYING_COLUMN_MESSAGE = (
    "Couldn't find a person_id, external_person_id, mdn, or vives_device_id field"
)
INVALID_PERSON_ID_MESSAGE = "Invalid person_id"  # docs/formats.md's "Invalid <i>person_id</i>"
INVALID_PERSON_KEY_MESSAGE = "Invalid person_key"
NO_HEADER_ROW_MESSAGE = "file has no header row"

DEFAULT_DELIMITER = ","
DEFAULT_MULTI_SELECT_DELIMITER = "|"
KNOWN_HEADERS = ("fields", "delimiter", "multi-select-delimiter")

# RFC 9110 token, then a colon: the shape of an HTTP header line.
_HEADER_LINE = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+):(.*)", re.DOTALL)
_TAB_WORDS = frozenset({"\t", "tab", "\\t"})
_FORBIDDEN_DELIMITERS = frozenset({'"', "\r", "\n"})
_PERSON_KEY = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PERSON_ID_MAX = (1 << 63) - 1  # a PostgreSQL bigint
_INVALID_PERSON_ID = RowError(INVALID_PERSON_ID, INVALID_PERSON_ID_MESSAGE)
_INVALID_PERSON_KEY = RowError(INVALID_PERSON_KEY, INVALID_PERSON_KEY_MESSAGE)
_NUL_IN_ROW = RowError(MALFORMED_ROW, "Row contains a NUL character")


@dataclass(slots=True)
class Record:
    """One data record: ``number`` counts data records from 1, whatever their lines."""

    number: int
    values: list[str]
    error: RowError | None = None


_Row = list[str] | Oversize | Unparsable


class PersonsReader:
    """A Person Import whose header is read; ``chunks`` streams the body once."""

    def __init__(
        self,
        fields: list[str],
        delimiter: str,
        multi_select_delimiter: str,
        warnings: list[str],
        rows: Iterator[_Row],
        max_line_bytes: int,
    ) -> None:
        self.fields = fields
        self.delimiter = delimiter
        self.multi_select_delimiter = multi_select_delimiter
        self.warnings = warnings
        self._rows = rows
        self._too_long = _too_long(max_line_bytes)
        self._records = 0

    def chunks(self, size: int) -> Iterator[list[Record]]:
        """Yield the body's records in lists of up to ``size``.

        Raises ``FileError`` (Unknown8BitEncodingDetected) where the body stops
        being UTF-8; records before that point have been yielded already.
        """
        if size < 1:
            raise ValueError("chunk size must be at least 1")
        width = len(self.fields)
        chunk: list[Record] = []
        try:
            for row in self._rows:
                self._records += 1
                number = self._records
                if not isinstance(row, list):
                    record = Record(number, [], self._row_error(row))
                elif len(row) != width:
                    record = Record(number, row, _shape_error(len(row), width))
                elif "\x00" in "".join(row):
                    # PostgreSQL text cannot hold NUL, not even in the error sidecar.
                    values = [v.replace("\x00", "\ufffd") for v in row]
                    record = Record(number, values, _NUL_IN_ROW)
                else:
                    record = Record(number, row)
                chunk.append(record)
                if len(chunk) >= size:
                    yield chunk
                    chunk = []
        except NotUtf8 as e:
            raise _encoding_error(e) from None
        if chunk:
            yield chunk

    def _row_error(self, row: Oversize | Unparsable) -> RowError:
        if isinstance(row, Oversize):
            return self._too_long
        return RowError(MALFORMED_ROW, f"Row is not valid CSV: {row.reason}")


def _too_long(limit: int) -> RowError:
    return RowError(MALFORMED_ROW, f"Row is longer than max_line_bytes ({limit} bytes)")


def _shape_error(count: int, width: int) -> RowError:
    return RowError(MALFORMED_ROW, f"Row has {count} fields; the header has {width}")


def _first_row(rows: Iterator[_Row], limit: int) -> list[str] | None:
    """The first non-empty row (the header row), or None at the end of the file."""
    try:
        row = next(rows, None)
    except NotUtf8 as e:
        raise _encoding_error(e) from None
    if isinstance(row, Oversize):
        raise FileError(INVALID_IMPORT_FILE_FORMAT, f"header row: {_too_long(limit).message}")
    if isinstance(row, Unparsable):
        message = f"header row: Row is not valid CSV: {row.reason}"
        raise FileError(INVALID_IMPORT_FILE_FORMAT, message)
    return row


def open_persons(stream: BinaryIO, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> PersonsReader:
    """Read the header block and field names of a Person Import.

    ``stream`` is read lazily: the body is read by ``PersonsReader.chunks``.
    Raises ``FileError`` for file-level problems found so far.
    """
    source = BoundedCsv(stream, max_line_bytes, strict=True)
    first_raw = _header_line(source)
    if not first_raw:
        raise FileError(INVALID_IMPORT_FILE_FORMAT, NO_HEADER_ROW_MESSAGE)
    first = _decode(first_raw, 1)

    header_match = _HEADER_LINE.fullmatch(_strip_line_end(first))
    if header_match is None:
        headers: dict[str, str] = {}
        warnings: list[str] = []
        body_first = first_raw  # the field-name row, or the first record after Fields
    else:
        headers, warnings = _read_header_block(header_match, source)
        body_first = b""

    delimiter = _delimiter_header(headers, "delimiter", DEFAULT_DELIMITER)
    multi = _delimiter_header(headers, "multi-select-delimiter", DEFAULT_MULTI_SELECT_DELIMITER)
    rows = source.rows(body_first, delimiter)
    if "fields" in headers:
        names = headers["fields"].split(",")
    else:
        row = _first_row(rows, max_line_bytes)
        if row is None:
            raise FileError(INVALID_IMPORT_FILE_FORMAT, NO_HEADER_ROW_MESSAGE)
        names = row
    fields = _check_fields(names, None if "fields" in headers else delimiter)
    return PersonsReader(fields, delimiter, multi, warnings, rows, max_line_bytes)


def _header_line(source: BoundedCsv) -> bytes:
    try:
        return source.next_line()
    except LineTooLong as e:
        raise FileError(INVALID_IMPORT_FILE_FORMAT, str(e)) from None


def _read_header_block(
    first: re.Match[str], source: BoundedCsv
) -> tuple[dict[str, str], list[str]]:
    """Headers (lowercased names) and warnings; the source is left at the body."""
    headers: dict[str, str] = {}
    warnings: list[str] = []
    match, line_no = first, 1
    while True:
        name = match.group(1).lower()
        if name in headers:
            message = f"header {match.group(1)!r} given twice (line {line_no})"
            raise FileError(INVALID_IMPORT_FILE_FORMAT, message)
        # Spaces only: a tab after "Delimiter:" is the delimiter itself.
        headers[name] = match.group(2).strip(" ")
        if name not in KNOWN_HEADERS:
            warnings.append(f"unknown header {match.group(1)!r} ignored (line {line_no})")
        raw = _header_line(source)
        line_no += 1
        if not raw:
            raise FileError(
                INVALID_IMPORT_FILE_FORMAT,
                "the header block must end with a blank line (end of file reached)",
            )
        line = _strip_line_end(_decode(raw, line_no))
        if line == "":
            return headers, warnings
        next_match = _HEADER_LINE.fullmatch(line)
        if next_match is None:
            raise FileError(
                INVALID_IMPORT_FILE_FORMAT,
                f"line {line_no} is neither a 'Name: value' header nor the blank line"
                " that must end the header block",
            )
        match = next_match


def _delimiter_header(headers: dict[str, str], name: str, default: str) -> str:
    value = headers.get(name)
    if value is None:
        return default
    if value.lower() in _TAB_WORDS:
        return "\t"
    if len(value) != 1 or value in _FORBIDDEN_DELIMITERS:
        raise FileError(
            INVALID_IMPORT_FILE_FORMAT,
            f"header {name!r} must be one character other than a quote or line break,"
            f" got {value!r}",
        )
    return value


def _check_fields(names: Sequence[str], row_delimiter: str | None) -> list[str]:
    """The field names, checked; ``row_delimiter``: the delimiter they were split by,
    when they came from a header row (None: from a ``Fields`` header)."""
    fields = [name.strip(" ") for name in names]
    seen: set[str] = set()
    for position, name in enumerate(fields, 1):
        if not name or "\x00" in name:
            message = f"field {position} has no name" if not name else "NUL in a field name"
            raise FileError(INVALID_IMPORT_FILE_FORMAT, message)
        if name != name.lower():
            raise FileError(INVALID_IMPORT_FILE_FORMAT, f"field name {name!r} must be lowercase")
        if name in seen:
            raise FileError(INVALID_IMPORT_FILE_FORMAT, f"field {name!r} appears twice")
        seen.add(name)
    if seen.isdisjoint(IDENTIFYING):
        raise FileError(INVALID_IMPORT_FILE_FORMAT, NO_IDENTIFYING_COLUMN_MESSAGE,
                        _delimiter_hint(fields, row_delimiter))
    return fields


# Delimiters a spreadsheet saves with (Excel's ";" where the decimal mark is a comma;
# "Unicode Text" is tab-separated), as a Delimiter header would name them.
_SPREADSHEET_DELIMITERS = ((";", ";"), ("\t", "tab"))


def _delimiter_hint(fields: Sequence[str], row_delimiter: str | None) -> str:
    """How to fix a header row that was split by the wrong delimiter, or "".

    The source's message for a file without an identifying column stays as it is (partners
    match on it); this says why a file exported from a spreadsheet has none."""
    if row_delimiter is None:
        return ""
    for delimiter, word in _SPREADSHEET_DELIMITERS:
        if delimiter == row_delimiter:
            continue
        parts = {part.strip(" ").lower() for name in fields for part in name.split(delimiter)}
        if not parts.isdisjoint(IDENTIFYING):
            shown = "`;`" if word == ";" else "tab"
            return (f"the header row looks {shown}-separated: add a `Delimiter: {word}`"
                    " header block")
    return ""


def _decode(raw: bytes, line_no: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _encoding_error(NotUtf8(e.object[e.start], line_no, e.start + 1)) from None


def _encoding_error(error: NotUtf8) -> FileError:
    return FileError(UNKNOWN_8BIT_ENCODING, f"not valid UTF-8: {error}")


def _strip_line_end(line: str) -> str:
    if line.endswith("\n"):
        line = line[:-1]
        if line.endswith("\r"):
            line = line[:-1]
    return line


def parse_person_id(raw: str) -> int | RowError:
    """A ``person_id`` cell as an int: ASCII digits, 1 to the bigint maximum."""
    # The length check comes first: int() refuses digit strings over 4300 long.
    if not (raw.isascii() and raw.isdigit()) or len(raw.lstrip("0")) > 19:
        return _INVALID_PERSON_ID
    value = int(raw)
    return value if 0 < value <= _PERSON_ID_MAX else _INVALID_PERSON_ID


def check_person_key(raw: str) -> str | RowError:
    """A ``person_key`` cell, if it is a lowercase hyphenated UUID."""
    return raw if _PERSON_KEY.fullmatch(raw) else _INVALID_PERSON_KEY


def iter_persons(
    fields: Sequence[str],
    rows: Iterable[Sequence[str]],
    delimiter: str = DEFAULT_DELIMITER,
    multi_select_delimiter: str = DEFAULT_MULTI_SELECT_DELIMITER,
    header_block: bool = False,
) -> Iterator[str]:
    """The lines of a Person Import text, streamed (a retry file may be large).

    ``header_block=True`` names the fields in a ``Fields`` header and writes every
    header; otherwise the names are the body's first row, and a header block holds
    only the delimiters that differ from the defaults (there is no other way to
    say them). Fields are quoted per RFC 4180 when they hold the delimiter, a
    quote, CR or LF; a lone empty field is written ``""`` so the line is not blank.
    Lines end with LF.
    """
    _check_writable_delimiter(delimiter)
    _check_writable_delimiter(multi_select_delimiter)
    headers: list[tuple[str, str]] = []
    if header_block:
        bad = [name for name in fields if "," in name or name != name.strip(" ") or not name]
        if bad:
            raise ValueError(f"field name {bad[0]!r} cannot be written in a Fields header")
        headers.append(("Fields", ",".join(fields)))
    if header_block or delimiter != DEFAULT_DELIMITER:
        headers.append(("Delimiter", _header_value(delimiter)))
    if header_block or multi_select_delimiter != DEFAULT_MULTI_SELECT_DELIMITER:
        headers.append(("Multi-Select-Delimiter", _header_value(multi_select_delimiter)))

    for name, value in headers:
        yield f"{name}: {value}\n"
    if headers:
        yield "\n"
    if not header_block:
        line = _format_row(fields, delimiter)
        if not headers and _HEADER_LINE.fullmatch(line):
            # It would be read as a header line; a quoted first name cannot be.
            rest = line[len(_quote(fields[0], delimiter)) :]
            line = '"' + fields[0].replace('"', '""') + '"' + rest
        yield line + "\n"
    for row in rows:
        yield _format_row(row, delimiter) + "\n"


_P = ParamSpec("_P")


def _joined(lines: Callable[_P, Iterable[str]]) -> Callable[_P, str]:
    """``lines``' text as one string, for the same arguments."""

    def text(*args: _P.args, **kwargs: _P.kwargs) -> str:
        return "".join(lines(*args, **kwargs))
    return text


# A Person Import text that ``open_persons`` reads back as ``fields`` and ``rows``:
# ``iter_persons`` joined, for the same arguments.
write_persons = _joined(iter_persons)


def _format_row(values: Sequence[str], delimiter: str) -> str:
    if not values:
        raise ValueError("a record needs at least one field")
    if len(values) == 1 and values[0] == "":
        return '""'
    return delimiter.join([_quote(value, delimiter) for value in values])


def _quote(value: str, delimiter: str) -> str:
    if delimiter in value or '"' in value or "\n" in value or "\r" in value:
        return '"' + value.replace('"', '""') + '"'
    return value


def _check_writable_delimiter(delimiter: str) -> None:
    if len(delimiter) != 1 or delimiter in _FORBIDDEN_DELIMITERS or delimiter == " ":
        # A space would be trimmed away from its header line.
        raise ValueError(f"cannot use {delimiter!r} as a delimiter")


def _header_value(delimiter: str) -> str:
    return "tab" if delimiter == "\t" else delimiter
