"""Logs (issue 9 item 6, issue 10): every line one JSON object, whoever logs it;
recovery errors name the file; the console rendering is readable.

Against the real daemon in a subprocess: the database vanishes under its pool (a TCP
front for the suite's server, stopped and started again) so psycopg_pool warns, and
a leftover claim's recovery fails (its done/ folder is a file) so the recovery logs
an error.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from daemon_helpers import ROOT, Daemon, base_env, drop, is_finished, setup_company, wait_for
from pg_proxy import Proxy, address_of, free_port
from psycopg.conninfo import conninfo_to_dict

from ingestd.landing import new_claim_id

TIMEOUT = 60.0
PERSONS_GOOD = "mdn,external_person_id\n2295551299,e9\n"
PERSONS_ONE_BAD = "mdn,external_person_id\n2295551234,e1\nabc,e2\n"
KEYS = {"event", "level", "logger", "timestamp"}


def parsed_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line as a JSON object with the common keys (fails otherwise)."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise AssertionError(f"not JSON: {line!r}") from None
        assert isinstance(obj, dict) and obj.keys() >= KEYS, line
        out.append(obj)
    return out


def test_every_line_is_json_and_recovery_errors_name_the_file(
        tmp_path: Path, landing: Path, db_url: str, pg_server_url: str,
        daemons: list[Daemon]) -> None:
    dirs = setup_company(db_url, landing, "acme")
    port = free_port()
    dbname = conninfo_to_dict(db_url)["dbname"]
    proxy = Proxy(port, address_of(pg_server_url)).start()
    env = base_env(f"postgresql://postgres@127.0.0.1:{port}/{dbname}", landing,
                   tmp_path / "state")
    d = Daemon(env)
    daemons.append(d)
    try:
        d.start(timeout=TIMEOUT)

        # 1. A leftover claim whose recovery fails: done/ is not a folder.
        shutil.rmtree(dirs.done)
        dirs.done.write_text("")
        claim = new_claim_id()
        (dirs.processing / claim).mkdir()
        (dirs.processing / claim / "left.persons").write_text(PERSONS_GOOD)
        err = d.wait_event("file.error", timeout=TIMEOUT, claim=claim)[0]
        assert err["file"] == "left.persons", err
        assert err["company"] == "acme" and "exception" in err, err
        assert not d.find("file.error", file=".processing"), d.find("file.error")
        dirs.done.unlink()
        dirs.done.mkdir()
        wait_for(lambda: is_finished(dirs, "left.persons"), TIMEOUT,
                 what="left.persons in done/ once done/ is a folder", context=d.tail)

        # 2. The database goes away under the pool, then comes back.
        proxy.stop()
        drop(dirs, "during.persons", PERSONS_GOOD.replace("e9", "e10"))
        wait_for(lambda: [e for e in d.snapshot() if e.get("logger", "").startswith("psycopg")],
                 TIMEOUT, what="a psycopg_pool warning", context=d.tail)
        proxy.start()
        wait_for(lambda: is_finished(dirs, "during.persons"), 2 * TIMEOUT,
                 what="during.persons in done/ once the database is back", context=d.tail)
        assert d.stop(timeout=TIMEOUT) == 0, d.tail()
    finally:
        proxy.stop()

    events = parsed_lines("\n".join(d.lines))
    assert d.stderr_path is not None
    assert parsed_lines(d.stderr_path.read_text()) == []  # nothing bypasses the handler
    pool = [e for e in events if e.get("logger", "").startswith("psycopg")]
    assert pool and all(e["level"] == "warning" for e in pool), pool


def test_console_rendering_is_readable(tmp_path: Path, landing: Path, db_url: str,
                                       daemons: list[Daemon]) -> None:
    dirs = setup_company(db_url, landing, "acme")
    d = Daemon(base_env(db_url, landing, tmp_path / "state", INGESTD_LOG_FORMAT="console"))
    daemons.append(d)
    d.start(wait_started=False)
    drop(dirs, "people.persons", PERSONS_ONE_BAD)
    wait_for(lambda: is_finished(dirs, "people.persons"), TIMEOUT,
             what="people.persons in done/", context=d.tail)
    line = wait_for(lambda: next((x for x in list(d.lines) if "file.done" in x), None),
                    TIMEOUT, what="the file.done line", context=d.tail)
    assert d.stop(timeout=TIMEOUT) == 0, d.tail()
    assert "rejected_by_class=MobilePhoneErrors::InvalidMDNFormat:1" in line, line
    assert "\x1b[" not in line, "escape codes on a pipe"
    assert not [x for x in d.lines if "{'" in x], d.tail()  # no Python dict repr anywhere


def test_uncaught_exceptions_are_one_json_line() -> None:
    code = (
        "import threading\n"
        "from ingestd import logs\n"
        "logs.configure('info', 'json')\n"
        "t = threading.Thread(target=lambda: 1 / 0, name='boom')\n"
        "t.start(); t.join()\n"
        "raise RuntimeError('main thread gives up')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert proc.stderr == "", proc.stderr
    events = parsed_lines(proc.stdout)
    assert [(e["event"], e["thread"]) for e in events] == [
        ("exception.uncaught", "boom"), ("exception.uncaught", "MainThread")], events
    assert "ZeroDivisionError" in events[0]["exception"]
    assert "main thread gives up" in events[1]["exception"]
