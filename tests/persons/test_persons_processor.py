"""The Person Import processor through the whole pipeline (claim, apply, sidecars, move):
one test per row-level error class, and the file-level errors.

Each test drops a ``.persons`` file into ``landing/acme/inbox/`` and calls
``Pipeline.process``; outcomes are read where a partner reads them (``done/NAME.errors.csv``,
``NAME.result.json``) and in ``acme.persons``. The rest of the processor's tests are
beside this one: ``test_persons_rows.py`` (one error a row, row order, identification),
``test_persons_field_types.py``, ``test_persons_carrier_http.py``, ``test_persons_check.py``.
"""

from __future__ import annotations

import csv
import uuid

import pytest
from persons_helpers import (
    CHARSET_MSG,
    CREATE_REQUIRES,
    CREATE_REQUIRES_DETAIL,
    CREATE_REQUIRES_MSG,
    ENCODING,
    ERRORS_HEADER,
    FIELD_NOT_FOUND,
    FIELD_NOT_FOUND_MSG,
    FILE_FORMAT,
    INVALID_ID,
    INVALID_ID_MSG,
    INVALID_KEY,
    INVALID_KEY_MSG,
    INVALID_MDN,
    INVALID_MDN_MSG,
    INVALID_VALUE,
    INVALID_VALUE_MSG,
    MALFORMED,
    MDN_CHANGE,
    MDN_CHANGE_MSG,
    MDN_TAKEN,
    MDN_TAKEN_MSG,
    NO_ID_COLUMN_MSG,
    NOT_E164,
    NOT_FOUND,
    NOT_FOUND_MSG,
    PERMANENT,
    PERMANENT_MSG,
    UK_FIXED,
    UK_MOBILE,
    UNIQUE,
    UNIQUE_MSG,
    Env,
    P,
    assert_done,
    body,
    guarded,
    mdn,
)

from ingestd import landing
from ingestd.db.companies import add_company

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
