"""The hand-made COPY text of ``ingestd.db.copy_text`` reads back as given: row results
(text, text[] with every character COPY or an array literal escapes), in the table and
through the ledger's readers for the sidecars."""

from __future__ import annotations

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
    codec="utf-8", exclude_characters="\x00")), max_size=12)
EXAMPLES = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def file_row(conn: Conn) -> Conn:
    conn.execute(
        "INSERT INTO ingestd.files (company, name, claim_id, sha256, size, status, started_at)"
        " VALUES ('x', 'x', 'x', 'x', 0, 'failed', now())")
    return conn


@EXAMPLES
@given(rows=st.lists(st.lists(cells, max_size=5), min_size=1, max_size=6), ref=st.none() | cells,
       message=cells)
def test_row_results_read_back_as_given(file_row: Conn, rows: list[list[str]], ref: str | None,
                                        message: str) -> None:
    conn = file_row
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
    # And as the sidecars read them back.
    assert [(r, str(ref), f) for r, _, ref, *_, f in expected if r % 2] \
        == list(ledger.accepted_rows(conn, file_id))
    assert [(r, f) for r, *_, f in expected if not r % 2] \
        == [(x.record, x.fields) for x in ledger.rejected_rows(conn, file_id)]


def test_a_nul_is_stored_as_a_replacement_character() -> None:
    # PostgreSQL text cannot hold NUL: the echo of a row rejected for it keeps U+FFFD.
    assert copy_text.text_array(["a\x00b"]) == copy_text.text_array(["a\ufffdb"])
    assert copy_text.text("a\x00\t") == "a\ufffd\\t"

