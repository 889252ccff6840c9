"""The Person Import processor through the whole pipeline (claim, apply, sidecars, move).

Each test drops a ``.persons`` file into ``landing/acme/inbox/`` and calls
``Pipeline.process``; outcomes are read where a partner reads them (``done/NAME.errors.csv``,
``done/NAME.retry.persons``, ``NAME.result.json``) and in ``acme.persons``.

The HTTP carrier tests run a real local HTTP server that implements the contract of
``ingestd/persons/carrier.py``; backoffs are milliseconds and nothing depends on how long anything
takes: the server answers from a per-number script and counts calls.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
import pytest
from carrier_server import CarrierServer, serving
from structlog.testing import capture_logs

from ingestd import errors, landing
from ingestd.db.companies import Company, add_company
from ingestd.db.database import Database
from ingestd.errors import RowError
from ingestd.lifecycle import Outcome, Pipeline
from ingestd.persons.carrier import CarrierLookup, make_carrier
from ingestd.persons.custom_fields import FieldDefinition
from ingestd.persons.field_store import replace_fields
from ingestd.persons.reader import Record, open_persons
from ingestd.settings import Settings, load_settings

Conn = psycopg.Connection[Any]

# The error classes come from ingestd.errors, as in the contacts tests; the messages are
# spelled out: they are the partner contract, exactly as docs/formats.md section 1 says.
INVALID_MDN = errors.INVALID_MDN_FORMAT
INVALID_MDN_MSG = "The mdn is incorrectly formatted. It should be an E.164 mdn."
FIELD_NOT_FOUND = errors.CUSTOM_FIELD_NOT_FOUND
FIELD_NOT_FOUND_MSG = "Custom field not found"
INVALID_VALUE = errors.INVALID_SELECT_CUSTOM_FIELD_VALUE
CHARSET_MSG = "Custom field value is incompatible with the field's character set"
INVALID_VALUE_MSG = "Invalid custom field value"
NOT_FOUND = errors.PERSON_NOT_FOUND
NOT_FOUND_MSG = "Person not found"
MDN_TAKEN = errors.MOBILE_PHONE_ALREADY_ASSIGNED
MDN_TAKEN_MSG = "Mobile Phone Already Assigned"
INVALID_ID = errors.INVALID_PERSON_ID
INVALID_ID_MSG = "Invalid person_id"
INVALID_KEY = errors.INVALID_PERSON_KEY
INVALID_KEY_MSG = "Invalid person_key"
MDN_CHANGE = errors.MDN_CHANGE_NOT_ALLOWED
MDN_CHANGE_MSG = "mdn change not allowed"
CREATE_REQUIRES = errors.PERSON_CREATE_REQUIRES
CREATE_REQUIRES_MSG = "Creating a Person requires a device or an external person id"
UNIQUE = errors.UNIQUE_VIOLATION
UNIQUE_MSG = "duplicate key value violates unique constraint"
MALFORMED = errors.MALFORMED_ROW
PERMANENT = errors.PERMANENT_LOOKUP_FAILURE
PERMANENT_MSG = "The mdn supplied is not a valid mobile phone active on a valid carrier."
TRANSIENT = errors.TRANSIENT_LOOKUP_FAILURE
TRANSIENT_MSG = ("A temporary issue with the carrier lookup service prevented the row from being"
                 " processed. Please try again later.")
FILE_FORMAT = errors.INVALID_IMPORT_FILE_FORMAT
NO_ID_COLUMN_MSG = "Couldn't find a person_id, external_person_id, mdn, or vives_device_id field"
ENCODING = errors.UNKNOWN_8BIT_ENCODING

# errors.csv: these five columns, then the file's field names.
ERRORS_HEADER = ["record", "error_class", "error_message", "error_field", "error_detail"]
NOT_E164 = "is not E.164 (+ and digits) or 10 digits"
CREATE_REQUIRES_DETAIL = "no mdn, vibes_device_id or external_person_id to create a person with"


def guarded(cell: str) -> str:
    """A cell as errors.csv shows it: the formula guard prefixes = + - @ tab CR with ',
    unless the cell is a plain signed number (docs/formats.md, "Spreadsheet safety")."""
    if cell[:1] in ("=", "+", "-", "@", "\t", "\r") and not re.fullmatch(
            r"[+-]?[0-9]+(?:[.,][0-9]+)?", cell):
        return "'" + cell
    return cell


UK_MOBILE = "+447400123456"  # offline: mobile, carrier "Three"
UK_FIXED = "+442071234567"  # offline: a London fixed line, never a mobile

FIELDS = [
    FieldDefinition(name="tier", type="single_select", options=["gold", "silver", "bronze"]),
    FieldDefinition(name="tags", type="multi_select", options=["a", "b", "c", "B"]),
    FieldDefinition(name="nick", type="string", charset="ascii"),
    FieldDefinition(name="sms_name", type="string", charset="gsm7"),
    FieldDefinition(name="bio", type="string"),  # unicode
    FieldDefinition(name="age", type="integer"),
    FieldDefinition(name="balance", type="decimal"),
    FieldDefinition(name="vip", type="boolean"),
    FieldDefinition(name="joined", type="date"),
]


def mdn(n: int) -> str:
    """A valid US number in E.164 (+1 229 555 nnnn): offline lookup accepts it, no carrier."""
    return f"+1229555{n:04d}"


def body(*lines: str) -> str:
    return "".join(line + "\n" for line in lines)


class P(NamedTuple):
    """A stored person."""

    person_id: int
    person_key: str
    external_person_id: str | None
    mdn: str | None
    vibes_device_id: str | None
    carrier: str | None
    custom: dict[str, Any]


@dataclass
class Env:
    """A landing root, a database with company acme and its custom fields, and pipelines."""

    db_url: str
    landing: Path
    state: Path
    conn: Conn
    db: Database

    def settings(self, **overrides: Any) -> Settings:
        return load_settings(database_url=self.db_url, landing_root=self.landing,
                             state_dir=self.state, **overrides)

    def pipeline(self, carrier: CarrierLookup | None = None, **overrides: Any) -> Pipeline:
        settings = self.settings(**overrides)
        return Pipeline(settings, self.db, carrier or make_carrier(settings))

    @property
    def company_dir(self) -> Path:
        return self.landing / "acme"

    def drop(self, name: str, content: str | bytes) -> Path:
        inbox = self.company_dir / "inbox"
        inbox.mkdir(parents=True, exist_ok=True)
        path = inbox / name
        if isinstance(content, str):
            path.write_bytes(content.encode("utf-8"))
        else:
            path.write_bytes(content)
        return path

    def process(self, name: str, content: str | bytes, pipeline: Pipeline | None = None,
                **overrides: Any) -> Outcome:
        dropped = landing.drop(self.drop(name, content), 0)
        outcome = (pipeline or self.pipeline(**overrides)).process(dropped)
        assert outcome.final_path is not None
        assert outcome.final_path.parent == self.company_dir / outcome.status
        return outcome

    def errors_csv(self, name: str) -> list[list[str]]:
        with open(self.company_dir / "done" / f"{name}.errors.csv", encoding="utf-8",
                  newline="") as fh:
            return list(csv.reader(fh))

    def errors(self, name: str) -> list[tuple[int, str, str]]:
        """(record, class, message) of each line of errors.csv (after its header)."""
        return [(int(r[0]), r[1], r[2]) for r in self.errors_csv(name)[1:]]

    def result(self, name: str, where: str = "done") -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            (self.company_dir / where / f"{name}.result.json").read_text(encoding="utf-8"))
        return data

    def persons(self) -> list[P]:
        rows = self.conn.execute(
            "SELECT person_id, person_key::text, external_person_id, mdn, vibes_device_id,"
            " carrier, custom FROM acme.persons ORDER BY person_id").fetchall()
        self.conn.commit()
        return [P(*r) for r in rows]

    def by_ext(self) -> dict[str | None, P]:
        return {p.external_person_id: p for p in self.persons()}

    def by_mdn(self) -> dict[str | None, P]:
        return {p.mdn: p for p in self.persons()}

    def person(self, person_id: int) -> P:
        (p,) = [p for p in self.persons() if p.person_id == person_id]
        return p

    def seed(self, ext: str | None = None, mdn: str | None = None, device: str | None = None,
             carrier: str | None = None, **custom: Any) -> P:
        row = self.conn.execute(
            "INSERT INTO acme.persons (external_person_id, mdn, vibes_device_id, carrier, custom)"
            " VALUES (%s, %s, %s, %s, %s) RETURNING person_id, person_key::text,"
            " external_person_id, mdn, vibes_device_id, carrier, custom",
            (ext, mdn, device, carrier, json.dumps(custom))).fetchone()
        self.conn.commit()
        assert row is not None
        return P(*row)

    def count(self, query: str) -> int:
        row = self.conn.execute(query).fetchone()
        self.conn.commit()
        assert row is not None
        return int(row[0])


@pytest.fixture
def env(db_url: str, conn: Conn, company: Company, landing: Path,
        tmp_path: Path) -> Iterator[Env]:
    replace_fields(conn, "acme", FIELDS)
    conn.commit()
    settings = load_settings(database_url=db_url, landing_root=landing,
                             state_dir=tmp_path / "state")
    with Database(settings, pool_size=2) as db:
        yield Env(db_url, landing, tmp_path / "state", conn, db)


def assert_done(env: Env, name: str, outcome: Outcome, rows: int,
                rejected: dict[str, int], stored: str | None = None) -> None:
    """The file is in done/ (as ``stored`` when that name was taken) with this result."""
    assert outcome.status == "done"
    assert outcome.final_path == env.company_dir / "done" / (stored or name)
    assert outcome.final_path.is_file()
    result = env.result(stored or name)
    n_rejected = sum(rejected.values())
    assert (result["status"], result["format"], result["company"], result["file"]) == (
        "done", "persons", "acme", name)
    assert result.get("stored_as") == stored
    assert (result["rows"], result["accepted"], result["rejected"]) == (
        rows, rows - n_rejected, n_rejected)
    assert result["rejected_by_class"] == rejected
    assert "error" not in result


# --- one test per row-level error class ---------------------------------------------------


def test_invalid_mdn_format_bad_shapes_and_invalid_numbers(env: Env) -> None:
    name = "mdn.persons"
    outcome = env.process(name, body(
        "mdn,external_person_id",
        f"{mdn(1)},e1",
        "229-555-0002,e2",  # punctuation
        "12295550003,e3",  # 11 digits
        f"{mdn(4)},e4",
        "+11235550005,e5",  # well-shaped E.164, but area code 123 does not exist
        "1235550006,e6",  # ten digits, invalid in the US plan
        "2295550007,e7",  # ten digits, read as US
    ))
    assert_done(env, name, outcome, 7, {INVALID_MDN: 4})
    assert env.errors_csv(name) == [
        [*ERRORS_HEADER, "mdn", "external_person_id"],
        ["2", INVALID_MDN, INVALID_MDN_MSG, "mdn", f"'229-555-0002' {NOT_E164}",
         "229-555-0002", "e2"],
        ["3", INVALID_MDN, INVALID_MDN_MSG, "mdn", f"'12295550003' {NOT_E164}",
         "12295550003", "e3"],
        ["5", INVALID_MDN, INVALID_MDN_MSG, "mdn", "'+11235550005' is not a valid number",
         "+11235550005", "e5"],  # a plain signed number: no formula guard
        ["6", INVALID_MDN, INVALID_MDN_MSG, "mdn",
         "'1235550006' is not a valid number in region US", "1235550006", "e6"],
    ]
    assert {e: p.mdn for e, p in env.by_ext().items()} == {
        "e1": mdn(1), "e4": mdn(4), "e7": mdn(7)}  # stored as E.164


def test_custom_field_not_found(env: Env) -> None:
    name = "ghost.persons"
    outcome = env.process(name, body(
        "mdn,tier,ghost",
        f"{mdn(1)},gold,",  # an empty cell in an unknown column is no value: accepted
        f"{mdn(2)},gold,boo",
        f"{mdn(3)},silver,",
    ))
    assert_done(env, name, outcome, 3, {FIELD_NOT_FOUND: 1})
    assert env.errors_csv(name) == [
        [*ERRORS_HEADER, "mdn", "tier", "ghost"],
        ["2", FIELD_NOT_FOUND, FIELD_NOT_FOUND_MSG, "ghost", "no custom field named ghost",
         mdn(2), "gold", "boo"],
    ]
    assert {m: p.custom for m, p in env.by_mdn().items()} == {
        mdn(1): {"tier": "gold"}, mdn(3): {"tier": "silver"}}


def test_invalid_custom_field_value_both_messages(env: Env) -> None:
    name = "values.persons"
    outcome = env.process(name, body(
        "external_person_id,nick,sms_name,tier,tags,age,vip,joined,balance",
        "e1,plain,Ça va @home,gold,a|b,42,true,2024-01-02T03:04:05Z,1.5",
        "e2,café,,,,,,,",  # not ascii
        "e3,,{braces},,,,,,",  # gsm7 extension table: two septets, not the basic set
        "e4,,€uro,,,,,,",
        "e5,,,Gold,,,,,",  # option keys are case-sensitive
        "e6,,,,a||b,,,,",  # an empty multi-select element
        "e7,,,,a|d,,,,",
        "e8,,,,,4.2,,,",
        "e9,,,,,,yes,,",
        "e10,,,,,,,2024-02-30T00:00:00Z,",
        "e11,,,,,,,,1e3",
        "e12,ok,Hello,bronze,c,7,FALSE,2024-01-02T03:04:05+0100,-0.50",
    ))
    assert_done(env, name, outcome, 12, {INVALID_VALUE: 10})
    assert env.errors(name) == [
        (2, INVALID_VALUE, CHARSET_MSG),
        (3, INVALID_VALUE, CHARSET_MSG),
        (4, INVALID_VALUE, CHARSET_MSG),
        (5, INVALID_VALUE, INVALID_VALUE_MSG),
        (6, INVALID_VALUE, INVALID_VALUE_MSG),
        (7, INVALID_VALUE, INVALID_VALUE_MSG),
        (8, INVALID_VALUE, INVALID_VALUE_MSG),
        (9, INVALID_VALUE, INVALID_VALUE_MSG),
        (10, INVALID_VALUE, INVALID_VALUE_MSG),
        (11, INVALID_VALUE, INVALID_VALUE_MSG),
    ]
    assert env.errors_csv(name)[2] == [
        "3", INVALID_VALUE, CHARSET_MSG, "sms_name", "'{' is not in sms_name's character set gsm7",
        "e3", "", "{braces}", "", "", "", "", "", ""]
    assert {e: p.custom for e, p in env.by_ext().items()} == {
        "e1": {"nick": "plain", "sms_name": "Ça va @home", "tier": "gold", "tags": ["a", "b"],
               "age": 42, "vip": True, "joined": "2024-01-02T03:04:05Z", "balance": "1.5"},
        "e12": {"nick": "ok", "sms_name": "Hello", "tier": "bronze", "tags": ["c"], "age": 7,
                "vip": False, "joined": "2024-01-02T02:04:05Z", "balance": "-0.5"},
    }


def test_person_not_found_by_person_id_and_person_key(env: Env) -> None:
    p1, p2 = env.seed(ext="x1"), env.seed(ext="x2")
    missing_id = p2.person_id + 1000
    missing_key = str(uuid.uuid4())
    name = "notfound.persons"
    outcome = env.process(name, body(
        "person_id,person_key,tier",
        f"{p1.person_id},,gold",
        f"{missing_id},,gold",
        f",{missing_key},gold",
        f",{p2.person_key},silver",
    ))
    assert_done(env, name, outcome, 4, {NOT_FOUND: 2})
    assert env.errors_csv(name) == [
        [*ERRORS_HEADER, "person_id", "person_key", "tier"],
        ["2", NOT_FOUND, NOT_FOUND_MSG, "person_id", f"no person with person_id {missing_id}",
         str(missing_id), "", "gold"],
        ["3", NOT_FOUND, NOT_FOUND_MSG, "person_key", f"no person with person_key {missing_key}",
         "", missing_key, "gold"],
    ]
    assert env.persons() == [p1._replace(custom={"tier": "gold"}),
                             p2._replace(custom={"tier": "silver"})]  # nobody created


def test_mobile_phone_already_assigned(env: Env) -> None:
    owner = env.seed(ext="owner", mdn=mdn(1))
    other = env.seed(ext="other")
    name = "taken.persons"
    outcome = env.process(name, body(
        "external_person_id,mdn",
        f"new3,{mdn(3)}",
        f"other,{mdn(1)}",  # an existing person without an mdn takes another's
        f"new4,{mdn(1)}",  # a new person would take it
        f"new5,{mdn(5)}",
        f"new6,{mdn(3)}",  # taken by row 1 of this very file
        f"other,{mdn(6)}",
    ))
    assert_done(env, name, outcome, 6, {MDN_TAKEN: 3})
    assert env.errors_csv(name) == [
        [*ERRORS_HEADER, "external_person_id", "mdn"],
        ["2", MDN_TAKEN, MDN_TAKEN_MSG, "mdn", f"mdn {mdn(1)} belongs to another person",
         "other", mdn(1)],
        ["3", MDN_TAKEN, MDN_TAKEN_MSG, "mdn", f"mdn {mdn(1)} belongs to another person",
         "new4", mdn(1)],
        ["5", MDN_TAKEN, MDN_TAKEN_MSG, "mdn", f"mdn {mdn(3)} belongs to another person",
         "new6", mdn(3)],
    ]
    assert {e: p.mdn for e, p in env.by_ext().items()} == {
        "owner": mdn(1), "other": mdn(6), "new3": mdn(3), "new5": mdn(5)}
    assert env.person(owner.person_id) == owner
    assert env.person(other.person_id).person_key == other.person_key


@pytest.mark.parametrize("bad", ["0", "abc", "-5", "1.0", "+7", "00", "٣",
                                 "9223372036854775808"])  # one past the bigint maximum
def test_invalid_person_id(env: Env, bad: str) -> None:
    detail = (f"'{bad}' is larger than the largest person_id" if bad == "9223372036854775808"
              else f"'{bad}' is not a positive integer")
    p1, p2 = env.seed(ext="x1"), env.seed(ext="x2")
    name = "badid.persons"
    outcome = env.process(name, body(
        "person_id,tier",
        f"{p1.person_id},gold",
        f"{bad},gold",
        f"{p2.person_id},silver",
    ))
    assert_done(env, name, outcome, 3, {INVALID_ID: 1})
    assert env.errors_csv(name) == [
        [*ERRORS_HEADER, "person_id", "tier"],
        ["2", INVALID_ID, INVALID_ID_MSG, "person_id", detail, guarded(bad), "gold"],
    ]
    assert [p.custom for p in env.persons()] == [{"tier": "gold"}, {"tier": "silver"}]


def test_invalid_person_key(env: Env) -> None:
    p1, p2 = env.seed(ext="x1"), env.seed(ext="x2")
    upper = p2.person_key.upper()
    name = "badkey.persons"
    outcome = env.process(name, body(
        "person_key,tier",
        f"{p1.person_key},gold",
        f"{upper},gold",  # must be lowercase
        "not-a-uuid,gold",
        f"{p2.person_key.replace('-', '')},gold",
        f"{p2.person_key},silver",
    ))
    assert_done(env, name, outcome, 5, {INVALID_KEY: 3})
    assert env.errors(name) == [
        (2, INVALID_KEY, INVALID_KEY_MSG),
        (3, INVALID_KEY, INVALID_KEY_MSG),
        (4, INVALID_KEY, INVALID_KEY_MSG),
    ]
    assert env.errors_csv(name)[1] == ["2", INVALID_KEY, INVALID_KEY_MSG, "person_key",
                                       f"'{upper}' is not a lowercase UUID", upper, "gold"]
    assert [p.custom for p in env.persons()] == [{"tier": "gold"}, {"tier": "silver"}]


def test_mdn_change_not_allowed(env: Env) -> None:
    p1 = env.seed(ext="x1", mdn=mdn(1))
    name = "change.persons"
    outcome = env.process(name, body(
        "external_person_id,mdn,tier",
        f"x1,{mdn(1)},gold",  # the same mdn: no change
        f"x1,{mdn(2)},silver",
        "x1,2295550001,bronze",  # the same number in ten-digit form: no change either
        f"x2,{mdn(2)},gold",
    ))
    assert_done(env, name, outcome, 4, {MDN_CHANGE: 1})
    assert env.errors_csv(name) == [
        [*ERRORS_HEADER, "external_person_id", "mdn", "tier"],
        ["2", MDN_CHANGE, MDN_CHANGE_MSG, "mdn",
         f"person {p1.person_id} already has mdn {mdn(1)}", "x1", mdn(2), "silver"],
    ]
    assert env.persons() == [
        p1._replace(custom={"tier": "bronze"}),
        P(p1.person_id + 1, env.by_ext()["x2"].person_key, "x2", mdn(2), None, None,
          {"tier": "gold"}),
    ]


def test_person_create_requires_device_or_external_person_id(env: Env) -> None:
    name = "noid.persons"
    outcome = env.process(name, body(
        "external_person_id,mdn,vibes_device_id,tier",
        "e1,,,gold",
        ",,,gold",  # no identifying value at all
        " , ,  ,silver",  # spaces around ids are trimmed: still none
        ",,d4,bronze",  # a device alone creates
    ))
    assert_done(env, name, outcome, 4, {CREATE_REQUIRES: 2})
    assert env.errors_csv(name) == [
        [*ERRORS_HEADER, "external_person_id", "mdn", "vibes_device_id", "tier"],
        ["2", CREATE_REQUIRES, CREATE_REQUIRES_MSG, "", CREATE_REQUIRES_DETAIL,
         "", "", "", "gold"],
        ["3", CREATE_REQUIRES, CREATE_REQUIRES_MSG, "", CREATE_REQUIRES_DETAIL,
         " ", " ", "  ", "silver"],
    ]
    assert [(p.external_person_id, p.vibes_device_id, p.custom) for p in env.persons()] == [
        ("e1", None, {"tier": "gold"}), (None, "d4", {"tier": "bronze"})]


def test_unique_violation_external_and_device_ids(env: Env) -> None:
    p1 = env.seed(ext="e1", mdn=mdn(1), device="d1")
    p2 = env.seed(ext="e2", mdn=mdn(2), device="d2")
    name = "unique.persons"
    # external_person_id outranks mdn, so it is data only behind person_id or person_key.
    outcome = env.process(name, body(
        "person_id,person_key,mdn,external_person_id,vibes_device_id",
        f",,{mdn(3)},e3,d3",
        f"{p2.person_id},,,e1,",  # p2 would take p1's external id
        f",{p2.person_key},,e1,",
        f",,{mdn(2)},,d1",  # p2 (by mdn) would take p1's device id
        f",,{mdn(5)},,d3",  # a new person would take row 1's device id
        f"{p2.person_id},,,e2b,d2b",  # data overrides p2's own ids
    ))
    assert_done(env, name, outcome, 6, {UNIQUE: 4})
    assert env.errors_csv(name) == [
        [*ERRORS_HEADER, "person_id", "person_key", "mdn", "external_person_id",
         "vibes_device_id"],
        ["2", UNIQUE, UNIQUE_MSG, "external_person_id", "'e1' belongs to another person",
         str(p2.person_id), "", "", "e1", ""],
        ["3", UNIQUE, UNIQUE_MSG, "external_person_id", "'e1' belongs to another person",
         "", p2.person_key, "", "e1", ""],
        ["4", UNIQUE, UNIQUE_MSG, "vibes_device_id", "'d1' belongs to another person",
         "", "", mdn(2), "", "d1"],
        ["5", UNIQUE, UNIQUE_MSG, "vibes_device_id", "'d3' belongs to another person",
         "", "", mdn(5), "", "d3"],
    ]
    persons = env.persons()
    assert persons[:2] == [p1, p2._replace(external_person_id="e2b", vibes_device_id="d2b")]
    assert [(p.mdn, p.external_person_id, p.vibes_device_id) for p in persons[2:]] == [
        (mdn(3), "e3", "d3")]


def test_malformed_row(env: Env) -> None:
    name = "shape.persons"
    outcome = env.process(name, body(
        "mdn,external_person_id,bio",
        f'{mdn(1)},e1,"two',  # a quoted line break: one record over two lines
        'lines"',
        f"{mdn(2)},e2,x,extra",
        f"{mdn(3)}",
        f'{mdn(4)},e4,"ab"c',  # text after a closing quote
        f"{mdn(5)},e5,",
    ))
    assert_done(env, name, outcome, 5, {MALFORMED: 3})
    assert env.errors_csv(name) == [
        [*ERRORS_HEADER, "mdn", "external_person_id", "bio"],
        ["2", MALFORMED, "Row has 4 fields; the header has 3", "",
         "row has 4 fields; the header has 3", mdn(2), "e2", "x", "extra"],
        ["3", MALFORMED, "Row has 1 fields; the header has 3", "",
         "row has 1 fields; the header has 3", mdn(3)],
        # the csv module returns no values for a record it cannot read
        ["4", MALFORMED, "Row is not valid CSV: ',' expected after '\"'", "",
         "row is not valid CSV: ',' expected after '\"'"],
    ]
    assert {e: p.custom for e, p in env.by_ext().items()} == {
        "e1": {"bio": "two\nlines"}, "e5": {}}


def test_permanent_lookup_failure_offline(env: Env) -> None:
    name = "fixed.persons"
    outcome = env.process(name, body(
        "external_person_id,mdn",
        f"e1,{UK_MOBILE}",
        f"e2,{UK_FIXED}",
        f"e3,{mdn(3)}",
    ))
    assert_done(env, name, outcome, 3, {PERMANENT: 1})
    assert env.errors_csv(name) == [
        [*ERRORS_HEADER, "external_person_id", "mdn"],
        ["2", PERMANENT, PERMANENT_MSG, "mdn", f"mdn {UK_FIXED} is not a mobile number",
         "e2", UK_FIXED],
    ]
    assert {e: (p.mdn, p.carrier) for e, p in env.by_ext().items()} == {
        "e1": (UK_MOBILE, "Three"), "e3": (mdn(3), None)}


@pytest.mark.parametrize(("header", "message"), [
    ("tier,bio", NO_ID_COLUMN_MSG),
    ("mdn,Tier", "field name 'Tier' must be lowercase"),
    ("MDN,tier", "field name 'MDN' must be lowercase"),
])
def test_invalid_import_file_format_fails_the_file(env: Env, header: str, message: str) -> None:
    name = "bad.persons"
    outcome = env.process(name, body(header, f"{mdn(1)},gold", f"{mdn(2)},silver"))
    assert outcome.status == "failed"
    failed = env.company_dir / "failed"
    assert outcome.final_path == failed / name
    assert sorted(p.name for p in failed.iterdir()) == [name, f"{name}.result.json"]
    assert not (env.company_dir / "done").exists() or not any(
        (env.company_dir / "done").iterdir())
    result = env.result(name, "failed")
    assert result["status"] == "failed"
    assert result["error"] == {"class": FILE_FORMAT, "message": message}
    assert (result["rows"], result["accepted"], result["rejected"]) == (0, 0, 0)
    assert env.persons() == []
    row = env.conn.execute("SELECT status, error_class, error_message, rows FROM ingestd.files"
                           " WHERE name = %s", (name,)).fetchone()
    env.conn.commit()
    assert row == ("failed", FILE_FORMAT, message, 0)
    assert env.count("SELECT count(*) FROM ingestd.row_results") == 0


def test_a_file_error_after_applied_chunks_applies_nothing(env: Env) -> None:
    name = "latin1.persons"
    content = body("mdn,bio", f"{mdn(1)},a", f"{mdn(2)},b", f"{mdn(3)},c").encode() + \
        "4,caf\xe9\n".encode("latin-1")
    outcome = env.process(name, content, chunk_size=2)
    assert outcome.status == "failed"
    assert env.result(name, "failed")["error"] == {
        "class": ENCODING, "message": "not valid UTF-8: byte 0xE9 on line 5 (at byte 6)"}
    assert env.persons() == []


def test_ten_digit_numbers_are_read_in_the_companys_region(env: Env) -> None:
    add_company(env.conn, "brit", default_region="GB")
    env.conn.commit()
    inbox = env.landing / "brit" / "inbox"
    inbox.mkdir(parents=True)
    path = inbox / "gb.persons"
    path.write_text(body(
        "external_person_id,mdn",
        "g1,7400123456",  # a UK mobile, national digits
        "g2,2295551234",  # a US number is not valid in GB
        f"g3,{mdn(3)}",  # E.164 is E.164 everywhere
        "g4,2071234567",  # a valid UK number, but a fixed line
    ), encoding="utf-8")
    outcome = env.pipeline().process(landing.drop(path, 0))
    assert outcome.status == "done"
    with open(env.landing / "brit" / "done" / "gb.persons.errors.csv", encoding="utf-8",
              newline="") as fh:
        assert list(csv.reader(fh))[1:] == [
            ["2", INVALID_MDN, INVALID_MDN_MSG, "mdn",
             "'2295551234' is not a valid number in region GB", "g2", "2295551234"],
            ["4", PERMANENT, PERMANENT_MSG, "mdn", "mdn +442071234567 is not a mobile number",
             "g4", "2071234567"],
        ]
    rows = env.conn.execute(
        "SELECT external_person_id, mdn, carrier FROM brit.persons ORDER BY 1").fetchall()
    env.conn.commit()
    assert rows == [("g1", UK_MOBILE, "Three"), ("g3", mdn(3), None)]
    assert env.persons() == []  # acme untouched


# --- one error a row: the check order ------------------------------------------------------


def test_check_order_names_the_first_failing_check(env: Env) -> None:
    p1 = env.seed(ext="e1", mdn=mdn(1), device="d1")
    p2 = env.seed(ext="e2", mdn=mdn(2), device="d2")
    p3 = env.seed(ext="e3")
    cols = "person_id,person_key,external_person_id,mdn,vibes_device_id,tier,ghost,age"
    rows = [
        # (line, expected class, expected message)
        ("0,,,,,,,,extra", MALFORMED, "Row has 9 fields; the header has 8"),  # shape > id
        ("abc,NOTAKEY,,,,,,", INVALID_ID, INVALID_ID_MSG),  # person_id before person_key
        (",NOTAKEY,,229-555,,,,", INVALID_KEY, INVALID_KEY_MSG),  # id syntax > mdn format
        # identification > mdn format and custom fields
        (f"{p3.person_id + 99},,,229-555,,platinum,,", NOT_FOUND, NOT_FOUND_MSG),
        (",,,,,platinum,boo,", CREATE_REQUIRES, CREATE_REQUIRES_MSG),  # identification first
        (",,e9,229-555,,platinum,,", INVALID_MDN, INVALID_MDN_MSG),  # mdn format > custom
        (",,e3,,,platinum,boo,", INVALID_VALUE, INVALID_VALUE_MSG),  # column order: tier first
        (",,e3,,,gold,boo,x", FIELD_NOT_FOUND, FIELD_NOT_FOUND_MSG),  # ghost before age
        (f",,e1,{mdn(7)},,,,x", INVALID_VALUE, INVALID_VALUE_MSG),  # custom > mdn change
        (f",,e1,{mdn(2)},,,,", MDN_CHANGE, MDN_CHANGE_MSG),  # change > already assigned
        (f",,e3,{mdn(2)},d1,,,", MDN_TAKEN, MDN_TAKEN_MSG),  # mdn ownership > device id
        (f",,e3,{UK_FIXED},d1,,,", UNIQUE, UNIQUE_MSG),  # uniqueness > carrier lookup
        (f",,e9,{UK_FIXED},,,boo,", FIELD_NOT_FOUND, FIELD_NOT_FOUND_MSG),  # custom > carrier
        (f"{p2.person_id},,e1,,,,,", UNIQUE, UNIQUE_MSG),  # p1's external id, as data
        (f",,e3,{mdn(3)},d3,gold,,30", None, None),
    ]
    name = "order.persons"
    outcome = env.process(name, body(cols, *(line for line, _, _ in rows)))
    expected = [(n, cls, msg) for n, (_, cls, msg) in enumerate(rows, 1) if cls is not None]
    assert_done(env, name, outcome, len(rows), dict(Counter(cls for _, cls, _ in expected)))
    assert env.errors(name) == expected
    # A rejected row changes nothing; the last row applied.
    assert env.persons() == [p1, p2, p3._replace(mdn=mdn(3), vibes_device_id="d3",
                                                 custom={"tier": "gold", "age": 30})]


# --- a later row sees an earlier one --------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [5000, 2, 1])
def test_a_later_row_sees_an_earlier_one(env: Env, chunk_size: int) -> None:
    name = "later.persons"
    lines = ["mdn,vibes_device_id,tier,age,bio"]
    for n in range(1, 11):
        if n == 3:
            lines.append(f"{mdn(103)},,gold,30,")  # create by mdn
        elif n == 6:
            lines.append(f"{mdn(103)},d103,,,")  # a first device id for that person
        elif n == 9:
            lines.append("2295550103,,silver,,nine")  # update by the same mdn, ten digits
        else:
            lines.append(f"{mdn(n)},d{n},bronze,{n},")
    outcome = env.process(name, body(*lines), chunk_size=chunk_size)
    assert_done(env, name, outcome, 10, {})
    people = env.by_mdn()
    assert len(people) == 8
    assert people[mdn(103)].vibes_device_id == "d103"
    assert people[mdn(103)].custom == {"tier": "silver", "age": 30, "bio": "nine"}
    assert people[mdn(10)].custom == {"tier": "bronze", "age": 10}


@pytest.mark.parametrize("chunk_size", [5000, 1])
def test_a_released_id_can_be_taken_by_a_later_row(env: Env, chunk_size: int) -> None:
    p1 = env.seed(ext="e1", mdn=mdn(1), device="d1")
    p2 = env.seed(ext="e2", mdn=mdn(2), device="d2")
    name = "swap.persons"
    outcome = env.process(name, body(
        "person_id,mdn,external_person_id,vibes_device_id",
        f"{p1.person_id},,e1b,d1b",  # p1 gives up e1 and d1
        f"{p2.person_id},,e1,",  # p2 takes e1 (and gives up e2)
        f",{mdn(3)},e2,d1",  # e2 finds nobody now: a new person, taking e2 and d1
    ), chunk_size=chunk_size)
    assert_done(env, name, outcome, 3, {})
    persons = env.persons()
    assert persons[:2] == [p1._replace(external_person_id="e1b", vibes_device_id="d1b"),
                           p2._replace(external_person_id="e1")]
    assert [(p.mdn, p.external_person_id, p.vibes_device_id) for p in persons[2:]] == [
        (mdn(3), "e2", "d1")]


# --- identification precedence; other id columns are data; empty cells -------------------


def test_identification_precedence_and_ids_as_data(env: Env) -> None:
    p1 = env.seed(ext="e1", mdn=mdn(1), device="d1", tier="gold")
    p2 = env.seed(ext="e2", mdn=mdn(2), device="d2", tier="gold")
    p3 = env.seed(ext="e3", device="d3", tier="gold")
    p4 = env.seed(ext="e4", mdn=mdn(4), device="d4", tier="gold", age=4)
    p5 = env.seed(ext="e5", mdn=mdn(5), device="d5", tier="gold")
    name = "precedence.persons"
    cols = "person_id,person_key,external_person_id,mdn,vibes_device_id,tier,age"
    outcome = env.process(name, body(
        cols,
        # person_id beats person_key (p2's key is then ignored) and the rest is data
        f"{p1.person_id},{p2.person_key},e1x,,d1x,silver,",
        # person_key beats external_person_id: e2x is p2's new external id
        f",{p2.person_key},e2x,,,silver,",
        # external_person_id beats mdn: p3 gets its first mdn
        f",,e3,{mdn(3)},,silver,",
        # mdn beats vibes_device_id: p4's device becomes d4x, the empty age is kept
        f",,,{mdn(4)},d4x,silver,",
        # vibes_device_id alone identifies
        ",,,,d5,silver,5",
        # only empty cells besides the id: nothing changes
        f"{p5.person_id},,,,,,",
        f",,,{mdn(5)}, ,,",
    ))
    assert_done(env, name, outcome, 7, {})
    assert env.persons() == [
        p1._replace(external_person_id="e1x", vibes_device_id="d1x", custom={"tier": "silver"}),
        p2._replace(external_person_id="e2x", custom={"tier": "silver"}),
        p3._replace(mdn=mdn(3), custom={"tier": "silver"}),
        p4._replace(vibes_device_id="d4x", custom={"tier": "silver", "age": 4}),
        p5._replace(custom={"tier": "silver", "age": 5}),
    ]


def test_a_winning_id_that_finds_nobody_creates_with_the_other_ids_as_data(env: Env) -> None:
    p1 = env.seed(ext="e1", mdn=mdn(1), device="d1")
    name = "create.persons"
    outcome = env.process(name, body(
        "external_person_id,mdn,vibes_device_id",
        f"new1,{mdn(11)},dnew1",  # external id finds nobody: a new person
        f",{mdn(12)},d1",  # mdn finds nobody: a new person, whose device is p1's
        f"new1,{mdn(11)},",  # found now by external id
    ))
    assert_done(env, name, outcome, 3, {UNIQUE: 1})
    persons = env.persons()
    assert persons[0] == p1
    assert [(p.external_person_id, p.mdn, p.vibes_device_id) for p in persons[1:]] == [
        ("new1", mdn(11), "dnew1")]


# --- every custom field type ----------------------------------------------------------------


def test_every_custom_field_type_with_a_multi_select_delimiter_header(env: Env) -> None:
    name = "types.persons"
    outcome = env.process(name, body(
        "Multi-Select-Delimiter: ;",
        "",
        "external_person_id,nick,sms_name,bio,age,balance,vip,joined,tier,tags",
        "e1,Bob_1 ~{x}|,Øre Ç ç ¡¿ §ÆÉ,naïve ☃ 😀 中文,-12,+007.50,TRUE,"
        "2024-03-01T12:00:00Z,silver,b;a;b",
        "e2,,,,+9223372036854775807,0.000,false,2024-03-01T00:30:00+0100,bronze,B",
        "e3,,,,0,-0.0,False,2024-02-29T23:30:00-01:30,gold,a|b",
    ))
    assert_done(env, name, outcome, 3, {INVALID_VALUE: 1})
    assert env.errors(name) == [(3, INVALID_VALUE, INVALID_VALUE_MSG)]  # "|" is an option now
    assert {e: p.custom for e, p in env.by_ext().items()} == {
        "e1": {"nick": "Bob_1 ~{x}|", "sms_name": "Øre Ç ç ¡¿ §ÆÉ", "bio": "naïve ☃ 😀 中文",
               "age": -12, "balance": "7.5", "vip": True, "joined": "2024-03-01T12:00:00Z",
               "tier": "silver", "tags": ["b", "a"]},
        "e2": {"age": 9223372036854775807, "balance": "0", "vip": False,
               "joined": "2024-02-29T23:30:00Z", "tier": "bronze", "tags": ["B"]},
    }
    # jsonb types, not only Python equality: integers are numbers, decimals strings.
    row = env.conn.execute(
        "SELECT jsonb_typeof(custom->'age'), jsonb_typeof(custom->'balance'),"
        " jsonb_typeof(custom->'vip'), jsonb_typeof(custom->'tags')"
        " FROM acme.persons WHERE external_person_id = 'e1'").fetchone()
    env.conn.commit()
    assert row == ("number", "string", "boolean", "array")

    # A later file: empty cells keep values, given ones replace them.
    name2 = "types2.persons"
    outcome = env.process(name2, body(
        "external_person_id,age,tags,joined",
        "e1,13,,2024-03-01T12:00:00+0000",
        "e2,,c|a,",
    ))
    assert_done(env, name2, outcome, 2, {})
    custom = {e: p.custom for e, p in env.by_ext().items()}
    assert custom["e1"]["age"] == 13
    assert custom["e1"]["tags"] == ["b", "a"]
    assert custom["e2"]["tags"] == ["c", "a"]
    assert custom["e2"]["joined"] == "2024-02-29T23:30:00Z"


def test_tab_delimiter_and_fields_header(env: Env) -> None:
    name = "tabs.persons"
    outcome = env.process(name, body(
        "Fields: external_person_id, bio, tags",
        "Delimiter: tab",
        "Multi-Select-Delimiter: ,",
        "",
        "e1\ta,b\ta,c",
        'e2\t"tab\there"\tb',
    ))
    assert_done(env, name, outcome, 2, {})
    assert {e: p.custom for e, p in env.by_ext().items()} == {
        "e1": {"bio": "a,b", "tags": ["a", "c"]}, "e2": {"bio": "tab\there", "tags": ["b"]}}


# --- carrier lookup over HTTP ------------------------------------------------------------------


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[CarrierServer]:
    with serving(monkeypatch, strict=True) as srv:
        yield srv
    assert srv.bad_requests == []


def http_settings(server: CarrierServer, **overrides: Any) -> dict[str, Any]:
    return {"carrier_mode": "http", "carrier_url": server.url,
            "carrier_backoff_initial": 0.001, "carrier_backoff_max": 0.01,
            "carrier_max_attempts": 4, **overrides}


def cache(env: Env) -> dict[str, tuple[str | None, str | None, str | None]]:
    rows = env.conn.execute(
        "SELECT mdn, carrier, error_class, message FROM ingestd.carrier_cache").fetchall()
    env.conn.commit()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def retries(logs: Sequence[MutableMapping[str, Any]]) -> list[tuple[str, int, str]]:
    out = []
    for entry in logs:
        if entry["event"] == "carrier.retry":
            assert entry["log_level"] == "warning"
            assert 0 <= entry["wait"] <= 0.01
            out.append((entry["mdn"], entry["attempt"], entry["reason"]))
    return out


def test_http_503_twice_then_found_after_logged_retries(env: Env, server: CarrierServer) -> None:
    server.script[mdn(2)] = [503, 503, 200]
    name = "flaky.persons"
    with capture_logs() as logs:
        outcome = env.process(name, body(
            "external_person_id,mdn",
            "e1,",
            f"e2,{mdn(2)}",
            "e3,",
        ), **http_settings(server))
    assert_done(env, name, outcome, 3, {})
    assert not (env.company_dir / "done" / f"{name}.retry.persons").exists()
    # nothing rejected: no errors.csv (a sidecar is written only when it says something)
    assert not (env.company_dir / "done" / f"{name}.errors.csv").exists()
    assert retries(logs) == [(mdn(2), 1, "HTTP 503"), (mdn(2), 2, "HTTP 503")]
    assert server.calls == Counter({mdn(2): 3})
    assert {e: (p.mdn, p.carrier) for e, p in env.by_ext().items()} == {
        "e1": (None, None), "e2": (mdn(2), "TestTel"), "e3": (None, None)}
    assert cache(env) == {mdn(2): ("TestTel", None, None)}


def outage_file() -> str:
    return body(
        "external_person_id,mdn,tier",
        f"e1,{mdn(1)},gold",  # chunk 1: looked up before the outage
        "e2,,gold",
        f"e3,{mdn(3)},silver",  # chunk 2: always 503
        f"e4,{mdn(4)},silver",  # an update of a person who has this mdn: no lookup
        "e5,,bronze",  # chunk 3: a create without mdn, no lookup
    )


def test_http_always_503_is_transient_and_goes_to_the_retry_file(
        env: Env, server: CarrierServer) -> None:
    env.seed(ext="e4", mdn=mdn(4))
    server.script[mdn(3)] = [503]
    name = "outage.persons"
    with capture_logs() as logs:
        outcome = env.process(name, outage_file(), chunk_size=2, **http_settings(server))
    assert_done(env, name, outcome, 5, {TRANSIENT: 1})
    assert env.errors_csv(name) == [
        [*ERRORS_HEADER, "external_person_id", "mdn", "tier"],
        ["3", TRANSIENT, TRANSIENT_MSG, "mdn",
         f"carrier lookup of {mdn(3)} failed after 4 attempts: HTTP 503",
         "e3", mdn(3), "silver"],
    ]
    assert retries(logs) == [(mdn(3), 1, "HTTP 503"), (mdn(3), 2, "HTTP 503"),
                             (mdn(3), 3, "HTTP 503")]
    assert server.calls == Counter({mdn(1): 1, mdn(3): 4})  # carrier_max_attempts
    assert {e: (p.mdn, p.carrier, p.custom) for e, p in env.by_ext().items()} == {
        "e1": (mdn(1), "TestTel", {"tier": "gold"}), "e2": (None, None, {"tier": "gold"}),
        "e4": (mdn(4), None, {"tier": "silver"}), "e5": (None, None, {"tier": "bronze"})}
    # Transient failures are not cached: the next file asks again.
    assert cache(env) == {mdn(1): ("TestTel", None, None)}

    retry = env.company_dir / "done" / f"{name}.retry.persons"
    assert retry.read_text(encoding="utf-8") == body(
        "external_person_id,mdn,tier", f"e3,{mdn(3)},silver")
    with open(retry, "rb") as fh:
        reader = open_persons(fh)
        assert reader.fields == ["external_person_id", "mdn", "tier"]
        assert [r for chunk in reader.chunks(100) for r in chunk] == [
            Record(1, ["e3", mdn(3), "silver"])]


def test_retry_file_round_trip_after_the_service_recovers(
        env: Env, server: CarrierServer) -> None:
    server.script[mdn(2)] = [503]
    server.script[mdn(4)] = [503]
    name = "tabs.persons"
    outcome = env.process(name, body(
        "Delimiter: tab",
        "Multi-Select-Delimiter: ;",
        "",
        "external_person_id\tmdn\ttags\tbio",
        f"e1\t{mdn(1)}\ta;b\tone",
        f"e2\t{mdn(2)}\tb;c\t\"tab\there\"",
        "e3\t\tc\tthree",
        f"e4\t{mdn(4)}\ta\t\"two\nlines\"",
    ), chunk_size=1, **http_settings(server))
    assert_done(env, name, outcome, 4, {TRANSIENT: 2})
    assert set(env.by_ext()) == {"e1", "e3"}
    # mdn(2) ran out of attempts and opened the breaker: mdn(4), a later chunk, is not sent.
    assert server.calls == Counter({mdn(1): 1, mdn(2): 4})

    retry_name = f"{name}.retry.persons"
    retry = env.company_dir / "done" / retry_name
    with open(retry, "rb") as fh:
        reader = open_persons(fh)
        assert (reader.fields, reader.delimiter, reader.multi_select_delimiter) == (
            ["external_person_id", "mdn", "tags", "bio"], "\t", ";")
        assert [r for chunk in reader.chunks(100) for r in chunk] == [
            Record(1, ["e2", mdn(2), "b;c", "tab\there"]),
            Record(2, ["e4", mdn(4), "a", "two\nlines"])]

    # The service recovers; the daemon restarts (a fresh breaker) and the partner drops the
    # retry file as it is.
    server.script.clear()
    calls_before = Counter(server.calls)
    (env.company_dir / "inbox").mkdir(exist_ok=True)
    dropped = env.company_dir / "inbox" / retry_name
    shutil.copyfile(retry, dropped)
    outcome = env.pipeline(**http_settings(server)).process(landing.drop(dropped, 0))
    # done/ already holds the first file's sidecar of that name: the drop is stored beside it.
    assert_done(env, retry_name, outcome, 2, {}, stored="tabs.persons.retry~2.persons")
    assert server.calls - calls_before == Counter({mdn(2): 1, mdn(4): 1})
    assert {e: (p.mdn, p.carrier, p.custom) for e, p in env.by_ext().items()} == {
        "e1": (mdn(1), "TestTel", {"tags": ["a", "b"], "bio": "one"}),
        "e2": (mdn(2), "TestTel", {"tags": ["b", "c"], "bio": "tab\there"}),
        "e3": (None, None, {"tags": ["c"], "bio": "three"}),
        "e4": (mdn(4), "TestTel", {"tags": ["a"], "bio": "two\nlines"}),
    }
    assert not (env.company_dir / "done" / "tabs.persons.retry~2.persons.retry.persons").exists()


def test_retry_file_keeps_a_lone_carriage_return(env: Env, server: CarrierServer) -> None:
    server.script[mdn(2)] = [503]
    name = "cr.persons"
    outcome = env.process(name, body(
        "external_person_id,mdn,bio",
        f'e2,{mdn(2)},"old\rmac"',
    ), **http_settings(server))
    assert_done(env, name, outcome, 1, {TRANSIENT: 1})
    # Read back today: [Record(1, [], MalformedRow "Row is not valid CSV: new-line
    # character seen in unquoted field ...")], and errors.csv's bio reads "old".
    with open(env.company_dir / "done" / f"{name}.retry.persons", "rb") as fh:
        reader = open_persons(fh)
        assert [r for chunk in reader.chunks(100) for r in chunk] == [
            Record(1, ["e2", mdn(2), "old\rmac"])]
    assert env.errors_csv(name)[1] == [
        "1", TRANSIENT, TRANSIENT_MSG, "mdn",
        f"carrier lookup of {mdn(2)} failed after 4 attempts: HTTP 503",
        "e2", mdn(2), "old\rmac"]


@pytest.mark.parametrize(("field", "head"), [
    ("x:y", "Fields: x:y,mdn\n\n"),  # default delimiters: the retry file has a header row
    ("a,b", "Delimiter: tab\n\na,b\tmdn\n"),  # a header block: names go in Fields
])
def test_retry_file_reads_back_whatever_the_field_names(
        env: Env, server: CarrierServer, field: str, head: str) -> None:
    replace_fields(env.conn, "acme", [*FIELDS, FieldDefinition(name=field, type="string")])
    env.conn.commit()
    server.script[mdn(2)] = [503]
    delimiter = "\t" if head.startswith("Delimiter") else ","
    name = "names.persons"
    outcome = env.process(name, head + f"v{delimiter}{mdn(2)}\n", **http_settings(server))
    assert_done(env, name, outcome, 1, {TRANSIENT: 1})
    with open(env.company_dir / "done" / f"{name}.retry.persons", "rb") as fh:
        reader = open_persons(fh)  # today: FileError for "x:y"
        assert reader.fields == [field, "mdn"]  # today: ["a", "b", "mdn"]
        assert [r for chunk in reader.chunks(100) for r in chunk] == [
            Record(1, ["v", mdn(2)])]


@pytest.mark.parametrize("status", [404, 422])
def test_http_404_and_422_are_permanent_without_retries(
        env: Env, server: CarrierServer, status: int) -> None:
    server.script[mdn(2)] = [status]
    name = "gone.persons"
    with capture_logs() as logs:
        outcome = env.process(name, body(
            "external_person_id,mdn",
            f"e1,{mdn(1)}",
            f"e2,{mdn(2)}",
            f"e3,{mdn(3)}",
        ), chunk_size=1, **http_settings(server))
    assert_done(env, name, outcome, 3, {PERMANENT: 1})
    assert env.errors_csv(name)[1:] == [[
        "2", PERMANENT, PERMANENT_MSG, "mdn",
        f"the carrier lookup service answered HTTP {status} for {mdn(2)}", "e2", mdn(2)]]
    assert retries(logs) == []
    assert server.calls == Counter({mdn(1): 1, mdn(2): 1, mdn(3): 1})
    assert {e: (p.mdn, p.carrier) for e, p in env.by_ext().items()} == {
        "e1": (mdn(1), "TestTel"), "e3": (mdn(3), "TestTel")}
    assert not (env.company_dir / "done" / f"{name}.retry.persons").exists()
    assert cache(env)[mdn(2)] == (None, PERMANENT, PERMANENT_MSG)


def test_http_lookups_are_cached_across_files(env: Env, server: CarrierServer) -> None:
    server.script[mdn(9)] = [404]
    settings = http_settings(server)
    first = env.process("one.persons", body(
        "external_person_id,mdn", f"a,{mdn(1)}", f"b,{mdn(9)}"), **settings)
    assert_done(env, "one.persons", first, 2, {PERMANENT: 1})
    assert server.calls == Counter({mdn(1): 1, mdn(9): 1})
    assert cache(env) == {mdn(1): ("TestTel", None, None),
                          mdn(9): (None, PERMANENT, PERMANENT_MSG)}

    # The number is new again (its person is gone); another person gets it, and the 404'd
    # number comes again: both answered from the cache.
    env.conn.execute("DELETE FROM acme.persons WHERE external_person_id = 'a'")
    env.conn.commit()
    second = env.process("two.persons", body(
        "external_person_id,mdn", f"c,{mdn(1)}", f"d,{mdn(9)}"), **settings)
    assert_done(env, "two.persons", second, 2, {PERMANENT: 1})
    assert env.errors("two.persons") == [(2, PERMANENT, PERMANENT_MSG)]
    assert server.calls == Counter({mdn(1): 1, mdn(9): 1})
    assert {e: (p.mdn, p.carrier) for e, p in env.by_ext().items()} == {
        "c": (mdn(1), "TestTel")}

    # With a zero time-to-live the cache is never fresh: the service is asked again.
    env.conn.execute("DELETE FROM acme.persons")
    env.conn.commit()
    third = env.process("three.persons", body("mdn", mdn(1)), carrier_cache_ttl=0,
                        **settings)
    assert_done(env, "three.persons", third, 1, {})
    assert server.calls == Counter({mdn(1): 2, mdn(9): 1})


def test_the_cache_is_written_outside_the_files_transaction(
        env: Env, server: CarrierServer) -> None:
    """Lookups are committed at once on their own connection: another company's file never
    waits on this file's uncommitted cache rows, and a file that fails keeps them."""
    pipeline = env.pipeline(chunk_size=1, **http_settings(server))
    # Chunk 1 looks mdn(1) up; the invalid UTF-8 of line 3 then fails the whole file.
    path = env.drop("fails.persons", f"mdn\n{mdn(1)}\n".encode() + b"\xff\xfe\n")
    outcome = pipeline.process(landing.drop(path, 0))
    assert outcome.status == "failed"
    assert env.count("SELECT count(*) FROM acme.persons") == 0
    assert env.count(
        f"SELECT count(*) FROM ingestd.carrier_cache WHERE mdn = '{mdn(1)}'") == 1
    assert server.calls == Counter({mdn(1): 1})


# --- ingestd check -----------------------------------------------------------------------------


def test_check_returns_the_errors_and_writes_nothing(env: Env, tmp_path: Path) -> None:
    p1 = env.seed(ext="e1", mdn=mdn(1), tier="gold")
    before = env.persons()
    path = tmp_path / "check.persons"
    content = body(
        "external_person_id,mdn,tier",
        f"e1,{mdn(1)},silver",  # an update
        f"e2,{mdn(2)},platinum",
        f"e3,{mdn(3)},gold",  # a create
        f"e4,{mdn(1)},",
    )
    path.write_text(content, encoding="utf-8")
    result = env.pipeline().check(path, "acme")
    assert (result.status, result.rows, result.accepted, result.rejected) == (
        "done", 4, 2, 2)
    assert result.rejected_by_class == {INVALID_VALUE: 1, MDN_TAKEN: 1}
    assert result.sample_errors == [
        (2, RowError(INVALID_VALUE, INVALID_VALUE_MSG, "tier",
                     "'platinum' is not an option of tier (gold, silver, bronze)")),
        (4, RowError(MDN_TAKEN, MDN_TAKEN_MSG, "mdn", f"mdn {mdn(1)} belongs to another person"))]
    # Nothing written: persons, the ledger, row results; the file is where it was.
    assert env.persons() == before == [p1]
    assert env.count("SELECT count(*) FROM ingestd.files") == 0
    assert env.count("SELECT count(*) FROM ingestd.row_results") == 0
    assert path.read_text(encoding="utf-8") == content
    assert not (env.company_dir / "done").exists()
    # The same file dropped for real is applied, not taken for a duplicate of the check.
    outcome = env.process("check.persons", content)
    assert_done(env, "check.persons", outcome, 4, {INVALID_VALUE: 1, MDN_TAKEN: 1})
    assert {e: p.custom for e, p in env.by_ext().items()} == {
        "e1": {"tier": "silver"}, "e3": {"tier": "gold"}}


def test_check_over_http_looks_up_but_caches_nothing(env: Env, server: CarrierServer,
                                                     tmp_path: Path) -> None:
    server.script[mdn(2)] = [404]
    path = tmp_path / "check.persons"
    path.write_text(body("mdn", mdn(1), mdn(2)), encoding="utf-8")
    result = env.pipeline(**http_settings(server)).check(path, "acme")
    assert result.sample_errors == [(2, RowError(
        PERMANENT, PERMANENT_MSG, "mdn",
        f"the carrier lookup service answered HTTP 404 for {mdn(2)}"))]
    assert server.calls == Counter({mdn(1): 1, mdn(2): 1})
    assert cache(env) == {}
    assert env.persons() == []
    assert env.count("SELECT count(*) FROM ingestd.files") == 0
