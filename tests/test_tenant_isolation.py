"""Tenant isolation (issue 9), against the real daemon and a real PostgreSQL.

* A custom field whose *name* is SQL, and cell values that are SQL, are data: stored
  as given, no statement is run; names the definitions refuse are refused cleanly.
* A folder under the landing root that is no valid company id (or a valid-looking id
  that is not set up, such as a PostgreSQL system schema) fails its files with
  ``TenantEngine::SchemaErrors::InvalidSchemaNameError`` and touches no schema.
* Ids that exist in company B (``person_id``, ``person_key``, ``external_person_id``,
  ``mdn``, ``vibes_device_id``) named in company A's file never read or change B's rows:
  A's rows are resolved in A alone (PersonNotFound, or a new person in A).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import (
    Daemon,
    drop,
    entries,
    ledger,
    listing,
    query,
    result_json,
    run_cli,
    setup_company,
)

from ingestd import errors
from ingestd.landing import CompanyDirs
from ingestd.persons.custom_fields import FieldDefinition

EVIL_NAME = 'x"; drop table acme.persons; --'
EVIL_VALUE = "'); DROP SCHEMA acme CASCADE; --"
EVIL_EXT = "e'); DELETE FROM beta.persons; --"


@pytest.fixture
def daemon(env: dict[str, str]) -> Iterator[Daemon]:
    d = Daemon(env)
    try:
        yield d
    finally:
        d.kill()


def stop_cleanly(d: Daemon) -> None:
    assert d.stop(signal.SIGTERM) == 0, d.tail()
    assert d.errors() == [], d.errors()


def schemas(db_url: str) -> list[str]:
    return [r[0] for r in query(db_url, "SELECT nspname FROM pg_namespace ORDER BY 1")]


def tables(db_url: str) -> list[tuple[Any, ...]]:
    return query(db_url, "SELECT table_schema, table_name FROM information_schema.tables"
                         " ORDER BY 1, 2")


def all_persons(db_url: str, schema: str) -> list[tuple[Any, ...]]:
    """Every column of every person, updated_at included: 'unchanged' means unchanged."""
    return query(db_url, f'SELECT person_id, person_key::text, external_person_id, mdn,'
                         f' vibes_device_id, carrier, custom::text, created_at, updated_at'
                         f' FROM "{schema}".persons ORDER BY person_id')


# -- SQL in names and values is data ------------------------------------------------------


def test_sql_in_a_field_name_and_in_values_is_stored_as_data(
        daemon: Daemon, db_url: str, landing: Path, env: dict[str, str],
        tmp_path: Path) -> None:
    acme = setup_company(db_url, landing, "acme")
    beta = setup_company(db_url, landing, "beta")
    # The definitions accept the name (lowercase, not an id column), through the CLI.
    fields = tmp_path / "fields.toml"
    fields.write_text(f"[[field]]\nname = '''{EVIL_NAME}'''\ntype = \"string\"\n"
                      "[[field]]\nname = \"note\"\ntype = \"string\"\n")
    res = run_cli(["fields", "load", str(fields), "--company", "acme"], env)
    assert res.returncode == 0, res.stderr
    tables_before = tables(db_url)

    quoted_name = '"' + EVIL_NAME.replace('"', '""') + '"'
    content = (f"external_person_id,{quoted_name},note\n"
               f"p1,{EVIL_VALUE},plain\n"
               f"\"{EVIL_EXT}\",v,{EVIL_VALUE}\n")
    daemon.start()
    drop(acme, "evil.persons", content)
    drop(beta, "b.persons", "external_person_id\nb1\n")
    daemon.wait_event("file.done", file="evil.persons")
    daemon.wait_event("file.done", file="b.persons")
    stop_cleanly(daemon)

    result = result_json(acme.done, "evil.persons")
    assert (result["rows"], result["accepted"], result["rejected"]) == (2, 2, 0), result
    rows = query(db_url, "SELECT external_person_id, custom FROM acme.persons"
                         " ORDER BY person_id")
    assert rows == [("p1", {EVIL_NAME: EVIL_VALUE, "note": "plain"}),
                    (EVIL_EXT, {EVIL_NAME: "v", "note": EVIL_VALUE})]
    assert query(db_url, "SELECT external_person_id FROM beta.persons") == [("b1",)]
    assert tables(db_url) == tables_before  # nothing dropped, nothing created
    # and the name reads back from the definitions as given
    listed = run_cli(["fields", "list", "--company", "acme"], env)
    assert listed.returncode == 0 and EVIL_NAME in listed.stdout, listed


def test_names_the_definitions_refuse_are_refused_cleanly(
        db_url: str, landing: Path, env: dict[str, str], tmp_path: Path) -> None:
    setup_company(db_url, landing, "acme", [FieldDefinition(name="note", type="string")])
    before = query(db_url, "SELECT name FROM ingestd.custom_fields")
    for name in ['X"; DROP TABLE acme.persons; --', " note", "person_id", ""]:
        fields = tmp_path / "bad.toml"
        fields.write_text(f"[[field]]\nname = '''{name}'''\ntype = \"string\"\n")
        res = run_cli(["fields", "load", str(fields), "--company", "acme"], env)
        assert res.returncode == 2, (name, res)
        [line] = res.stderr.strip().splitlines()
        assert str(fields) in line and "name" in line, line
        assert "Traceback" not in res.stderr
    # a company id that is SQL is no company id
    res = run_cli(["company", "add", "acme; drop schema acme cascade; --"], env)
    assert res.returncode == 2 and "invalid company id" in res.stderr, res
    assert query(db_url, "SELECT name FROM ingestd.custom_fields") == before == [("note",)]
    assert "acme" in schemas(db_url)


# -- folders that are no company ----------------------------------------------------------

BAD_FOLDERS = [
    "Bad-Name", "ACME", "a..b", "a b", "1acme", "acme;drop", 'acme"; drop schema acme; --',
    "pg_catalog", "pg_toast", "public", "ingestd", "information_schema",
    "a" * 64,  # one over PostgreSQL's 63-byte identifiers
]


def test_a_folder_that_is_no_valid_company_fails_its_files_and_touches_no_schema(
        daemon: Daemon, db_url: str, landing: Path) -> None:
    acme = setup_company(db_url, landing, "acme")
    drop(acme, "seed.persons", "external_person_id\na1\n")
    daemon.start()
    daemon.wait_event("file.done", file="seed.persons")
    acme_before = all_persons(db_url, "acme")
    schemas_before, tables_before = schemas(db_url), tables(db_url)

    bad = [CompanyDirs(landing / name) for name in BAD_FOLDERS]
    for dirs in bad:
        dirs.inbox.mkdir(parents=True)
        drop(dirs, "p.persons", "external_person_id,mdn\nx1,2295551234\n")
    for dirs in bad:
        daemon.wait_event("file.failed", company=dirs.company, file="p.persons")
    stop_cleanly(daemon)

    for dirs in bad:
        result = result_json(dirs.failed, "p.persons")
        assert result["error"]["class"] == errors.INVALID_SCHEMA_NAME, (dirs.company, result)
        assert result["error"]["class"] == "TenantEngine::SchemaErrors::InvalidSchemaNameError"
        assert dirs.company in result["error"]["message"]
        assert result["accepted"] == 0 and result["company"] == dirs.company
        assert listing(dirs.failed) == ["p.persons", "p.persons.result.json"]
        assert listing(dirs.done) == [] and listing(dirs.inbox) == []
        assert list(entries(dirs.processing)) == []
    assert schemas(db_url) == schemas_before and tables(db_url) == tables_before
    assert all_persons(db_url, "acme") == acme_before
    statuses = {(r["company"], r["status"], r["error_class"]) for r in ledger(db_url)
                if r["company"] != "acme"}
    assert statuses == {(d.company, "failed", errors.INVALID_SCHEMA_NAME) for d in bad}


# -- company B's ids in company A's file --------------------------------------------------


def test_ids_of_another_company_never_read_or_change_its_rows(
        daemon: Daemon, db_url: str, landing: Path) -> None:
    note = [FieldDefinition(name="note", type="string")]
    acme = setup_company(db_url, landing, "acme", note)
    beta = setup_company(db_url, landing, "beta", note)
    daemon.start()
    # beta has five people; acme has nobody yet, so beta's person_ids do not exist in acme
    drop(beta, "b.persons", "external_person_id,mdn,vibes_device_id,note\n"
                            + "".join(f"b{i},+1229555{1200 + i},dev-b{i},beta-{i}\n"
                                      for i in range(5)))
    daemon.wait_event("file.done", file="b.persons")
    before = all_persons(db_url, "beta")
    [(b_id, b_key)] = query(db_url, "SELECT person_id, person_key::text FROM beta.persons"
                                    " WHERE external_person_id = 'b2'")

    drop(acme, "a.persons",
         "person_id,person_key,external_person_id,mdn,vibes_device_id,note\n"
         f"{b_id},,,,,took-over-by-id\n"             # 1 PersonNotFound (not beta's b2)
         f",{b_key},,,,took-over-by-key\n"           # 2 PersonNotFound
         ",,b3,,,acme-b3\n"                          # 3 a new person in acme
         ",,a-new,+12295551204,,acme-mdn\n"          # 4 beta's mdn is free in acme
         ",,,,dev-b1,acme-dev\n")                    # 5 a new person by device id
    daemon.wait_event("file.done", file="a.persons")
    stop_cleanly(daemon)

    assert all_persons(db_url, "beta") == before  # not one column of beta changed
    result = result_json(acme.done, "a.persons")
    assert (result["rows"], result["accepted"], result["rejected"]) == (5, 3, 2), result
    assert result["rejected_by_class"] == {errors.PERSON_NOT_FOUND: 2}
    errors_csv = (acme.done / "a.persons.errors.csv").read_text().splitlines()
    assert [line.split(",")[:2] for line in errors_csv[1:]] == [
        ["1", errors.PERSON_NOT_FOUND], ["2", errors.PERSON_NOT_FOUND]]
    assert query(db_url, "SELECT external_person_id, mdn, vibes_device_id, custom->>'note'"
                         " FROM acme.persons ORDER BY person_id") == [
        ("b3", None, None, "acme-b3"),
        ("a-new", "+12295551204", None, "acme-mdn"),
        (None, None, "dev-b1", "acme-dev")]
    assert not query(db_url, "SELECT 1 FROM acme.persons WHERE person_key::text = %s",
                     (b_key,))
    assert listing(beta.done) == ["b.persons", "b.persons.result.json"]  # nothing rejected
