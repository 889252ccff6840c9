"""The database is cut off: the daemon's open connections are black-holed (issue 16, §1).

The fault is real packet loss. PostgreSQL (this test's own, listening on TCP at
127.0.0.1) is reached by the real daemon over TCP. An nftables table of the test's own
then drops every packet of the daemon's connections that exist at that moment, in
both directions (matched by their client ports, as ``pg_stat_activity.client_port``
shows them): no RST, no FIN, nothing acknowledged again, as after a failover or a
firewall that forgot the connections. New connections (new client ports) work at once,
as when the database's name points at the new primary. The table is deleted at the end.

Two modes, as the issue describes them:

- ``ended``: the server ends the old sessions (``pg_terminate_backend``, as a dead
  primary's sessions are gone); their goodbye never reaches the daemon.
- ``kept``: the server keeps the old sessions (a partition): one still holds the
  company's advisory lock and the open apply transaction with its row locks.

And two moments of the apply at which the cut comes:

- ``waiting``: every row written, the transaction open, the worker waiting for the
  server's answer (the ``before_commit:wait`` failpoint: a server-side sleep). Nothing
  is in flight, so only keepalives can tell the connection is dead.
- ``streaming``: rows still being sent, a small chunk at a time (``chunk_size`` 25):
  data sent and never acknowledged, which the TCP user timeout catches.

Without ``db_dead_after_seconds`` the daemon sat in ``Connection.wait`` until the
kernel's keepalive (hours): no file finished.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import blackhole
import psycopg
import pytest
from blackhole import BlackHole
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
from pg_proxy import free_port
from psycopg.conninfo import conninfo_to_dict

from ingestd.db.embedded import EmbeddedPostgres

pytestmark = pytest.mark.skipif(not blackhole.available(),
                                reason="needs nftables (apt-get install -y nftables)")

TIMEOUT = 120.0
BAR_SECONDS = 60.0  # the bar: both files in done/ within this long of the cut
ROWS = 5_000
CHUNK = "25"  # 200 chunks: still inside the apply transaction when the cut comes
DBNAME = "ingestd_cut"


@pytest.fixture
def tcp_postgres(tmp_path: Path) -> Iterator[str]:
    """A PostgreSQL server of this test's own on 127.0.0.1:<port>; its admin URL."""
    server = EmbeddedPostgres(tmp_path / "pg")
    server.start()  # initdb, then a unix-socket-only start
    server.stop()
    port = free_port()
    opts = (f"-c listen_addresses=127.0.0.1 -p {port} -k {server.socket_dir}"
            " -c max_connections=100")
    done = server._run("pg_ctl", "-D", str(server.data), "-l", str(server.log_file), "-o",
                       opts, "-w", "-t", "60", "start", check=False)
    assert done.returncode == 0, done.stderr + server.log_file.read_text()
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        server._run("pg_ctl", "-D", str(server.data), "-m", "immediate", "-w", "stop",
                    check=False)


def daemon_sessions(admin_url: str) -> list[tuple[int, int]]:
    """(pid, client port) of every session on the test database but the asker's."""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid, client_port FROM pg_stat_activity WHERE datname = %s"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            " AND client_port IS NOT NULL", (DBNAME,)).fetchall()
    return [(int(pid), int(port)) for pid, port in rows]


def in_apply(admin_url: str) -> bool:
    """The daemon's apply transaction is open and has written rows."""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
            " AND backend_xid IS NOT NULL AND pid <> pg_backend_pid()", (DBNAME,)).fetchone()
    return row is not None and row[0] > 0


def waiting_in_apply(admin_url: str) -> bool:
    """The daemon's apply transaction has written rows and waits at the failpoint."""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
            " AND backend_xid IS NOT NULL AND state = 'active'"
            " AND query LIKE 'SELECT pg_sleep%%'", (DBNAME,)).fetchone()
    return row is not None and row[0] > 0


def holding(admin_url: str, pids: list[int]) -> list[tuple[int, str]]:
    """Which of ``pids`` hold a lock other than their own virtual transaction id (an
    advisory lock, a row or table lock) or an open transaction."""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        return [(int(pid), str(what)) for pid, what in admin.execute(
            "SELECT pid, locktype FROM pg_locks WHERE pid = ANY(%s) AND granted"
            " AND locktype <> 'virtualxid'"
            " UNION ALL SELECT pid, 'transaction' FROM pg_stat_activity"
            " WHERE pid = ANY(%s) AND xact_start IS NOT NULL", (pids, pids))]


def terminate(admin_url: str, pids: list[int]) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))


BIG = "external_person_id,note\n" + "".join(f"p{i},n{i}\n" for i in range(ROWS))
SMALL = "external_person_id,note\ns1,small\ns2,small\np7,from-small\n"


def cut_mid_apply(d: Daemon, admin_url: str, acme_inbox: Path,
                  at: str = "streaming") -> BlackHole:
    """Drop the big file, and black-hole the daemon's connections while it is applied."""
    (acme_inbox / "big.persons").write_text(BIG)
    d.wait_event("file.claimed", timeout=TIMEOUT, file="big.persons")
    under_way = waiting_in_apply if at == "waiting" else in_apply
    wait_for(lambda: under_way(admin_url), TIMEOUT, what="the apply transaction under way",
             context=d.tail)
    assert not d.find("file.applied"), "the big file committed before the cut"
    sessions = daemon_sessions(admin_url)
    assert sessions, "no daemon session to cut"
    port = int(conninfo_to_dict(admin_url)["port"])
    return BlackHole(port, [p for _, p in sessions])


@pytest.mark.parametrize(("mode", "at"), [("ended", "waiting"), ("kept", "waiting"),
                                         ("kept", "streaming")])
def test_black_holed_connections_file_in_hand_and_next_file_done_once(
        tmp_path: Path, landing: Path, tcp_postgres: str, mode: str, at: str) -> None:
    """Fault: nftables drops every packet of the daemon's open connections mid-apply
    (``waiting`` for the server, or ``streaming`` rows); ``ended``: the server also
    terminates those sessions; ``kept``: it keeps them (one holds the company lock and
    the open transaction). Both files must be in done/ within 60 s of the cut, every
    row applied once, nothing failed, the daemon running."""
    db_url = migrated_database(tcp_postgres, DBNAME)
    admin_url = db_url
    acme = setup_company(db_url, landing, "acme", NOTE_FIELD)
    how = ({"INGESTD_FAILPOINT": "before_commit:wait"} if at == "waiting"
           else {"INGESTD_CHUNK_SIZE": CHUNK})
    d = Daemon(base_env(db_url, landing, tmp_path / "state", INGESTD_WORKERS="2", **how))
    try:
        d.start(timeout=TIMEOUT)
        hole = cut_mid_apply(d, admin_url, acme.inbox, at)
        old = daemon_sessions(admin_url)
        with hole:
            cut_at = time.monotonic()
            if mode == "ended":
                terminate(admin_url, [pid for pid, _ in old])
            drop(acme, "small.persons", SMALL)
            wait_for(lambda: is_finished(acme, "big.persons")
                     and is_finished(acme, "small.persons"),
                     BAR_SECONDS - (time.monotonic() - cut_at),
                     what="both files in done/ within 60 s of the cut", context=d.tail)
            print(f"{mode}, {at}: both files done {time.monotonic() - cut_at:.1f} s after the cut")
            assert d.alive(), d.tail()
            # The daemon's own sessions from before the cut (kept by the server in the
            # partition) hold nothing any more, and are soon all ended.
            old_pids = [pid for pid, _ in old]
            assert holding(admin_url, old_pids) == [], d.tail()
            wait_for(lambda: not set(old_pids) & {pid for pid, _ in daemon_sessions(admin_url)},
                     TIMEOUT, what="the daemon's old sessions ended", context=d.tail)
        d.wait_event("file.done", timeout=TIMEOUT, file="small.persons")
        assert d.stop(signal.SIGTERM, timeout=TIMEOUT) == 0, d.tail()
    finally:
        d.kill()

    [lost] = d.find("db.connection_lost", file="big.persons")
    assert lost["company"] == "acme"
    assert d.find("file.retry", company="acme", file="big.persons"), d.tail()
    assert [e["action"] for e in d.find("file.recovered", file="big.persons")] == ["apply"]
    if mode == "kept":
        assert d.find("db.own_sessions_ended"), d.tail()
    assert not d.find("file.failed") and not d.find("file.error"), d.tail()

    # Each file applied once, in drop order; each row once; the later file's value wins.
    files = ledger(db_url, "acme")
    assert [(f["name"], f["status"], f["rows"]) for f in files] == [
        ("big.persons", "done", ROWS), ("small.persons", "done", 3)]
    assert all(f["finished_at"] is not None for f in files)
    assert scalar(db_url, "SELECT count(*) FROM acme.persons") == ROWS + 2
    assert scalar(db_url, "SELECT count(DISTINCT external_person_id) FROM acme.persons") \
        == ROWS + 2
    assert scalar(db_url, "SELECT custom->>'note' FROM acme.persons"
                          " WHERE external_person_id = 'p7'") == "from-small"
    assert listing(acme.failed) == [] and listing(acme.inbox) == []
    assert list(entries(acme.processing)) == []


def test_sigterm_during_a_cut_exits_within_stop_timeout(
        tmp_path: Path, landing: Path, tcp_postgres: str) -> None:
    """Fault: nftables drops every packet of the daemon's open connections mid-apply and
    the server ends those sessions; then SIGTERM. The daemon exits 0 within
    ``stop_timeout`` (shorter here than ``db_dead_after_seconds``), leaving the file
    claimed; started again once the cut is lifted, it applies the file once."""
    db_url = migrated_database(tcp_postgres, DBNAME)
    admin_url = db_url
    acme = setup_company(db_url, landing, "acme", NOTE_FIELD)
    stop_timeout = 5.0
    env = base_env(db_url, landing, tmp_path / "state", INGESTD_CHUNK_SIZE=CHUNK,
                   INGESTD_WORKERS="2", INGESTD_STOP_TIMEOUT=str(stop_timeout))
    d = Daemon(env)
    try:
        d.start(timeout=TIMEOUT)
        hole = cut_mid_apply(d, admin_url, acme.inbox)
        with hole:
            terminate(admin_url, [pid for pid, _ in daemon_sessions(admin_url)])
            # The daemon's own deadline runs from the signal; its interpreter's exit after
            # that is not the daemon's to bound, hence the second of slack.
            assert d.stop(signal.SIGTERM, timeout=stop_timeout + 1) == 0, d.tail()
        assert not is_finished(acme, "big.persons")
        assert listing(acme.failed) == []
    finally:
        d.kill()

    again = Daemon(env)
    try:
        again.start(timeout=TIMEOUT)
        wait_for(lambda: is_finished(acme, "big.persons"), TIMEOUT, what="big.persons done",
                 context=again.tail)
        assert again.stop(signal.SIGTERM, timeout=TIMEOUT) == 0, again.tail()
    finally:
        again.kill()
    [entry] = ledger(db_url, "acme")
    assert (entry["name"], entry["status"], entry["rows"]) == ("big.persons", "done", ROWS)
    assert scalar(db_url, "SELECT count(*) FROM acme.persons") == ROWS
    assert listing(acme.failed) == []
