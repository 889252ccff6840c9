"""Person Import parsing (no database): header block, body CSV, records, ids, writer."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestd.errors import (
    INVALID_IMPORT_FILE_FORMAT,
    INVALID_PERSON_ID,
    INVALID_PERSON_KEY,
    MALFORMED_ROW,
    UNKNOWN_8BIT_ENCODING,
    FileError,
    RowError,
)
from ingestd.persons.reader import (
    IDENTIFYING,
    NO_IDENTIFYING_COLUMN_MESSAGE,
    PersonsReader,
    Record,
    check_person_key,
    open_persons,
    parse_person_id,
    write_persons,
)


def read(data: bytes | str, size: int = 2) -> tuple[PersonsReader, list[Record]]:
    raw = data.encode() if isinstance(data, str) else data
    reader = open_persons(io.BytesIO(raw))
    return reader, [record for chunk in reader.chunks(size) for record in chunk]


def file_error(data: bytes | str) -> FileError:
    with pytest.raises(FileError) as info:
        read(data)
    return info.value


def rows(records: list[Record]) -> list[tuple[int, list[str]]]:
    return [(r.number, r.values) for r in records]


# --- header block -----------------------------------------------------------------


def test_seed_example_without_header_block() -> None:
    reader, records = read("person_id,gender,first_name\n56451,M,Sam\n699554,F,Dianne\n")
    assert reader.fields == ["person_id", "gender", "first_name"]
    assert (reader.delimiter, reader.multi_select_delimiter) == (",", "|")
    assert reader.warnings == []
    assert rows(records) == [(1, ["56451", "M", "Sam"]), (2, ["699554", "F", "Dianne"])]
    assert all(r.error is None for r in records)


def test_fields_header_makes_every_body_line_data() -> None:
    reader, records = read("Fields: mdn, tier ,name\n\n+12295551234,gold,Ann\n")
    assert reader.fields == ["mdn", "tier", "name"]
    assert rows(records) == [(1, ["+12295551234", "gold", "Ann"])]


@pytest.mark.parametrize("value", [" \t", "\t", "tab", "TAB", " Tab ", "\\t"])
def test_tab_delimiter_spellings(value: str) -> None:
    reader, records = read(f"Delimiter:{value}\n\nmdn\tname\n+12295551234\tA, B\n")
    assert reader.delimiter == "\t"
    assert reader.fields == ["mdn", "name"]
    assert rows(records) == [(1, ["+12295551234", "A, B"])]


def test_pipe_delimiter_with_fields_header() -> None:
    reader, records = read("Fields: mdn,name\nDelimiter: |\n\n+12295551234|a,b\n")
    assert reader.delimiter == "|"
    assert rows(records) == [(1, ["+12295551234", "a,b"])]


def test_header_names_are_case_insensitive_and_multi_select_delimiter() -> None:
    reader, _ = read("FIELDS: mdn\nmulti-select-delimiter: ;\n\n")
    assert reader.fields == ["mdn"]
    assert reader.multi_select_delimiter == ";"


def test_unknown_header_is_a_warning() -> None:
    reader, records = read("X-Source: crm\nFields: mdn\n\n+12295551234\n")
    assert reader.warnings == ["unknown header 'X-Source' ignored (line 1)"]
    assert rows(records) == [(1, ["+12295551234"])]


@pytest.mark.parametrize(
    "text",
    [
        "Fields: mdn\n+12295551234\n",  # body line right after the headers
        "Fields: mdn\nDelimiter: ,",  # end of file inside the block
        "Fields: mdn\n \n+12295551234\n",  # a space is not a blank line
    ],
)
def test_header_block_must_end_with_a_blank_line(text: str) -> None:
    error = file_error(text)
    assert error.error_class == INVALID_IMPORT_FILE_FORMAT
    assert "blank line" in error.message


def test_more_blank_lines_after_the_block_are_skipped() -> None:
    _, records = read("Fields: mdn\n\n\n\n+12295551234\n")
    assert rows(records) == [(1, ["+12295551234"])]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Delimiter: ,;\n\nmdn\n", "'delimiter'"),
        ("Delimiter:\n\nmdn\n", "'delimiter'"),
        ('Delimiter: "\n\nmdn\n', "'delimiter'"),
        ("Multi-Select-Delimiter: ab\n\nmdn\n", "'multi-select-delimiter'"),
        ("Fields: mdn\nfields: mdn\n\n", "given twice"),
    ],
)
def test_bad_header_values_fail_the_file(text: str, words: str) -> None:
    error = file_error(text)
    assert error.error_class == INVALID_IMPORT_FILE_FORMAT
    assert words in error.message


def test_header_block_with_header_row() -> None:
    reader, records = read("Delimiter: ;\n\nmdn;name\n+12295551234;x\n")
    assert reader.fields == ["mdn", "name"]
    assert rows(records) == [(1, ["+12295551234", "x"])]


def test_header_row_names_are_trimmed_and_may_be_quoted() -> None:
    reader, _ = read('" mdn", name \n')
    assert reader.fields == ["mdn", "name"]


# --- field names ------------------------------------------------------------------


@pytest.mark.parametrize("text", ["mdn,First_Name\n", "Fields: mdn,First_Name\n\n"])
def test_uppercase_field_name_fails_naming_it(text: str) -> None:
    error = file_error(text)
    assert error.error_class == INVALID_IMPORT_FILE_FORMAT
    assert "'First_Name'" in error.message


@pytest.mark.parametrize("text", ["first_name,tier\nA,gold\n", "Fields: first_name\n\n"])
def test_no_identifying_column(text: str) -> None:
    error = file_error(text)
    assert (error.error_class, error.message) == (
        INVALID_IMPORT_FILE_FORMAT,
        NO_IDENTIFYING_COLUMN_MESSAGE,
    )


@pytest.mark.parametrize("name", IDENTIFYING)
def test_each_identifying_column_is_enough(name: str) -> None:
    reader, _ = read(f"{name},tier\n")
    assert reader.fields == [name, "tier"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("mdn,,tier\n", "field 2 has no name"),
        ("mdn,a,a\n", "'a' appears twice"),
        ("mdn,a\x00\n", "NUL in a field name"),
    ],
)
def test_empty_or_repeated_field_name(text: str, words: str) -> None:
    assert words in file_error(text).message


@pytest.mark.parametrize(
    "data", [b"", b"\xef\xbb\xbf", b"\n\n", b"\r\n", b"Delimiter: ;\n\n", b"Delimiter: ;\n\n\n"]
)
def test_no_header_row(data: bytes) -> None:
    error = file_error(data)
    assert (error.error_class, error.message) == (
        INVALID_IMPORT_FILE_FORMAT,
        "file has no header row",
    )


def test_fields_header_and_empty_body_is_a_file_without_records() -> None:
    reader, records = read("Fields: mdn\n\n")
    assert (reader.fields, records) == (["mdn"], [])


# --- body -------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [b"", b"Fields: mdn,name\n\n"])
def test_bom_is_tolerated(prefix: bytes) -> None:
    body = b"+12295551234,x\n" if prefix else b"mdn,name\n+12295551234,x\n"
    reader, records = read(b"\xef\xbb\xbf" + prefix + body)
    assert reader.fields == ["mdn", "name"]
    assert rows(records) == [(1, ["+12295551234", "x"])]


def test_crlf_everywhere() -> None:
    text = 'Fields: mdn,note\r\nDelimiter: ;\r\n\r\n+1;a\r\n+2;"b\r\nc"\r\n+3;\r\n'
    reader, records = read(text)
    assert reader.delimiter == ";"
    assert rows(records) == [(1, ["+1", "a"]), (2, ["+2", "b\r\nc"]), (3, ["+3", ""])]


def test_quoted_line_breaks_count_as_one_record() -> None:
    text = 'mdn,note\n+1,"two\nlines"\n+2,"three\n\nlines, ""quoted"""\n+3,plain\n'
    _, records = read(text)
    assert rows(records) == [
        (1, ["+1", "two\nlines"]),
        (2, ["+2", 'three\n\nlines, "quoted"']),
        (3, ["+3", "plain"]),
    ]


def test_blank_body_lines_are_skipped_without_a_number() -> None:
    _, records = read("mdn,x\n\n+1,a\n\r\n\n+2,b\n")
    assert rows(records) == [(1, ["+1", "a"]), (2, ["+2", "b"])]


def test_single_column_empty_value_is_written_quoted() -> None:
    _, records = read('mdn\n""\n+1\n')
    assert rows(records) == [(1, [""]), (2, ["+1"])]


def test_malformed_rows_keep_their_number_and_values() -> None:
    _, records = read("mdn,a,b\n+1,x\n+2,x,y,z\n+3,x,y\n")
    assert records == [
        Record(1, ["+1", "x"], RowError(MALFORMED_ROW, "Row has 2 fields; the header has 3")),
        Record(
            2, ["+2", "x", "y", "z"], RowError(MALFORMED_ROW, "Row has 4 fields; the header has 3")
        ),
        Record(3, ["+3", "x", "y"], None),
    ]


def test_text_after_a_closing_quote_is_a_row_error_and_reading_goes_on() -> None:
    _, records = read('mdn,a\n+1,"x"y\n+2,z\n')
    assert records[0].number == 1
    assert records[0].values == []
    assert records[0].error is not None
    assert records[0].error.error_class == MALFORMED_ROW
    assert records[0].error.message.startswith("Row is not valid CSV: ")
    assert records[1] == Record(2, ["+2", "z"], None)


def test_quote_open_at_end_of_file_is_a_row_error() -> None:
    _, records = read('mdn,a\n+1,ok\n+2,"never closed\n')
    assert records[0] == Record(1, ["+1", "ok"], None)
    assert records[1].number == 2
    assert records[1].error is not None
    assert records[1].error.error_class == MALFORMED_ROW


def test_quotes_inside_unquoted_fields_are_characters() -> None:
    _, records = read('mdn,a\n+1,5" tall\n')
    assert rows(records) == [(1, ["+1", '5" tall'])]


def test_nul_character_rejects_the_row() -> None:
    _, records = read("mdn,a\n+1,x\x00y\n+2,z\n")
    assert records[0] == Record(
        1, ["+1", "x\ufffdy"], RowError(MALFORMED_ROW, "Row contains a NUL character")
    )
    assert records[1].error is None


@pytest.mark.parametrize("size", [1, 2, 3, 100])
def test_chunk_sizes(size: int) -> None:
    text = "mdn\n" + "".join(f"+{i}\n" for i in range(1, 8))
    reader = open_persons(io.BytesIO(text.encode()))
    chunks = list(reader.chunks(size))
    assert all(len(c) == size for c in chunks[:-1])
    assert 1 <= len(chunks[-1]) <= size
    assert [r.number for c in chunks for r in c] == list(range(1, 8))


def test_chunk_size_must_be_positive() -> None:
    reader = open_persons(io.BytesIO(b"mdn\n+1\n"))
    with pytest.raises(ValueError):
        next(reader.chunks(0))


class _EndlessBody(io.RawIOBase):
    """A header row and then records for ever: only a streaming reader gets a chunk."""

    def __init__(self) -> None:
        self._pending = b"mdn,name\n"
        self._next = 1

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while len(self._pending) < len(buffer):
            self._pending += f"+{self._next},n\n".encode()
            self._next += 1
        n = len(buffer)
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def test_body_is_streamed() -> None:
    reader = open_persons(io.BufferedReader(_EndlessBody()))
    chunks: Iterator[list[Record]] = reader.chunks(1000)
    first = next(chunks)
    second = next(chunks)
    assert (first[0].number, first[-1].number, second[-1].number) == (1, 1000, 2000)


# --- encoding ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "byte", "line"),
    [
        (b"\xff\xfem\x00d\x00n\x00\n", "0xFF", 1),  # UTF-16 is not UTF-8
        (b"Fields: mdn\nX-Note: caf\xe9\n\n", "0xE9", 2),
        (b"Delimiter: ;\n\nmdn;n\xe9\n", "0xE9", 3),
        (b'mdn,name\n+1,ok\n+2,"two\nlines"\n+3,caf\xe9\n', "0xE9", 5),
        (b"Fields: mdn,name\n\n\n+1,ok\n\n+2,caf\xc3\n", "0xC3", 6),  # truncated sequence
    ],
)
def test_invalid_utf8_names_byte_and_line(data: bytes, byte: str, line: int) -> None:
    error = file_error(data)
    assert error.error_class == UNKNOWN_8BIT_ENCODING
    assert f"byte {byte} on line {line}" in error.message


def test_invalid_utf8_after_more_than_one_chunk() -> None:
    good = "".join(f'+{i},"multi\nline"\n' for i in range(1, 11)).encode()
    data = b"mdn,note\n" + good + b"+11,latin1 \xe9t\xe9\n+12,x\n"
    reader = open_persons(io.BytesIO(data))
    seen: list[int] = []
    with pytest.raises(FileError) as info:
        for chunk in reader.chunks(3):
            seen.extend(r.number for r in chunk)
    assert seen == list(range(1, 10))  # three full chunks came before the bad record
    assert info.value.error_class == UNKNOWN_8BIT_ENCODING
    assert "byte 0xE9 on line 22" in info.value.message


def test_valid_multibyte_utf8_everywhere() -> None:
    reader, records = read("Fields: mdn,prénom\nDelimiter: ¦\n\n+1¦Zoë 😀\n")
    assert reader.fields == ["mdn", "prénom"]
    assert rows(records) == [(1, ["+1", "Zoë 😀"])]


# --- ids --------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "value"), [("1", 1), ("56451", 56451), ("007", 7)])
def test_person_id_valid(raw: str, value: int) -> None:
    assert parse_person_id(raw) == value


@pytest.mark.parametrize(
    "raw", ["0", "000", "abc", "-5", "+5", "1.0", " 1", "1e3", "١٢", "²", "9223372036854775808",
            "1" * 5000]
)
def test_person_id_invalid(raw: str) -> None:
    assert parse_person_id(raw) == RowError(INVALID_PERSON_ID, "Invalid person_id")


def test_person_id_bigint_maximum() -> None:
    assert parse_person_id("9223372036854775807") == 2**63 - 1


def test_person_key_valid() -> None:
    key = "0f8fad5b-d9cb-469f-a165-70867728950e"
    assert check_person_key(key) == key


@pytest.mark.parametrize(
    "raw",
    [
        "0F8FAD5B-D9CB-469F-A165-70867728950E",
        "0f8fad5bd9cb469fa16570867728950e",
        "{0f8fad5b-d9cb-469f-a165-70867728950e}",
        "0f8fad5b-d9cb-469f-a165-70867728950",
        "0f8fad5b-d9cb-469f-a165-70867728950e ",
        "not-a-uuid",
    ],
)
def test_person_key_invalid(raw: str) -> None:
    assert check_person_key(raw) == RowError(INVALID_PERSON_KEY, "Invalid person_key")


# --- writer -----------------------------------------------------------------------


def test_write_without_header_block() -> None:
    text = write_persons(["mdn", "note"], [["+1", 'say "hi", ok'], ["+2", "a\nb"], ["+3", ""]])
    assert text == 'mdn,note\n+1,"say ""hi"", ok"\n+2,"a\nb"\n+3,\n'


def test_write_with_header_block() -> None:
    text = write_persons(["mdn", "tags"], [["+1", "a|b"]], "\t", ";", header_block=True)
    assert text == "Fields: mdn,tags\nDelimiter: tab\nMulti-Select-Delimiter: ;\n\n+1\ta|b\n"


def test_write_non_default_delimiter_needs_a_header_block_even_without_fields() -> None:
    text = write_persons(["mdn"], [[""]], "|")
    assert text == 'Delimiter: |\n\nmdn\n""\n'
    assert rows(read(text)[1]) == [(1, [""])]


def test_write_quotes_a_header_row_that_looks_like_a_header_line() -> None:
    text = write_persons(["a:b", "mdn"], [["1", "+1"]])
    assert text.startswith('"a:b",mdn\n')
    reader, records = read(text)
    assert reader.fields == ["a:b", "mdn"]
    assert reader.warnings == []
    assert rows(records) == [(1, ["1", "+1"])]


@pytest.mark.parametrize("delimiter", ["", ";;", '"', "\n", "\r", " "])
def test_write_rejects_unusable_delimiters(delimiter: str) -> None:
    with pytest.raises(ValueError):
        write_persons(["mdn"], [], delimiter)


def test_write_rejects_names_a_fields_header_cannot_hold() -> None:
    with pytest.raises(ValueError):
        write_persons(["mdn", "a,b"], [], header_block=True)


_NAMES = st.from_regex(r"[a-z_][a-z0-9_]{0,7}", fullmatch=True)
_SPECIAL = st.sampled_from(list(',;|\t:"\r\n \ufeff'))
_CHARS = st.characters(codec="utf-8", exclude_characters="\x00")
_VALUES = st.text(alphabet=st.one_of(_CHARS, _SPECIAL), max_size=12)
_DELIMITERS = st.one_of(
    st.sampled_from(list(",\t|;:")),
    st.characters(codec="utf-8", exclude_characters='\x00"\r\n '),
)


@st.composite
def _files(draw: st.DrawFn) -> tuple[list[str], list[list[str]], str, str, bool]:
    extra = draw(st.lists(_NAMES, max_size=4))
    fields = list(dict.fromkeys([draw(st.sampled_from(IDENTIFYING)), *extra]))
    width = len(fields)
    body = draw(st.lists(st.lists(_VALUES, min_size=width, max_size=width), max_size=8))
    return fields, body, draw(_DELIMITERS), draw(_DELIMITERS), draw(st.booleans())


@settings(max_examples=300, deadline=None)
@given(_files(), st.integers(min_value=1, max_value=4))
def test_written_files_read_back_unchanged(
    case: tuple[list[str], list[list[str]], str, str, bool], size: int
) -> None:
    fields, body, delimiter, multi, header_block = case
    text = write_persons(fields, body, delimiter, multi, header_block=header_block)
    variants = [text]
    if not any("\n" in value or "\r" in value for row in body for value in row):
        # Only here can LF be turned into CRLF without changing the values too.
        variants.append(text.replace("\n", "\r\n"))
    for variant in variants:
        reader, records = read(variant, size)
        assert reader.fields == fields
        assert reader.delimiter == delimiter
        assert reader.multi_select_delimiter == multi
        assert reader.warnings == []
        assert records == [Record(n, row, None) for n, row in enumerate(body, 1)]
