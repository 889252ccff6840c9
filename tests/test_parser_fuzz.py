"""Fuzzing both parsers: whatever the bytes, a parser either accounts for every record
(a row, or a row error) or fails the file with the documented ``FileError``.

Inputs are random bytes and mutations of valid files (bytes flipped, inserted or
deleted, delimiters, quotes and line breaks injected, truncation), read with the
default limit and with tiny ``max_line_bytes`` so the over-long path is hit too.
``tests/fuzz/fuzz_parsers.py`` runs the same checks under atheris (coverage-guided,
not part of the suite).
"""

from __future__ import annotations

import csv
import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestd.contacts.reader import COLUMNS, ContactsReader
from ingestd.errors import (
    CONTACTS_GLOBAL,
    INVALID_IMPORT_FILE_FORMAT,
    MALFORMED_ROW,
    UNKNOWN_8BIT_ENCODING,
    FileError,
    RowError,
)
from ingestd.persons.reader import IDENTIFYING, open_persons, write_persons

# What a Person Import may fail with as a whole (docs/formats.md section 1).
PERSONS_FILE_ERRORS = {INVALID_IMPORT_FILE_FORMAT, UNKNOWN_8BIT_ENCODING}
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LIMITS = st.sampled_from([1 << 20, 64, 8])


def check_persons(data: bytes, limit: int) -> None:
    """Every record numbered 1, 2, … and either the header's width or a row error."""
    try:
        reader = open_persons(io.BytesIO(data), limit)
        width = len(reader.fields)
        expected = 1
        for chunk in reader.chunks(3):
            for record in chunk:
                assert record.number == expected
                expected += 1
                if record.error is None:
                    assert len(record.values) == width
                    assert all("\x00" not in v for v in record.values)
                else:
                    assert isinstance(record.error, RowError)
                    if record.error.error_class == MALFORMED_ROW:
                        assert record.error.message
    except FileError as e:
        assert e.error_class in PERSONS_FILE_ERRORS, e


def check_contacts(data: bytes, limit: int) -> None:
    """Sections cover records 1, 2, … in order; an accepted one has a treatment a row."""
    try:
        reader = ContactsReader(io.BytesIO(data), limit)
        expected = 1
        for section in reader.sections():
            assert section.rows
            for row in section.rows:
                assert row.record == expected
                expected += 1
            if section.error is None:
                assert len(section.treatments) == len(section.rows)
                assert section.code.strip()
            else:
                assert isinstance(section.error, str) and section.error
    except FileError as e:
        assert e.error_class == CONTACTS_GLOBAL, e


# --- valid files, then mutated --------------------------------------------------------

_CELL = st.text(st.sampled_from(list('ab1+,;|"\n\r \té\x00')), max_size=6)
_NAMES = st.lists(st.sampled_from(["note", "tier", "first_name", "age"]), unique=True,
                  max_size=3)


@st.composite
def valid_persons(draw: st.DrawFn) -> bytes:
    fields = [draw(st.sampled_from(IDENTIFYING)), *draw(_NAMES)]
    rows = draw(st.lists(st.lists(_CELL, min_size=len(fields), max_size=len(fields)),
                         max_size=8))
    delimiter = draw(st.sampled_from([",", ";", "\t", "|"]))
    multi = draw(st.sampled_from(["|", "~"]).filter(lambda m: m != delimiter))
    text = write_persons(fields, rows, delimiter, multi, header_block=draw(st.booleans()))
    return text.encode()


_HEADER = [c.name for c in COLUMNS]


@st.composite
def valid_contacts(draw: st.DrawFn) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=draw(st.sampled_from(["\r\n", "\n"])))
    writer.writerow(_HEADER)
    for _ in range(draw(st.integers(0, 6))):
        values = dict.fromkeys(_HEADER, "")
        values.update(
            creationTimeStamp="2018-05-13T15:02:40.719Z",
            responseTrackingCode=draw(st.sampled_from(["a", "b", ""])),
            subjectId="s", treatmentId=draw(st.sampled_from(["t1", "t2"])),
            presented=draw(st.sampled_from(["true", "false", "maybe", ""])),
            responseValue=draw(_CELL),
        )
        writer.writerow([values[n] for n in _HEADER])
    return ("\ufeff" if draw(st.booleans()) else "").encode() + out.getvalue().encode()


_INJECT = st.sampled_from([b",", b";", b"\t", b'"', b'""', b"\n", b"\r", b"\r\n", b"\x00",
                           b"\xff", b"\xc3", b"\xef\xbb\xbf", b":", b"Fields: mdn\n\n"])


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "inject"]))
        at = draw(st.integers(0, len(data)))
        if kind == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[at:at] = bytes([draw(st.integers(0, 255))])
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 4))]
        elif kind == "truncate":
            del data[at:]
        else:
            data[at:at] = draw(_INJECT)
    return bytes(data)


@FUZZ
@given(data=st.binary(max_size=300), limit=LIMITS)
def test_persons_random_bytes(data: bytes, limit: int) -> None:
    check_persons(data, limit)


@FUZZ
@given(data=mutated(valid_persons()), limit=LIMITS)
def test_persons_mutated_files(data: bytes, limit: int) -> None:
    check_persons(data, limit)


@FUZZ
@given(data=st.binary(max_size=300), limit=LIMITS)
def test_contacts_random_bytes(data: bytes, limit: int) -> None:
    check_contacts(data, limit)


@FUZZ
@given(data=mutated(valid_contacts()), limit=LIMITS)
def test_contacts_mutated_files(data: bytes, limit: int) -> None:
    check_contacts(data, limit)


@FUZZ
@given(data=valid_persons())
def test_valid_persons_files_have_no_row_errors_of_shape(data: bytes) -> None:
    # The generator is sound: without mutation only NUL cells are row errors.
    reader = open_persons(io.BytesIO(data))
    for chunk in reader.chunks(10):
        for record in chunk:
            assert record.error is None or record.error.message == "Row contains a NUL character"
