"""The database is down when ingestd starts (issue 9, item 3), against the real daemon.

* the daemon waits: JSON ``db.unavailable`` lines with the reason and the next try,
  STATUS=/EXTEND_TIMEOUT_USEC=/WATCHDOG=1 to systemd, never READY=1; SIGTERM ends it,
  exit 0;
* the database appears later (a TCP front for the suite's server, started late):
  READY=1, ``db.connected``, and a file dropped while waiting reaches done/;
* the other commands say "database unavailable" in one line and exit 1;
* an embedded PostgreSQL that cannot start: one JSON line naming the cause and its
  log, exit 1, no traceback.
"""

from __future__ import annotations

import json
import os
import signal
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from daemon_helpers import (
    Daemon,
    base_env,
    drop,
    is_finished,
    listing,
    run_cli,
    setup_company,
    wait_for,
)
from notify_socket import NotifySocket
from pg_proxy import Proxy, address_of, free_port
from psycopg.conninfo import conninfo_to_dict

TIMEOUT = 60.0
PASSWORD = "s3cret-pw"
PERSONS_GOOD = "mdn,external_person_id\n2295551299,e9\n"


def via_port(db_url: str, port: int) -> str:
    """``db_url``'s database, reached over TCP on ``port``, with a password to hide."""
    dbname = conninfo_to_dict(db_url)["dbname"]
    return f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/{dbname}"


def start(daemons: list[Daemon], env: dict[str, str]) -> Daemon:
    d = Daemon(env)
    daemons.append(d)
    return d.start(wait_started=False)


def all_lines_json(d: Daemon) -> None:
    for line in d.lines:
        assert isinstance(json.loads(line), dict), line
    assert d.stderr_path is not None
    assert d.stderr_path.read_text().strip() == "", d.stderr_path.read_text()


def test_waits_for_the_database_then_stops_on_sigterm(
        tmp_path: Path, landing: Path, db_url: str, notify: NotifySocket,
        daemons: list[Daemon]) -> None:
    url = via_port(db_url, free_port())  # nothing listens there
    env = base_env(url, landing, tmp_path / "state", NOTIFY_SOCKET=str(notify.path),
                   WATCHDOG_USEC="2000000", INGESTD_DB_RETRY_MAX="1")
    env.pop("WATCHDOG_PID", None)
    d = start(daemons, env)

    waits = d.wait_event("db.unavailable", count=3, timeout=TIMEOUT)
    assert [w["attempt"] for w in waits[:3]] == [1, 2, 3]
    for w in waits:
        assert w["level"] == "warning"
        assert w["reason"] and "\n" not in w["reason"], w
        assert 0 < w["retry_in_s"] <= 1.0, w  # capped by INGESTD_DB_RETRY_MAX
        next_try = datetime.fromisoformat(w["next_try_at"])
        logged = datetime.fromisoformat(w["timestamp"].replace("Z", "+00:00"))
        assert next_try.utcoffset() == timedelta(0), w
        assert abs(next_try - logged - timedelta(seconds=w["retry_in_s"])) < timedelta(seconds=1)
    assert not any(PASSWORD in line for line in d.lines), "password in the log"

    wait_for(lambda: any(line.startswith("EXTEND_TIMEOUT_USEC=") for line in notify.lines())
             and "WATCHDOG=1" in notify.lines(), TIMEOUT,
             what="EXTEND_TIMEOUT_USEC= and WATCHDOG=1 while waiting", context=d.tail)
    status = [line for line in notify.lines() if line.startswith("STATUS=")]
    assert status and status[0].startswith("STATUS=waiting for database: "), status
    assert d.alive(), d.tail()
    assert "READY=1" not in notify.lines()
    assert not d.find("daemon.started")

    assert d.stop(signal.SIGTERM, timeout=TIMEOUT) == 0, d.tail()
    assert d.find("daemon.stopped"), d.tail()
    assert "READY=1" not in notify.lines()
    all_lines_json(d)


def test_starts_when_the_database_appears(
        tmp_path: Path, landing: Path, db_url: str, pg_server_url: str,
        notify: NotifySocket, daemons: list[Daemon]) -> None:
    dirs = setup_company(db_url, landing, "acme")
    port = free_port()
    env = base_env(via_port(db_url, port), landing, tmp_path / "state",
                   NOTIFY_SOCKET=str(notify.path), INGESTD_DB_RETRY_MAX="1")
    drop(dirs, "early.persons", PERSONS_GOOD)  # an upload while the database is down
    d = start(daemons, env)
    d.wait_event("db.unavailable", count=2, timeout=TIMEOUT)
    assert listing(dirs.inbox) == ["early.persons"]  # it waits in the inbox
    assert "READY=1" not in notify.lines()

    proxy = Proxy(port, address_of(pg_server_url)).start()
    try:
        wait_for(lambda: "READY=1" in notify.lines(), TIMEOUT, what="READY=1",
                 context=d.tail)
        connected = d.wait_event("db.connected", timeout=TIMEOUT)
        assert connected[0]["attempts"] >= 3, connected
        wait_for(lambda: is_finished(dirs, "early.persons"), TIMEOUT,
                 what="early.persons in done/", context=d.tail)
        drop(dirs, "later.persons", PERSONS_GOOD.replace("e9", "e10"))
        wait_for(lambda: is_finished(dirs, "later.persons"), TIMEOUT,
                 what="later.persons in done/", context=d.tail)
        assert d.stop(timeout=TIMEOUT) == 0, d.tail()
    finally:
        proxy.stop()
    assert not d.errors(), d.errors()
    assert not any(PASSWORD in line for line in d.lines), "password in the log"
    all_lines_json(d)


@pytest.mark.parametrize("command", [["status"], ["company", "list"], ["db", "upgrade"]])
def test_commands_say_database_unavailable_in_one_line(
        tmp_path: Path, landing: Path, command: list[str]) -> None:
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/ingestd"
    proc = run_cli(command, base_env(url, landing, tmp_path / "state"))
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ingestd: database unavailable: "), lines
    assert PASSWORD not in proc.stderr


def test_embedded_server_that_cannot_start_is_one_line(tmp_path: Path, landing: Path) -> None:
    state = tmp_path / "state"
    data = state / "postgres" / "data"
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text("99\n")  # a data directory no server can use
    env = base_env("", landing, state)
    env.pop("INGESTD_DATABASE_URL")
    proc = run_cli(["run"], env, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr == "", proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    failed = [e for e in events if e["event"] == "db.embedded.failed"]
    assert len(failed) == 1, events
    assert failed[0]["level"] == "error"
    assert "did not start" in failed[0]["error"] and "\n" not in failed[0]["error"]
    assert os.path.isfile(failed[0]["log"]), failed
    assert not any("exception" in e for e in events), events
