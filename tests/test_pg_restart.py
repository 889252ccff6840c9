"""PostgreSQL restarted while a large file is being applied (issue 9), and among a
company's queued files (issue 16).

The real daemon applies a Person Import big enough (and with a chunk size small
enough) that it is still inside its transaction when PostgreSQL is restarted under
it. The file must be retried and applied once: not failed, not applied twice, not
left in ``.processing/``, and the daemon keeps running.

This test has its own PostgreSQL (the suite's server is shared by every test), so it
can stop and start it freely.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psycopg
import pytest
from daemon_helpers import (
    NOTE_FIELD,
    Daemon,
    base_env,
    drop,
    entries,
    is_finished,
    ledger,
    listing,
    migrated_database,
    scalar,
    setup_company,
    wait_for,
)

from ingestd.db.embedded import EmbeddedPostgres

TIMEOUT = 120.0
ROWS = 20_000
CHUNK = "25"  # 800 chunks: a few seconds inside one transaction, even on a fast machine


def in_transaction_with_writes(admin_url: str, dbname: str) -> bool:
    """Someone (the daemon's apply) holds an open transaction that has written rows."""
    try:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                " AND backend_xid IS NOT NULL AND pid <> pg_backend_pid()",
                (dbname,)).fetchone()
    except psycopg.OperationalError:
        return False
    return row is not None and row[0] > 0


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restart_during_apply_retries_and_applies_once(
        tmp_path: Path, landing: Path, own_postgres: EmbeddedPostgres, mode: str) -> None:
    """``fast``: a clean shutdown (sessions terminated); ``immediate``: like a crash of
    the server (crash recovery at start). Either way the open transaction is lost."""
    admin_url = own_postgres.url
    db_url = migrated_database(admin_url, "ingestd_restart")
    acme = setup_company(db_url, landing, "acme", NOTE_FIELD)
    content = "external_person_id,note\n" + "".join(f"p{i},n{i}\n" for i in range(ROWS))

    d = Daemon(base_env(db_url, landing, tmp_path / "state", INGESTD_CHUNK_SIZE=CHUNK,
                        INGESTD_WORKERS="2"))
    try:
        d.start(timeout=TIMEOUT)
        drop(acme, "big.persons", content)
        d.wait_event("file.claimed", timeout=TIMEOUT, file="big.persons")
        wait_for(lambda: in_transaction_with_writes(admin_url, "ingestd_restart"), TIMEOUT,
                 what="the apply transaction to be under way", context=d.tail)
        assert not d.find("file.applied"), "the file committed before the restart"

        own_postgres._run("pg_ctl", "-D", str(own_postgres.data), "-m", mode, "-w", "stop",
                          check=False)
        try:
            assert d.alive(), d.tail()
        finally:
            own_postgres.start()

        wait_for(lambda: is_finished(acme, "big.persons") or is_finished(
            acme, "big.persons", "failed"), TIMEOUT, what="big.persons finished",
            context=d.tail)
        # the rescan must not pick anything up again
        d.wait_event("file.done", timeout=TIMEOUT, file="big.persons")
        assert d.alive(), d.tail()
        assert d.stop(signal.SIGTERM, timeout=TIMEOUT) == 0, d.tail()
    finally:
        d.kill()

    # The restart did hit the apply: its transaction failed and was retried.
    assert d.find("db.connection_lost", company="acme", file="big.persons"), d.tail()
    assert not d.find("file.error"), d.find("file.error")
    assert [e["action"] for e in d.find("file.recovered", file="big.persons")] == ["apply"]
    assert not d.find("file.failed"), d.find("file.failed")
    assert len(d.find("file.applied", file="big.persons")) == 1
    assert len(d.find("file.done", file="big.persons")) == 1

    [entry] = ledger(db_url)
    assert entry["name"] == "big.persons" and entry["status"] == "done"
    assert (entry["rows"], entry["accepted"], entry["rejected"]) == (ROWS, ROWS, 0)
    assert entry["finished_at"] is not None
    assert scalar(db_url, "SELECT count(*) FROM acme.persons") == ROWS
    assert scalar(db_url, "SELECT count(DISTINCT external_person_id) FROM acme.persons") == ROWS
    assert scalar(db_url, "SELECT count(*) FROM acme.persons"
                          " WHERE custom->>'note' = 'n' || substr(external_person_id, 2)") == ROWS

    assert listing(acme.done) == ["big.persons", "big.persons.result.json"]
    assert (acme.done / "big.persons").read_text() == content
    assert listing(acme.inbox) == [] and listing(acme.failed) == []
    assert list(entries(acme.processing)) == []
    assert not [n for n in os.listdir(acme.done) if n.startswith(".") or "~" in n]


def restart(server: EmbeddedPostgres) -> None:
    stop(server)
    server.start()


def stop(server: EmbeddedPostgres) -> None:
    server._run("pg_ctl", "-D", str(server.data), "-m", "fast", "-w", "stop", check=False)


def test_postgres_restart_among_queued_files_keeps_drop_order(
        tmp_path: Path, landing: Path, own_postgres: EmbeddedPostgres) -> None:
    """Fault: a real PostgreSQL restart (``pg_ctl stop -m fast``, then start), twice.

    First while the daemon is idle: every pooled connection is then dead, and the pool
    must find that out itself (no ``file.error`` for the next files). Then the server
    stays down while a company's files are dropped: the first one cannot be claimed, must
    go back to the head of the queue, and no later file may overtake it once the server
    is back. Each file sets the same person's note: the last file dropped must win, and
    the ledger must hold the files in drop order."""
    admin_url = own_postgres.url
    db_url = migrated_database(admin_url, "ingestd_order")
    acme = setup_company(db_url, landing, "acme", NOTE_FIELD)
    names = [f"f{i:02}.persons" for i in range(12)]
    base = time.time() - 3600

    def put(i: int) -> None:
        drop(acme, names[i], f"external_person_id,note\np1,{names[i]}\nq{i},x\n",
             mtime=base + i)

    # A long rescan: the file the database failed must not wait for it to come back.
    d = Daemon(base_env(db_url, landing, tmp_path / "state", INGESTD_WORKERS="2",
                        INGESTD_RESCAN_SECONDS="600", INGESTD_DB_DEAD_AFTER_SECONDS="3"))
    try:
        d.start(timeout=TIMEOUT)
        put(0)
        d.wait_event("file.done", timeout=TIMEOUT, file=names[0])

        restart(own_postgres)  # idle: the pool's connections are all dead now
        for i in range(1, 5):
            put(i)
        wait_for(lambda: all(is_finished(acme, n) for n in names[:5]), TIMEOUT,
                 what="f01-f04 done after the restart", context=d.tail)
        assert not d.find("file.error"), d.tail()
        assert not d.find("db.connection_lost"), d.tail()

        stop(own_postgres)
        try:
            for i in range(5, 12):
                put(i)
            # The first of them meets the database gone: put back, the company waits.
            wait_for(lambda: d.find("db.connection_lost", file=names[5])
                     or d.find("file.error", file=names[5]), TIMEOUT,
                     what=f"{names[5]} failed by the database", context=d.tail)
        finally:
            own_postgres.start()
        wait_for(lambda: all(is_finished(acme, n) for n in names), TIMEOUT,
                 what="every file done", context=d.tail)
        assert d.alive(), d.tail()
        assert d.stop(signal.SIGTERM, timeout=TIMEOUT) == 0, d.tail()
    finally:
        d.kill()

    assert not d.find("file.error"), d.find("file.error")
    retries = d.find("file.retry", company="acme")
    assert retries and {e["file"] for e in retries} == {names[5]}, retries
    files = ledger(db_url, "acme")
    assert [f["name"] for f in files] == names  # applied in drop order, each once
    assert all(f["status"] == "done" for f in files)
    assert scalar(db_url, "SELECT custom->>'note' FROM acme.persons"
                          " WHERE external_person_id = 'p1'") == names[-1]
    assert scalar(db_url, "SELECT count(*) FROM acme.persons") == 1 + len(names)
    assert listing(acme.failed) == [] and listing(acme.inbox) == []
