"""The batched contacts applier agrees with a plain row-at-a-time reference.

The reference below is written for clarity, not speed. It reads the CSV with the csv
module, groups records into sections itself, checks every cell of every row with
``_typed`` (the cell-level checks, the contract's building block) and, section by
section in file order, reads the stored contact with one SELECT and writes the outcome
at once with plain INSERTs and UPDATEs, remembering in a set which codes this file
created or updated. The applier (``ingestd.contacts.apply``) instead checks a batch's
cells with column kernels and creates the new contacts they pass in bulk, groups and
checks the other rows in its reader (typing a repeated contact cell once), reads a
batch's contacts with one query on another thread, resolves the batch in memory and
writes it in bulk; the two share no code beyond ``_typed``, the column list and the
headers-file parser.

Files are drawn so that rows collide on purpose: codes from a small pool (some stored
before the file, modified before or after its If-Unmodified-Since), treatments from a
small pool, the same instant written differently, invalid values of every kind, rows
of the wrong width, blank codes, repeated and non-contiguous sections; ``chunk_size``
is small, so every rule is exercised within a batch and across batch boundaries. Each
example applies the same file to two fresh companies seeded alike, and asserts the
same row outcomes (record, rows, class, message, fields, which contact), read back from
the stored row results as the sidecars read them, and the same tables afterwards.
Longer files of mostly new contacts (decided in bulk) mix in every error class, and one
test breaks a kernel on purpose to show the comparison notices.
"""

from __future__ import annotations

import csv
import io
import itertools
import random
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestd import errors
from ingestd.apply_context import ApplyContext
from ingestd.contacts import kernels
from ingestd.contacts.apply import ContactsProcessor
from ingestd.contacts.reader import (
    BLANK_CODE_MESSAGE,
    CODE,
    COLUMN_BY_NAME,
    COLUMNS,
    TREATMENT_ID,
    Kind,
    Level,
    Value,
    _typed,
    parse_headers_file,
)
from ingestd.contacts.store import DB_COLUMN
from ingestd.db import ledger
from ingestd.db.companies import Company, add_company
from ingestd.db.ledger import RowResults
from ingestd.settings import load_settings

Conn = psycopg.Connection[Any]
# record, rows, class ("" if accepted), message, fields, code of the contact ("" if rejected)
Outcome = tuple[int, int, str, str, tuple[str, ...], str]

CONTACT = [c.name for c in COLUMNS if c.level is Level.CONTACT]
TREATMENT = [c.name for c in COLUMNS if c.level is Level.TREATMENT]
OLD, NEW = datetime(2020, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC)
SINCE = [None, "2025-01-01T00:00:00Z", "Wed, 01 Jan 2025 00:00:00 GMT",
         "2020-01-01T00:00:00.5Z"]

# Per column: values that pass its checks, values that fail them.
STAMPS = ["2018-05-13T15:02:40.719Z", "2018-05-13T17:02:40.719+02:00", "2018-05-13T15:02Z",
          "2018-05-13T15:02:40.7191239Z", "", "2018-05-13T15:02:40", "2020-02-29T00:00Z",
          "2018-04-30T23:59:59.999999-1400", "2018-05-31T10:00:00+05", "2018-05-13T15:02:40.5Z"]
# Cells the kernels must not misread: quotes, escapes, line breaks, blank-looking ones.
TEXTS = ["", 'say "hi"', "back\\slash", "tab\there", "two\nlines", "\u3000", " ", "\x1c",
         "\u00a0x", "é", "a,b"]
VALUES: dict[str, tuple[list[str], list[str]]] = {
    "creationTimeStamp": (STAMPS, ["2018-02-30T00:00:00Z", "soon", "2018-04-31T00:00Z",
                                   "2019-02-29T00:00Z", " 2018-05-13T15:02Z"]),
    "subjectId": (["s1", "s1 ", "s2", "=1+1", "s\u00a0"], [" ", "\u3000", "a\x00b"]),
    "subjectLevel": (["", "household"], []),
    "excludeFromContactRule": (["true", "false", "TRUE", "", "fAlSe", " "], ["yes", "true "]),
    "conclusionResponseValue": (TEXTS, []),
    "conclusionResponseType": (["", "crt"], []),
    "objectUri": (["/d/1", ""], []),
    "objectRevisionId": (["", "r1"], []),
    "objectType": (["decision"], []),
    "objectVariables": (["", "a~~~b~~~c", "a~~~~~~c;d~~~e~~~f", "a~~~~b~~~c", "a b~~~ ~~~c"],
                        ["a~~~b", "~~~b~~~c", "a~~~b~~~c;", "a~~~b~~~~~~c"]),
    "receiverId": (["", "r"], []),
    "receiverRole": (["customer"], []),
    "channel": (["web", " web", "phone"], []),
    "ruleFired": (["", "0101", "1"], ["012", "1 "]),
    "pathTraversed": (["", "/a/b"], []),
    "abTests": (["", "ab"], []),
    "treatmentId": (["t0", "t1", "t2"], [""]),
    "treatmentRevisionId": (["", "tr"], []),
    "treatmentGroupId": (["", "g1", "g2"], []),
    "treatmentGroupRevisionId": ([""], []),
    "objectNodeId": (["", "n"], []),
    "presented": (["true", "false", ""], ["maybe"]),
    "presentedTimeStamp": (STAMPS, ["2018-13-01T00:00Z"]),
    "respondedTimeStamp": (STAMPS, ["x"]),
    "responseValue": (["", "clicked", *TEXTS], ["x\x00"]),
    "responseType": (["", "click"], []),
    "responseChannel": (["", "web"], []),
}
CODES = ["c1", "c2", "c3", "c4", "c5"]


# --- the reference -------------------------------------------------------------------------


def _modified_after(modified_at: datetime, since: datetime) -> bool:
    if since.microsecond == 0:  # an HTTP date: compared at whole seconds
        modified_at = modified_at.replace(microsecond=0)
    return modified_at > since


def _sections(header: list[str], records: list[list[str]]) -> list[list[tuple[int, list[str]]]]:
    """Contiguous records with one non-blank code; a blank-code record stands alone."""
    at = [h.strip() for h in header].index(CODE)
    sections: list[list[tuple[int, list[str]]]] = []
    last: str | None = None
    for record, fields in enumerate(records, start=1):
        code = fields[at] if at < len(fields) else ""
        if code.strip() and code == last:
            sections[-1].append((record, fields))
        else:
            sections.append([(record, fields)])
        last = code if code.strip() else None
    return sections


def _check(index: dict[str, int], width: int, rows: list[tuple[int, list[str]]]
           ) -> tuple[str | None, dict[str, Value], list[dict[str, Value]]]:
    """The section's first error, else its contact values and one treatment a row."""
    contact: dict[str, Value] = {}
    treatments: list[dict[str, Value]] = []
    for n, (record, fields) in enumerate(rows):
        def fail(message: str, record: int = record, n: int = n) -> tuple[str, dict[str, Value],
                                                                          list[dict[str, Value]]]:
            return (message if n == 0 else f"{message} (record {record})"), {}, []
        if len(fields) != width:
            return fail(f"The row has {len(fields)} fields; the header has {width}.")
        if not fields[index[CODE]].strip():
            return fail(BLANK_CODE_MESSAGE)
        typed: dict[str, Value] = {}
        for name, i in index.items():
            value, error = _typed(COLUMN_BY_NAME[name], fields[i])
            if error is not None:
                return fail(error)
            typed[name] = value
        for name in index:
            if COLUMN_BY_NAME[name].level is Level.CONTACT and n > 0 \
                    and contact[name] != typed[name]:
                return fail(f"The rows of this contact disagree on the {name} column.")
        if n == 0:
            contact = {k: v for k, v in typed.items() if k in CONTACT}
        treatment = {k: v for k, v in typed.items() if k in TREATMENT}
        if any(t[TREATMENT_ID] == treatment[TREATMENT_ID] for t in treatments):
            return fail(f"The treatmentId {treatment[TREATMENT_ID]} appears more than once"
                        " in this contact.")
        treatments.append(treatment)
    return None, contact, treatments


def _stored(conn: Conn, schema: str, code: str
            ) -> tuple[str, datetime, dict[str, Value], dict[str, dict[str, Value]]] | None:
    row = conn.execute(
        f"SELECT id::text, modified_at, {', '.join(DB_COLUMN[n] for n in CONTACT)}"
        f' FROM "{schema}".contacts WHERE response_tracking_code = %s', (code,)).fetchone()
    if row is None:
        return None
    treatments = {}
    for t in conn.execute(
            f"SELECT {', '.join(DB_COLUMN[n] for n in TREATMENT)}"
            f' FROM "{schema}".contact_treatments WHERE contact_id = %s', (row[0],)):
        treatments[t[0]] = dict(zip(TREATMENT, t, strict=True))
    return row[0], row[1], dict(zip(CONTACT, row[2:], strict=True)), treatments


def reference_apply(conn: Conn, schema: str, path: Path, since: datetime | None
                    ) -> list[Outcome]:
    with open(path, newline="", encoding="utf-8") as fh:
        header, *records = [r for r in csv.reader(fh)]
    records = [r for r in records if r]  # empty lines are no records
    names = [h.strip() for h in header]
    index = {n: i for i, n in enumerate(names) if n.lower() != "id"}
    touched: set[str] = set()
    out: list[Outcome] = []

    def reject(rows: list[tuple[int, list[str]]], cls: str, message: str) -> None:
        out.append((rows[0][0], len(rows), cls, message, tuple(rows[0][1]), ""))

    for rows in _sections(header, records):
        error, contact, treatments = _check(index, len(header), rows)
        if error is not None:
            reject(rows, errors.CONTACTS_REJECTED, error)
            continue
        code = str(contact[CODE])
        stored = _stored(conn, schema, code)
        if stored is None:
            contact_id = str(uuid.uuid4())
            values = {n: contact.get(n) for n in CONTACT}
            conn.execute(
                f'INSERT INTO "{schema}".contacts (id, {", ".join(DB_COLUMN[n] for n in CONTACT)})'
                f" VALUES (%s, {', '.join(['%s'] * len(CONTACT))})",
                (contact_id, *values.values()))
            for ordinal, t in enumerate(treatments):
                conn.execute(
                    f'INSERT INTO "{schema}".contact_treatments (contact_id, ordinal,'
                    f" {', '.join(DB_COLUMN[n] for n in TREATMENT)})"
                    f" VALUES (%s, %s, {', '.join(['%s'] * len(TREATMENT))})",
                    (contact_id, ordinal, *(t[n] for n in TREATMENT)))
        else:
            contact_id, modified_at, values, stored_treatments = stored
            if code not in touched:
                if since is None:
                    reject(rows, errors.CONTACTS_PRECONDITION_REQUIRED, "Precondition Required")
                    continue
                if _modified_after(modified_at, since):
                    reject(rows, errors.CONTACTS_PRECONDITION_FAILED, "Precondition Failed")
                    continue
            problem = None
            for name in contact:
                if COLUMN_BY_NAME[name].immutable and values[name] != contact[name]:
                    problem = (f"The value for the {name} column differs from the stored"
                               " contact; it cannot be changed.")
                    break
            for n, ((record, _), t) in enumerate(zip(rows, treatments, strict=True)):
                if problem is not None:
                    break
                old = stored_treatments.get(str(t[TREATMENT_ID]))
                if old is None:
                    problem = f"The contact has no treatment with treatmentId {t[TREATMENT_ID]}."
                else:
                    for name in t:
                        if COLUMN_BY_NAME[name].immutable and old[name] != t[name]:
                            problem = (f"The value for the {name} column differs from the"
                                       f" stored treatment {t[TREATMENT_ID]}; it cannot be"
                                       " changed.")
                            break
                if problem is not None and n > 0:
                    problem = f"{problem} (record {record})"
            if problem is not None:
                reject(rows, errors.CONTACTS_UPDATE_REJECTED, problem)
                continue
            updatable = [n for n in CONTACT if not COLUMN_BY_NAME[n].immutable]
            conn.execute(
                f'UPDATE "{schema}".contacts SET modified_at = now(), '
                + ", ".join(f"{DB_COLUMN[n]} = %s" for n in updatable) + " WHERE id = %s",
                (*(contact[n] for n in updatable), contact_id))
            updatable = [n for n in TREATMENT if not COLUMN_BY_NAME[n].immutable]
            for t in treatments:
                conn.execute(
                    f'UPDATE "{schema}".contact_treatments SET '
                    + ", ".join(f"{DB_COLUMN[n]} = %s" for n in updatable)
                    + " WHERE contact_id = %s AND treatment_id = %s",
                    (*(t[n] for n in updatable), contact_id, t[TREATMENT_ID]))
        touched.add(code)
        out.extend((record, 1, "", "", tuple(fields), code) for record, fields in rows)
    conn.commit()
    return out


# --- the applier under test ----------------------------------------------------------------


class Counted(RowResults):
    """Row results that count the rows decided in bulk (by the column kernels)."""

    in_bulk = 0

    def accept_kept(self, count: int, lines: Callable[[str], memoryview]) -> None:
        super().accept_kept(count, lines)
        self.in_bulk += count


def fast_apply(conn: Conn, schema: str, path: Path, headers: Path | None, chunk_size: int
               ) -> tuple[list[Outcome], int]:
    """The applier's outcomes as the sidecars read them (from the row results stored), and
    how many rows it decided in bulk."""
    row = conn.execute(
        "INSERT INTO ingestd.files (company, name, claim_id, sha256, size, status, started_at)"
        " VALUES (%s, %s, %s, 'x', 0, 'failed', now()) RETURNING id",
        (schema, path.name, schema)).fetchone()
    assert row is not None
    results = Counted(conn, row[0])
    ctx = ApplyContext(conn=conn, company=Company(schema, schema, "US"), path=path,
                       name=path.name, headers_path=headers, results=results,
                       settings=load_settings(chunk_size=chunk_size),
                       carrier=None)  # type: ignore[arg-type]
    with conn.transaction():
        ContactsProcessor().apply(ctx)
        results.flush()
    outcomes = stored_outcomes(conn, schema, row[0])
    assert (results.rows, results.accepted) == (
        sum(o[1] for o in outcomes), sum(o[1] for o in outcomes if not o[2]))
    return outcomes, results.in_bulk


def stored_outcomes(conn: Conn, schema: str, file_id: int) -> list[Outcome]:
    """Accepted rows and rejected sections' leaders, in record order; a leader counts the
    rows stored with it (errors.csv's)."""
    # Which contact an accepted row names, by its code (ids are random on both sides).
    codes = dict(conn.execute(
        f'SELECT id::text, response_tracking_code FROM "{schema}".contacts').fetchall())
    along = Counter(ref for (ref,) in conn.execute(
        "SELECT ref FROM ingestd.row_results WHERE file_id = %s AND NOT accepted"
        " AND ref IS NOT NULL", (file_id,)))
    out: list[Outcome] = [(record, 1, "", "", tuple(fields), codes[ref])
                          for record, ref, fields in ledger.accepted_rows(conn, file_id)]
    out.extend((r.record, 1 + along[str(r.record)], r.error_class, r.message, tuple(r.fields),
                "") for r in ledger.rejected_rows(conn, file_id, leaders_only=True))
    conn.commit()
    return sorted(out)


# --- files -------------------------------------------------------------------------------------


Seeded = list[tuple[str, list[str], datetime]]  # code, a row of its section, modified_at


def draw(rnd: random.Random, bad_share: float = 0.1, sections: int = 10, fresh: float = 0.0,
         plain: float = 0.0, chunk_sizes: tuple[int, ...] = (1, 2, 3, 5, 5000)
         ) -> tuple[list[str], Seeded, list[list[str]], str | None, int]:
    """The header, the stored contacts, the file's records, the precondition, chunk_size.

    Drawn from a seeded ``random.Random`` rather than by Hypothesis' own strategies: these
    weights keep most rows valid and most sections on known codes (so contacts get
    created, updated twice, refused and re-created), which Hypothesis' search, biased
    towards edge cases, seldom does.
    """
    header = [c.name for c in COLUMNS if c.name != "abTests" or rnd.random() < 0.7]
    if rnd.random() < 0.2:
        header.insert(rnd.randrange(len(header) + 1), "id")
    if rnd.random() < 0.2:
        rnd.shuffle(header)

    def good(name: str) -> str:  # a valid value, the column's plainest one ``plain`` of the time
        values = VALUES[name][0]
        return values[0] if rnd.random() < plain else rnd.choice(values)

    def contact_cells(code: str) -> dict[str, str]:
        cells = {n: good(n) for n in CONTACT if n != CODE}
        return {**cells, CODE: code}

    def row(contact: dict[str, str], treatment: str) -> list[str]:
        cells = {**contact, **{n: good(n) for n in TREATMENT}}
        cells[TREATMENT_ID] = treatment
        kind = rnd.random()
        if kind < bad_share:  # a bad value somewhere
            name = rnd.choice([n for n in VALUES if VALUES[n][1]])
            cells[name] = rnd.choice(VALUES[name][1])
        elif kind < bad_share + 0.2:  # the same instant written differently, or a change
            name = rnd.choice(["creationTimeStamp", "subjectId", "channel",
                               "excludeFromContactRule", "treatmentGroupId", "objectVariables"])
            cells[name] = rnd.choice(VALUES[name][0])
        elif kind < bad_share + 0.22:
            cells[CODE] = rnd.choice(["", " "])
        fields = ["" if h == "id" else cells.get(h.strip(), "") for h in header]
        if rnd.random() < 0.04:
            fields.append("extra")
        elif rnd.random() < 0.03:
            fields.pop()
        return fields

    known: dict[str, dict[str, str]] = {}
    seeded: Seeded = []
    for code in rnd.sample(CODES, rnd.randint(0, 3)):
        known[code] = contact_cells(code)
        seeded.append((code, [known[code].get(h, "") if h != TREATMENT_ID else "t0"
                              for h in [c.name for c in COLUMNS]], rnd.choice([OLD, NEW])))
        seeded[-1][1][[c.name for c in COLUMNS].index("treatmentGroupId")] = ""
    records: list[list[str]] = []
    for _ in range(rnd.randint(1, sections)):
        # A new code now and then (the kernels create those in bulk), else a known one.
        code = f"n{len(records)}" if rnd.random() < fresh else rnd.choice(
            [*CODES, *[c for c in known if c not in CODES][-3:]])
        if code not in known or rnd.random() < 0.2:
            known[code] = contact_cells(code)
        treatments = rnd.sample(["t0", "t1", "t2"], rnd.randint(1, 3))
        if rnd.random() < 0.05:
            treatments.append(treatments[0])
        records.extend(row(known[code], t) for t in treatments)
    return header, seeded, records, rnd.choice(SINCE), rnd.choice(chunk_sizes)


def _seed(conn: Conn, schema: str, seeded: Seeded) -> None:
    """Each stored contact with one treatment t0, modified at the time drawn."""
    names = [c.name for c in COLUMNS]
    for code, cells, modified_at in seeded:
        values = dict(zip(names, cells, strict=True))
        typed = {n: _typed(COLUMN_BY_NAME[n], values[n])[0] for n in names}
        typed[CODE], typed["subjectId"] = code, typed["subjectId"] or "s1"
        contact_id = str(uuid.UUID(int=CODES.index(code) + 1, version=4))
        conn.execute(
            f'INSERT INTO "{schema}".contacts (id, modified_at,'
            f" {', '.join(DB_COLUMN[n] for n in CONTACT)})"
            f" VALUES (%s, %s, {', '.join(['%s'] * len(CONTACT))})",
            (contact_id, modified_at, *(typed[n] for n in CONTACT)))
        conn.execute(
            f'INSERT INTO "{schema}".contact_treatments (contact_id, ordinal,'
            f" {', '.join(DB_COLUMN[n] for n in TREATMENT)})"
            f" VALUES (%s, 0, {', '.join(['%s'] * len(TREATMENT))})",
            (contact_id, *(typed[n] for n in TREATMENT)))


def _tables(conn: Conn, schema: str) -> list[tuple[Any, ...]]:
    """Both tables joined, by code and ordinal; no ids (random), no times (the clock)."""
    rows = conn.execute(
        f"SELECT {', '.join('c.' + DB_COLUMN[n] for n in CONTACT)},"
        f" t.ordinal, {', '.join('t.' + DB_COLUMN[n] for n in TREATMENT)},"
        " c.modified_at = now() OR c.modified_at IN (%s, %s)"
        f' FROM "{schema}".contacts c JOIN "{schema}".contact_treatments t'
        " ON t.contact_id = c.id ORDER BY c.response_tracking_code, t.ordinal",
        (OLD, NEW)).fetchall()
    conn.commit()
    return rows


_counter = itertools.count()


def agree(conn: Conn, tmp_path: Path, header: list[str], seeded: Seeded,
          records: list[list[str]], since: str | None, chunk_size: int,
          in_bulk: list[int] | None = None) -> list[Outcome]:
    """Apply the file to two fresh companies seeded alike; assert both ways agree (``in_bulk``
    gets how many rows the applier decided in bulk)."""
    n = next(_counter)
    fast, ref = f"cfast{n}", f"cref{n}"
    path = tmp_path / f"f{n}.csv"
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows([header, *records])
    path.write_text(out.getvalue(), encoding="utf-8")
    headers = None
    if since is not None:
        headers = path.with_name(path.name + ".headers")
        headers.write_text(f"If-Unmodified-Since: {since}\n", encoding="utf-8")
    for company in (fast, ref):
        add_company(conn, company)
        _seed(conn, company, seeded)
        conn.commit()

    expected = reference_apply(
        conn, ref, path, parse_headers_file(headers.read_text()) if headers else None)
    got, bulk = fast_apply(conn, fast, path, headers, chunk_size)
    if in_bulk is not None:
        in_bulk.append(bulk)

    # Row results keep U+FFFD where a field had a NUL (PostgreSQL text cannot hold it).
    assert got == [(*o[:4], tuple(f.replace("\x00", "\ufffd") for f in o[4]), o[5])
                   for o in expected]
    assert _tables(conn, fast) == _tables(conn, ref)
    return got


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32))
def test_the_applier_agrees_with_the_row_at_a_time_reference(
        seed: int, conn: Conn, tmp_path: Path) -> None:
    agree(conn, tmp_path, *draw(random.Random(seed)))


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), bad_share=st.sampled_from([0.02, 0.6]))
def test_longer_files_mostly_clean_or_mostly_bad_agree(
        seed: int, bad_share: float, conn: Conn, tmp_path: Path) -> None:
    """Files of up to 60 sections through the shared batch loop, most rows valid or most
    rows bad, batches of 1 to 5,000 rows."""
    agree(conn, tmp_path, *draw(random.Random(seed), bad_share, sections=60))


@settings(max_examples=16, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), bad_share=st.sampled_from([0.02, 0.2, 0.6]))
def test_files_of_new_contacts_decided_in_bulk_agree(
        seed: int, bad_share: float, conn: Conn, tmp_path: Path) -> None:
    """Files of up to 300 sections, mostly new contacts (which the column kernels decide in
    bulk) among codes repeated in the file or stored, every error class, mostly clean or
    mostly bad, batches of 1 to 5,000 rows: the same outcomes and tables as row at a time."""
    agree(conn, tmp_path, *draw_new(random.Random(seed), bad_share))


def draw_new(rnd: random.Random, bad_share: float
             ) -> tuple[list[str], Seeded, list[list[str]], str | None, int]:
    return draw(rnd, bad_share, sections=300, fresh=0.7, plain=0.9,
                chunk_sizes=(1, 2, 3, 7, 64, 5000))


def test_the_draws_of_new_contacts_reach_the_kernels(conn: Conn, tmp_path: Path) -> None:
    """Those files are worth comparing: the kernels decide many of their rows."""
    in_bulk: list[int] = []
    rnd = random.Random(3)
    for _ in range(4):
        agree(conn, tmp_path, *draw_new(rnd, 0.02), in_bulk=in_bulk)
    assert sum(in_bulk) > 100


def test_the_draws_reach_every_outcome(conn: Conn, tmp_path: Path) -> None:
    """The random files are worth comparing: together they accept rows and reject
    sections with every class, updates included."""
    seen: set[str] = set()
    rnd = random.Random(8)
    for _ in range(40):
        seen.update(o[2] for o in agree(conn, tmp_path, *draw(rnd)))
    assert seen >= {"", errors.CONTACTS_REJECTED, errors.CONTACTS_UPDATE_REJECTED,
                    errors.CONTACTS_PRECONDITION_REQUIRED, errors.CONTACTS_PRECONDITION_FAILED}


@pytest.mark.parametrize("chunk_size", [1, 2, 5000])
def test_a_section_after_its_contact_was_created_and_updated(
        conn: Conn, tmp_path: Path, chunk_size: int) -> None:
    """c1 created, updated by a later section, refused for an immutable change, updated
    again: in one batch and across batches alike."""
    base = {n: VALUES[n][0][0] for n in VALUES} | {CODE: "c1", "subjectId": "s1"}
    header = [c.name for c in COLUMNS]

    def row(**cells: str) -> list[str]:
        return [({**base, **cells}).get(h, "") for h in header]

    c2 = {CODE: "c2"}
    records = [row(), row(treatmentId="t1"), row(**c2), row(presented="true"),
               row(**c2), row(subjectId="s2"), row(**c2),
               row(treatmentId="t1", responseValue="clicked")]
    got = agree(conn, tmp_path, header, [], records, None, chunk_size)
    assert [o[2] for o in got] == ["", "", "", "", "", errors.CONTACTS_UPDATE_REJECTED, "", ""]


def _kernel_case(row: dict[str, str]) -> tuple[list[str], Seeded, list[list[str]], None, int]:
    """New contacts, the last with ``row``'s cells."""
    header = [c.name for c in COLUMNS]
    base = {n: VALUES[n][0][0] for n in VALUES} | {"subjectId": "s1"}
    records = [[({**base, CODE: f"k{n}"}).get(h, "") for h in header] for n in range(6)]
    records.append([({**base, CODE: "k9", **row}).get(h, "") for h in header])
    # Batches of 3 rows: a whole file of a few rows in one batch skips the kernels.
    return header, [], records, None, 3


@pytest.mark.parametrize(("kind", "broken", "row"), [
    # Fractions finer than microseconds: PostgreSQL rounds them, the per-cell code truncates.
    (Kind.TIMESTAMP, r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{5,8}(?:\.[0-9]+)?Z",
     {"presentedTimeStamp": "2018-05-13T15:02:40.7191239Z"}),
    # Spaces read as a value: the blank cell is stored as it is instead of null.
    (Kind.TEXT, "[^\\x00]+", {"responseValue": " "}),
    # "yes" let through: PostgreSQL takes it for true, the per-cell code rejects the row.
    (Kind.BOOLEAN, "(?i:true|false|yes)", {"presented": "yes"}),
])
def test_the_reference_comparison_catches_a_broken_kernel(
        kind: Kind, broken: str, row: dict[str, str], conn: Conn, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison is not blind to the kernels: with one kernel made wrong on purpose,
    the same file no longer agrees (and agrees with the kernel as it is), and the rows
    that agree are decided in bulk."""
    in_bulk: list[int] = []
    agree(conn, tmp_path, *_kernel_case(row), in_bulk)
    assert in_bulk == [6]
    monkeypatch.setitem(kernels._CELL, kind, broken)
    with pytest.raises(AssertionError):
        agree(conn, tmp_path, *_kernel_case(row))
