"""End to end: the real daemon (`python -m ingestd run`) in a subprocess, a real
PostgreSQL, real files and real watchdog events.

Every wait is a deadline-bounded poll (``wait_for``); no test asserts a duration.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import itertools
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from daemon_helpers import (
    NOTE_FIELD,
    Daemon,
    StartDaemon,
    drop,
    entries,
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
from ingestd.cli import build_parser
from ingestd.landing import CompanyDirs
from ingestd.persons.fields_file import FIELDS_FILE

# The row errors of docs/formats.md section 1, with the seed's messages.
MDN_MESSAGE = "The mdn is incorrectly formatted. It should be an E.164 mdn."

RESULT_KEYS = {"status", "format", "company", "file", "sha256", "rows", "accepted",
               "rejected", "rejected_by_class", "started_at", "finished_at", "duration_s",
               "warnings"}

def stop_cleanly(d: Daemon) -> None:
    """SIGTERM → exit 0, and nothing logged at error level on the way."""
    code = d.stop(signal.SIGTERM)
    assert code == 0, d.tail()
    assert d.find("daemon.stopping"), d.tail()
    assert d.errors() == [], d.errors()


def read_csv(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))


def persons(db_url: str, company: str) -> list[tuple[Any, ...]]:
    """(external_person_id, mdn, custom) of every person, by person_id."""
    return query(db_url, f'SELECT external_person_id, mdn, custom FROM "{company}".persons'
                         " ORDER BY person_id")


def person_count(db_url: str, company: str) -> int:
    n: int = scalar(db_url, f'SELECT count(*) FROM "{company}".persons')
    return n


def drops_in(directory: Path) -> list[str]:
    """The dropped files in done/ or failed/ (sidecars and the partner's copy of the
    custom fields left out)."""
    sidecar = (".result.json", ".errors.csv", ".accepted.csv", ".rejected.csv",
               ".global.csv", ".retry.persons")
    return [n for n in listing(directory) if not n.endswith(sidecar) and n != FIELDS_FILE]


def log_time(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))


# -- 1. a drop, its rows and its sidecars ----------------------------------------------

MIXED = ("person_id,mdn,external_person_id,note,color\n"
         ",2295551234,e1,hello,\n"     # 1 accepted: a new person, found by nobody
         ",abc,e2,x,\n"                # 2 InvalidMDNFormat
         ",2295551235,e3,,red\n"       # 3 CustomFieldNotFound: no field "color"
         "999,,,,\n")                  # 4 PersonNotFound


def test_drop_is_applied_with_result_and_errors_sidecars(
        start_daemon: StartDaemon, db_url: str, landing: Path) -> None:
    acme = setup_company(db_url, landing, "acme", NOTE_FIELD)
    d = start_daemon()
    drop(acme, "crm.persons", MIXED)
    done = d.wait_event("file.done", company="acme", file="crm.persons")[0]
    stop_cleanly(d)

    # the lifecycle's events, in order, each naming the company and the file
    names = [e["event"] for e in d.snapshot()
             if e.get("file") == "crm.persons" and e.get("company") == "acme"]
    assert names == ["file.ready", "file.claimed", "file.applied", "file.done"]
    assert done["rows"] == 4 and done["accepted"] == 1 and done["rejected"] == 3

    # where everything is
    assert listing(acme.done) == ["crm.persons", "crm.persons.errors.csv",
                                  "crm.persons.result.json"]
    assert (acme.done / "crm.persons").read_text() == MIXED
    assert listing(acme.inbox) == [] and listing(acme.failed) == []
    assert list(entries(acme.processing)) == []

    # the rows
    assert persons(db_url, "acme") == [("e1", "+12295551234", {"note": "hello"})]

    # result.json (docs/formats.md section 3)
    result = result_json(acme.done, "crm.persons")
    assert result.keys() >= RESULT_KEYS
    assert "error" not in result and "duplicate_of" not in result
    assert result["status"] == "done"
    assert result["format"] == "persons"
    assert result["company"] == "acme"
    assert result["file"] == "crm.persons"
    assert result["sha256"] == hashlib.sha256(MIXED.encode()).hexdigest()
    assert (result["rows"], result["accepted"], result["rejected"]) == (4, 1, 3)
    assert result["rejected_by_class"] == {
        errors.INVALID_MDN_FORMAT: 1,
        errors.CUSTOM_FIELD_NOT_FOUND: 1,
        errors.PERSON_NOT_FOUND: 1,
    }
    started = datetime.fromisoformat(result["started_at"])
    finished = datetime.fromisoformat(result["finished_at"])
    assert started.tzinfo is not None and started <= finished
    assert isinstance(result["duration_s"], int | float) and result["duration_s"] >= 0
    assert result["warnings"] == []

    # errors.csv: exact class and message, the column at fault and what was wrong with it,
    # then the row's fields as given
    assert read_csv(acme.done / "crm.persons.errors.csv") == [
        ["record", "error_class", "error_message", "error_field", "error_detail",
         "person_id", "mdn", "external_person_id", "note", "color"],
        ["2", "MobilePhoneErrors::InvalidMDNFormat", MDN_MESSAGE,
         "mdn", "'abc' is not E.164 (+ and digits) or 10 digits", "", "abc", "e2", "x", ""],
        ["3", "PersonErrors::CustomFieldNotFound", "Custom field not found",
         "color", "no custom field named color", "", "2295551235", "e3", "", "red"],
        ["4", "PersonErrors::PersonNotFound", "Person not found",
         "person_id", "no person with person_id 999", "999", "", "", "", ""],
    ]

    # the ledger
    [entry] = ledger(db_url)
    assert entry["company"] == "acme" and entry["name"] == "crm.persons"
    assert entry["status"] == "done" and entry["finished_at"] is not None
    assert (entry["rows"], entry["accepted"], entry["rejected"]) == (4, 1, 3)
    assert entry["final_path"] == str(acme.done / "crm.persons")


# -- 2. readiness: a slow writer, a .part upload -----------------------------------------

def test_file_written_in_chunks_is_claimed_only_after_its_last_byte(
        start_daemon: StartDaemon, db_url: str, landing: Path) -> None:
    acme = setup_company(db_url, landing, "acme")
    d = start_daemon(INGESTD_SETTLE_SECONDS="0.5")
    body = "external_person_id\n" + "".join(f"slow{i}\n" for i in range(50))
    data = body.encode()
    # Cut mid-row, so a premature claim would see a different row count.
    cuts = [0, 23, 101, 197, 263, len(data)]
    chunks = [data[a:b] for a, b in itertools.pairwise(cuts)]
    path = acme.inbox / "slow.persons"
    with open(path, "wb") as fh:  # held open for the whole upload, like an SFTP server
        for i, chunk in enumerate(chunks):
            if i:
                # The writer's own pace (the scenario, not a wait): each pause is twice
                # the settle period, with the file open and its size still.
                time.sleep(1.0)
            fh.write(chunk)
            fh.flush()
            assert not d.find("file.claimed", file="slow.persons"), \
                f"claimed after chunk {i} of {len(chunks)}\n{d.tail()}"
        last_write = datetime.now(UTC)

    d.wait_event("file.done", company="acme", file="slow.persons")
    stop_cleanly(d)
    claims = d.find("file.claimed", file="slow.persons")
    assert len(claims) == 1
    assert log_time(claims[0]) > last_write, "claimed before the last byte was written"
    assert not d.find("file.changed")
    result = result_json(acme.done, "slow.persons")
    assert (result["rows"], result["accepted"], result["rejected"]) == (50, 50, 0)
    assert person_count(db_url, "acme") == 50
    assert (acme.done / "slow.persons").read_bytes() == data


def test_part_upload_renamed_to_final_name_is_applied_once(
        start_daemon: StartDaemon, db_url: str, landing: Path) -> None:
    acme = setup_company(db_url, landing, "acme")
    d = start_daemon()
    content = "external_person_id\np1\np2\n"
    part = drop(acme, "up.persons.part", content)
    in_flight = ["up.persons.filepart", "up.persons.tmp", "up.persons.partial",
                 "up.persons~", ".up.persons"]
    for name in in_flight:
        drop(acme, name, content)
    # A later drop has gone all the way through: the .part was seen and left alone.
    drop(acme, "sentinel.persons", "external_person_id\ns1\n")
    d.wait_event("file.done", company="acme", file="sentinel.persons")
    assert part.exists()
    assert all((acme.inbox / name).read_text() == content for name in in_flight)
    assert not [e for e in d.snapshot() if "file" in e and e["file"].startswith(("up.", ".up"))]

    part.rename(acme.inbox / "up.persons")
    d.wait_event("file.done", company="acme", file="up.persons")
    # another full round trip (and a rescan's worth of time) before looking for doubles
    drop(acme, "sentinel2.persons", "external_person_id\ns2\n")
    d.wait_event("file.done", company="acme", file="sentinel2.persons")
    stop_cleanly(d)

    assert len(d.find("file.claimed", file="up.persons")) == 1
    assert [e["name"] for e in ledger(db_url) if e["name"].startswith("up.")] == ["up.persons"]
    assert drops_in(acme.done) == ["sentinel.persons", "sentinel2.persons", "up.persons"]
    assert listing(acme.inbox) == sorted(in_flight)  # still untouched
    assert list(entries(acme.processing)) == []
    assert person_count(db_url, "acme") == 4


def _process_state(pid: int) -> str:
    """The process's state letter in /proc (T: stopped by a signal)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_file_changed_while_being_applied_is_rolled_back_and_applied_once_later(
        start_daemon: StartDaemon, db_url: str, landing: Path) -> None:
    """A write that reaches the file after its claim (an uploader's open descriptor
    follows the rename into .processing/) while the daemon applies it: the apply is
    rolled back, the file goes back to the inbox and is applied once, whole, when it has
    settled again. (A file with a writer still open is never claimed at all: the read
    lease check, tests/test_sftp_uploads.py.)"""
    acme = setup_company(db_url, landing, "acme")
    n = 60000
    body = "external_person_id\n" + "".join(f"p{i}\n" for i in range(n))
    # The daemon stops itself (SIGSTOP) once, inside the apply before reading a row, so
    # the append surely lands while the file is being applied.
    d = start_daemon(INGESTD_FAILPOINT="hang_in_apply:stop")
    assert d.proc is not None
    pid = d.proc.pid
    (acme.inbox / "grow.persons").write_text(body)
    d.wait_event("file.claimed", company="acme", file="grow.persons")
    wait_for(lambda: _process_state(pid) == "T", 60, what="the daemon stopped in apply",
             context=d.tail)
    [claimed] = acme.processing.glob("*/grow.persons")
    with open(claimed, "a") as fh:  # as the uploader's descriptor would: the file grows
        fh.write("late\n")
    d.proc.send_signal(signal.SIGCONT)
    d.wait_event("file.done", company="acme", file="grow.persons", timeout=60)
    stop_cleanly(d)
    assert len(d.find("file.changed", file="grow.persons")) == 1
    applied = d.find("file.applied", file="grow.persons")
    assert len(applied) == 1 and applied[0]["rows"] == n + 1
    [entry] = ledger(db_url)
    assert entry["rows"] == n + 1 and entry["status"] == "done"
    assert person_count(db_url, "acme") == n + 1
    assert drops_in(acme.done) == ["grow.persons"]
    assert listing(acme.inbox) == [] and list(entries(acme.processing)) == []


# -- 3. many files, many companies ------------------------------------------------------

@pytest.mark.parametrize("how", ["while_running", "backlog_at_start", "two_instances"])
def test_200_files_over_3_companies_each_applied_once_in_drop_order(
        start_daemon: StartDaemon, db_url: str, landing: Path, tmp_path: Path,
        how: str) -> None:
    """while_running: renamed into the inboxes all at once, under a running daemon;
    backlog_at_start: all there before the daemon starts (one start-up scan);
    two_instances: two daemons on one landing root (the per-company lock)."""
    counts = {"acme": 67, "beta": 67, "gamma": 66}
    dirs = {c: setup_company(db_url, landing, c, NOTE_FIELD) for c in counts}
    staging = tmp_path / "staging"  # same file system as the landing root
    staging.mkdir()
    base = time.time() - 3600
    # Name order is the reverse of drop (mtime) order, so only the mtime can order them.
    plan: list[tuple[float, str, str]] = []  # (mtime, company, name)
    for company, n in counts.items():
        for k in range(n):
            name = f"drop-{n - k:03d}.persons"
            content = f"external_person_id,note\ne1,{company}-{k}\nx{k},{k}\n"
            mtime = base + k + random.random() / 10
            path = staging / f"{company}-{name}"
            path.write_text(content)
            os.utime(path, (mtime, mtime))
            plan.append((mtime, company, name))
    plan.sort()

    def drop_all() -> None:  # all at once, in drop order, companies interleaved
        for _, company, name in plan:
            os.rename(staging / f"{company}-{name}", dirs[company].inbox / name)

    if how == "backlog_at_start":
        drop_all()
    daemons = [start_daemon() for _ in range(2 if how == "two_instances" else 1)]
    if how != "backlog_at_start":
        drop_all()
    wait_for(lambda: sum(len(d.find("file.done")) for d in daemons) >= 200, 180,
             what="200 files done", context=lambda: "\n".join(d.tail() for d in daemons))
    for d in daemons:
        stop_cleanly(d)
        assert not d.find("file.failed") and not d.find("file.changed")
    if how == "two_instances":
        claims = [e["file"] for d in daemons for e in d.find("file.claimed")]
        assert len(claims) == 200  # nobody claimed a file twice

    rows = ledger(db_url)
    assert len(rows) == 200
    assert all(r["status"] == "done" and r["finished_at"] is not None for r in rows)
    for company, n in counts.items():
        cdirs = dirs[company]
        mine = [r for r in rows if r["company"] == company]
        expected_order = [name for _, c, name in plan if c == company]
        assert sorted(r["name"] for r in mine) == sorted(expected_order)  # each once
        assert len(drops_in(cdirs.done)) == n
        assert not any("~" in name for name in listing(cdirs.done))
        assert listing(cdirs.inbox) == [] and list(entries(cdirs.processing)) == []
        assert person_count(db_url, company) == n + 1
        # the last file's value wins ...
        note = scalar(db_url, f"SELECT custom->>'note' FROM \"{company}\".persons"
                              " WHERE external_person_id = 'e1'")
        assert note == f"{company}-{n - 1}"
        # ... because the files were applied in drop order (ledger ids are commit order)
        assert [r["name"] for r in mine] == expected_order


# -- 4. crash recovery -------------------------------------------------------------------

CRASH_FILE = "external_person_id,note\nc1,one\nc2,two\n,orphan\n"  # row 3 is rejected


@pytest.mark.parametrize("failpoint", ["before_commit", "after_commit", "after_sidecars"])
def test_killed_daemon_recovers_and_applies_exactly_once(
        start_daemon: StartDaemon, db_url: str, landing: Path, failpoint: str) -> None:
    acme = setup_company(db_url, landing, "acme", NOTE_FIELD)
    d = start_daemon(INGESTD_FAILPOINT=failpoint)
    drop(acme, "crash.persons", CRASH_FILE)
    assert d.wait_exit() == -signal.SIGKILL, d.tail()

    # What the crash left behind
    [claim_dir] = listing(acme.processing)
    assert listing(acme.processing / claim_dir) == ["crash.persons"]
    if failpoint == "before_commit":
        assert ledger(db_url) == [] and person_count(db_url, "acme") == 0
        assert listing(acme.done) == []
    else:
        [entry] = ledger(db_url)
        assert entry["finished_at"] is None and person_count(db_url, "acme") == 2
        if failpoint == "after_commit":
            assert listing(acme.done) == []
        else:
            assert listing(acme.done) == ["crash.persons.errors.csv",
                                          "crash.persons.result.json"]

    d2 = start_daemon()
    d2.wait_event("file.done", company="acme", file="crash.persons")
    recovered = d2.find("file.recovered", company="acme", file="crash.persons")
    assert [e["action"] for e in recovered] == (
        ["apply"] if failpoint == "before_commit" else ["finish"])
    stop_cleanly(d2)

    [entry] = ledger(db_url)
    assert entry["status"] == "done" and entry["finished_at"] is not None
    assert (entry["rows"], entry["accepted"], entry["rejected"]) == (3, 2, 1)
    n_rejected = scalar(db_url, "SELECT count(*) FROM ingestd.row_results"
                                " WHERE file_id = %s AND NOT accepted", (entry["id"],))
    assert n_rejected == 1
    assert persons(db_url, "acme") == [("c1", None, {"note": "one"}),
                                       ("c2", None, {"note": "two"})]
    assert listing(acme.done) == ["crash.persons", "crash.persons.errors.csv",
                                  "crash.persons.result.json"]
    assert (acme.done / "crash.persons").read_text() == CRASH_FILE
    result = result_json(acme.done, "crash.persons")
    assert result["status"] == "done" and result["file"] == "crash.persons"
    assert (result["rows"], result["accepted"], result["rejected"]) == (3, 2, 1)
    assert len(read_csv(acme.done / "crash.persons.errors.csv")) == 2  # header + 1
    assert list(entries(acme.processing)) == []
    assert listing(acme.inbox) == [] and listing(acme.failed) == []
    # no half-written sidecar left behind by the crash
    assert not [n for n in os.listdir(acme.done) if n.startswith(".")]


@pytest.mark.parametrize("failpoint", ["before_commit", "after_commit", "after_sidecars"])
def test_crash_in_a_backlog_keeps_drop_order_and_the_suffixed_name(
        start_daemon: StartDaemon, db_url: str, landing: Path, failpoint: str) -> None:
    """The file in hand when the daemon dies is the second one named same.persons, so
    its place in done/ is same~2.persons: recovery must finish it under that name (not
    ~3), and the rest of the backlog must still follow it in drop order."""
    acme = setup_company(db_url, landing, "acme", NOTE_FIELD)
    d0 = start_daemon()
    drop(acme, "same.persons", "external_person_id,note\nc1,first\n")
    d0.wait_event("file.done", company="acme", file="same.persons")
    stop_cleanly(d0)

    now = time.time()
    second = "external_person_id,note\nc1,second\n,orphan\n"
    drop(acme, "same.persons", second, mtime=now - 30)
    drop(acme, "b.persons", "external_person_id,note\nc1,third\nc2,x\n", mtime=now - 20)
    drop(acme, "a.persons", "external_person_id,note\nc1,fourth\n", mtime=now - 10)
    d = start_daemon(INGESTD_FAILPOINT=failpoint)
    assert d.wait_exit() == -signal.SIGKILL, d.tail()
    assert [e["file"] for e in d.find("file.claimed")] == ["same.persons"]

    d2 = start_daemon()
    d2.wait_event("file.done", company="acme", file="a.persons")
    stop_cleanly(d2)

    rows = ledger(db_url)
    assert [r["name"] for r in rows] == ["same.persons", "same.persons", "b.persons",
                                         "a.persons"]
    assert all(r["status"] == "done" and r["finished_at"] is not None for r in rows)
    assert [r["final_path"] for r in rows] == [
        str(acme.done / n) for n in ("same.persons", "same~2.persons", "b.persons",
                                     "a.persons")]
    # errors.csv only beside same~2.persons, the one file with a rejected row
    assert listing(acme.done) == sorted(
        [f"{n}{suffix}" for n in ("same.persons", "same~2.persons", "b.persons", "a.persons")
         for suffix in ("", ".result.json")] + ["same~2.persons.errors.csv"])
    assert (acme.done / "same~2.persons").read_text() == second
    result = result_json(acme.done, "same~2.persons")
    assert result["file"] == "same.persons" and result["stored_as"] == "same~2.persons"
    assert (result["rows"], result["accepted"], result["rejected"]) == (2, 1, 1)
    assert len(read_csv(acme.done / "same~2.persons.errors.csv")) == 2
    assert persons(db_url, "acme") == [("c1", None, {"note": "fourth"}),
                                       ("c2", None, {"note": "x"})]
    assert listing(acme.inbox) == [] and list(entries(acme.processing)) == []
    assert not [n for n in os.listdir(acme.done) if n.startswith(".")]


# -- 5. bad input never stops the daemon -------------------------------------------------

GOOD = "external_person_id,note\ng1,fine\n"


def test_bad_drops_fail_with_a_reason_and_the_daemon_keeps_going(
        start_daemon: StartDaemon, db_url: str, landing: Path, tmp_path: Path) -> None:
    acme = setup_company(db_url, landing, "acme", NOTE_FIELD)
    ghost = CompanyDirs(landing / "ghost")  # has an inbox, but was never added
    ghost.inbox.mkdir(parents=True)
    outside = tmp_path / "secret.persons"  # a symlink's target must never be read
    outside.write_text("external_person_id,note\nstolen,1\n")

    d = start_daemon()
    drop(ghost, "g.persons", GOOD)
    drop(acme, "notes.txt", "hello\n")
    (acme.inbox / "link.persons").symlink_to(outside)
    drop(acme, "empty.persons", b"")
    drop(acme, "garbage.persons", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    os.mkfifo(acme.inbox / "pipe.persons")

    expected = {
        (ghost, "g.persons"): errors.INVALID_SCHEMA_NAME,
        (acme, "notes.txt"): errors.UNSUPPORTED_FILE,
        (acme, "link.persons"): errors.NOT_A_REGULAR_FILE,
        (acme, "empty.persons"): errors.EMPTY_FILE,
        (acme, "garbage.persons"): errors.UNKNOWN_8BIT_ENCODING,
        (acme, "pipe.persons"): errors.NOT_A_REGULAR_FILE,
    }
    for (dirs, name) in expected:
        d.wait_event("file.failed", company=dirs.company, file=name)
    # still alive and well: a good file dropped afterwards is applied
    drop(acme, "good.persons", GOOD)
    d.wait_event("file.done", company="acme", file="good.persons")
    stop_cleanly(d)

    assert expected[(ghost, "g.persons")] == "TenantEngine::SchemaErrors::InvalidSchemaNameError"
    assert expected[(acme, "garbage.persons")] == \
        "FileEngine::EncodingDetection::Unknown8BitEncodingDetected"
    for (dirs, name), error_class in expected.items():
        assert os.path.lexists(dirs.failed / name), name
        result = result_json(dirs.failed, name)
        assert result.keys() >= RESULT_KEYS, name
        assert result["status"] == "failed", name
        assert result["error"]["class"] == error_class, (name, result)
        assert result["error"]["message"], name
        assert result["file"] == name and result["company"] == dirs.company
        assert result["accepted"] == 0, name
    assert drops_in(acme.failed) == sorted(n for (dd, n) in expected if dd is acme)
    assert drops_in(ghost.failed) == ["g.persons"]
    assert listing(ghost.done) == []
    # the symlink is moved as a link, its target untouched; the FIFO is still a FIFO
    assert os.path.islink(acme.failed / "link.persons")
    assert outside.read_text() == "external_person_id,note\nstolen,1\n"
    assert stat.S_ISFIFO(os.lstat(acme.failed / "pipe.persons").st_mode)
    # nothing of the failed files was applied; the good one was
    assert persons(db_url, "acme") == [("g1", None, {"note": "fine"})]
    assert listing(acme.inbox) == [] and listing(ghost.inbox) == []
    assert list(entries(acme.processing)) == []
    assert list(entries(ghost.processing)) == []
    statuses = {(r["company"], r["name"]): r["status"] for r in ledger(db_url)}
    assert statuses == {**{(dd.company, n): "failed" for (dd, n) in expected},
                        ("acme", "good.persons"): "done"}


def test_company_folders_created_while_running_are_picked_up(
        start_daemon: StartDaemon, env: dict[str, str], db_url: str, landing: Path,
        tmp_path: Path) -> None:
    d = start_daemon()
    assert run_cli(["company", "add", "beta"], env).returncode == 0
    fields = tmp_path / "fields.toml"
    fields.write_text('[[field]]\nname = "note"\ntype = "string"\n')
    r = run_cli(["fields", "load", str(fields), "--company", "beta"], env)
    assert r.returncode == 0, r.stderr
    beta = CompanyDirs(landing / "beta")
    drop(beta, "b.persons", "external_person_id,note\nb1,hi\n")
    d.wait_event("file.done", company="beta", file="b.persons")
    # a folder for a company that was never added, and one that cannot be a company id
    unknown = [CompanyDirs(landing / "ghost"), CompanyDirs(landing / "Bad-Co")]
    for dirs in unknown:
        dirs.inbox.mkdir(parents=True)
        drop(dirs, "g.persons", GOOD)
    for dirs in unknown:
        d.wait_event("file.failed", company=dirs.company, file="g.persons")
    stop_cleanly(d)

    assert persons(db_url, "beta") == [("b1", None, {"note": "hi"})]
    assert drops_in(beta.done) == ["b.persons"]
    for dirs in unknown:
        assert drops_in(dirs.failed) == ["g.persons"] and listing(dirs.inbox) == []
        assert result_json(dirs.failed, "g.persons")["error"]["class"] == \
            errors.INVALID_SCHEMA_NAME


LONG_NAME = "n" * 232 + ".persons"  # 240 bytes: a valid name (NAME_MAX is 255)
NON_UTF8_NAME = os.fsdecode(b"crm-\xff\xfe.persons")  # SFTP names are bytes


@pytest.mark.parametrize("name", [
    pytest.param("report 2026 \u00fcml\u00e4ut #1 (final).persons", id="spaces-unicode"),
    pytest.param(LONG_NAME, id="long-name"),
    pytest.param(NON_UTF8_NAME, id="non-utf8-name"),
])
def test_odd_file_names_are_finished_and_never_block_the_company(
        start_daemon: StartDaemon, db_url: str, landing: Path, name: str) -> None:
    """Partners choose the names. Whatever the name, the file ends in done/ or failed/
    with a result.json, and the company's next file is still applied."""
    acme = setup_company(db_url, landing, "acme", NOTE_FIELD)
    d = start_daemon()
    now = time.time()
    drop(acme, name, GOOD, mtime=now - 20)
    drop(acme, "after.persons", "external_person_id\nafter1\n", mtime=now - 10)
    wait_for(lambda: d.find("file.done", file="after.persons") or d.errors(),
             what="after.persons done (or an error logged)", context=d.tail)
    assert d.errors() == [], d.errors()[0].get("exception")
    stop_cleanly(d)

    assert listing(acme.inbox) == [] and list(entries(acme.processing)) == []
    results = [p for p in (*acme.done.iterdir(), *acme.failed.iterdir())
               if p.name.endswith(".result.json") and p.name != "after.persons.result.json"]
    assert len(results) == 1, results
    assert json.loads(results[0].read_text())["status"] in ("done", "failed")
    assert len(ledger(db_url)) == 2


def test_done_suffix_without_marker_mode_is_an_unsupported_drop(
        start_daemon: StartDaemon, db_url: str, landing: Path) -> None:
    acme = setup_company(db_url, landing, "acme")
    d = start_daemon()
    drop(acme, "export.done", "hello\n")
    d.wait_event("file.failed", company="acme", file="export.done", timeout=10)
    stop_cleanly(d)
    assert result_json(acme.failed, "export.done")["error"]["class"] == errors.UNSUPPORTED_FILE


# -- 6. duplicates and name clashes ------------------------------------------------------

def test_same_content_twice_is_a_duplicate_and_same_name_gets_a_suffix(
        start_daemon: StartDaemon, db_url: str, landing: Path) -> None:
    acme = setup_company(db_url, landing, "acme", NOTE_FIELD)
    first = "external_person_id,note\ne1,one\n"
    d = start_daemon()
    drop(acme, "first.persons", first)
    d.wait_event("file.done", company="acme", file="first.persons")
    # Change the data behind the file's back: a re-applied file would undo this.
    with psycopg.connect(db_url) as conn:
        conn.execute("""UPDATE acme.persons SET custom = '{"note": "changed"}'""")

    drop(acme, "second.persons", first)
    d.wait_event("file.done", company="acme", file="second.persons")
    dup = result_json(acme.done, "second.persons")
    assert dup["status"] == "done"
    assert dup["duplicate_of"] == "first.persons"
    assert dup["accepted"] == 0
    assert persons(db_url, "acme") == [("e1", None, {"note": "changed"})]

    # the same name again, new content: kept beside the first, never over it
    drop(acme, "first.persons", "external_person_id,note\ne1,two\n")
    d.wait_event("file.done", company="acme", file="first.persons", count=2)
    drop(acme, "first.persons", "external_person_id,note\ne1,three\n")
    d.wait_event("file.done", company="acme", file="first.persons", count=3)
    stop_cleanly(d)

    assert (acme.done / "first.persons").read_text() == first
    assert (acme.done / "first~2.persons").read_text() == "external_person_id,note\ne1,two\n"
    assert (acme.done / "first~3.persons").read_text() == \
        "external_person_id,note\ne1,three\n"
    assert drops_in(acme.done) == ["first.persons", "first~2.persons", "first~3.persons",
                                   "second.persons"]
    second = result_json(acme.done, "first~2.persons")
    assert second["file"] == "first.persons" and "duplicate_of" not in second
    assert second["accepted"] == 1
    assert result_json(acme.done, "first.persons")["sha256"] == \
        hashlib.sha256(first.encode()).hexdigest()
    assert persons(db_url, "acme") == [("e1", None, {"note": "three"})]
    rows = ledger(db_url)
    assert [r["name"] for r in rows] == ["first.persons", "second.persons",
                                         "first.persons", "first.persons"]
    assert rows[1]["duplicate_of"] == rows[0]["id"]


# -- 7. the one-shot commands ------------------------------------------------------------

def test_ingest_exit_codes(env: dict[str, str], db_url: str, landing: Path,
                           tmp_path: Path) -> None:
    acme = setup_company(db_url, landing, "acme", NOTE_FIELD)
    good = drop(acme, "good.persons", GOOD)
    r = run_cli(["ingest", str(good)], env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("done: good.persons"), r.stdout
    assert listing(acme.done) == ["good.persons", "good.persons.result.json"]
    assert persons(db_url, "acme") == [("g1", None, {"note": "fine"})]

    bad = tmp_path / "bad.persons"  # from outside the landing root: --company
    bad.write_bytes(b"\xff\xfe\x00\x81garbage")
    r = run_cli(["ingest", str(bad), "--company", "acme"], env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert errors.UNKNOWN_8BIT_ENCODING in r.stdout
    assert drops_in(acme.failed) == ["bad.persons"]
    assert result_json(acme.failed, "bad.persons")["error"]["class"] == \
        errors.UNKNOWN_8BIT_ENCODING
    assert bad.exists()  # a file from elsewhere is copied in, not taken
    assert listing(acme.inbox) == [] and list(entries(acme.processing)) == []


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_ingest_of_a_non_regular_path_fails_cleanly(env: dict[str, str], db_url: str,
                                                    landing: Path, tmp_path: Path,
                                                    kind: str) -> None:
    setup_company(db_url, landing, "acme")
    path = tmp_path / "odd.persons"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    r = run_cli(["ingest", str(path), "--company", "acme"], env)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode in (1, 2), r.stdout + r.stderr


def test_check_writes_nothing(env: dict[str, str], db_url: str, landing: Path) -> None:
    acme = setup_company(db_url, landing, "acme", NOTE_FIELD)
    path = drop(acme, "crm.persons", MIXED)
    before = path.stat()
    r = run_cli(["check", str(path), "--company", "acme"], env)
    assert r.returncode == 1, r.stdout + r.stderr  # rows would be rejected
    assert "would be done: 4 rows, 1 accepted, 3 rejected" in r.stdout
    assert "done:" not in r.stdout.replace("would be done:", "")
    assert errors.INVALID_MDN_FORMAT in r.stdout
    assert errors.PERSON_NOT_FOUND in r.stdout

    clean = drop(acme, "clean.persons", GOOD)
    r = run_cli(["check", str(clean), "--company", "acme"], env)
    assert r.returncode == 0, r.stdout + r.stderr

    assert person_count(db_url, "acme") == 0
    assert ledger(db_url) == []
    assert scalar(db_url, "SELECT count(*) FROM ingestd.row_results") == 0
    assert listing(acme.inbox) == ["clean.persons", "crm.persons"]
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert listing(acme.done) == [] and listing(acme.failed) == []
    assert list(entries(acme.processing)) == []


@pytest.mark.parametrize("source", ["env", "toml"])
@pytest.mark.parametrize("command", [["run"], ["status"], ["company", "list"]])
def test_invalid_setting_exits_2_with_one_line(env: dict[str, str], tmp_path: Path,
                                               command: list[str], source: str) -> None:
    if source == "env":
        bad = {**env, "INGESTD_WORKERS": "abc"}
    else:
        config = tmp_path / "ingestd.toml"
        config.write_text('workers = "abc"\n')
        bad = {k: v for k, v in env.items() if k != "INGESTD_WORKERS"}  # env beats TOML
        bad["INGESTD_CONFIG"] = str(config)
    r = run_cli(command, bad)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert "workers" in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""


def _subcommands(parser: argparse.ArgumentParser,
                 prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield prefix
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subcommands(sub, (*prefix, name))


ALL_COMMANDS = list(_subcommands(build_parser()))


def test_every_command_is_covered_by_the_help_test() -> None:
    assert {" ".join(c) for c in ALL_COMMANDS} >= {
        "", "run", "ingest", "check", "status", "db", "db upgrade", "company",
        "company add", "company list", "fields", "fields load", "fields list"}


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=lambda c: " ".join(c) or "ingestd")
def test_help_works_for_every_command(command: tuple[str, ...], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
    r = subprocess.run([sys.executable, "-m", "ingestd", *command, "--help"], env=env,
                       cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: ingestd"), r.stdout
    assert r.stderr == ""


# -- 8. graceful stop --------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_while_idle_stops_cleanly(start_daemon: StartDaemon, db_url: str,
                                         landing: Path, sig: signal.Signals) -> None:
    setup_company(db_url, landing, "acme")
    d = start_daemon()
    assert d.stop(sig) == 0, d.tail()
    events = [e["event"] for e in d.snapshot()]
    assert "daemon.stopping" in events and events[-1] == "daemon.stopped"
    assert events.index("daemon.started") < events.index("daemon.stopping")
    assert d.errors() == []


@pytest.mark.parametrize("stop_timeout", ["60", "0.2"], ids=["finishes", "rolls_back"])
def test_sigterm_with_a_file_in_hand(start_daemon: StartDaemon, db_url: str, landing: Path,
                                     stop_timeout: str) -> None:
    """SIGTERM while a big file is being applied: exit 0 either way. With time to spare
    the file is finished; with a short stop timeout its transaction is rolled back and the
    next start applies it. Exactly once in both cases."""
    acme = setup_company(db_url, landing, "acme", NOTE_FIELD)
    n = 60000
    body = "external_person_id,note\n" + "".join(f"p{i},v{i}\n" for i in range(n))
    d = start_daemon(INGESTD_STOP_TIMEOUT=stop_timeout)
    drop(acme, "big.persons", body)
    d.wait_event("file.claimed", company="acme", file="big.persons")
    assert d.stop(signal.SIGTERM) == 0, d.tail()
    assert d.find("daemon.stopped"), d.tail()
    finished = bool(d.find("file.done", file="big.persons"))
    if not finished:  # rolled back: nothing of it committed, the claim waits for us
        assert ledger(db_url) == [] and person_count(db_url, "acme") == 0
        assert listing(acme.done) == []
        d2 = start_daemon()
        d2.wait_event("file.done", company="acme", file="big.persons")
        assert [e["action"] for e in d2.find("file.recovered")] == ["apply"]
        stop_cleanly(d2)
    if stop_timeout == "60":
        assert finished, "a file in hand is finished when the stop timeout allows"
    [entry] = ledger(db_url)
    assert entry["status"] == "done" and entry["finished_at"] is not None
    assert entry["accepted"] == n and person_count(db_url, "acme") == n
    assert drops_in(acme.done) == ["big.persons"]
    assert listing(acme.inbox) == [] and list(entries(acme.processing)) == []


def test_json_lines_only_on_stdout(start_daemon: StartDaemon, db_url: str,
                                   landing: Path) -> None:
    setup_company(db_url, landing, "acme")
    d = start_daemon()
    stop_cleanly(d)
    assert d.lines and all(isinstance(json.loads(line), dict) for line in d.lines)
