"""Progress of files in hand and the stuck-worker watchdog (issue 9 item 7, issue 10 items 8-9).

Real daemon and CLI subprocesses, real PostgreSQL, real files, a real unix datagram
socket standing in for systemd, a real HTTP carrier service whose answers the test
slows down or holds back, and a real pseudo-terminal for the progress bar:

* ``file.progress`` lines while a file is applied, and ``ingestd status --json`` run
  from another process shows the file in hand;
* a worker wedged inside apply (failpoint ``hang_in_apply``) stops the WATCHDOG=1
  pings, logs ``worker.stuck`` and is named by STATUS=, ``ingestd status`` and
  ``ingestd_workers_stuck``; a long carrier retry loop of short steps is not stuck;
* ``ingestd status``: failed files in ``recent`` with their class; ``last_error`` is
  the last failed file, not a file that had rejected rows;
* ``ingestd ingest``: plain ``file.progress`` lines off a terminal, a bar on one.
"""

from __future__ import annotations

import json
import os
import pty
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from carrier_server import HANG, CarrierServer, serving
from daemon_helpers import (
    ROOT,
    Daemon,
    base_env,
    drop,
    is_finished,
    ledger,
    query,
    run_cli,
    setup_company,
    wait_for,
)
from notify_socket import NotifySocket

TIMEOUT = 60.0
PROGRESS_KEYS = {"company", "file", "rows_done", "bytes_done", "bytes_total", "rows_per_s",
                 "eta_s"}
IN_HAND_KEYS = {"file", "started_at", "rows_done", "bytes_done", "bytes_total"}


def mdn(i: int) -> str:
    return f"22955{5100 + i:05d}"  # valid US numbers, 229-555-xxxx


def persons(n: int) -> str:
    return "mdn,external_person_id\n" + "".join(f"{mdn(i)},e{i}\n" for i in range(n))


def e164(i: int) -> str:
    return "+1" + mdn(i)


# -- a carrier service the test controls -------------------------------------------------


@pytest.fixture
def carrier(monkeypatch: pytest.MonkeyPatch) -> Iterator[CarrierServer]:
    with serving(monkeypatch) as srv:
        yield srv


def carrier_env(srv: CarrierServer, **extra: str) -> dict[str, str]:
    return {"INGESTD_CARRIER_MODE": "http", "INGESTD_CARRIER_URL": srv.url,
            "INGESTD_CARRIER_TIMEOUT": "120", **extra}


# -- systemd's notify socket -------------------------------------------------------------


def notify_env(sock_path: Path, watchdog_usec: int) -> dict[str, str]:
    return {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": str(watchdog_usec)}


def start(daemons: list[Daemon], env: dict[str, str]) -> Daemon:
    env.pop("WATCHDOG_PID", None)
    d = Daemon(env)
    daemons.append(d)
    return d.start(timeout=TIMEOUT)


def status_json(env: dict[str, str]) -> dict[str, Any]:
    r = run_cli(["status", "--json"], env)
    assert r.returncode == 0, r.stderr
    report: dict[str, Any] = json.loads(r.stdout)
    return {c["company"]: c for c in report["companies"]}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- 1 and 2: file.progress, and status from another process while the file is in hand ------


def test_progress_lines_and_status_while_in_hand(tmp_path: Path, landing: Path, db_url: str,
                                                 carrier: CarrierServer,
                                                 daemons: list[Daemon]) -> None:
    dirs = setup_company(db_url, landing, "acme")
    rows = 20
    carrier.delay = 0.2  # each chunk of 2 new numbers takes at least that long
    for last in (e164(rows - 2), e164(rows - 1)):  # the last chunk waits for the test
        carrier.script[last] = [HANG]
    content = persons(rows)
    env = base_env(db_url, landing, tmp_path / "state", INGESTD_CHUNK_SIZE="2",
                   INGESTD_PROGRESS_SECONDS="0.2", **carrier_env(carrier))
    d = start(daemons, env)
    drop(dirs, "big.persons", content)

    # Every chunk but the held one is done: rows_done reaches 18 and stays there.
    d.wait_event("file.progress", timeout=TIMEOUT, rows_done=rows - 2)
    lines = d.find("file.progress", file="big.persons")
    for e in lines:
        assert set(e) >= PROGRESS_KEYS, e
        assert e["company"] == "acme" and e["bytes_total"] == len(content), e
        assert 0 <= e["bytes_done"] <= e["bytes_total"], e
    done = [e["rows_done"] for e in lines]
    assert done == sorted(done) and len(set(done)) >= 2, done  # increasing
    last = lines[-1]
    assert last["bytes_done"] > 0 and last["rows_per_s"] > 0, last
    assert last["eta_s"] is not None and last["eta_s"] >= 0, last

    # Another process, through the database only.
    acme = status_json(env)["acme"]
    assert len(acme["in_hand"]) == 1, acme["in_hand"]
    f = acme["in_hand"][0]
    assert set(f) >= IN_HAND_KEYS, f
    assert f["file"] == "big.persons" and f["rows_done"] == rows - 2, f
    assert 0 < f["bytes_done"] < f["bytes_total"] == len(content), f
    assert f["stuck"] is False, f
    text = run_cli(["status"], env)
    assert text.returncode == 0, text.stderr
    assert "acme: files in hand" in text.stdout and "big.persons" in text.stdout, text.stdout
    assert f"rows={rows - 2}" in text.stdout and "%" in text.stdout, text.stdout
    assert "STUCK" not in text.stdout, text.stdout

    carrier.release.set()
    wait_for(lambda: is_finished(dirs, "big.persons"), TIMEOUT, what="big.persons done",
             context=d.tail)
    assert ledger(db_url, "acme")[0]["accepted"] == rows
    acme = status_json(env)["acme"]
    assert acme["in_hand"] == [], acme["in_hand"]  # deleted when finished
    assert not d.errors(), d.errors()


# -- 3: a wedged worker ------------------------------------------------------------------------


def test_wedged_worker_stops_the_watchdog_and_is_named(tmp_path: Path, landing: Path,
                                                       db_url: str, notify: NotifySocket,
                                                       daemons: list[Daemon]) -> None:
    dirs = setup_company(db_url, landing, "acme")
    interval = 0.2  # WATCHDOG_USEC / 2
    port = free_port()
    env = base_env(db_url, landing, tmp_path / "state", INGESTD_FAILPOINT="hang_in_apply",
                   INGESTD_STUCK_SECONDS="1", INGESTD_PROGRESS_SECONDS="0.2",
                   INGESTD_METRICS_ADDRESS=f"127.0.0.1:{port}",
                   **notify_env(tmp_path / "notify.sock", int(2 * interval * 1e6)))
    d = start(daemons, env)
    wait_for(lambda: len(notify.times("WATCHDOG=1")) >= 3, TIMEOUT,
             what="WATCHDOG=1 pings while healthy", context=d.tail)

    drop(dirs, "wedged.persons", persons(3))
    stuck = d.wait_event("worker.stuck", timeout=TIMEOUT)[0]
    seen = time.monotonic()
    assert stuck["company"] == "acme" and stuck["file"] == "wedged.persons", stuck
    assert stuck["claim"] and stuck["idle_s"] >= 1, stuck

    status = wait_for(lambda: [s for s in notify.lines()
                               if s.startswith("STATUS=") and "STUCK" in s], TIMEOUT,
                      what="STATUS= naming the stuck file", context=d.tail)
    assert "acme/wedged.persons" in status[-1], status

    # `ingestd status` from another process names the stuck file.
    def stuck_in_status() -> dict[str, Any] | None:
        rows = status_json(env)["acme"]["in_hand"]
        return rows[0] if rows and rows[0]["stuck"] else None
    row = wait_for(stuck_in_status, TIMEOUT, what="status --json: stuck", context=d.tail)
    assert row["file"] == "wedged.persons", row
    text = run_cli(["status"], env)
    assert "wedged.persons" in text.stdout and "STUCK" in text.stdout, text.stdout

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        body = resp.read().decode()
    assert "ingestd_workers_stuck 1.0" in body, body

    # A window of many watchdog intervals after the stuck line: no ping at all. (A ping
    # sent just before the daemon decided it was stuck may land a moment before `seen`.)
    window = 15 * interval
    time.sleep(max(0.0, seen + window - time.monotonic()))
    late = [t for t in notify.times("WATCHDOG=1") if t > seen + 0.3]
    assert late == [], f"{len(late)} WATCHDOG=1 while the worker was stuck"
    assert d.alive()
    assert len(d.find("worker.stuck")) == 1  # once per stuck episode


def test_long_carrier_retry_loop_of_short_waits_is_not_stuck(
        tmp_path: Path, landing: Path, db_url: str, carrier: CarrierServer, notify: NotifySocket,
        daemons: list[Daemon]) -> None:
    dirs = setup_company(db_url, landing, "acme")
    stuck_seconds = 1.5
    carrier.delay = 0.3
    # 8 x 503 then found: 9 answers of 0.3 s each; the last one waits until the test
    # has looked.
    carrier.script[e164(0)] = [503] * 8 + [HANG]
    env = base_env(db_url, landing, tmp_path / "state",
                   INGESTD_STUCK_SECONDS=str(stuck_seconds), INGESTD_PROGRESS_SECONDS="0.2",
                   INGESTD_CARRIER_MAX_ATTEMPTS="12", INGESTD_CARRIER_MAX_WAIT="120",
                   INGESTD_CARRIER_BACKOFF_INITIAL="0.05", INGESTD_CARRIER_BACKOFF_MAX="0.3",
                   **carrier_env(carrier, INGESTD_CARRIER_TIMEOUT="5"),
                   **notify_env(tmp_path / "notify.sock", 400_000))
    d = start(daemons, env)
    drop(dirs, "retried.persons", persons(1))
    # At the last attempt no row has moved for longer than stuck_seconds, yet the file
    # is in hand and not stuck (the reporter refreshed its row a moment ago).
    calls = wait_for(lambda: len(carrier.times(e164(0))) == 9 and carrier.times(e164(0)),
                     TIMEOUT, what="the last attempt", context=d.tail)
    assert calls[-1] - calls[0] > stuck_seconds, calls
    row = query(db_url, "SELECT file, rows_done, stuck FROM ingestd.in_hand")
    carrier.release.set()
    assert row == [("retried.persons", 0, False)], row
    wait_for(lambda: is_finished(dirs, "retried.persons"), TIMEOUT,
             what="retried.persons done", context=d.tail)
    assert ledger(db_url, "acme")[0]["accepted"] == 1

    assert len(carrier.times(e164(0))) == 9
    first, last = calls[0], calls[-1]
    assert len(d.find("carrier.retry")) == 8
    assert d.find("worker.stuck") == [], d.find("worker.stuck")
    pings = [t for t in notify.times("WATCHDOG=1") if first + stuck_seconds < t < last]
    assert pings, "WATCHDOG=1 stopped during the retry loop"


# -- 4: status, item 9 -------------------------------------------------------------------------


def test_status_last_error_is_the_last_failed_file(tmp_path: Path, landing: Path,
                                                   db_url: str) -> None:
    dirs = setup_company(db_url, landing, "acme")
    env = base_env(db_url, landing, tmp_path / "state")
    drop(dirs, "a-empty.persons", "")
    r = run_cli(["ingest", str(dirs.inbox / "a-empty.persons")], env)
    assert r.returncode == 1, r.stdout + r.stderr
    # Later, a file with a rejected row: done, not an error of the file.
    drop(dirs, "b-one-bad.persons", "mdn,external_person_id\n2295551234,e1\nabc,e2\n")
    r = run_cli(["ingest", str(dirs.inbox / "b-one-bad.persons")], env)
    assert r.returncode == 0, r.stdout + r.stderr

    acme = status_json(env)["acme"]
    err = acme["last_error"]
    assert err["file"] == "a-empty.persons", err
    assert err["error_class"] == "ingestd::EmptyFile", err
    assert err["error_message"] and err["at"], err
    recent = {f["name"]: f for f in acme["recent"]}
    assert recent["a-empty.persons"]["status"] == "failed"
    assert recent["a-empty.persons"]["error_class"] == "ingestd::EmptyFile"
    assert recent["b-one-bad.persons"]["status"] == "done"
    assert recent["b-one-bad.persons"]["rejected"] == 1  # still visible

    text = run_cli(["status"], env).stdout
    table_row = next(line for line in text.splitlines() if line.startswith("acme "))
    assert table_row.endswith("a-empty.persons: ingestd::EmptyFile"), table_row
    failed_line = next(line for line in text.splitlines()
                       if "failed" in line and "a-empty.persons" in line)
    assert "ingestd::EmptyFile" in failed_line, text


# -- ingestd ingest: plain lines off a terminal, a bar on one ---------------------------------


def test_ingest_off_a_terminal_prints_progress_lines(tmp_path: Path, landing: Path,
                                                     db_url: str, carrier: CarrierServer) -> None:
    dirs = setup_company(db_url, landing, "acme")
    carrier.delay = 0.2
    source = tmp_path / "slow.persons"
    source.write_text(persons(10))
    env = base_env(db_url, landing, tmp_path / "state", INGESTD_CHUNK_SIZE="2",
                   INGESTD_PROGRESS_SECONDS="0.2", **carrier_env(carrier))
    env.pop("INGESTD_LOG_FORMAT")  # auto: JSON, since stderr is a pipe
    r = run_cli(["ingest", str(source), "--company", "acme"], env, timeout=TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("done: slow.persons"), r.stdout
    events = [json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")]
    lines = [e for e in events if e["event"] == "file.progress"]
    assert lines, r.stderr
    for e in lines:
        assert set(e) >= PROGRESS_KEYS and e["file"] == "slow.persons", e
    done = [e["rows_done"] for e in lines]
    assert done == sorted(done) and done[-1] > 0, done
    assert is_finished(dirs, "slow.persons")


def test_ingest_on_a_terminal_shows_a_progress_bar(tmp_path: Path, landing: Path,
                                                    db_url: str) -> None:
    dirs = setup_company(db_url, landing, "acme")
    source = tmp_path / "bar.persons"
    source.write_text(persons(30))
    env = base_env(db_url, landing, tmp_path / "state", INGESTD_CHUNK_SIZE="5",
                   INGESTD_PROGRESS_SECONDS="0.2", TERM="xterm", COLUMNS="120")
    env.pop("INGESTD_LOG_FORMAT")
    main, sub = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "ingestd", "ingest", str(source),
                             "--company", "acme"], env=env, cwd=ROOT, stdin=sub, stdout=sub,
                            stderr=sub, close_fds=True)
    os.close(sub)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(main, 4096)
            except OSError:  # EIO: the terminal's other side is closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = proc.wait(TIMEOUT)
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
    out = b"".join(chunks).decode(errors="replace")
    assert code == 0, out
    assert "bar.persons" in out and "30 rows" in out, out
    assert "100%" in out and "━" in out, out  # rich's bar, complete
    assert "file.progress" not in out, out  # the bar instead of the log lines
    assert "done: bar.persons" in out, out
    assert is_finished(dirs, "bar.persons")


@pytest.mark.parametrize("key", ["progress_seconds", "stuck_seconds"])
def test_progress_settings_must_be_positive(tmp_path: Path, landing: Path, db_url: str,
                                            key: str) -> None:
    env = base_env(db_url, landing, tmp_path / "state", **{f"INGESTD_{key.upper()}": "0"})
    r = run_cli(["status"], env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and key in r.stderr, r.stderr
