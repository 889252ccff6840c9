"""The hand-made COPY text of ``ingestd.db.copy_text`` reads back as what psycopg's own
``write_row`` stores: row results (text, text[]) and contact values (booleans,
timestamps with any offset, NULL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestd.db import copy_text, ledger
from ingestd.errors import RowError

Conn = psycopg.Connection[Any]

# Text as partners send it, with what COPY and array literals escape made likely.
cells = st.text(st.one_of(st.sampled_from('\\"\t\n\r ,{}NULL\'é'), st.characters(
    exclude_characters="\x00", exclude_categories=("Cs",))), max_size=12)
stamps = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                      timezones=st.sampled_from(
                          [UTC, timezone(timedelta(hours=5, minutes=30)),
                           timezone(-timedelta(hours=11))]))
EXAMPLES = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def tables(conn: Conn) -> Conn:
    conn.execute("CREATE TEMP TABLE v (n int, t text, b boolean, s timestamptz)")
    conn.execute(
        "INSERT INTO ingestd.files (company, name, claim_id, sha256, size, status, started_at)"
        " VALUES ('x', 'x', 'x', 'x', 0, 'failed', now())")
    return conn


@EXAMPLES
@given(rows=st.lists(st.lists(cells, max_size=5), min_size=1, max_size=6), ref=st.none() | cells,
       message=cells)
def test_row_results_read_back_as_given(tables: Conn, rows: list[list[str]], ref: str | None,
                                        message: str) -> None:
    conn = tables
    file_id = conn.execute("SELECT max(id) FROM ingestd.files").fetchone()[0]  # type: ignore[index]
    conn.execute("DELETE FROM ingestd.row_results")
    results = ledger.RowResults(conn, file_id)
    for record, fields in enumerate(rows, start=1):
        if record % 2:
            results.accept(record, fields, ref=ref, keep=True)
        else:
            results.reject(record, RowError(message, message, message, message), fields)
    results.flush()
    stored = conn.execute(
        "SELECT record, accepted, ref, error_class, message, error_field, error_detail, fields"
        " FROM ingestd.row_results ORDER BY record").fetchall()
    expected = [
        (r, True, ref, None, None, "", "", f) if r % 2 else
        (r, False, None, message, message, message, message, f)
        for r, f in enumerate(rows, start=1)
    ]
    assert stored == expected


@EXAMPLES
@given(text=st.none() | cells, flag=st.none() | st.booleans(), stamp=st.none() | stamps)
def test_fields_read_back_as_write_row_stores_them(
        tables: Conn, text: str | None, flag: bool | None, stamp: datetime | None) -> None:
    conn = tables
    conn.execute("DELETE FROM v")
    with conn.cursor() as cur:
        with cur.copy("COPY v FROM STDIN") as copy:
            copy.write_row((1, text, flag, stamp))
        with cur.copy("COPY v FROM STDIN") as copy:
            copy.write("\t".join(copy_text.field(x) for x in (2, text, flag, stamp)) + "\n")
    a, b = conn.execute("SELECT t, b, s FROM v ORDER BY n").fetchall()
    assert a == b == (text, flag, stamp)


def test_a_nul_fails_as_write_row_does() -> None:
    with pytest.raises(psycopg.DataError, match="NUL"):
        copy_text.text_array(["a\x00"])
    with pytest.raises(psycopg.DataError, match="NUL"):
        copy_text.field("a\x00")


@EXAMPLES
@given(rows=st.lists(st.tuples(st.none() | cells, st.none() | st.booleans(),
                               st.none() | stamps), min_size=1, max_size=5))
def test_lines_read_back_as_given(tables: Conn, rows: list[tuple[Any, ...]]) -> None:
    conn = tables
    conn.execute("DELETE FROM v")
    with conn.cursor() as cur, cur.copy("COPY v FROM STDIN") as copy:
        copy.write("".join(copy_text.line((n, *row)) for n, row in enumerate(rows)))
    assert conn.execute("SELECT t, b, s FROM v ORDER BY n").fetchall() == rows
