"""One landing root, one database; a database setting that cannot work (issue 16, items 3
and 4), through the real ``ingestd`` in subprocesses.

* the landing root remembers its database (``.ingestd-database``: the server's system
  identifier and the database name); a daemon or ``company add`` pointed at another
  database refuses in one line naming both, exit 2; instances sharing it are fine;
* one daemon per embedded database: a second ``ingestd run`` on the same state dir
  refuses, and the first keeps working;
* only ``run`` and ``db upgrade`` create an embedded database: other commands, where
  there is none, say so naming the state dir, exit 2, and create nothing;
* ``status`` shows the absolute landing root and state dir, takes ``--landing-root``
  and refuses one that does not exist;
* a database URL libpq cannot parse, an unknown database or role, a wrong password:
  one line naming the setting or the cause, exit 2, never retried.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from daemon_helpers import (
    Daemon,
    StartDaemon,
    base_env,
    drop,
    is_finished,
    run_cli,
    setup_company,
    wait_for,
)
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ingestd.db.embedded import EmbeddedPostgres
from ingestd.db.identity import MARKER
from ingestd.landing import CompanyDirs

TIMEOUT = 120.0  # embedded PostgreSQL set-ups on a loaded, shared machine
PERSONS = "mdn,external_person_id\n2295551299,e9\n"


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    """Exit 2 and exactly one line on stderr, no traceback: that line."""
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def refused_at_start(d: Daemon) -> str:
    """The daemon exits 2 by itself with one line on stderr; that line."""
    code = d.wait_exit(TIMEOUT)
    assert d.stderr_path is not None
    err = d.stderr_path.read_text()
    assert code == 2, d.tail()
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert not d.find("daemon.started"), d.tail()
    return lines[0]


def system_identifier(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
    assert row is not None
    return str(row[0])


def has_schema(url: str, name: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                            (name,)).fetchone() is not None


def no_db_env(landing: Path, state: Path | None) -> dict[str, str]:
    """No INGESTD_DATABASE_URL: the embedded database under ``state`` (None: the default
    state dir, relative to the working directory)."""
    env = base_env("", landing, state or Path("unused"))
    env.pop("INGESTD_DATABASE_URL")
    if state is None:
        env.pop("INGESTD_STATE_DIR")
    return env


# -- the landing root remembers its database ---------------------------------------------


def test_a_daemon_on_another_database_is_refused(
        start_daemon: StartDaemon, new_database: Callable[..., str], db_url: str,
        landing: Path, env: dict[str, str], daemons: list[Daemon]) -> None:
    (landing / MARKER).write_text("")  # as tmpfiles.d makes it, for the daemon to fill
    first = start_daemon()
    started = first.find("daemon.started")[0]
    assert (started["landing_root"], started["state_dir"]) == (
        str(landing), env["INGESTD_STATE_DIR"]), started
    marker = json.loads((landing / MARKER).read_text())
    ours = conninfo_to_dict(db_url)["dbname"]
    assert marker == {"system_identifier": system_identifier(db_url), "database": ours}
    # A second instance on the same database shares the landing root.
    second = start_daemon()
    assert second.alive() and first.alive()

    other_url = new_database(migrated=False)
    other = conninfo_to_dict(other_url)["dbname"]
    wrong = Daemon({**env, "INGESTD_DATABASE_URL": other_url})
    daemons.append(wrong)
    line = refused_at_start(wrong.start(wait_started=False))
    assert line.startswith(f"ingestd: landing root {landing} belongs to database "
                           f"'{ours}'"), line
    assert f"connected to database '{other}'" in line, line
    assert json.loads((landing / MARKER).read_text()) == marker  # unchanged
    assert not has_schema(other_url, "ingestd")  # refused before migrating it

    # The right ones never noticed.
    dirs = setup_company(db_url, landing, "acme")
    drop(dirs, "a.persons", PERSONS)
    wait_for(lambda: is_finished(dirs, "a.persons"), TIMEOUT, what="a.persons done",
             context=first.tail)
    assert first.stop() == 0 and second.stop() == 0


def test_company_add_binds_the_landing_root_and_refuses_another_database(
        new_database: Callable[..., str], db_url: str, landing: Path,
        env: dict[str, str]) -> None:
    r = run_cli(["company", "add", "acme"], env)
    assert r.returncode == 0, r.stderr
    ours = conninfo_to_dict(db_url)["dbname"]
    assert json.loads((landing / MARKER).read_text())["database"] == ours

    other_url = new_database(migrated=False)
    other = {**env, "INGESTD_DATABASE_URL": other_url}
    for command in (["company", "add", "globex"], ["status"]):
        line = one_line(run_cli(command, other))
        assert f"belongs to database '{ours}'" in line, line
    assert not (landing / "globex").exists()
    assert not has_schema(other_url, "ingestd")


# -- one daemon per embedded database -----------------------------------------------------


def test_a_second_daemon_on_one_embedded_database_refuses_and_the_first_keeps_working(
        tmp_path: Path, landing: Path, daemons: list[Daemon]) -> None:
    state = tmp_path / "state"
    env = no_db_env(landing, state)
    first = Daemon(env)
    daemons.append(first)
    first.start(timeout=TIMEOUT)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    second = Daemon(env, cwd=elsewhere)
    daemons.append(second)
    line = refused_at_start(second.start(wait_started=False))
    assert line.startswith(f"ingestd: the embedded database in state dir {state} is in use "
                           "by another ingestd run"), line
    # From another folder, with the default (relative) state dir: a new, empty database
    # would be made there; the landing root already belongs to the first one.
    line = one_line(run_cli(["run"], no_db_env(landing, None), cwd=elsewhere,
                            timeout=TIMEOUT))
    assert line.startswith(f"ingestd: landing root {landing} belongs to database 'postgres' "
                           f"on server "), line
    assert f"but state dir {elsewhere / '.state'} holds no database" in line, line
    assert not (elsewhere / ".state" / "postgres" / "data").exists()  # no initdb

    # The server was neither stopped nor disturbed under the first daemon.
    r = run_cli(["company", "add", "acme"], env, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    dirs = CompanyDirs(landing / "acme")  # made by `company add`
    drop(dirs, "a.persons", PERSONS)
    wait_for(lambda: is_finished(dirs, "a.persons"), TIMEOUT, what="a.persons done",
             context=first.tail)
    assert first.stop(timeout=TIMEOUT) == 0, first.tail()
    assert not (state / "postgres" / "data" / "postmaster.pid").exists()  # it stopped it


def test_a_one_off_command_never_stops_the_server_under_a_daemon(
        tmp_path: Path, landing: Path, daemons: list[Daemon]) -> None:
    """A command started the embedded server (this test process plays it), then a
    daemon started: the daemon takes the server over, and the command's stop leaves it
    running; the daemon stops it at its own exit."""
    state = tmp_path / "state"
    command = EmbeddedPostgres(state)
    command.start()
    d = Daemon(no_db_env(landing, state))
    daemons.append(d)
    d.start(timeout=TIMEOUT)
    command.stop()  # the one-off command ends
    assert (state / "postgres" / "data" / "postmaster.pid").exists()
    r = run_cli(["company", "add", "acme"], no_db_env(landing, state), timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    dirs = CompanyDirs(landing / "acme")
    drop(dirs, "a.persons", PERSONS)
    wait_for(lambda: is_finished(dirs, "a.persons"), TIMEOUT, what="a.persons done",
             context=d.tail)
    assert d.stop(timeout=TIMEOUT) == 0, d.tail()
    assert not (state / "postgres" / "data" / "postmaster.pid").exists()


# -- only run and db upgrade create an embedded database ----------------------------------


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["company", "list"],
                                     ["company", "add", "acme"], ["prune", "--older-than", "1"],
                                     ["fields", "list", "--company", "acme"],
                                     ["requeue", "failed/x.persons"]])
def test_other_commands_never_create_an_embedded_database(
        tmp_path: Path, landing: Path, command: list[str]) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = run_cli(command, no_db_env(landing, None), cwd=elsewhere, timeout=TIMEOUT)
    line = one_line(r)
    assert line.startswith(f"ingestd: no database: state dir {elsewhere / '.state'} holds "
                           "no embedded PostgreSQL"), line
    assert os.listdir(elsewhere) == []  # no 39 MB .state/


def test_db_upgrade_creates_it_then_status_works(tmp_path: Path, landing: Path) -> None:
    state = tmp_path / "state"
    env = no_db_env(landing, state)
    r = run_cli(["db", "upgrade"], env, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    r = run_cli(["status"], env, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert EmbeddedPostgres(state).exists()
    # The one-off commands stopped the server they started.
    assert not (state / "postgres" / "data" / "postmaster.pid").exists()


# -- status shows where it looked ---------------------------------------------------------


def test_status_shows_absolute_paths_and_takes_landing_root(
        tmp_path: Path, landing: Path, db_url: str, env: dict[str, str]) -> None:
    setup_company(db_url, landing, "acme")
    elsewhere = landing.parent
    rel_env = {**env, "INGESTD_STATE_DIR": "st", "INGESTD_LANDING_ROOT": "nowhere"}
    r = run_cli(["status", "--landing-root", "landing"], rel_env, cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert f"landing root: {landing}\n" in r.stdout, r.stdout
    assert f"state dir:    {elsewhere / 'st'}\n" in r.stdout, r.stdout
    r = run_cli(["status", "--json", "--landing-root", "landing"], rel_env, cwd=elsewhere)
    report = json.loads(r.stdout)
    assert (report["landing_root"], report["state_dir"]) == (str(landing), str(elsewhere / "st"))
    assert [c["company"] for c in report["companies"]] == ["acme"]

    line = one_line(run_cli(["status"], rel_env, cwd=elsewhere))
    assert line == (f"ingestd: landing_root {elsewhere / 'nowhere'} does not exist; create it "
                    "or fix INGESTD_LANDING_ROOT"), line
    assert not (elsewhere / "nowhere").exists()


# -- a database setting that cannot work --------------------------------------------------


@pytest.mark.parametrize("command", [["run"], ["status"], ["db", "upgrade"]])
def test_a_database_url_that_is_no_url_is_one_line(
        env: dict[str, str], tmp_path: Path, command: list[str]) -> None:
    line = one_line(run_cli(command, {**env, "INGESTD_DATABASE_URL": "localhost"}))
    assert line.startswith("ingestd: invalid setting database_url (env INGESTD_DATABASE_URL):"
                           " not a PostgreSQL URL or conninfo string"), line
    assert not (tmp_path / "state").exists()


@pytest.fixture
def password_server(own_postgres: EmbeddedPostgres) -> str:
    """``own_postgres`` with role alice, who must give her password ("right")."""
    with psycopg.connect(own_postgres.url, autocommit=True) as admin:
        admin.execute("CREATE ROLE alice LOGIN PASSWORD 'right'")
        admin.execute("CREATE DATABASE alices OWNER alice")
        hba = own_postgres.data / "pg_hba.conf"
        hba.write_text("local all alice scram-sha-256\n" + hba.read_text())
        admin.execute("SELECT pg_reload_conf()")
    return own_postgres.url


@pytest.mark.parametrize("fault,cause", [
    ("database", 'database "nosuchdb" does not exist'),
    ("role", 'role "nosuchrole" does not exist'),
    ("password", 'password authentication failed for user "alice"'),
])
def test_a_database_that_will_never_accept_is_one_line_not_a_retry(
        password_server: str, landing: Path, tmp_path: Path, daemons: list[Daemon],
        fault: str, cause: str) -> None:
    params = {"database": {"dbname": "nosuchdb"}, "role": {"user": "nosuchrole"},
              "password": {"user": "alice", "password": "wrong", "dbname": "alices"}}[fault]
    url = make_conninfo(password_server, **params)
    env = base_env(url, landing, tmp_path / "state")
    d = Daemon(env)
    daemons.append(d)
    line = refused_at_start(d.start(wait_started=False))
    assert line.startswith(f"ingestd: database refused: {cause}; waiting will not fix this: "
                           "check INGESTD_DATABASE_URL ("), line
    assert "wrong" not in line  # the password is never shown
    assert not d.find("db.unavailable"), d.tail()  # not retried
    line = one_line(run_cli(["status"], env))
    assert line.startswith(f"ingestd: database refused: {cause};"), line


def test_the_right_password_works(password_server: str, landing: Path, tmp_path: Path) -> None:
    """The refusal above is the password's fault, not the server's set-up."""
    url = make_conninfo(password_server, user="alice", password="right", dbname="alices")
    r = run_cli(["db", "upgrade"], base_env(url, landing, tmp_path / "state"))
    assert r.returncode == 0, r.stderr


def test_too_many_connections_is_waited_for(
        password_server: str, landing: Path, tmp_path: Path, daemons: list[Daemon]) -> None:
    """A refusal that waiting can fix (SQLSTATE 53300) is retried, not final."""
    with psycopg.connect(password_server, autocommit=True) as admin:
        admin.execute("ALTER ROLE alice CONNECTION LIMIT 0")
    url = make_conninfo(password_server, user="alice", password="right", dbname="alices")
    d = Daemon(base_env(url, landing, tmp_path / "state", INGESTD_DB_RETRY_MAX="1"))
    daemons.append(d)
    d.start(wait_started=False)
    waits = d.wait_event("db.unavailable", count=2, timeout=TIMEOUT)
    assert 'too many connections for role "alice"' in waits[0]["reason"], waits
    with psycopg.connect(password_server, autocommit=True) as admin:
        admin.execute("ALTER ROLE alice CONNECTION LIMIT -1")
    d.wait_event("daemon.started", timeout=TIMEOUT)
    assert d.stop() == 0, d.tail()


def test_a_server_not_accepting_connections_yet_is_waited_for(
        tmp_path: Path, landing: Path, daemons: list[Daemon]) -> None:
    """A real server that is up and says "not accepting connections" (a standby not
    promoted yet, hot_standby off; the family of "the database system is starting up"):
    the daemon waits, and starts once the server is promoted."""
    server = EmbeddedPostgres(tmp_path / "pg")
    server.start()
    server.stop()
    (server.data / "standby.signal").write_text("")
    with open(server.data / "postgresql.auto.conf", "a") as conf:
        conf.write("hot_standby = off\n")
    opts = f"-c listen_addresses='' -k {server.socket_dir} -p 5432"
    server._run("pg_ctl", "-D", str(server.data), "-l", str(server.log_file), "-o", opts,
                "-w", "start")
    try:
        d = Daemon(base_env(server.url, landing, tmp_path / "state",
                            INGESTD_DB_RETRY_MAX="1"))
        daemons.append(d)
        d.start(wait_started=False)
        waits = d.wait_event("db.unavailable", count=2, timeout=TIMEOUT)
        assert "the database system is not accepting connections" in waits[0]["reason"], waits
        server._run("pg_ctl", "-D", str(server.data), "-w", "promote")
        d.wait_event("daemon.started", timeout=TIMEOUT)
        assert d.stop() == 0, d.tail()
    finally:
        server._run("pg_ctl", "-D", str(server.data), "-m", "fast", "-w", "stop", check=False)
