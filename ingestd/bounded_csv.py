"""CSV records from a binary stream with memory bounded by ``max_line_bytes``.

Both partner formats are CSV with rows split at LF. Reading them the usual way
(``for line in file``) holds a whole physical line, and decodes it, before the
csv module's field limit applies: a 2 GB line takes gigabytes. Here no read
asks for more than ``limit + 1`` bytes, and a *record* (one line, or several
when a quoted field holds line breaks) whose bytes, line ends included, exceed
``limit`` is dropped in pieces up to its true end and reported as ``Oversize``.
Finding that end needs the quoting state, which ``_Skipper`` follows the way
the csv module does; so the records after it keep their numbers.

Each line is decoded as strict UTF-8 on its own: UTF-8 never uses byte 0x0A
inside a multi-byte sequence, so this is exactly whole-file decoding, and an
invalid byte is reported (``NotUtf8``) with its physical line, in a dropped
record too. A UTF-8 byte-order mark at the start of the stream is dropped.

The csv module's own field limit (process-wide) is raised to at least
``limit``: a record within the limit never fails on it, so there is one bound,
and a failure always comes with a known record end.

Kept hand-written on purpose: no CSV library bounds the bytes of one record while
keeping the record numbers of the records after an oversized one (the csv module,
pandas, polars and pyarrow all read a whole line or block first, and a bad record
there ends the file or loses the count).
"""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from ingestd.errors import IngestdError

if TYPE_CHECKING:
    from _csv import Reader

DEFAULT_MAX_LINE_BYTES = 1 << 20
_BOM = b"\xef\xbb\xbf"


class NotUtf8(IngestdError):
    """Bytes that are not UTF-8: ``byte`` on physical ``line``, at 1-based ``column``."""

    def __init__(self, byte: int, line: int, column: int) -> None:
        super().__init__(f"byte 0x{byte:02X} on line {line} (at byte {column})")
        self.byte = byte
        self.line = line
        self.column = column


class LineTooLong(IngestdError):
    """A line read on its own (a header line) is longer than the limit."""

    def __init__(self, line: int, limit: int) -> None:
        super().__init__(f"line {line} is longer than max_line_bytes ({limit} bytes)")
        self.line = line


@dataclass(frozen=True, slots=True)
class Oversize:
    """A record longer than the limit; it has been read past and dropped."""


OVERSIZE = Oversize()


@dataclass(frozen=True, slots=True)
class Unparsable:
    """A record the csv module rejected; ``line`` is where it noticed."""

    reason: str
    line: int


class _Overflow(IngestdError):
    """Raised by the line feed, through ``csv.reader``, when a record outgrows the limit."""

    def __init__(self, piece: bytes, quoted: bool) -> None:
        self.piece = piece
        self.quoted = quoted  # a continuation line: the csv parser is inside a quoted field


class BoundedCsv:
    """``rows`` gives the records of ``stream`` as lists, or ``Oversize``/``Unparsable``.

    ``strict`` is the csv module's option (text after a closing quote is an error);
    ``piece`` is how much is read at a time while dropping an oversize record.
    Raises ``NotUtf8`` where the stream stops being UTF-8.
    """

    def __init__(
        self, stream: BinaryIO, limit: int, *, strict: bool = False, piece: int = 1 << 16
    ) -> None:
        if limit < 1 or piece < 1:
            raise ValueError("the line limit and the piece must be at least 1 byte")
        self._piece = piece
        self.limit = limit
        self._stream = stream
        self._delimiter = ","
        self._strict = strict
        self._lines_before = 0  # physical lines not counted by the current csv reader
        self._size = 0  # bytes of the current record so far
        self._started = False
        if csv.field_size_limit() < limit:
            csv.field_size_limit(limit)

    def _first_read(self, size: int) -> tuple[bytes, int]:
        """The stream's first line (up to ``size`` bytes) without a byte-order mark,
        and the number of bytes read (the mark counts towards the limit)."""
        self._started = True
        raw = self._stream.readline(size)
        return raw.removeprefix(_BOM), len(raw)

    def next_line(self) -> bytes:
        """The next physical line on its own (b"" at the end), for a header block."""
        if self._started:
            raw = self._stream.readline(self.limit + 1)
            read = len(raw)
        else:
            raw, read = self._first_read(self.limit + 1)
        if read > self.limit:
            raise LineTooLong(self._lines_before + 1, self.limit)
        if raw:
            self._lines_before += 1
        return raw

    def rows(
        self, first: bytes = b"", delimiter: str = ","
    ) -> Iterator[list[str] | Oversize | Unparsable]:
        """Non-empty records; ``first`` is a line from ``next_line`` that starts the CSV.

        Call it once: the records share the stream.
        """
        self._delimiter = delimiter
        if first:
            self._lines_before -= 1  # the csv reader counts it again
            self._size = len(first)
        reader = self._reader(first)
        while True:
            try:
                # The fast path: the loop stays in C until a problem or the end.
                for row in reader:
                    self._size = 0
                    if row:
                        yield row
                return
            except csv.Error as e:
                self._size = 0
                yield Unparsable(str(e), self._lines_before + reader.line_num)
            except _Overflow as e:
                self._lines_before += reader.line_num
                self._drop(e.piece, e.quoted)
                self._size = 0
                yield OVERSIZE
                reader = self._reader(b"")  # the old one is mid-record
            except UnicodeDecodeError as e:
                # The reader counts the lines it received; the bad one is the next.
                line = self._lines_before + reader.line_num + 1
                raise NotUtf8(e.object[e.start], line, e.start + 1) from None

    def _reader(self, first: bytes) -> Reader:
        return csv.reader(self._feed(first), delimiter=self._delimiter, strict=self._strict)

    def _feed(self, first: bytes) -> Iterator[str]:
        if first:
            yield first.decode()
        limit = self.limit
        size = limit + 1
        readline = self._stream.readline
        if self._started:
            raw = readline(size)
            read = len(raw)
        else:
            raw, read = self._first_read(size)
        while raw:
            self._size += read
            if self._size > limit:
                raise _Overflow(raw, quoted=self._size > read)
            yield raw.decode()  # strict UTF-8, in C
            raw = readline(size)
            read = len(raw)

    def _drop(self, piece: bytes, quoted: bool) -> None:
        """Read past the end of the record ``piece`` belongs to, checking it is UTF-8."""
        skipper = _Skipper(self._delimiter, self._strict, quoted)
        decoder = codecs.getincrementaldecoder("utf-8")()
        column = 0  # bytes of the current line before ``piece``
        readline = self._stream.readline
        while piece:
            held = len(decoder.getstate()[0])  # an incomplete sequence from the last piece
            try:
                text = decoder.decode(piece)
            except UnicodeDecodeError as e:
                raise NotUtf8(
                    e.object[e.start], self._lines_before + 1, column - held + e.start + 1
                ) from None
            ended = skipper.feed(text)
            if piece.endswith(b"\n"):
                self._lines_before += 1
                column = 0
                if ended:
                    return
            else:
                column += len(piece)
            piece = readline(self._piece)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as e:
            raise NotUtf8(e.object[e.start], self._lines_before + 1, column - len(e.object)
                          + e.start + 1) from None


# Quoting states, as the csv module's parser has them.
_FIELD_START, _UNQUOTED, _QUOTED, _QUOTE_SEEN, _LINE_REST = range(5)
# Inside quotes: anything but a quote, or a doubled quote; possessive, so no backtracking.
_QUOTED_TEXT = re.compile(r'(?:[^"]++|"")*+')


class _Skipper:
    """Follows the csv module's quoting state over text, to find where a record ends.

    A record ends at a line break outside quotes. As in the csv module, a quote
    opens a quoted field only at the start of a field; after a closing quote
    another character is an error in strict mode (the record then ends with its
    line) and plain text otherwise; a CR outside quotes ends the record with its
    line (a CR is either part of the line end or an error).
    """

    def __init__(self, delimiter: str, strict: bool, quoted: bool) -> None:
        self._delimiter = delimiter
        self._strict = strict
        self._state = _QUOTED if quoted else _FIELD_START
        self._unquoted_event = re.compile(f"[\r\n]|{re.escape(delimiter)}\"")

    def feed(self, text: str) -> bool:
        """Consume ``text``; True when the record ends with it (it then ends in LF)."""
        state, pos, end = self._state, 0, len(text)
        while pos < end:
            if state == _LINE_REST:
                break
            if state == _FIELD_START:
                if text[pos] == '"':
                    state, pos = _QUOTED, pos + 1
                    continue
                state = _UNQUOTED
            if state == _UNQUOTED:
                m = self._unquoted_event.search(text, pos)
                if m is None:
                    # A delimiter last: the next piece starts a field.
                    state = _FIELD_START if text.endswith(self._delimiter) else _UNQUOTED
                    pos = end
                elif m.group() in ("\r", "\n"):
                    state = _LINE_REST
                else:
                    state, pos = _QUOTED, m.end()
            elif state == _QUOTED:
                match = _QUOTED_TEXT.match(text, pos)
                pos = match.end() if match else pos
                if pos < end:  # a lone quote: the field may close
                    state, pos = _QUOTE_SEEN, pos + 1
            else:  # _QUOTE_SEEN
                char = text[pos]
                if char == '"':
                    state, pos = _QUOTED, pos + 1
                elif char == self._delimiter:
                    state, pos = _FIELD_START, pos + 1
                elif char in "\r\n" or self._strict:
                    state = _LINE_REST
                else:
                    state = _UNQUOTED
        self._state = state
        # Pieces end at LF; a record ends only at one, outside quotes.
        return state != _QUOTED and text.endswith("\n")
