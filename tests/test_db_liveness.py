"""``db_dead_after_seconds`` (issue 16, §1): what every connection gets, and the
daemon's own dead sessions ended.

Connections go over real TCP (``pg_proxy`` fronts the suite's server on 127.0.0.1),
so the socket options are read back from the kernel, not from psycopg's arguments.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blackhole
import psycopg
import pytest
from blackhole import BlackHole
from daemon_helpers import run_cli
from pg_proxy import Proxy, address_of, free_port
from psycopg.conninfo import make_conninfo

from ingestd.db import leases, locks
from ingestd.db.database import Database
from ingestd.db.liveness import connection_params
from ingestd.fleet import Fleet
from ingestd.settings import Settings


@pytest.fixture
def tcp_url(db_url: str, pg_server_url: str) -> Iterator[str]:
    """The test's database, reached over TCP through a proxy."""
    proxy = Proxy(free_port(), address_of(pg_server_url)).start()
    try:
        yield make_conninfo(db_url, host="127.0.0.1", port=proxy.port)
    finally:
        proxy.stop()


def socket_options(conn: psycopg.Connection[Any]) -> dict[str, int]:
    s = socket.socket(fileno=os.dup(conn.pgconn.socket))
    try:
        return {
            "keepalives": s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "keepalives_idle": s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "keepalives_interval": s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            "keepalives_count": s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            "tcp_user_timeout": s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        }
    finally:
        s.close()


def test_the_default_turns_into_these_libpq_settings() -> None:
    assert connection_params(15) == {
        "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 3,
        "keepalives_count": 3, "tcp_user_timeout": 15000, "connect_timeout": 15}
    short = connection_params(2)
    assert short["keepalives_idle"] == short["keepalives_interval"] == 1
    assert short["tcp_user_timeout"] == 2000


def test_every_connection_is_watched_and_named(tcp_url: str, tmp_path: Path) -> None:
    """Pool, direct and heartbeat connections: keepalives and TCP user timeout set on the
    socket, and ``application_name`` naming this process."""
    settings = Settings(database_url=tcp_url, landing_root=tmp_path,
                        db_dead_after_seconds=9)
    expected = {k: v for k, v in connection_params(9).items() if k != "connect_timeout"}
    with Database(settings, start=False) as db:
        db.start()
        fleet = Fleet(db, 30.0)
        fleet.start()
        try:
            with db.pool.connection() as pooled, db.connect() as direct:
                heartbeat = fleet._connection()
                for conn in (pooled, direct, heartbeat):
                    assert socket_options(conn) == expected
                names = [r[0] for r in pooled.execute(
                    "SELECT application_name FROM pg_stat_activity"
                    " WHERE datname = current_database() ORDER BY backend_start")]
        finally:
            fleet.stop()
    ours = [n for n in names if n.startswith(f"ingestd/{db.instance_id}/")]
    assert len(ours) >= 3 and len(set(ours)) == len(ours), names


@pytest.mark.skipif(not blackhole.available(), reason="needs nftables")
def test_own_sessions_the_server_kept_are_ended_and_no_other(tcp_url: str,
                                                             tmp_path: Path) -> None:
    """Fault: nftables drops every packet of one of our connections (it holds a company's
    advisory lock), and we give it up: its goodbye never reaches the server, which keeps
    the session and the lock (a partition). Ending our dead sessions frees the lock, and
    leaves our live connections and another process's sessions alone."""
    settings = Settings(database_url=tcp_url, landing_root=tmp_path, db_dead_after_seconds=2)
    key = locks.company("acme")
    with Database(settings, start=False) as db, Database(settings, start=False) as other, \
            other.connect(autocommit=True) as theirs:
        db.start()
        cut = db.connect(autocommit=True)
        assert locks.try_lock(cut, key)
        port = cut.info.port
        client_port = socket.socket(fileno=os.dup(cut.pgconn.socket)).getsockname()[1]
        with BlackHole(port, [client_port]), db.pool.connection() as live:
            live.autocommit = True
            with pytest.raises(psycopg.OperationalError):
                cut.execute("SELECT 1")  # given up after db_dead_after_seconds
            cut.close()
            assert not locks.try_lock(live, key)  # the server kept the session and lock
            before = backends(theirs)
            ended = db.end_dead_sessions(live)
            assert len(ended) == 1
            assert locks.try_lock(live, key)
            locks.unlock(live, key)
            assert backends(theirs) == before - set(ended)


def test_a_connection_made_after_the_look_is_never_taken_for_dead(db_url: str,
                                                                   tmp_path: Path) -> None:
    """Another thread's connection made between the look at our live connections and the
    terminate (the race that once ended the heartbeat's new connection at start-up)."""
    settings = Settings(database_url=db_url, landing_root=tmp_path)
    with Database(settings, start=False) as db, db.connect(autocommit=True) as asker:
        looked_at = leases.server_time(asker)
        live = db.sessions.live()
        with db.connect(autocommit=True) as late:
            assert leases.end_own_sessions(asker, db.sessions.prefix, live,
                                           started_before=looked_at) == []
            assert late.execute("SELECT 1").fetchone() == (1,)
        # Closed without a word to the server it would be dead; closed cleanly it is gone.
        assert db.end_dead_sessions(asker) == []


def backends(conn: psycopg.Connection[Any]) -> set[int]:
    return {int(r[0]) for r in conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid()")}


@pytest.mark.parametrize("value", ["0", "1.5", "abc", "3601"])
@pytest.mark.parametrize("source", ["env", "toml"])
def test_invalid_db_dead_after_seconds_is_one_line_exit_2(tmp_path: Path, value: str,
                                                          source: str) -> None:
    (tmp_path / "landing").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
    env.update(INGESTD_LANDING_ROOT=str(tmp_path / "landing"),
               INGESTD_STATE_DIR=str(tmp_path / "state"))
    if source == "env":
        env["INGESTD_DB_DEAD_AFTER_SECONDS"] = value
    else:
        config = tmp_path / "ingestd.toml"
        toml_value = f'"{value}"' if value == "abc" else value
        config.write_text(f"db_dead_after_seconds = {toml_value}\n")
        env["INGESTD_CONFIG"] = str(config)
    r: subprocess.CompletedProcess[str] = run_cli(["run"], env)
    assert r.returncode == 2, r.stdout + r.stderr
    [line] = r.stderr.splitlines()
    assert line.startswith("ingestd: invalid setting db_dead_after_seconds"), line
    assert not (tmp_path / "state").exists()
