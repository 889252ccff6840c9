"""ContactsProcessor against a real database: create, update, preconditions, batches."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from daemon_helpers import company_before

from ingestd.apply_context import ApplyContext
from ingestd.contacts.apply import ContactsProcessor, _modified_after
from ingestd.contacts.reader import COLUMNS, OBJECT_VARIABLES_MESSAGE
from ingestd.db import ledger, migrations
from ingestd.db.companies import Company
from ingestd.db.ledger import RowResults
from ingestd.errors import (
    CONTACTS_GLOBAL,
    CONTACTS_PRECONDITION_FAILED,
    CONTACTS_PRECONDITION_REQUIRED,
    CONTACTS_REJECTED,
    CONTACTS_UPDATE_REJECTED,
    FileError,
)
from ingestd.settings import load_settings

HEADER = [c.name for c in COLUMNS]
FORMATS = Path(__file__).parent / "data"  # the public SAS example
Conn = psycopg.Connection[Any]


def row(code: str, treatment: str = "t1", **overrides: str) -> list[str]:
    values = {name: "" for name in HEADER}
    values.update(
        creationTimeStamp="2018-05-13T15:02:40.719Z", responseTrackingCode=code,
        subjectId=f"subject-{code}", excludeFromContactRule="false",
        objectVariables="ov1~~~A~~~string", ruleFired="0101", treatmentId=treatment,
        treatmentRevisionId=f"rev-{treatment}", presented="false",
    )
    values.update(overrides)
    return [values[name] for name in HEADER]


class Importer:
    """Applies files the way the lifecycle does: each in its own committed transaction."""

    def __init__(self, conn: Conn, company: Company, folder: Path) -> None:
        self.conn, self.company, self.folder = conn, company, folder
        self.count = 0

    def run(self, rows: list[list[str]], *, since: str | None = None, chunk_size: int = 5000,
            header: list[str] | None = None, file_id: int | None = None) -> RowResults:
        self.count += 1
        path = self.folder / f"c{self.count}.csv"
        out = io.StringIO()
        csv.writer(out, lineterminator="\r\n").writerows([header or HEADER, *rows])
        path.write_text(out.getvalue(), encoding="utf-8")
        headers_path = None
        if since is not None:
            headers_path = path.with_name(path.name + ".headers")
            headers_path.write_text(f"If-Unmodified-Since: {since}\n", encoding="utf-8")
        self.conn.commit()  # a test's own queries must not share the file's transaction
        results = RowResults(self.conn if file_id else None, file_id)
        ctx = ApplyContext(
            conn=self.conn, company=self.company, path=path, name=path.name,
            headers_path=headers_path, results=results,
            settings=load_settings(chunk_size=chunk_size), carrier=None,  # type: ignore[arg-type]
        )
        with self.conn.transaction():
            ContactsProcessor().apply(ctx)
            results.flush()
        assert ctx.columns == (header or HEADER)
        return results

    def contacts(self) -> dict[str, dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT response_tracking_code, id, subject_id, exclude_from_contact_rule,"
            " created_at, modified_at FROM acme.contacts"
        ).fetchall()
        self.conn.commit()
        keys = ("id", "subject_id", "exclude", "created_at", "modified_at")
        return {r[0]: dict(zip(keys, r[1:], strict=True)) for r in rows}

    def treatments(self, code: str) -> list[tuple[Any, ...]]:
        rows = self.conn.execute(
            "SELECT t.treatment_id, t.presented, t.response_value, t.ordinal"
            " FROM acme.contact_treatments t JOIN acme.contacts c ON c.id = t.contact_id"
            " WHERE c.response_tracking_code = %s ORDER BY t.ordinal", (code,)
        ).fetchall()
        self.conn.commit()
        return rows

    def db_now(self) -> datetime:
        row = self.conn.execute("SELECT clock_timestamp()").fetchone()
        self.conn.commit()
        assert row is not None
        return row[0]  # type: ignore[no-any-return]


@pytest.fixture
def importer(conn: Conn, company: Company, tmp_path: Path) -> Importer:
    return Importer(conn, company, tmp_path)


def errors(results: RowResults) -> list[tuple[int, str, str]]:
    return [(record, e.error_class, e.message) for record, e in results.sample_errors]


def iso(moment: datetime) -> str:
    return moment.isoformat()


FUTURE = (datetime.now(UTC) + timedelta(days=1)).isoformat()


# --- create and update across files -----------------------------------------------------


def test_create_then_update_with_precondition(importer: Importer) -> None:
    first = importer.run([row("a", "t1"), row("a", "t2"), row("b")])
    assert (first.accepted, first.rejected) == (3, 0)
    created = importer.contacts()
    assert set(created) == {"a", "b"}
    assert [t[0] for t in importer.treatments("a")] == ["t1", "t2"]

    second = importer.run(
        [row("a", "t2", presented="true", responseValue="yes", excludeFromContactRule="true")],
        since=FUTURE,
    )
    assert (second.accepted, second.rejected) == (1, 0)
    updated = importer.contacts()
    assert updated["a"]["id"] == created["a"]["id"]  # same contact, no duplicate
    assert updated["a"]["exclude"] is True
    assert updated["a"]["modified_at"] > created["a"]["modified_at"]
    assert updated["a"]["created_at"] == created["a"]["created_at"]
    assert updated["b"] == created["b"]
    # only the row's treatment changed; blank updatable cells would clear (none here)
    assert importer.treatments("a") == [("t1", False, None, 0), ("t2", True, "yes", 1)]


def test_blank_updatable_cell_clears_the_stored_value(importer: Importer) -> None:
    importer.run([row("a", responseValue="yes", presented="true")])
    importer.run([row("a", responseValue="", presented="")], since=FUTURE)
    assert importer.treatments("a") == [("t1", None, None, 0)]


def test_update_without_precondition_is_428(importer: Importer) -> None:
    importer.run([row("a", "t1"), row("a", "t2")])
    before = importer.contacts()
    results = importer.run([row("a", "t1", presented="true"), row("a", "t2")])
    assert (results.accepted, results.rejected) == (0, 2)
    assert errors(results) == [(1, CONTACTS_PRECONDITION_REQUIRED, "Precondition Required"),
                               (2, CONTACTS_PRECONDITION_REQUIRED,
                                "Precondition Required (record 1)")]
    assert importer.contacts() == before


def test_contact_modified_after_the_precondition_is_412(importer: Importer) -> None:
    importer.run([row("a"), row("b")])
    between = importer.db_now()  # after the create, before the update below
    importer.run([row("a", presented="true")], since=FUTURE)  # modifies a, not b
    results = importer.run([row("a", responseValue="late"), row("b", responseValue="ok")],
                           since=iso(between))
    assert errors(results) == [(1, CONTACTS_PRECONDITION_FAILED, "Precondition Failed")]
    assert results.accepted == 1  # b was not modified after `between`
    assert importer.treatments("a") == [("t1", True, None, 0)]
    assert importer.treatments("b") == [("t1", False, "ok", 0)]


def test_http_date_precondition_compares_whole_seconds(importer: Importer) -> None:
    importer.run([row("a")])
    modified = importer.contacts()["a"]["modified_at"]
    same_second = format_datetime(modified.astimezone(UTC), usegmt=True)
    assert importer.run([row("a", presented="true")], since=same_second).accepted == 1
    earlier = format_datetime(modified.astimezone(UTC) - timedelta(seconds=1), usegmt=True)
    results = importer.run([row("a")], since=earlier)
    assert errors(results)[0][2] == "Precondition Failed"


def test_modified_after() -> None:
    since = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert not _modified_after(since + timedelta(microseconds=400_000), since)
    assert _modified_after(since + timedelta(seconds=1), since)
    precise = since + timedelta(microseconds=100)
    assert _modified_after(since + timedelta(microseconds=200), precise)
    assert not _modified_after(since + timedelta(microseconds=100), precise)


@pytest.mark.parametrize(
    ("changed", "message"),
    [
        (row("a", subjectId="someone-else"),
         "The value for the subjectId column differs from the stored contact; "
         "it cannot be changed."),
        (row("a", creationTimeStamp="2018-05-13T15:02:41Z"),
         "The value for the creationTimeStamp column differs from the stored contact; "
         "it cannot be changed."),
        (row("a", treatmentRevisionId="rev-2"),
         "The value for the treatmentRevisionId column differs from the stored treatment t1; "
         "it cannot be changed."),
        (row("a", "t9"), "The contact has no treatment with treatmentId t9."),
    ],
)
def test_changed_immutable_column_rejects_the_update(
    importer: Importer, changed: list[str], message: str
) -> None:
    importer.run([row("a", "t1"), row("a", "t2")])
    results = importer.run([changed], since=FUTURE)
    assert errors(results) == [(1, CONTACTS_UPDATE_REJECTED, message)]
    assert importer.treatments("a") == [("t1", False, None, 0), ("t2", False, None, 1)]


def test_the_same_instant_written_differently_is_not_a_change(importer: Importer) -> None:
    importer.run([row("a")])
    results = importer.run([row("a", creationTimeStamp="2018-05-13T17:02:40.719+02:00")],
                           since=FUTURE)
    assert results.accepted == 1


def test_error_in_a_later_row_of_an_update_names_its_record(importer: Importer) -> None:
    importer.run([row("a", "t1"), row("a", "t2")])
    results = importer.run([row("a", "t1"), row("a", "t3")], since=FUTURE)
    assert errors(results)[0][2] == "The contact has no treatment with treatmentId t3. (record 2)"
    assert results.rejected == 2


def test_without_abtests_column_the_stored_value_is_not_compared(importer: Importer) -> None:
    importer.run([row("a", abTests="ab-1")])
    header = [n for n in HEADER if n != "abTests"]
    short = [v for n, v in zip(HEADER, row("a", presented="true"), strict=True) if n != "abTests"]
    assert importer.run([short], header=header, since=FUTURE).accepted == 1


# --- one file -------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 5000])
def test_non_contiguous_sections_in_one_file(importer: Importer, chunk_size: int) -> None:
    """A later section updates the contact an earlier one created: no precondition needed."""
    results = importer.run(
        [row("a", "t1"), row("a", "t2"), row("b"), row("a", "t2", responseValue="yes"),
         row("b", "t7"), row("a", "t1", presented="true")],
        chunk_size=chunk_size,
    )
    assert errors(results) == [
        (5, CONTACTS_UPDATE_REJECTED, "The contact has no treatment with treatmentId t7.")
    ]
    assert results.accepted == 5
    assert set(importer.contacts()) == {"a", "b"}
    assert importer.treatments("a") == [("t1", True, None, 0), ("t2", False, "yes", 1)]


@pytest.mark.parametrize("chunk_size", [1, 5000])
def test_an_existing_contact_updated_twice_in_one_file_is_checked_once(
    importer: Importer, chunk_size: int
) -> None:
    importer.run([row("a")])
    importer.run([row("a", presented="true")], since=FUTURE)
    between = importer.db_now()
    # The first update passes the precondition and sets modified_at; the second must
    # not then see "modified after" because of this very file.
    results = importer.run([row("a", responseValue="1"), row("b"), row("a", responseValue="2")],
                           since=iso(between), chunk_size=chunk_size)
    assert (results.accepted, results.rejected) == (3, 0)
    assert importer.treatments("a") == [("t1", False, "2", 0)]


def test_a_rejected_create_leaves_the_code_free(importer: Importer) -> None:
    results = importer.run([row("a", objectVariables="x"), row("b"), row("a", "t2")])
    assert errors(results) == [(1, CONTACTS_REJECTED, OBJECT_VARIABLES_MESSAGE)]
    assert results.accepted == 2
    assert [t[0] for t in importer.treatments("a")] == ["t2"]


def test_reimport_does_not_duplicate_contacts(importer: Importer) -> None:
    rows = [row("a", "t1"), row("a", "t2"), row("b")]
    importer.run(rows)
    before = importer.contacts()
    again = importer.run(rows)
    assert (again.accepted, again.rejected) == (0, 3)
    assert set(e[1] for e in errors(again)) == {CONTACTS_PRECONDITION_REQUIRED}
    with_precondition = importer.run(rows, since=FUTURE)
    assert (with_precondition.accepted, with_precondition.rejected) == (3, 0)
    after = importer.contacts()
    assert {k: v["id"] for k, v in after.items()} == {k: v["id"] for k, v in before.items()}


def test_sas_example(importer: Importer) -> None:
    with (FORMATS / "sas-example-request.csv").open(newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    at = header.index("pathTraversed") + 1
    header.insert(at, "abTests")
    for r in rows[:3]:
        r.insert(at, "")
    results = importer.run(rows, header=header)
    # every row the section took with it is listed too, naming the record at fault
    assert errors(results) == [(1, CONTACTS_REJECTED, OBJECT_VARIABLES_MESSAGE)] + [
        (record, CONTACTS_REJECTED, f"{OBJECT_VARIABLES_MESSAGE} (record 1)")
        for record in (2, 3)]
    assert (results.rows, results.accepted, results.rejected) == (4, 1, 3)
    assert results.rejected_sections == 1
    assert list(importer.contacts()) == ["VIP.9ea6417c-25d5-4dd7-9377-69881d6563ef"]


def test_outcomes_are_stored_for_the_sidecars(importer: Importer, conn: Conn) -> None:
    file_id = ledger.insert(conn, company="acme", name="c.csv", claim_id=uuid.uuid4().hex,
                            fmt="contacts", sha256="0", size=0, started_at=datetime.now(UTC))
    importer.run([row("a"), row(""), row("a", presented="true")], file_id=file_id)
    stored = conn.execute(
        "SELECT record, accepted, ref, error_class, message, fields FROM ingestd.row_results"
        " WHERE file_id = %s ORDER BY record", (file_id,)
    ).fetchall()
    contact_id = str(importer.contacts()["a"]["id"])
    assert stored == [
        (1, True, contact_id, None, None, row("a")),
        (2, False, None, CONTACTS_REJECTED, "The responseTrackingCode column cannot be blank.",
         row("")),
        (3, True, contact_id, None, None, row("a", presented="true")),
    ]


# --- global problems ------------------------------------------------------------------


def test_bad_header_is_global(importer: Importer) -> None:
    with pytest.raises(FileError) as caught:
        importer.run([], header=[n for n in HEADER if n != "subjectId"])
    assert caught.value.error_class == CONTACTS_GLOBAL


def test_bad_precondition_is_global_and_nothing_is_written(importer: Importer) -> None:
    with pytest.raises(FileError) as caught:
        importer.run([row("a")], since="last tuesday")
    assert caught.value.error_class == CONTACTS_GLOBAL
    assert "If-Unmodified-Since" in caught.value.message
    assert importer.contacts() == {}


def test_migration_0004_keeps_an_existing_companys_contacts(conn: Conn, tmp_path: Path) -> None:
    """A company made before 0004, with a contact: after the upgrade the contact reads as
    before, the tables leave room on their pages (fillfactor), and it updates as ever."""
    company_before(conn, 4)
    old = Importer(conn, Company("old", "old", "US"), tmp_path)
    old.run([row("a"), row("a", "t2")])
    stored = ("SELECT c.*, t.* FROM old.contacts c JOIN old.contact_treatments t"
              " ON t.contact_id = c.id ORDER BY t.ordinal")
    before = conn.execute(stored).fetchall()
    conn.commit()

    assert migrations.upgrade_company(conn, "old") == ["old:0004_contacts_speed.sql"]
    conn.commit()

    assert conn.execute(stored).fetchall() == before
    options = conn.execute(
        "SELECT relname, reloptions FROM pg_class WHERE relnamespace = 'old'::regnamespace"
        " AND relname IN ('contacts', 'contact_treatments') ORDER BY relname").fetchall()
    conn.commit()
    assert options == [("contact_treatments", ["fillfactor=50"]), ("contacts", ["fillfactor=50"])]
    results = old.run([row("a", presented="true")], since=FUTURE)
    assert (results.accepted, results.rejected) == (1, 0)
    assert conn.execute("SELECT treatment_id, presented FROM old.contact_treatments"
                        " ORDER BY ordinal").fetchall() == [("t1", True), ("t2", False)]


def test_a_nul_in_a_cell_rejects_its_section_and_is_stored_as_a_replacement_character(
        importer: Importer, conn: Conn) -> None:
    """PostgreSQL text cannot hold NUL, not even in the row results behind the rejected
    sidecar: the section is rejected (not the whole file failed) and its echo shows
    U+FFFD where the NUL was."""
    file_id = ledger.insert(conn, company="acme", name="c.csv", claim_id=uuid.uuid4().hex,
                            fmt="contacts", sha256="0", size=0, started_at=datetime.now(UTC))
    results = importer.run([row("a", channel="e\x00mail"), row("b")], file_id=file_id)
    assert (results.rows, results.accepted, results.rejected) == (2, 1, 1)
    assert list(importer.contacts()) == ["b"]
    stored = conn.execute(
        "SELECT record, accepted, message, fields FROM ingestd.row_results"
        " WHERE file_id = %s ORDER BY record", (file_id,)).fetchall()
    assert stored == [
        (1, False, "The value for the channel column must not contain a NUL character.",
         row("a", channel="e\ufffdmail")),
        (2, True, None, row("b")),
    ]
