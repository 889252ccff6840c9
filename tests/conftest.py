"""Shared fixtures: a real PostgreSQL for the whole run, a fresh database per test; and
the tests arranged by cost.

Tests by cost: a test that starts a process of its own (the daemon, the CLI, a server,
a tool such as mypy) is marked ``process`` here, at collection, by reading its code and
the code of its module's helpers and fixtures it uses. ``pytest -m "not process" -n auto``
is the fast inner loop (real PostgreSQL, real files, in-process HTTP servers; under a
minute on two cores, one pytest-xdist worker each); under it a test that starts a
process anyway fails at once, saying so, so the split stays honest. Plain ``pytest``
runs everything.

By default the suite starts its own server (the same embedded PostgreSQL the daemon
uses; each xdist worker its own), in memory where there is room and without fsync: it
keeps nothing past the run. Set INGESTD_TEST_DATABASE_URL to use a given server
instead. Either way each test gets a database cloned from a migrated template (as
procrastinate does), so tests start clean and fast.
"""

from __future__ import annotations

import ast
import inspect
import os
import shutil
import signal
import subprocess
import tempfile
import textwrap
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
import pytest
from daemon_helpers import DEFAULT_TIMEOUT, Daemon, StartDaemon, base_env
from notify_socket import NotifySocket
from psycopg.conninfo import make_conninfo

from ingestd.db import migrations
from ingestd.db.companies import Company, add_company
from ingestd.db.database import Database
from ingestd.db.embedded import EmbeddedPostgres
from ingestd.settings import load_settings

# One template per pytest-xdist worker: workers may share a server (INGESTD_TEST_DATABASE_URL).
TEMPLATE = f"ingestd_test_template{os.environ.get('PYTEST_XDIST_WORKER', '')}"
# The suite's own server keeps nothing past the run, so it need not survive a crash of the
# machine: without fsyncs, creating and dropping a database per test is several times
# cheaper; a bounded WAL bounds its files. (The daemon's embedded server keeps its defaults.)
THROWAWAY_SERVER = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
                    "max_wal_size": "256MB"}
# Its files go in memory where there is room: on a virtual disk, copying the template
# (a CREATE DATABASE per test) costs ten times as much CPU.
IN_MEMORY = Path("/dev/shm")
IN_MEMORY_ROOM = 1 << 30

# -- tests by cost --------------------------------------------------------------------------

PROCESS = "process"
# Words in a test's code (or in a helper or fixture of its module it uses) that start a
# process; the conftest fixtures that do.
_STARTS_A_PROCESS = ("Daemon(", "start_daemon", "run_cli(", "subprocess", "Popen",
                     "own_postgres", "EmbeddedPostgres(")
_PROCESS_FIXTURES = frozenset({"start_daemon", "daemons", "own_postgres"})


@cache
def _module(path: str) -> tuple[ast.Module, list[str]]:
    with open(path, encoding="utf-8") as fh:
        source = fh.read()
    return ast.parse(source), source.splitlines()


@cache
def _process_names(path: str) -> frozenset[str]:
    """The module's top-level functions and classes that start a process, directly or
    through another of them."""
    tree, lines = _module(path)
    defs = {n.name: n for n in tree.body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    text = {name: "\n".join(lines[n.lineno - 1:n.end_lineno]) for name, n in defs.items()}
    found = {name for name in defs if any(w in text[name] for w in _STARTS_A_PROCESS)}
    for n in tree.body:  # what it imports from a helper module beside it (blackhole.py)
        helper = Path(path).with_name(f"{getattr(n, 'module', '')}.py")
        if isinstance(n, ast.ImportFrom) and n.level == 0 and helper.is_file():
            starting = _process_names(str(helper))
            found |= {a.asname or a.name for a in n.names if a.name in starting}
    uses = {name: {x.id for x in ast.walk(n) if isinstance(x, ast.Name)}
            for name, n in defs.items()}
    while True:
        more = {name for name in defs if name not in found and uses[name] & found}
        if not more:
            return frozenset(found)
        found |= more


@cache
def _test_functions(path: str) -> dict[str, tuple[str, frozenset[str]]]:
    """The module's top-level functions: their code (decorators too) and the names they
    use. From the module's tree, parsed once: ~1,000 tests cost a second otherwise."""
    tree, lines = _module(path)
    found = {}
    for n in tree.body:
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([n.lineno] + [d.lineno for d in n.decorator_list])
            found[n.name] = ("\n".join(lines[first - 1:n.end_lineno]), frozenset(
                x.id for x in ast.walk(n) if isinstance(x, ast.Name)))
    return found


def _code_and_names(function: Callable[..., Any], path: str) -> tuple[str, frozenset[str]]:
    found = _test_functions(path).get(function.__name__)
    if found is not None:
        return found
    code = textwrap.dedent(inspect.getsource(function))  # not at the top of its module
    return code, frozenset(x.id for x in ast.walk(ast.parse(code)) if isinstance(x, ast.Name))


def _starts_a_process(item: pytest.Item) -> bool:
    function = getattr(item, "function", None)
    if function is None:
        return False
    names = _process_names(str(item.path)) | _PROCESS_FIXTURES
    if names & set(getattr(item, "fixturenames", ())):
        return True
    code, used = _code_and_names(function, str(item.path))
    return any(w in code for w in _STARTS_A_PROCESS) or bool(used & names)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{PROCESS}: starts a process of its own (the daemon, the CLI, a server, a"
                   " tool); set at collection. Fast inner loop: pytest -m 'not process'")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _starts_a_process(item):
            item.add_marker(PROCESS)


@pytest.fixture(autouse=True)
def _no_process_in_the_fast_loop(request: pytest.FixtureRequest,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``-m "not process"``, a test that starts a process fails, naming the cause."""
    if "not process" not in (request.config.getoption("markexpr") or "") or \
            request.node.get_closest_marker(PROCESS) is not None:
        return

    def refuse(popen: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        raise AssertionError(f"{request.node.nodeid} starts a process ({args!r}) but is not"
                             " marked 'process': see tests/conftest.py, tests by cost")
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the server (maintenance database) the suite uses."""
    given = os.environ.get("INGESTD_TEST_DATABASE_URL")
    if given:
        yield given
        return
    with _server_dir(tmp_path_factory) as where:
        server = EmbeddedPostgres(where, server_settings=THROWAWAY_SERVER)
        url = server.start()
        try:
            yield url
        finally:
            server.stop()


@contextmanager
def _server_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory for the suite's server: in memory if there is room (removed after),
    else in the run's temporary directory."""
    if not (IN_MEMORY.is_dir() and os.access(IN_MEMORY, os.W_OK)
            and shutil.disk_usage(IN_MEMORY).free >= IN_MEMORY_ROOM):
        yield tmp_path_factory.mktemp("pg")
        return
    where = Path(tempfile.mkdtemp(prefix="ingestd-test-pg-", dir=IN_MEMORY))
    try:
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


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
        template = f' TEMPLATE "{TEMPLATE}" STRATEGY FILE_COPY' if migrated else ""
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
def pipeline_db(db_url: str, landing: Path, tmp_path: Path) -> Iterator[Database]:
    """The test database as an in-process ``Pipeline`` takes it (a small pool)."""
    settings = load_settings(database_url=db_url, landing_root=landing,
                             state_dir=tmp_path / "state")
    with Database(settings, pool_size=2) as db:
        yield db


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
