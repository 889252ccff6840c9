"""Person Import with the HTTP carrier lookup: a real local HTTP server implements the
contract of ``ingestd/persons/carrier.py``; backoffs are milliseconds and nothing depends
on how long anything takes: the server answers from a per-number script and counts calls.
Retries, the retry file and its round trip, permanent answers, the cache."""

from __future__ import annotations

import shutil
from collections import Counter

import pytest
from carrier_server import CarrierServer
from persons_helpers import (
    ERRORS_HEADER,
    FIELDS,
    PERMANENT,
    PERMANENT_MSG,
    TRANSIENT,
    TRANSIENT_MSG,
    Env,
    assert_done,
    body,
    cache,
    http_settings,
    mdn,
    retries,
)
from structlog.testing import capture_logs

from ingestd import landing
from ingestd.persons.custom_fields import FieldDefinition
from ingestd.persons.field_store import replace_fields
from ingestd.persons.reader import Record, open_persons

# --- carrier lookup over HTTP ------------------------------------------------------------------


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
