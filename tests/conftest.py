"""Shared fixtures: a real PostgreSQL for the whole run, a fresh database per test.

By default the suite starts its own server (the same embedded PostgreSQL the daemon
uses). Set INGESTD_TEST_DATABASE_URL to use a given server instead; each test then
gets a database cloned from a migrated template (as procrastinate does), so tests
start clean and fast.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from daemon_helpers import DEFAULT_TIMEOUT, Daemon, StartDaemon, base_env
from notify_socket import NotifySocket
from psycopg.conninfo import make_conninfo

from ingestd.db import migrations
from ingestd.db.companies import Company, add_company
from ingestd.db.embedded import EmbeddedPostgres

TEMPLATE = "ingestd_test_template"


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the server (maintenance database) the suite uses."""
    given = os.environ.get("INGESTD_TEST_DATABASE_URL")
    if given:
        yield given
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg"))
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def template_url(pg_server_url: str) -> str:
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{TEMPLATE}"')
    url = make_conninfo(pg_server_url, dbname=TEMPLATE)
    with psycopg.connect(url) as conn:
        migrations.upgrade(conn)
    return url


@pytest.fixture
def new_database(pg_server_url: str, template_url: str) -> Iterator[Callable[..., str]]:
    """Makes fresh databases for this test (migrated, or with ``migrated=False`` empty),
    dropped at its end. The one place tests create and drop databases."""
    made: list[str] = []

    def make(*, migrated: bool = True) -> str:
        name = f"ingestd_test_{uuid.uuid4().hex[:12]}"
        template = f' TEMPLATE "{TEMPLATE}"' if migrated else ""
        with psycopg.connect(pg_server_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"{template}')
        made.append(name)
        return make_conninfo(pg_server_url, dbname=name)

    yield make
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        for name in made:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db_url(new_database: Callable[..., str]) -> str:
    """A fresh, migrated database for this test."""
    return new_database()


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db_url) as c:
        yield c


@pytest.fixture
def company(conn: psycopg.Connection[Any]) -> Company:
    """Company 'acme' (schema acme, region US), set up in the test database."""
    add_company(conn, "acme")
    conn.commit()
    return Company(id="acme", schema="acme", default_region="US")


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    root = tmp_path / "landing"
    root.mkdir()
    return root


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server of this test's own, to stop and start at will."""
    server = EmbeddedPostgres(tmp_path / "pg")
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- the daemon as a subprocess (tests/daemon_helpers.py) -----------------------------------


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons a test starts itself; killed (by pid, our own children only) if still running."""
    started: list[Daemon] = []
    yield started
    for d in started:
        d.kill()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    """systemd's notify socket, at ``notify.path`` in the test's folder."""
    path = tmp_path / "notify.sock"
    assert len(str(path)) < 100, "unix socket path too long for sun_path"
    sock = NotifySocket(path)
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture
def env(db_url: str, landing: Path, tmp_path: Path) -> dict[str, str]:
    """The environment of this test's daemons and CLI runs; a module may override it."""
    return base_env(db_url, landing, tmp_path / "state")


@pytest.fixture
def start_timeout() -> float:
    """How long ``start_daemon`` waits for ``daemon.started``; a module may override it."""
    return DEFAULT_TIMEOUT


@pytest.fixture
def start_daemon(env: dict[str, str], start_timeout: float) -> Iterator[StartDaemon]:
    """Start a daemon (env overrides as keyword arguments); any left running is killed."""
    started: list[Daemon] = []

    def start(wait_started: bool = True, **overrides: str) -> Daemon:
        d = Daemon({**env, **overrides})
        started.append(d)
        return d.start(wait_started=wait_started, timeout=start_timeout)

    yield start
    for d in started:
        if d.alive() and d.proc is not None:
            d.proc.send_signal(signal.SIGCONT)  # a test may have left it stopped (SIGSTOP)
        d.kill()
