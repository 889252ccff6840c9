"""`ingestd requeue` and `ingestd prune` / `retention_days`: the CLI as a subprocess, the
real daemon where the daemon acts, a real PostgreSQL and real files."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import (
    StartDaemon,
    drop,
    ledger,
    listing,
    query,
    result_json,
    run_cli,
    scalar,
    setup_company,
    wait_for,
)

from ingestd import errors
from ingestd.landing import CompanyDirs

# Without a `note` field the row is rejected (CustomFieldNotFound); with one, accepted.
NOTE_FILE = "external_person_id,note\ne1,hello\n"
FIELDS_TOML = '[[field]]\nname = "note"\ntype = "string"\n'


def ok(r: Any) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    return str(r.stdout)


def ingest(env: dict[str, str], dirs: CompanyDirs, name: str, content: str) -> Path:
    """A file through `ingestd ingest`, finished into done/ (or failed/)."""
    path = drop(dirs, name, content)
    r = run_cli(["ingest", str(path)], env)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    return path


def notes(db_url: str, company: str) -> list[Any]:
    return [r[0] for r in query(db_url, f"SELECT custom->>'note' FROM {company}.persons")]


def age(db_url: str, file_id: int, days: int) -> None:
    """Pretend the file finished ``days`` days ago."""
    query(db_url, "UPDATE ingestd.files SET finished_at = finished_at - make_interval("
                  "days => %s), committed_at = committed_at - make_interval(days => %s)"
                  " WHERE id = %s RETURNING id", (days, days, file_id))


# -- requeue ------------------------------------------------------------------------------

def test_failed_file_requeued_after_company_add_is_applied_by_the_daemon(
        start_daemon: StartDaemon, env: dict[str, str], db_url: str, landing: Path) -> None:
    newco = CompanyDirs(landing / "newco")
    newco.inbox.mkdir(parents=True)
    d = start_daemon()
    drop(newco, "crm.persons", NOTE_FILE)
    d.wait_event("file.failed", company="newco", file="crm.persons")
    assert result_json(newco.failed, "crm.persons")["error"]["class"] == \
        errors.INVALID_SCHEMA_NAME

    ok(run_cli(["company", "add", "newco"], env))
    ok(run_cli(["fields", "load", str(write(landing.parent / "f.toml", FIELDS_TOML)),
                "--company", "newco"], env))
    out = ok(run_cli(["requeue", str(newco.failed / "crm.persons")], env))
    assert out == f"requeued: {newco.failed / 'crm.persons'} -> {newco.inbox / 'crm.persons'}\n"
    # the old results left failed/ at once; the ledger keeps the history
    assert listing(newco.failed) == []

    done = d.wait_event("file.done", company="newco", file="crm.persons")[0]
    assert done["accepted"] == 1 and done["rejected"] == 0
    # (no errors.csv: nothing was rejected; custom-fields.json: the partner's copy)
    assert listing(newco.done) == ["crm.persons", "crm.persons.result.json",
                                   "custom-fields.json"]
    fresh = result_json(newco.done, "crm.persons")
    assert fresh["status"] == "done" and "error" not in fresh
    assert notes(db_url, "newco") == ["hello"]
    first, second = ledger(db_url, "newco")
    assert first["status"] == "failed" and first["requeued_at"] is not None
    assert second["status"] == "done" and second["requeued_at"] is None
    assert scalar(db_url, "SELECT count(*) FROM ingestd.requeues") == 0  # used up
    assert d.stop() == 0


def test_requeued_done_file_with_known_content_is_applied_again_not_a_duplicate(
        start_daemon: StartDaemon, env: dict[str, str], db_url: str, landing: Path) -> None:
    acme = setup_company(db_url, landing, "acme")
    d = start_daemon()
    drop(acme, "crm.persons", NOTE_FILE)
    d.wait_event("file.done", company="acme", file="crm.persons")
    assert d.stop() == 0
    assert result_json(acme.done, "crm.persons")["rejected_by_class"] == {
        errors.CUSTOM_FIELD_NOT_FOUND: 1}
    # Dropped an hour ago; a file dropped a minute ago waits. The requeued file is a
    # new drop: it goes after the waiting one.
    now = time.time()
    os.utime(acme.done / "crm.persons", (now - 3600, now - 3600))
    drop(acme, "waiting.persons", "external_person_id\ne2\n", mtime=now - 60)

    ok(run_cli(["fields", "load", str(write(landing.parent / "f.toml", FIELDS_TOML)),
                "--company", "acme"], env))
    ok(run_cli(["requeue", str(acme.done / "crm.persons")], env))
    assert listing(acme.done) == ["custom-fields.json"]  # the partner's copy of the fields

    d = start_daemon()
    done = d.wait_event("file.done", company="acme", file="crm.persons")[0]
    assert "duplicate_of" not in done and done["accepted"] == 1
    fresh = result_json(acme.done, "crm.persons")
    assert "duplicate_of" not in fresh and fresh["rejected"] == 0
    assert listing(acme.done) == ["crm.persons", "crm.persons.result.json",
                                  "custom-fields.json", "waiting.persons",
                                  "waiting.persons.result.json"]
    assert sorted(notes(db_url, "acme"), key=str) == [None, "hello"]
    names = [r["name"] for r in ledger(db_url, "acme")]
    assert names == ["crm.persons", "waiting.persons", "crm.persons"]

    # Used once: the same content dropped again is a duplicate as before.
    drop(acme, "again.persons", NOTE_FILE)
    again = d.wait_event("file.done", company="acme", file="again.persons")[0]
    assert again["duplicate_of"] == "crm.persons"
    assert d.stop() == 0


def test_requeue_keeps_the_dropped_name_and_its_headers_companion(
        env: dict[str, str], db_url: str, landing: Path) -> None:
    acme = setup_company(db_url, landing, "acme")
    ingest(env, acme, "crm.persons", NOTE_FILE)
    ingest(env, acme, "crm.persons", "external_person_id\ne9\n")  # stored as crm~2.persons
    (acme.inbox / "crm.persons").write_text("someone else's new drop\n")
    out = ok(run_cli(["requeue", str(acme.done / "crm~2.persons")], env))
    # the name as dropped, suffixed only because inbox/ has that name already
    assert out.endswith(f"-> {acme.inbox / 'crm~2.persons'}\n")
    assert (acme.inbox / "crm~2.persons").read_text() == "external_person_id\ne9\n"
    assert listing(acme.done) == ["crm.persons", "crm.persons.errors.csv",
                                  "crm.persons.result.json"]

    contacts = drop(acme, "c.csv", "not,a,contacts,file\n")
    (acme.inbox / "c.csv.headers").write_text("If-Unmodified-Since: 2026-01-01T00:00:00Z\n")
    assert run_cli(["ingest", str(contacts)], env).returncode == 1
    assert {"c.csv", "c.csv.headers", "c.csv.result.json"} <= set(listing(acme.failed))
    os.utime(acme.failed / "c.csv", (1_000_000_000, 1_000_000_000))
    before = time.time()
    ok(run_cli(["requeue", str(acme.failed / "c.csv")], env))
    assert listing(acme.failed) == []
    assert {"c.csv", "c.csv.headers"} <= set(listing(acme.inbox))
    # touched: a requeued file is a new drop, after files already waiting
    assert os.stat(acme.inbox / "c.csv").st_mtime >= before - 1


def test_requeue_errors_name_the_path_and_exit_1(env: dict[str, str], db_url: str,
                                                 landing: Path, tmp_path: Path) -> None:
    acme = setup_company(db_url, landing, "acme")
    ingest(env, acme, "crm.persons", NOTE_FILE)
    (acme.done / "by-hand.persons").write_text("external_person_id\ne1\n")
    outside = write(tmp_path / "elsewhere.persons", NOTE_FILE)
    waiting = drop(acme, "waiting.persons", NOTE_FILE)
    cases = {
        outside: "not under the landing root",
        waiting: "not a file in a company's done/ or failed/ folder",
        acme.done / "gone.persons": "no such file",
        acme.done / "crm.persons.result.json":
            f"a result file of crm.persons; requeue {acme.done / 'crm.persons'} itself",
        acme.done / "crm.persons.errors.csv": "a result file of crm.persons",
        acme.done / "by-hand.persons": "not a file ingestd finished (no ledger row for it)",
    }
    for path, reason in cases.items():
        r = run_cli(["requeue", str(path)], env)
        assert r.returncode == 1, (path, r.stdout, r.stderr)
        assert r.stdout == ""
        [line] = [x for x in r.stderr.splitlines() if x.startswith("ingestd: ")]
        assert line.startswith(f"ingestd: {path}: ") and reason in line, line
        assert "Traceback" not in r.stderr
    assert (acme.done / "crm.persons").exists() and waiting.exists()

    # several paths: each reported, the good one requeued, exit 1 for the bad one
    r = run_cli(["requeue", str(acme.done / "gone.persons"), str(acme.done / "crm.persons")],
                env)
    assert r.returncode == 1
    assert r.stdout == f"requeued: {acme.done / 'crm.persons'} -> {acme.inbox / 'crm.persons'}\n"
    assert f"ingestd: {acme.done / 'gone.persons'}: no such file" in r.stderr
    assert '"event": "file.requeued"' in r.stderr
    # the same file again: it is no longer there
    r = run_cli(["requeue", str(acme.done / "crm.persons")], env)
    assert r.returncode == 1 and "no such file" in r.stderr

    r = run_cli(["requeue"], env)  # no PATH: a usage error
    assert r.returncode == 2


# -- prune --------------------------------------------------------------------------------

def test_prune_by_age_dry_run_and_redrop_is_still_a_duplicate(
        env: dict[str, str], db_url: str, landing: Path) -> None:
    acme = setup_company(db_url, landing, "acme")
    ingest(env, acme, "old.persons", NOTE_FILE)
    ingest(env, acme, "new.persons", "external_person_id\ne2\n")
    old, new = ledger(db_url, "acme")
    age(db_url, old["id"], 10)
    assert scalar(db_url, "SELECT count(*) FROM ingestd.row_results WHERE file_id = %s",
                  (old["id"],)) == 1
    before = listing(acme.done)
    size = sum(os.path.getsize(acme.done / n) for n in before if n.startswith("old."))

    out = ok(run_cli(["prune", "--older-than", "7", "--dry-run"], env))
    assert out == (f"would delete: {acme.done / 'old.persons'}\n"
                   f"would delete: {acme.done / 'old.persons.result.json'}\n"
                   f"would delete: {acme.done / 'old.persons.errors.csv'}\n"
                   f"would prune 1 file(s), {size} bytes (finished 7 or more days ago)\n")
    assert listing(acme.done) == before
    assert scalar(db_url, "SELECT pruned_at FROM ingestd.files WHERE id = %s",
                  (old["id"],)) is None

    r = run_cli(["prune", "--older-than", "7"], env)
    assert r.stdout == f"pruned 1 file(s), {size} bytes (finished 7 or more days ago)\n"
    assert '"event": "files.pruned"' in r.stderr and '"older_than_days": 7' in r.stderr
    assert listing(acme.done) == ["new.persons", "new.persons.result.json"]
    rows = {r["id"]: r for r in ledger(db_url, "acme")}
    assert rows[old["id"]]["pruned_at"] is not None and rows[old["id"]]["sha256"] == old["sha256"]
    assert rows[new["id"]]["pruned_at"] is None
    assert scalar(db_url, "SELECT count(*) FROM ingestd.row_results WHERE file_id = %s",
                  (old["id"],)) == 0

    # the content is still known: dropped again, it is a duplicate of the pruned file
    ingest(env, acme, "redrop.persons", NOTE_FILE)
    assert result_json(acme.done, "redrop.persons")["duplicate_of"] == "old.persons"
    assert notes(db_url, "acme") == [None]  # e2 only: e1's row was rejected, never applied

    out = ok(run_cli(["prune", "--older-than", "0"], env))
    assert out.startswith("pruned 2 file(s), ")
    assert listing(acme.done) == []
    assert ok(run_cli(["prune", "--older-than", "0"], env)).startswith("pruned 0 file(s), 0 bytes")


def test_prune_leaves_a_requeued_file_that_finished_again_under_the_same_name(
        env: dict[str, str], db_url: str, landing: Path) -> None:
    acme = setup_company(db_url, landing, "acme")
    ingest(env, acme, "crm.persons", NOTE_FILE)
    ok(run_cli(["requeue", str(acme.done / "crm.persons")], env))
    r = run_cli(["ingest", str(acme.inbox / "crm.persons")], env)
    assert r.returncode == 0 and "duplicate" not in r.stdout, r.stdout
    first, second = ledger(db_url, "acme")
    assert first["final_path"] == second["final_path"]
    age(db_url, first["id"], 30)
    ok(run_cli(["prune", "--older-than", "7"], env))
    assert listing(acme.done) == ["crm.persons", "crm.persons.errors.csv",
                                  "crm.persons.result.json"]
    assert scalar(db_url, "SELECT pruned_at IS NOT NULL FROM ingestd.files WHERE id = %s",
                  (first["id"],))
    # a pruned file is not requeued: the file at that path is the newer one
    ok(run_cli(["requeue", str(acme.done / "crm.persons")], env))
    assert scalar(db_url, "SELECT requeued_at IS NOT NULL FROM ingestd.files WHERE id = %s",
                  (second["id"],))


@pytest.mark.parametrize("days", ["-1", "seven", "1.5"])
def test_prune_rejects_a_bad_number_of_days(env: dict[str, str], days: str) -> None:
    r = run_cli(["prune", "--older-than", days], env)
    assert r.returncode == 2 and "whole number of days" in r.stderr, r.stderr


def test_invalid_retention_days_exits_2(env: dict[str, str]) -> None:
    r = run_cli(["run"], {**env, "INGESTD_RETENTION_DAYS": "-3"})
    assert r.returncode == 2
    assert len(r.stderr.splitlines()) == 1 and "retention_days" in r.stderr, r.stderr


def test_daemon_with_retention_days_prunes_and_logs_files_pruned(
        start_daemon: StartDaemon, env: dict[str, str], db_url: str, landing: Path) -> None:
    acme = setup_company(db_url, landing, "acme")
    ingest(env, acme, "old.persons", NOTE_FILE)
    ingest(env, acme, "recent.persons", "external_person_id\ne2\n")
    old, _ = ledger(db_url, "acme")
    age(db_url, old["id"], 3)
    d = start_daemon(INGESTD_RETENTION_DAYS="2")
    event = d.wait_event("files.pruned", company="acme")[0]
    assert event["files"] == 1 and event["older_than_days"] == 2
    assert event["dry_run"] is False and event["bytes"] > 0
    wait_for(lambda: not (acme.done / "old.persons").exists(), what="old.persons pruned")
    assert [n for n in listing(acme.done) if n.startswith("old.")] == []
    assert (acme.done / "recent.persons").exists()
    assert d.stop() == 0
    assert d.errors() == []


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
