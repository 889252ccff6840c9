"""The embedded PostgreSQL: survives a kill -9 of the daemon, and opens up nothing outside
the state directory."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from ingestd.db.embedded import EmbeddedPostgres


def _wait_for(predicate: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_restart_after_kill_9_reuses_and_then_stops_the_server(tmp_path: Path) -> None:
    parent = tmp_path / "private"
    parent.mkdir(mode=0o700)
    state = parent / "state"
    landing = tmp_path / "landing"
    landing.mkdir()  # `ingestd run` refuses a landing root that does not exist
    env = {**os.environ, "INGESTD_STATE_DIR": str(state), "INGESTD_LANDING_ROOT": str(landing),
           "INGESTD_LOG_FORMAT": "json"}
    env.pop("INGESTD_DATABASE_URL", None)
    server = EmbeddedPostgres(state)
    first = subprocess.Popen([sys.executable, "-m", "ingestd", "run"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert first.stdout is not None
        for line in first.stdout:
            if "daemon.started" in line:
                break
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        # The server outlives its killed parent...
        with psycopg.connect(server.url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        # ...and the next start adopts it, works, and stops it on a clean exit.
        second = subprocess.run([sys.executable, "-m", "ingestd", "company", "add", "acme"],
                                env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr
        assert "company acme added" in second.stdout
        _wait_for(lambda: not (state / "postgres" / "data" / "postmaster.pid").exists())
    finally:
        if first.poll() is None:
            first.kill()
        server.started_here = True
        server.stop()
    # Nothing above the state directory was opened up.
    assert stat.S_IMODE(parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "postgres").stat().st_mode) == 0o700


def test_settings_given_are_added_and_the_rest_stay_durable(tmp_path: Path) -> None:
    """The suite's own server is started with settings of its own (tests/conftest.py);
    the ones not given keep the daemon's defaults, fsync on."""
    server = EmbeddedPostgres(tmp_path / "state", server_settings={"synchronous_commit": "off"})
    server.start()
    try:
        with psycopg.connect(server.url) as conn:
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("off",)
            assert conn.execute("SHOW fsync").fetchone() == ("on",)
    finally:
        server.stop()
