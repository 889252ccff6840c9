"""Issue 9, item 2: a record longer than ``max_line_bytes`` is a row error, memory flat.

The readers are tested on their own (record numbers, messages, file errors), then
through the real ``Pipeline`` with a real PostgreSQL (what a partner sees in
``done/`` and ``failed/``), then through the daemon as a subprocess with
``INGESTD_MAX_LINE_BYTES``. The limit is set low (4096) so a few-MB line is
enough. That memory stays flat is shown by ``bench/long_lines.py`` (figures, not
a threshold); here ``BoundedCsv`` is checked against the csv module itself: with
any limit it gives what the csv module gives for every record within the limit,
``Oversize`` for every other one, and the same record boundaries throughout.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import Daemon, base_env, drop, query, result_json, run_cli, setup_company
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ingestd import landing
from ingestd.bounded_csv import OVERSIZE, BoundedCsv, NotUtf8, Oversize, Unparsable
from ingestd.contacts.reader import COLUMNS, ContactsReader, Section
from ingestd.db.database import Database
from ingestd.errors import (
    CONTACTS_GLOBAL,
    CONTACTS_REJECTED,
    INVALID_IMPORT_FILE_FORMAT,
    MALFORMED_ROW,
    UNKNOWN_8BIT_ENCODING,
    FileError,
    RowError,
)
from ingestd.lifecycle import Pipeline
from ingestd.persons.carrier import make_carrier
from ingestd.persons.reader import Record, open_persons
from ingestd.settings import SettingsError, load_settings

LIMIT = 4096
TOO_LONG = f"Row is longer than max_line_bytes ({LIMIT} bytes)"
CONTACTS_TOO_LONG = f"The row is longer than max_line_bytes ({LIMIT} bytes)."
BIG = 3 * 1024 * 1024  # a few MB: hundreds of times the limit
HEADER = [c.name for c in COLUMNS]


def mdn(n: int) -> str:
    return f"+1229555{n:04d}"


# --- the Person Import reader ---------------------------------------------------------


def persons(data: bytes, limit: int = LIMIT) -> list[Record]:
    reader = open_persons(io.BytesIO(data), limit)
    return [record for chunk in reader.chunks(2) for record in chunk]


def persons_file_error(data: bytes, limit: int = LIMIT) -> FileError:
    with pytest.raises(FileError) as info:
        persons(data, limit)
    return info.value


def test_persons_long_line_is_one_malformed_row_between_applied_neighbours() -> None:
    data = b"mdn,note\n+1,a\n+2," + b"x" * BIG + b"\n+3,c\n"
    assert persons(data) == [
        Record(1, ["+1", "a"]),
        Record(2, [], _row_error(TOO_LONG)),
        Record(3, ["+3", "c"]),
    ]


def test_persons_multi_line_quoted_field_over_the_limit_is_one_record() -> None:
    # A million-line field would do the same; its lines look like records but are not.
    inside = b"".join(b"+9%d,fake\n" % i for i in range(2000))
    data = b"mdn,note\n+1,a\n+2,\"" + inside + b"\"\"still quoted\"\n+3,c\n"
    records = persons(data)
    assert [(r.number, r.values, r.error) for r in records] == [
        (1, ["+1", "a"], None),
        (2, [], _row_error(TOO_LONG)),
        (3, ["+3", "c"], None),
    ]


def test_persons_quote_opened_on_a_long_line_is_followed_to_its_close() -> None:
    data = (b"mdn,note\n+1,\"" + b"y" * BIG + b"\n+8,inside\n\",tail\n+2,b\n")
    assert [(r.number, r.values) for r in persons(data)] == [(1, []), (2, ["+2", "b"])]


def test_persons_record_at_the_limit_is_read() -> None:
    line = b"+1," + b"z" * (LIMIT - 4) + b"\n"  # LIMIT bytes, its LF included
    assert len(line) == LIMIT
    assert persons(b"mdn,note\n" + line + b"+1," + line[2:]) == [
        Record(1, ["+1", "z" * (LIMIT - 4)]),
        Record(2, [], _row_error(TOO_LONG)),
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"mdn," + b"a" * BIG + b"\n+1,x\n",
         f"line 1 is longer than max_line_bytes ({LIMIT} bytes)"),
        (b"Fields: mdn\nX-Note: " + b"n" * BIG + b"\n\n+1\n",
         f"line 2 is longer than max_line_bytes ({LIMIT} bytes)"),
        (b"Delimiter: ;\n\nmdn;" + b"a" * BIG + b"\n+1;x\n",
         f"header row: Row is longer than max_line_bytes ({LIMIT} bytes)"),
        (b'Delimiter: ;\n\nmdn;"' + b"a\n" * 3000 + b'"\n+1;x\n',
         f"header row: Row is longer than max_line_bytes ({LIMIT} bytes)"),
    ],
    ids=["first-line", "header-block", "field-name-row", "multi-line-field-name-row"],
)
def test_persons_long_header_line_fails_the_file(data: bytes, message: str) -> None:
    error = persons_file_error(data)
    assert (error.error_class, error.message) == (INVALID_IMPORT_FILE_FORMAT, message)


def test_persons_invalid_utf8_inside_a_long_line_is_still_found() -> None:
    data = b"mdn,note\n+1,a\n+2," + b"x" * BIG + b"caf\xe9\n+3,c\n"
    error = persons_file_error(data)
    assert error.error_class == UNKNOWN_8BIT_ENCODING
    assert f"byte 0xE9 on line 3 (at byte {3 + BIG + 4})" in error.message


def test_persons_lines_after_a_long_record_keep_their_numbers_for_encoding_errors() -> None:
    data = b"mdn,note\n+1,\"" + b"q\n" * 3000 + b"\"\n+2,ok\n+3,caf\xe9\n"
    error = persons_file_error(data)
    assert "byte 0xE9 on line 3004 (at byte 7)" in error.message


def _row_error(message: str) -> RowError:
    return RowError(MALFORMED_ROW, message)


# --- the contacts reader ----------------------------------------------------------------


def contact_row(code: str, treatment: str = "t1", **overrides: str) -> list[str]:
    values = {name: "" for name in HEADER}
    values.update(
        creationTimeStamp="2018-05-13T15:02:40.719Z", responseTrackingCode=code,
        subjectId=f"subject-{code}", treatmentId=treatment, presented="false",
    )
    values.update(overrides)
    return [values[name] for name in HEADER]


def contacts_text(*rows: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows([HEADER, *rows])
    return out.getvalue()


def sections(text: str, limit: int = LIMIT) -> list[Section]:
    return list(ContactsReader.from_text(text, limit).sections())


def shape(found: list[Section]) -> list[tuple[str, list[int], str | None]]:
    return [(s.code, [r.record for r in s.rows], s.error) for s in found]


def test_contacts_long_record_is_a_rejected_section_of_its_own() -> None:
    text = contacts_text(
        contact_row("a", "t1"),
        contact_row("b", "t1", responseValue="v" * BIG),
        contact_row("c", "t1"), contact_row("c", "t2"),
    )
    assert shape(sections(text)) == [
        ("a", [1], None), ("", [2], CONTACTS_TOO_LONG), ("c", [3, 4], None),
    ]


def test_contacts_multi_line_quoted_field_over_the_limit() -> None:
    note = "line\r\n" * 2000  # short lines inside one quoted field
    text = contacts_text(contact_row("a"), contact_row("b", responseValue=note), contact_row("c"))
    assert shape(sections(text)) == [
        ("a", [1], None), ("", [2], CONTACTS_TOO_LONG), ("c", [3], None),
    ]


def test_contacts_long_header_row_is_global() -> None:
    text = ",".join(HEADER) + "," + "h" * BIG + "\r\n" + ",".join(contact_row("a")) + "\r\n"
    with pytest.raises(FileError) as info:
        ContactsReader.from_text(text, LIMIT)
    assert info.value.error_class == CONTACTS_GLOBAL
    assert info.value.message == f"The header row is longer than max_line_bytes ({LIMIT} bytes)."


def test_contacts_invalid_utf8_inside_a_long_record_is_global() -> None:
    data = (contacts_text(contact_row("a")) + ",".join(contact_row("b", responseValue="v" * BIG))
            ).encode() + b"\xff\r\n"
    with pytest.raises(FileError) as info:
        list(ContactsReader(io.BytesIO(data), LIMIT).sections())
    assert info.value.error_class == CONTACTS_GLOBAL
    assert info.value.message == "The file is not UTF-8 text (byte 0xff cannot be decoded)."


# --- BoundedCsv against the csv module ------------------------------------------------


class _Bad(Exception):
    pass


def reference(data: bytes, limit: int, delimiter: str, strict: bool) -> list[Any]:
    """What ``BoundedCsv.rows`` must give: the csv module over whole lines, no limit."""
    lines = _split_lf(data)
    old = csv.field_size_limit(1 << 30)

    def feed() -> Iterator[str]:
        for number, raw in enumerate(lines, 1):
            try:
                yield raw.decode()
            except UnicodeDecodeError as e:
                raise _Bad(("not utf-8", raw[e.start], number, e.start + 1)) from None

    out: list[Any] = []
    reader = csv.reader(feed(), delimiter=delimiter, strict=strict)
    done = 0
    try:
        while True:
            try:
                row: Any = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                row = ("unparsable", str(e), reader.line_num)
            except _Bad as e:
                out.append(e.args[0])
                break
            size = sum(len(line) for line in lines[done : reader.line_num])
            done = reader.line_num
            if size > limit:
                out.append("oversize")
            elif row:
                out.append(row)
    finally:
        csv.field_size_limit(old)
    return out


def _split_lf(data: bytes) -> list[bytes]:
    parts = data.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]]
    return [*lines, parts[-1]] if parts[-1] else lines


def bounded(data: bytes, limit: int, delimiter: str, strict: bool, piece: int) -> list[Any]:
    source = BoundedCsv(io.BytesIO(data), limit, strict=strict, piece=piece)
    out: list[Any] = []
    try:
        for row in source.rows(delimiter=delimiter):
            if isinstance(row, Oversize):
                out.append("oversize")
            elif isinstance(row, Unparsable):
                out.append(("unparsable", row.reason, row.line))
            else:
                out.append(row)
    except NotUtf8 as e:
        out.append(("not utf-8", e.byte, e.line, e.column))
    return out


_TEXT = st.lists(
    st.sampled_from([b"a", b"b", b",", b";", b'"', b'"', b"\n", b"\r\n", b"\r", b" ",
                     b"\xc3\xa9", b"\t"]),
    max_size=60,
).map(b"".join)
_WITH_BAD_BYTES = st.lists(
    st.sampled_from([b"a", b",", b'"', b"\n", b"\xc3\xa9", b"\xe9", b"\xc3", b"\xe2\x82"]),
    max_size=40,
).map(b"".join)


@settings(max_examples=1000, deadline=None)
# A multi-byte delimiter last in a dropped piece, then a quote opening the next field.
@example(data=b'\xc3\xa9"\na', limit=1, delimiter="é", strict=False, piece=1)
@example(data=b'a;"b\n;"\n', limit=2, delimiter=";", strict=True, piece=1)
@given(
    data=_TEXT,
    limit=st.integers(1, 30),
    delimiter=st.sampled_from([",", ";", "\t", "é"]),
    strict=st.booleans(),
    piece=st.integers(1, 8),
)
def test_bounded_csv_matches_the_csv_module(
    data: bytes, limit: int, delimiter: str, strict: bool, piece: int
) -> None:
    assert bounded(data, limit, delimiter, strict, piece) == reference(
        data, limit, delimiter, strict)


@settings(max_examples=200, deadline=None)
@given(data=_WITH_BAD_BYTES, limit=st.integers(1, 12), strict=st.booleans(),
       piece=st.integers(1, 5))
def test_bounded_csv_finds_the_first_bad_byte_also_in_dropped_records(
    data: bytes, limit: int, strict: bool, piece: int
) -> None:
    assert bounded(data, limit, ",", strict, piece) == reference(data, limit, ",", strict)


def test_bounded_csv_oversize_is_one_value() -> None:
    assert bounded(b"a\n" + b"b" * 100 + b"\nc\n", 10, ",", True, 3) == [["a"], "oversize", ["c"]]
    assert Oversize() == OVERSIZE


# --- the setting ------------------------------------------------------------------------


def test_max_line_bytes_setting() -> None:
    assert load_settings().max_line_bytes == 1024 * 1024
    assert load_settings(max_line_bytes=4096).max_line_bytes == 4096
    with pytest.raises(SettingsError, match="max_line_bytes"):
        load_settings(max_line_bytes=100)


# --- through the Pipeline (real database, real files) ---------------------------------


class Landing:
    """Company acme under a landing root, and a Pipeline with ``max_line_bytes`` = LIMIT."""

    def __init__(self, db_url: str, root: Path, db: Database) -> None:
        self.db_url, self.root, self.db = db_url, root, db
        self.settings = load_settings(database_url=db_url, landing_root=root,
                                      state_dir=root.parent / "state", max_line_bytes=LIMIT)
        self.dirs = setup_company(db_url, root, "acme")

    def process(self, name: str, content: bytes, headers: bytes | None = None) -> str:
        if headers is not None:
            drop(self.dirs, name + ".headers", headers)
        pipeline = Pipeline(self.settings, self.db, make_carrier(self.settings))
        outcome = pipeline.process(landing.drop(drop(self.dirs, name, content), 0))
        return outcome.status

    def result(self, name: str, where: str) -> dict[str, Any]:
        return result_json(self.dirs.done if where == "done" else self.dirs.failed, name)

    def sidecar(self, name: str) -> list[list[str]]:
        with open(self.dirs.done / name, encoding="utf-8", newline="") as fh:
            return list(csv.reader(fh))


@pytest.fixture
def acme(db_url: str, tmp_path: Path) -> Iterator[Landing]:
    root = tmp_path / "landing"
    settings = load_settings(database_url=db_url, landing_root=root, state_dir=tmp_path / "s")
    with Database(settings, pool_size=2) as db:
        yield Landing(db_url, root, db)


def stored_mdns(db_url: str) -> list[str]:
    return [r[0] for r in query(db_url, "SELECT mdn FROM acme.persons ORDER BY mdn")]


def test_pipeline_persons_long_line_is_a_malformed_row_and_neighbours_are_applied(
        acme: Landing) -> None:
    content = (f"mdn,external_person_id\n{mdn(1)},e1\n".encode() + f"{mdn(2)},".encode()
               + b"x" * BIG + f"\n{mdn(3)},e3\n".encode())
    assert acme.process("big.persons", content) == "done"
    result = acme.result("big.persons", "done")
    assert (result["rows"], result["accepted"], result["rejected"]) == (3, 2, 1)
    assert result["rejected_by_class"] == {MALFORMED_ROW: 1}
    assert acme.sidecar("big.persons.errors.csv") == [
        ["record", "error_class", "error_message", "error_field", "error_detail", "mdn",
         "external_person_id"],
        ["2", MALFORMED_ROW, TOO_LONG, "", TOO_LONG[0].lower() + TOO_LONG[1:]],
    ]
    assert stored_mdns(acme.db_url) == [mdn(1), mdn(3)]


def test_pipeline_persons_long_header_line_fails_the_file(acme: Landing) -> None:
    content = b"Fields: mdn\nX-Note: " + b"n" * BIG + f"\n\n{mdn(1)}\n".encode()
    assert acme.process("head.persons", content) == "failed"
    assert acme.result("head.persons", "failed")["error"] == {
        "class": INVALID_IMPORT_FILE_FORMAT,
        "message": f"line 2 is longer than max_line_bytes ({LIMIT} bytes)",
    }
    assert stored_mdns(acme.db_url) == []


def test_pipeline_contacts_long_record_is_rejected_and_neighbours_accepted(
        acme: Landing) -> None:
    note = "line\r\n" * 2000  # a multi-line quoted field over the limit
    text = contacts_text(contact_row("a"), contact_row("b", responseValue=note),
                         contact_row("c"), contact_row("d", responseValue="v" * BIG))
    assert acme.process("c.csv", text.encode()) == "done"
    result = acme.result("c.csv", "done")
    assert (result["rows"], result["accepted"], result["rejected"]) == (4, 2, 2)
    assert result["rejected_by_class"] == {CONTACTS_REJECTED: 2}
    assert acme.sidecar("c.csv.rejected.csv") == [["2", CONTACTS_TOO_LONG],
                                                  ["4", CONTACTS_TOO_LONG]]
    assert [r[0] for r in acme.sidecar("c.csv.accepted.csv")] == ["1", "3"]
    codes = query(acme.db_url, "SELECT response_tracking_code FROM acme.contacts ORDER BY 1")
    assert codes == [("a",), ("c",)]


def test_pipeline_contacts_long_header_row_and_huge_headers_file_are_global(
        acme: Landing) -> None:
    header = (",".join(HEADER) + "," + "h" * BIG + "\r\n").encode()
    assert acme.process("h.csv", header) == "failed"
    assert acme.result("h.csv", "failed")["error"] == {
        "class": CONTACTS_GLOBAL,
        "message": f"The header row is longer than max_line_bytes ({LIMIT} bytes).",
    }
    headers = b"If-Unmodified-Since: Sat, 01 Jan 2000 00:00:00 GMT\n" + b"X: " + b"y" * BIG
    assert acme.process("p.csv", contacts_text(contact_row("a")).encode(), headers) == "failed"
    assert acme.result("p.csv", "failed")["error"] == {
        "class": CONTACTS_GLOBAL, "message": "p.csv.headers is larger than 65536 bytes.",
    }


# --- the daemon, as a subprocess -----------------------------------------------------------


def test_daemon_with_max_line_bytes_from_the_environment(
        db_url: str, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    dirs = setup_company(db_url, landing, "acme")
    env = base_env(db_url, landing, tmp_path / "state", INGESTD_MAX_LINE_BYTES=str(LIMIT))
    d = Daemon(env).start()
    try:
        drop(dirs, "big.persons", f"mdn\n{mdn(1)}\n".encode() + b"9" * BIG
             + f"\n{mdn(3)}\n".encode())
        done = d.wait_event("file.done", file="big.persons", timeout=60)[0]
        assert (done["rows"], done["accepted"], done["rejected"]) == (3, 2, 1)
    finally:
        assert d.stop() == 0, d.tail()
    with open(dirs.done / "big.persons.errors.csv", encoding="utf-8", newline="") as fh:
        assert list(csv.reader(fh))[1:] == [
            ["2", MALFORMED_ROW, TOO_LONG, "", TOO_LONG[0].lower() + TOO_LONG[1:]]]
    assert stored_mdns(db_url) == [mdn(1), mdn(3)]


def test_daemon_refuses_a_tiny_max_line_bytes(db_url: str, tmp_path: Path) -> None:
    env = base_env(db_url, tmp_path / "landing", tmp_path / "state",
                   INGESTD_MAX_LINE_BYTES="100")
    r = run_cli(["run"], env)
    assert r.returncode == 2, r.stdout + r.stderr
    [line] = r.stderr.splitlines()
    assert "max_line_bytes" in line and "INGESTD_MAX_LINE_BYTES" in line
