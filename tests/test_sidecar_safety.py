"""What a partner opens beside a drop: a rejected row names the column at fault and what
was wrong with it (``error_field``, ``error_detail`` in NAME.errors.csv), and no cell of a
CSV sidecar runs as a spreadsheet formula (the formula guard) -- while NAME.retry.persons
stays byte-exact, because it is data to drop again.

Everything goes through the real Pipeline (or the real daemon) against PostgreSQL, with
real files; the HTTP carrier is a real local server that always answers 503 (or 404).
"""

from __future__ import annotations

import csv
import io
import json
import signal
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from carrier_server import CarrierServer, serving
from daemon_helpers import Daemon, base_env, run_cli, setup_company, wait_for
from hypothesis import given
from hypothesis import strategies as st
from pipeline_env import PipelineEnv
from test_contacts_format import AB_TESTS, sas_example_fixed

from ingestd import errors, landing, sidecars
from ingestd.contacts import sidecars as contacts_sidecars
from ingestd.contacts.reader import COLUMNS, OBJECT_VARIABLES_MESSAGE
from ingestd.db.companies import Company
from ingestd.db.database import Database
from ingestd.landing import CompanyDirs
from ingestd.lifecycle import Outcome
from ingestd.persons.custom_fields import FieldDefinition
from ingestd.persons.field_store import replace_fields
from ingestd.persons.reader import open_persons, write_persons

Conn = psycopg.Connection[Any]

ERRORS_HEADER = ["record", "error_class", "error_message", "error_field", "error_detail"]
FIELDS = [
    FieldDefinition(name="tier", type="single_select", options=["gold", "silver"]),
    FieldDefinition(name="tags", type="multi_select", options=["a", "b"]),
    FieldDefinition(name="nick", type="string", charset="ascii"),
    FieldDefinition(name="sms_name", type="string", charset="gsm7"),
    FieldDefinition(name="note", type="string"),
    FieldDefinition(name="age", type="integer"),
    FieldDefinition(name="balance", type="decimal"),
    FieldDefinition(name="vip", type="boolean"),
    FieldDefinition(name="joined", type="date"),
]
# One cell of each kind a spreadsheet reads as a formula (OWASP CSV injection).
FORMULAS = ['=HYPERLINK("http://x","y")', "+cmd", "-2+3", "@SUM(A1)", "\tx", "\rx"]
UK_FIXED = "+442071234567"  # offline: a London fixed line, never a mobile


def mdn(n: int) -> str:
    return f"+1229555{n:04d}"


def body(*lines: str) -> str:
    return "".join(line + "\n" for line in lines)


def read_csv(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.reader(fh))


class Env(PipelineEnv):
    @property
    def done(self) -> Path:
        return self.landing / "acme" / "done"

    def process(self, name: str, content: str, **overrides: Any) -> Outcome:
        inbox = self.landing / "acme" / "inbox"
        inbox.mkdir(parents=True, exist_ok=True)
        (inbox / name).write_bytes(content.encode("utf-8"))
        outcome = self.pipeline(**overrides).process(landing.drop(inbox / name, 0))
        assert outcome.status == "done", outcome.result
        return outcome

    def seed(self, ext: str | None = None, mdn: str | None = None,
             device: str | None = None) -> tuple[int, str]:
        row = self.conn.execute(
            "INSERT INTO acme.persons (external_person_id, mdn, vibes_device_id)"
            " VALUES (%s, %s, %s) RETURNING person_id, person_key::text",
            (ext, mdn, device)).fetchone()
        self.conn.commit()
        assert row is not None
        return int(row[0]), str(row[1])


@pytest.fixture
def env(db_url: str, conn: Conn, company: Company, landing: Path, tmp_path: Path,
        pipeline_db: Database) -> Env:
    return Env.acme(FIELDS, db_url, conn, landing, tmp_path, pipeline_db)


# --- error_field and error_detail, one case per way a row is rejected ------------------------

Seeds = Callable[[Env], dict[str, Any]]


def no_seed(env: Env) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Case:
    header: str
    line: str  # formatted with what ``seed`` returns
    error_class: str
    message: str
    field: str
    detail: str  # formatted likewise
    seed: Seeds = no_seed


MDN_MSG = "The mdn is incorrectly formatted. It should be an E.164 mdn."
INVALID_VALUE_MSG = "Invalid custom field value"
CHARSET_MSG = "Custom field value is incompatible with the field's character set"
NOT_E164 = "is not E.164 (+ and digits) or 10 digits"
DATE_SHAPE = ("is not a date like 2024-05-01T09:30:00Z"
              " (YYYY-MM-DDTHH:MM:SS then Z, +HHMM or +HH:MM)")
UNKNOWN_KEY = str(uuid.UUID(int=7))

CASES: dict[str, Case] = {
    "malformed": Case(
        "external_person_id,mdn,tier", "e1,x", errors.MALFORMED_ROW,
        "Row has 2 fields; the header has 3", "", "row has 2 fields; the header has 3"),
    "malformed_nul": Case(
        "external_person_id,note", "e1,a\0b", errors.MALFORMED_ROW,
        "Row contains a NUL character", "", "row contains a NUL character"),
    "person_id_text": Case(
        "person_id,tier", "abc,gold", errors.INVALID_PERSON_ID, "Invalid person_id",
        "person_id", "'abc' is not a positive integer"),
    "person_id_zero": Case(
        "person_id,tier", "0,gold", errors.INVALID_PERSON_ID, "Invalid person_id",
        "person_id", "'0' is not a positive integer"),
    "person_id_huge": Case(
        "person_id,tier", "9223372036854775808,gold", errors.INVALID_PERSON_ID,
        "Invalid person_id", "person_id",
        "'9223372036854775808' is larger than the largest person_id"),
    "person_key": Case(
        "person_key,tier", "X,gold", errors.INVALID_PERSON_KEY, "Invalid person_key",
        "person_key", "'X' is not a lowercase UUID"),
    "not_found_id": Case(
        "person_id,tier", "999,gold", errors.PERSON_NOT_FOUND, "Person not found",
        "person_id", "no person with person_id 999"),
    "not_found_key": Case(
        "person_key,tier", f"{UNKNOWN_KEY},gold", errors.PERSON_NOT_FOUND, "Person not found",
        "person_key", f"no person with person_key {UNKNOWN_KEY}"),
    "create_requires": Case(
        "external_person_id,mdn,tier", ",,gold", errors.PERSON_CREATE_REQUIRES,
        "Creating a Person requires a device or an external person id", "",
        "no mdn, vibes_device_id or external_person_id to create a person with"),
    "mdn_shape": Case(
        "external_person_id,mdn", "e1,229-555-1237", errors.INVALID_MDN_FORMAT, MDN_MSG,
        "mdn", f"'229-555-1237' {NOT_E164}"),
    "mdn_invalid_e164": Case(
        "external_person_id,mdn", "e1,+11235550005", errors.INVALID_MDN_FORMAT, MDN_MSG,
        "mdn", "'+11235550005' is not a valid number"),
    "mdn_invalid_ten_digits": Case(
        "external_person_id,mdn", "e1,1235550006", errors.INVALID_MDN_FORMAT, MDN_MSG,
        "mdn", "'1235550006' is not a valid number in region US"),
    "field_not_found": Case(
        "external_person_id,favourite_color", "e1,blue", errors.CUSTOM_FIELD_NOT_FOUND,
        "Custom field not found", "favourite_color", "no custom field named favourite_color"),
    "single_select": Case(
        "external_person_id,tier", "e1,platinum", errors.INVALID_SELECT_CUSTOM_FIELD_VALUE,
        INVALID_VALUE_MSG, "tier", "'platinum' is not an option of tier (gold, silver)"),
    "multi_select": Case(
        "external_person_id,tags", "e1,a|d", errors.INVALID_SELECT_CUSTOM_FIELD_VALUE,
        INVALID_VALUE_MSG, "tags", "'d' is not an option of tags (a, b)"),
    "multi_select_empty": Case(
        "external_person_id,tags", "e1,a||b", errors.INVALID_SELECT_CUSTOM_FIELD_VALUE,
        INVALID_VALUE_MSG, "tags", "'a||b' has an empty option between the separators '|'"),
    "integer": Case(
        "external_person_id,age", "e1,abc", errors.INVALID_SELECT_CUSTOM_FIELD_VALUE,
        INVALID_VALUE_MSG, "age", "'abc' is not an integer"),
    "integer_range": Case(
        "external_person_id,age", "e1,9223372036854775808",
        errors.INVALID_SELECT_CUSTOM_FIELD_VALUE, INVALID_VALUE_MSG, "age",
        "'9223372036854775808' is outside the 64-bit integer range"),
    "integer_huge": Case(  # more digits than int() converts: rejected, not a crash
        "external_person_id,age", "e1," + "9" * 5000, errors.INVALID_SELECT_CUSTOM_FIELD_VALUE,
        INVALID_VALUE_MSG, "age", "'" + "9" * 60 + "…' is outside the 64-bit integer range"),
    "decimal": Case(
        "external_person_id,balance", "e1,1e3", errors.INVALID_SELECT_CUSTOM_FIELD_VALUE,
        INVALID_VALUE_MSG, "balance",
        "'1e3' is not a decimal number (digits, an optional sign and point)"),
    "boolean": Case(
        "external_person_id,vip", "e1,maybe", errors.INVALID_SELECT_CUSTOM_FIELD_VALUE,
        INVALID_VALUE_MSG, "vip", "'maybe' is not a boolean (true or false)"),
    "date_shape": Case(
        "external_person_id,joined", "e1,2024-01-02", errors.INVALID_SELECT_CUSTOM_FIELD_VALUE,
        INVALID_VALUE_MSG, "joined", f"'2024-01-02' {DATE_SHAPE}"),
    "date_calendar": Case(
        "external_person_id,joined", "e1,2024-02-30T00:00:00Z",
        errors.INVALID_SELECT_CUSTOM_FIELD_VALUE, INVALID_VALUE_MSG, "joined",
        "'2024-02-30T00:00:00Z' is not a real date and time (or its UTC offset is out of range)"),
    "charset_ascii": Case(
        "external_person_id,nick", "e1,café", errors.INVALID_SELECT_CUSTOM_FIELD_VALUE,
        CHARSET_MSG, "nick", "'é' is not in nick's character set ascii"),
    "charset_gsm7": Case(
        "external_person_id,sms_name", "e1,€uro", errors.INVALID_SELECT_CUSTOM_FIELD_VALUE,
        CHARSET_MSG, "sms_name", "'€' is not in sms_name's character set gsm7"),
    "mdn_change": Case(
        "external_person_id,mdn", f"x1,{mdn(2)}", errors.MDN_CHANGE_NOT_ALLOWED,
        "mdn change not allowed", "mdn", "person {pid} already has mdn " + mdn(1),
        lambda env: {"pid": env.seed(ext="x1", mdn=mdn(1))[0]}),
    "mdn_change_in_file": Case(
        "external_person_id,mdn", f"n1,{mdn(3)}\nn1,{mdn(4)}", errors.MDN_CHANGE_NOT_ALLOWED,
        "mdn change not allowed", "mdn",
        f"the person an earlier row created already has mdn {mdn(3)}"),
    "mdn_taken": Case(
        "external_person_id,mdn", f"e2,{mdn(1)}", errors.MOBILE_PHONE_ALREADY_ASSIGNED,
        "Mobile Phone Already Assigned", "mdn", f"mdn {mdn(1)} belongs to another person",
        lambda env: {"pid": env.seed(ext="owner", mdn=mdn(1))[0]}),
    "unique_external_id": Case(
        "person_id,external_person_id", "{pid},e1", errors.UNIQUE_VIOLATION,
        "duplicate key value violates unique constraint", "external_person_id",
        "'e1' belongs to another person",
        lambda env: {"_": env.seed(ext="e1"), "pid": env.seed(ext="e2")[0]}),
    "unique_device_id": Case(
        "mdn,vibes_device_id", f"{mdn(2)},d1", errors.UNIQUE_VIOLATION,
        "duplicate key value violates unique constraint", "vibes_device_id",
        "'d1' belongs to another person",
        lambda env: {"_": env.seed(device="d1"), "pid": env.seed(mdn=mdn(2))[0]}),
    "carrier_permanent_offline": Case(
        "external_person_id,mdn", f"e1,{UK_FIXED}", errors.PERMANENT_LOOKUP_FAILURE,
        "The mdn supplied is not a valid mobile phone active on a valid carrier.", "mdn",
        f"mdn {UK_FIXED} is not a mobile number"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_every_rejection_names_its_column_and_what_was_wrong(env: Env, case: Case) -> None:
    values = case.seed(env)
    content = body(case.header, case.line.format(**values))
    name = "case.persons"
    outcome = env.process(name, content)
    assert outcome.result.rejected == 1
    header, *rejected = read_csv(env.done / f"{name}.errors.csv")
    assert header == ERRORS_HEADER + case.header.split(",")
    [row] = rejected
    # Class and message exactly the partner contract; then the new two columns.
    assert row[1:5] == [case.error_class, case.message, case.field,
                        case.detail.format(**values)]
    # The stored row outcome carries them too (what a rebuilt sidecar is made from).
    stored = env.conn.execute(
        "SELECT error_class, message, error_field, error_detail FROM ingestd.row_results"
        " WHERE NOT accepted").fetchall()
    env.conn.commit()
    assert stored == [tuple(row[1:5])]


def test_check_prints_the_column_and_the_detail(db_url: str, company: Company, conn: Conn,
                                                landing: Path, tmp_path: Path) -> None:
    replace_fields(conn, "acme", FIELDS)
    conn.commit()
    path = tmp_path / "check.persons"
    path.write_text(body("external_person_id,tier", "e1,gold", "e2,platinum", "e3,x,y"),
                    encoding="utf-8")
    proc = run_cli(["check", str(path), "--company", "acme"],
                   base_env(db_url, landing, tmp_path / "state"))
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert ("  record 2: PersonErrors::InvalidSelectCustomFieldValue: Invalid custom field"
            " value (tier: 'platinum' is not an option of tier (gold, silver))") in lines
    assert ("  record 3: ImportErrors::MalformedRow: Row has 3 fields; the header has 2"
            " (row has 3 fields; the header has 2)") in lines


# --- the formula guard ----------------------------------------------------------------------


def formula_file() -> tuple[list[str], list[list[str]]]:
    """Rows every one of which is rejected (no identifying value), with a formula in each
    custom cell, under a header whose last field name is a formula too."""
    columns = ["external_person_id", "note", "=1+2"]
    return columns, [["", cell, ""] for cell in FORMULAS] + [["e9", "ok", "-x"]]


def guarded(cell: str) -> str:
    return "'" + cell


def test_formula_cells_of_a_rejected_persons_row_are_neutralised(env: Env) -> None:
    columns, rows = formula_file()
    name = "formulas.persons"
    outcome = env.process(name, write_persons(columns, rows))
    assert outcome.result.rejected == len(rows)
    header, *rejected = read_csv(env.done / f"{name}.errors.csv")
    assert header == [*ERRORS_HEADER, "external_person_id", "note", guarded("=1+2")]
    assert [r[5:] for r in rejected] == [
        ["", guarded(cell), ""] for cell in FORMULAS] + [["e9", "ok", guarded("-x")]]
    # the error_field of the column named like a formula is guarded like every other cell
    assert rejected[-1][1:5] == [errors.CUSTOM_FIELD_NOT_FOUND, "Custom field not found",
                                 guarded("=1+2"), "no custom field named =1+2"]
    # result.json is not a spreadsheet file: it stays as it was
    result = json.loads((env.done / f"{name}.result.json").read_text(encoding="utf-8"))
    assert result["rejected"] == len(rows)


def test_a_plain_signed_number_stays_as_sent(env: Env) -> None:
    """An mdn or a signed number is a number to a spreadsheet, not a formula: a partner who
    fixes the row in errors.csv and sends it again sends what they sent (issue 20, item 1)."""
    name = "numbers.persons"
    env.process(name, body("external_person_id,mdn,age,balance,note,tier",
                           f"e1,{mdn(1)},-5,-0.25,+3,platinum",
                           "e2,+12295550002,+7,\"-1,5\",-cmd,platinum"))
    raw = (env.done / f"{name}.errors.csv").read_text(encoding="utf-8")
    assert raw.splitlines()[1].endswith(f",e1,{mdn(1)},-5,-0.25,+3,platinum")
    assert raw.splitlines()[2].endswith(',e2,+12295550002,+7,"-1,5",\'-cmd,platinum')
    # The row as errors.csv shows it, sent again, is read as the same row.
    [fixed] = read_csv(env.done / f"{name}.errors.csv")[1:2]
    again = write_persons(["external_person_id", "mdn", "age", "balance", "note", "tier"],
                          [[*fixed[5:-1], "gold"]])
    outcome = env.process("fixed.persons", again)
    assert (outcome.result.accepted, outcome.result.rejected) == (1, 0)


@pytest.mark.parametrize(("cell", "shown"), [
    ("+12295551238", "+12295551238"), ("-1", "-1"), ("-0.25", "-0.25"), ("+3", "+3"),
    ("-1,5", "-1,5"), ("=1+2", "'=1+2"), ("-cmd", "'-cmd"), ("+", "'+"), ("-1.", "'-1."),
    ("+1.2.3", "'+1.2.3"), ("-1e5", "'-1e5"), ("@SUM(A1)", "'@SUM(A1)"), ("\t1", "'\t1"),
    ("\r-1", "'\r-1"), ("-\uff11", "'-\uff11"), ("12", "12"),
])
def test_the_guard_leaves_plain_signed_numbers_alone(cell: str, shown: str) -> None:
    assert sidecars.neutralise(cell) == shown


def test_the_guard_off_writes_cells_verbatim(env: Env) -> None:
    columns, rows = formula_file()
    name = "verbatim.persons"
    env.process(name, write_persons(columns, rows), sidecar_formula_guard=False)
    header, *rejected = read_csv(env.done / f"{name}.errors.csv")
    assert header == [*ERRORS_HEADER, *columns]
    assert [r[5:] for r in rejected] == rows


def contacts_row(code: str, **overrides: str) -> list[str]:
    values = {c.name: "" for c in COLUMNS}
    values.update(
        creationTimeStamp="2018-05-13T15:02:40.719Z", responseTrackingCode=code,
        subjectId=f"subject-{code}", excludeFromContactRule="false",
        objectVariables="ov1~~~A~~~string", ruleFired="0101", treatmentId="t1",
        treatmentRevisionId="rev-t1", presented="false",
    )
    values.update(overrides)
    return [values[c.name] for c in COLUMNS]


# The free-text columns that take the formula cells, one each.
CONTACT_TEXT = ["subjectLevel", "conclusionResponseValue", "conclusionResponseType",
                "responseValue", "responseType", "responseChannel"]


def contacts_file() -> str:
    cells = dict(zip(CONTACT_TEXT, FORMULAS, strict=True))
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows([
        [c.name for c in COLUMNS],
        contacts_row("good", **cells),
        contacts_row("bad", objectVariables="not variables", **cells),
    ])
    return out.getvalue()


@pytest.mark.parametrize("guard", [True, False])
def test_contacts_accepted_and_rejected_cells(env: Env, guard: bool) -> None:
    name = "contacts.csv"
    outcome = env.process(name, contacts_file(), sidecar_formula_guard=guard)
    assert (outcome.result.accepted, outcome.result.rejected) == (1, 1)
    show = guarded if guard else (lambda cell: cell)
    names = [c.name for c in COLUMNS]
    formula_at = {names.index(n) for n in CONTACT_TEXT}

    def expected(fields: list[str]) -> list[str]:
        return [show(v) if i in formula_at else v for i, v in enumerate(fields)]

    cells = dict(zip(CONTACT_TEXT, FORMULAS, strict=True))
    [accepted] = read_csv(env.done / f"{name}.accepted.csv")
    assert accepted[0] == "1" and accepted[2:] == expected(contacts_row("good", **cells))
    [rejected] = read_csv(env.done / f"{name}.rejected.csv")
    assert rejected == ["2", *expected(
        contacts_row("bad", objectVariables="not variables", **cells)),
        OBJECT_VARIABLES_MESSAGE]


@pytest.mark.parametrize("guard", [True, False])
def test_contacts_global_csv(tmp_path: Path, guard: bool) -> None:
    contacts_sidecars.global_csv(tmp_path, "g.csv",
                                 [("*", "=cmd|' /C calc'!A0"), ("-code", "x")], guard=guard)
    got = read_csv(tmp_path / "g.csv.global.csv")
    if guard:
        assert got == [["*", "'=cmd|' /C calc'!A0"], ["'-code", "x"]]
    else:
        assert got == [["*", "=cmd|' /C calc'!A0"], ["-code", "x"]]


# --- retry.persons stays exact ---------------------------------------------------------------


@pytest.fixture
def down(monkeypatch: pytest.MonkeyPatch) -> Iterator[CarrierServer]:
    """A carrier lookup service that is down: every request gets 503."""
    with serving(monkeypatch, default=[503]) as srv:
        yield srv


def test_retry_file_is_byte_exact_with_formula_cells(env: Env, down: CarrierServer) -> None:
    columns = ["external_person_id", "mdn", "note", "=1+2"]
    rows = [[f"=e{i}", mdn(i), cell, ""] for i, cell in enumerate(FORMULAS, 1)]
    content = write_persons(columns, rows)
    name = "down.persons"
    outcome = env.process(name, content, carrier_mode="http", carrier_url=down.url,
                          carrier_backoff_initial=0.001, carrier_backoff_max=0.01,
                          carrier_max_attempts=2)
    assert outcome.result.rejected_by_class == {errors.TRANSIENT_LOOKUP_FAILURE: len(rows)}
    assert sum(down.calls.values()) > 0
    # Every row failed transiently, so the retry file is exactly the drop, formulas and all.
    retry = (env.done / f"{name}.retry.persons").read_bytes()
    assert retry == content.encode("utf-8")
    with open(env.done / f"{name}.retry.persons", "rb") as fh:
        reader = open_persons(fh)
        assert reader.fields == columns
        assert [r.values for chunk in reader.chunks(100) for r in chunk] == rows
    # ... while errors.csv, for people, shows them neutralised, with the lookup's reason.
    header, *rejected = read_csv(env.done / f"{name}.errors.csv")
    assert header[-1] == guarded("=1+2")
    assert [r[3] for r in rejected] == ["mdn"] * len(rows)
    # (a number may stop early: the first to run out of attempts opens the breaker)
    assert [r[4].split(" failed")[0] for r in rejected] == [
        f"carrier lookup of {mdn(i)}" for i in range(1, len(rows) + 1)]
    assert all(r[4].endswith((": HTTP 503", ": the service is failing, lookups paused"))
               for r in rejected)
    # (the mdn is a plain signed number: as sent)
    assert [r[5:] for r in rejected] == [[guarded(a), b, guarded(c), d]
                                         for a, b, c, d in rows]


# --- sidecars rebuilt after a crash keep field and detail ------------------------------------


def test_sidecars_rebuilt_after_a_crash_keep_field_and_detail(
        db_url: str, landing: Path, tmp_path: Path) -> None:
    acme = setup_company(db_url, landing, "acme", FIELDS)
    env = base_env(db_url, landing, tmp_path / "state")
    content = body("external_person_id,tier,note", "e1,gold,x", "e2,platinum,=cmd")
    first = Daemon({**env, "INGESTD_FAILPOINT": "after_commit"}).start()
    try:
        (acme.inbox / "crash.persons").write_text(content, encoding="utf-8")
        assert first.wait_exit(timeout=120) == -signal.SIGKILL, first.tail()
    finally:
        first.kill()
    assert not (acme.done / "crash.persons.errors.csv").exists()  # the crash came first
    second = Daemon(env).start()
    try:
        second.wait_event("file.done", timeout=120, company="acme", file="crash.persons")
        assert second.find("file.recovered", company="acme", file="crash.persons")
    finally:
        assert second.stop(signal.SIGTERM) == 0, second.tail()
    path = wait_for(lambda: _finished(acme, "crash.persons"), what="errors.csv")
    assert read_csv(path) == [
        [*ERRORS_HEADER, "external_person_id", "tier", "note"],
        ["2", errors.INVALID_SELECT_CUSTOM_FIELD_VALUE, INVALID_VALUE_MSG, "tier",
         "'platinum' is not an option of tier (gold, silver)", "e2", "platinum", "'=cmd"],
    ]


def _finished(dirs: CompanyDirs, name: str) -> Path | None:
    path = dirs.done / f"{name}.errors.csv"
    return path if (dirs.done / name).exists() and path.exists() else None


@given(st.lists(st.lists(st.one_of(
    st.integers(-5, 5), st.none(),
    st.text(st.sampled_from("=+-@\t\r\x00a ,'"), max_size=4)), max_size=5), max_size=8))
def test_the_guard_neutralises_every_cell_that_needs_it(lines: list[list[Any]]) -> None:
    # csv_file checks a whole line at once; the verdict is each cell's own.
    guarded = io.StringIO()
    csv_file_lines(guarded, lines, guard=True)
    expected = io.StringIO()
    csv.writer(expected, lineterminator="\r\n").writerows(
        [sidecars.neutralise(c) for c in line] for line in lines)
    assert guarded.getvalue() == expected.getvalue()


def csv_file_lines(out: io.StringIO, lines: list[list[Any]], *, guard: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = sidecars.csv_file(Path(tmp) / "x.csv", None, lines, guard)
        out.write(path.read_bytes().decode("utf-8"))


# --- issue 20: byte-order marks, sidecars only when they say something, contacts errors.csv --

BOM = b"\xef\xbb\xbf"


def _drop_bytes(env: Env, name: str, content: bytes) -> Outcome:
    inbox = env.landing / "acme" / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / name).write_bytes(content)
    return env.pipeline().process(landing.drop(inbox / name, 0))


@pytest.mark.parametrize("bom", [True, False])
def test_csv_sidecars_carry_a_bom_exactly_when_the_upload_did(env: Env, bom: bool) -> None:
    """Excel shows "Zoë" as mojibake without the mark; the partner's tool wrote one, so it
    expects one back (issue 20, item 2). The retry file and result.json never get one."""
    start = BOM if bom else b""
    persons = start + "external_person_id,note,tier\r\ne1,Zoë,platinum\r\n".encode()
    assert _drop_bytes(env, "zoe.persons", persons).status == "done"
    errors_csv = (env.done / "zoe.persons.errors.csv").read_bytes()
    assert errors_csv.startswith(BOM) == bom
    assert errors_csv.count(BOM) == (1 if bom else 0)
    assert "Zoë" in errors_csv.decode("utf-8-sig")
    assert not (env.done / "zoe.persons.result.json").read_bytes().startswith(BOM)

    contacts = start + contacts_file().encode()
    assert _drop_bytes(env, "zoe.csv", contacts).status == "done"
    for suffix in (".accepted.csv", ".rejected.csv", ".errors.csv"):
        assert (env.done / f"zoe.csv{suffix}").read_bytes().startswith(BOM) == bom, suffix

    failed = start + b"responseTrackingCode,nonsense\r\nx,y\r\n"
    assert _drop_bytes(env, "bad.csv", failed).status == "failed"
    failed_dir = env.landing / "acme" / "failed"
    assert (failed_dir / "bad.csv.global.csv").read_bytes().startswith(BOM) == bom


def test_a_sidecar_is_written_only_when_it_has_something_to_say(env: Env) -> None:
    """No 0-byte global.csv, no errors.csv that is only a header row (issue 20, item 5);
    result.json always."""
    env.process("clean.persons", body("external_person_id,note", "e1,fine"))
    env.process("clean.csv", to_csv_text([[c.name for c in COLUMNS], contacts_row("c1")]))
    assert sorted(p.name for p in env.done.iterdir()) == [
        "clean.csv", "clean.csv.accepted.csv", "clean.csv.result.json",
        "clean.persons", "clean.persons.result.json"]
    # every row rejected: no accepted.csv
    env.process("allbad.csv", to_csv_text([[c.name for c in COLUMNS],
                                            contacts_row("c2", objectVariables="x")]))
    assert sorted(p.name for p in env.done.iterdir() if p.name.startswith("allbad")) == [
        "allbad.csv", "allbad.csv.errors.csv", "allbad.csv.rejected.csv",
        "allbad.csv.result.json"]
    # a failed contacts file says why in global.csv, and nothing else is written
    assert _drop_bytes(env, "nohead.csv", b"nonsense\r\n").status == "failed"
    failed_dir = env.landing / "acme" / "failed"
    assert sorted(p.name for p in failed_dir.iterdir()) == [
        "nohead.csv", "nohead.csv.global.csv", "nohead.csv.result.json"]
    assert (failed_dir / "nohead.csv.global.csv").stat().st_size > 0


def to_csv_text(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue()


def test_contacts_errors_csv_has_every_row_of_a_rejected_section(env: Env) -> None:
    """The public SAS example: the first contact (records 1-3) is rejected for its
    objectVariables on record 1. rejected.csv stays the API's one line; errors.csv, for
    the partner, has a header row and a line for each of the three rows, the column at
    fault and what was wrong; result.json counts rows and names the unit (issue 20, item 4)."""
    name = "sas.csv"
    outcome = env.process(name, sas_example_fixed())
    result = json.loads((env.done / f"{name}.result.json").read_text(encoding="utf-8"))
    assert (result["rows"], result["accepted"], result["rejected"]) == (4, 1, 3)
    assert result["count_unit"] == "rows" and result["rejected_sections"] == 1
    assert outcome.result is not None

    [rejected] = read_csv(env.done / f"{name}.rejected.csv")
    [expected] = read_csv(Path(__file__).parent / "data" / "sas-example-rejected.csv")
    del rejected[1 + AB_TESTS]  # the fixed example's empty abTests field
    assert rejected == expected

    header, *lines = read_csv(env.done / f"{name}.errors.csv")
    request = read_csv_text(sas_example_fixed())
    assert header == ["record", "error_message", "error_field", "error_detail", *request[0]]
    assert [line[0] for line in lines] == ["1", "2", "3"]
    assert [line[4:] for line in lines] == request[1:4]
    first, second, third = lines
    assert first[1:3] == [OBJECT_VARIABLES_MESSAGE, "objectVariables"]
    assert first[3] == "objectVariables is 'ov1~~~A;ov2~~~B'"
    for line in (second, third):
        assert line[1] == f"{OBJECT_VARIABLES_MESSAGE} (record 1)"
        assert line[2] == ""
        assert line[3] == "rejected with its section (records 1-3): record 1 is at fault"


def read_csv_text(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_check_lists_every_rejected_row_it_counts(db_url: str, landing: Path,
                                                  tmp_path: Path) -> None:
    """`check` and result.json agree: 3 rejected rows, and all three are listed."""
    setup_company(db_url, landing, "acme")
    path = tmp_path / "sas.csv"
    path.write_text(sas_example_fixed(), encoding="utf-8")
    env = base_env(db_url, landing, tmp_path / "state")
    r = run_cli(["check", str(path), "--company", "acme"], env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "would be done: 4 rows, 1 accepted, 3 rejected (rows of 1 rejected section(s))" \
        in r.stdout
    listed = [line.split(":")[0].strip() for line in r.stdout.splitlines()
              if line.startswith("  record ")]
    assert listed == ["record 1", "record 2", "record 3"]
