"""PostgreSQL restarted while a large file is being applied (issue 9).

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
    scalar,
    setup_company,
    wait_for,
)
from psycopg.conninfo import make_conninfo

from ingestd.db import migrations
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
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute('CREATE DATABASE "ingestd_restart"')
    db_url = make_conninfo(admin_url, dbname="ingestd_restart")
    with psycopg.connect(db_url) as conn:
        migrations.upgrade(conn)
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
    assert d.find("file.error", file="big.persons"), d.tail()
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
