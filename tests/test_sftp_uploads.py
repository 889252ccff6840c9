"""Uploads over a real SFTP server, picked up by the real daemon.

The server is asyncssh's, in-process: it listens on 127.0.0.1 (port 0) in a thread
with its own event loop, authenticates user ``acme`` by password and serves an
``asyncssh.SFTPServer`` chrooted at ``LANDING_ROOT/acme``, as OpenSSH's
``ChrootDirectory`` does for a partner (docs/design.md "Landing layout"). The client is
paramiko, i.e. another SSH implementation, as a partner's would be. The daemon is
``python -m ingestd run`` in a subprocess (tests/daemon_helpers.py) with a settle
period of 1 s.

What is checked is docs/design.md's readiness rule as an SFTP partner meets it: a file
is ready when it is closed after write *and* its size and mtime held still for the
settle period; in-flight names (``*.part`` ...) are never touched; the partner
reads the outcome back over SFTP.

Every wait is a deadline-bounded poll (``wait_for``). The only sleeps are the slow
writer's deliberate pauses, which are the scenario itself; no duration is asserted.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import io
import itertools
import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncssh
import paramiko  # type: ignore[import-untyped]
import pytest
from daemon_helpers import (
    Daemon,
    base_env,
    is_finished,
    ledger,
    listing,
    run_cli,
    scalar,
    setup_company,
    wait_for,
)

from ingestd import errors
from ingestd.landing import CompanyDirs
from ingestd.persons.reader import write_persons

COMPANY = "acme"
USER = "acme"
PASSWORD = "s3cret-acme-password"
SETTLE_SECONDS = 1.0
# Longer than the settle period (and the watcher's polling step on top of it), so that
# a daemon trusting "size and mtime held still" alone would take the file mid-upload.
PAUSE_SECONDS = 1.5
BIG_ROWS = 20_000
PROCESS_TIMEOUT = 120.0


# -- the SFTP server: asyncssh in a thread with its own event loop -------------------------


class _PartnerAuth(asyncssh.SSHServer):
    """Password authentication for the partner account only; tracks live connections."""

    def __init__(self, connections: set[asyncssh.SSHServerConnection]) -> None:
        self._connections = connections
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True  # authentication is required for everyone

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return username == USER and password == PASSWORD


class SFTPServerThread:
    """A real SFTP server on 127.0.0.1, each user chrooted at ``landing/<user>``."""

    def __init__(self, landing: Path) -> None:
        self.landing = landing
        self.host = "127.0.0.1"
        self.port = 0
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self._connections: set[asyncssh.SSHServerConnection] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="sftp-server-loop", daemon=True)
        self._acceptor: asyncssh.SSHAcceptor | None = None

    def _sftp_factory(self, chan: asyncssh.SSHServerChannel[bytes]) -> asyncssh.SFTPServer:
        user = chan.get_extra_info("username")
        assert user == USER, user
        return asyncssh.SFTPServer(chan, chroot=os.fsencode(self.landing / user))

    async def _listen(self) -> asyncssh.SSHAcceptor:
        return await asyncssh.listen(
            self.host, 0, server_host_keys=[self.host_key],
            server_factory=lambda: _PartnerAuth(self._connections),
            sftp_factory=self._sftp_factory, allow_scp=False)

    async def _shutdown(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
        for conn in list(self._connections):
            conn.close()
            await conn.wait_closed()
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def start(self) -> SFTPServerThread:
        self._thread.start()
        self._acceptor = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(30)
        self.port = self._acceptor.get_port()
        assert self.port, "the SFTP server did not report its port"
        return self

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._loop.close()

    def sessions(self) -> int:
        """SSH connections currently open."""
        return len(self._connections)

    def paramiko_host_key(self) -> paramiko.PKey:
        """The server's public host key, for the client to verify (no blind trust)."""
        alg, b64 = self.host_key.export_public_key("openssh").split()[:2]
        return paramiko.PKey.from_type_string(alg.decode(), base64.b64decode(b64))


@pytest.fixture
def dirs(db_url: str, landing: Path) -> CompanyDirs:
    """Company acme: its schema, and inbox/ done/ failed/ .processing under landing/acme."""
    return setup_company(db_url, landing, COMPANY)


@pytest.fixture
def sftp_server(dirs: CompanyDirs, landing: Path) -> Iterator[SFTPServerThread]:
    server = SFTPServerThread(landing).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def daemon(db_url: str, landing: Path, tmp_path: Path, dirs: CompanyDirs) -> Iterator[Daemon]:
    """The real daemon, settle 1 s; a short rescan so "a rescan cycle passed" is quick."""
    env = base_env(db_url, landing, tmp_path / "state",
                   INGESTD_SETTLE_SECONDS=str(SETTLE_SECONDS),
                   INGESTD_RESCAN_SECONDS="0.5")
    d = Daemon(env)
    try:
        yield d.start()
    finally:
        d.kill()


@contextmanager
def sftp_session(server: SFTPServerThread) -> Iterator[tuple[paramiko.Transport,
                                                              paramiko.SFTPClient]]:
    """A paramiko SFTP session as the partner, host key verified."""
    transport = paramiko.Transport((server.host, server.port))
    try:
        transport.connect(hostkey=server.paramiko_host_key(), username=USER,
                          password=PASSWORD)
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        try:
            yield transport, sftp
        finally:
            sftp.close()
    finally:
        transport.close()


# -- helpers -----------------------------------------------------------------------------


def persons_text(prefix: str, n: int) -> bytes:
    """A Person Import creating ``n`` persons by external_person_id."""
    return write_persons(["external_person_id"],
                         [[f"{prefix}-{i:05d}"] for i in range(n)]).encode()


def persons_count(db_url: str, prefix: str) -> int:
    n: int = scalar(db_url, "SELECT count(*) FROM acme.persons "
                            "WHERE external_person_id LIKE %s", (prefix + "-%",))
    return n


def wait_done(daemon: Daemon, dirs: CompanyDirs, name: str) -> dict[str, Any]:
    """Wait for ``name`` and its result.json in done/; return the file.done event."""
    wait_for(lambda: is_finished(dirs, name), PROCESS_TIMEOUT,
             what=f"{name} in done/", context=daemon.tail)
    return daemon.wait_event("file.done", file=name)[0]


def event_time(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["timestamp"])


def ledger_names(db_url: str) -> list[str]:
    return [row["name"] for row in ledger(db_url, COMPANY)]


# -- 1. a slow upload straight into the final name ------------------------------------------


@pytest.mark.slow
def test_slow_upload_is_claimed_only_after_its_last_byte(
        db_url: str, dirs: CompanyDirs, sftp_server: SFTPServerThread,
        daemon: Daemon) -> None:
    name = "big.persons"
    data = persons_text("big", BIG_ROWS)
    # Cut at arbitrary byte offsets (not line ends), as an SFTP client's blocks fall.
    cuts = [0, len(data) // 5 + 7, len(data) // 2 + 3, 4 * len(data) // 5 + 11, len(data)]
    chunks = [data[a:b] for a, b in itertools.pairwise(cuts)]
    taken_mid_upload: list[str] = []

    with sftp_session(sftp_server) as (_, sftp):
        f = sftp.open(f"inbox/{name}", "wb")
        try:
            for i, chunk in enumerate(chunks):
                if i:
                    time.sleep(PAUSE_SECONDS)  # the scenario: a stall longer than settle
                    # Still ours? A claim renames the file into .processing/.
                    if not os.path.lexists(dirs.inbox / name) or daemon.find(
                            "file.claimed", file=name):
                        taken_mid_upload.append(f"after chunk {i} of {len(chunks)}")
                last_write_started = datetime.now().astimezone()
                f.write(chunk)
                f.flush()  # paramiko waits for the server's acknowledgement
        finally:
            f.close()

    done = wait_done(daemon, dirs, name)
    claims = daemon.find("file.claimed", file=name)

    assert not taken_mid_upload, (
        f"the daemon claimed {name} while the client still held it open and was to "
        f"write more ({', '.join(taken_mid_upload)}); claims: {claims}\n{daemon.tail()}")
    assert len(claims) == 1, claims
    # The last byte landed after ``last_write_started``; a claim before it is mid-upload.
    assert event_time(claims[0]) > last_write_started, (claims[0], last_write_started)
    assert not daemon.find("file.changed", file=name)

    rows = ledger(db_url, COMPANY)
    assert len(rows) == 1, rows
    assert (rows[0]["name"], rows[0]["status"], rows[0]["size"]) == (name, "done", len(data))
    assert (rows[0]["rows"], rows[0]["accepted"], rows[0]["rejected"]) == (BIG_ROWS, BIG_ROWS, 0)
    assert (done["rows"], done["accepted"]) == (BIG_ROWS, BIG_ROWS)
    assert persons_count(db_url, "big") == BIG_ROWS
    assert (dirs.done / name).read_bytes() == data
    assert listing(dirs.inbox) == []
    assert daemon.errors() == []


# -- 2. upload under a temporary name, then rename (WinSCP, lftp) ----------------------------


def test_part_upload_then_rename_is_applied_once(
        db_url: str, dirs: CompanyDirs, sftp_server: SFTPServerThread,
        daemon: Daemon) -> None:
    name, n = "x.persons", 500
    data = persons_text("x", n)
    with sftp_session(sftp_server) as (_, sftp):
        with sftp.open(f"inbox/{name}.part", "wb") as f:
            f.write(data)
        sftp.rename(f"inbox/{name}.part", f"inbox/{name}")

    done = wait_done(daemon, dirs, name)
    assert (done["accepted"], done["rejected"]) == (n, 0)
    assert ledger_names(db_url) == [name]
    assert persons_count(db_url, "x") == n
    assert daemon.find("file.claimed", file=name + ".part") == []
    assert len(daemon.find("file.claimed", file=name)) == 1
    assert (dirs.done / name).read_bytes() == data
    assert listing(dirs.inbox) == []
    assert daemon.errors() == []


# -- 3. an aborted upload is never touched -------------------------------------------------


def test_aborted_part_upload_is_never_touched(
        db_url: str, dirs: CompanyDirs, sftp_server: SFTPServerThread,
        daemon: Daemon) -> None:
    part = "y.persons.part"
    data = persons_text("y", 2000)
    half = data[: len(data) // 2 + 5]  # mid-line, as a dropped connection leaves it

    with sftp_session(sftp_server) as (transport, sftp):
        f = sftp.open(f"inbox/{part}", "wb")
        f.write(half)
        f.flush()
        transport.close()  # the connection drops: the server closes the handle itself
    # The server has closed the file once the connection is gone.
    wait_for(lambda: sftp_server.sessions() == 0, 30, what="the server to drop the session")
    before = os.lstat(dirs.inbox / part)

    # Dropped afterwards: once it is done, the watcher has looked at the inbox again
    # (rescan every 0.5 s, settle 1 s) and the .part has been still for the settle period.
    name = "z.persons"
    with sftp_session(sftp_server) as (_, sftp):
        with sftp.open(f"inbox/{name}.part", "wb") as f:
            f.write(persons_text("z", 10))
        sftp.rename(f"inbox/{name}.part", f"inbox/{name}")
    wait_done(daemon, dirs, name)
    wait_for(lambda: time.time() - before.st_mtime > SETTLE_SECONDS, 30,
             what="the aborted .part to be older than the settle period")

    after = os.lstat(dirs.inbox / part)
    assert stat.S_ISREG(after.st_mode)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino, before.st_size, before.st_mtime_ns)
    assert (dirs.inbox / part).read_bytes() == half
    assert listing(dirs.inbox) == [part]
    assert ledger_names(db_url) == [name]
    assert persons_count(db_url, "y") == 0
    mentions = [e for e in daemon.snapshot() if part in json.dumps(e)]
    assert mentions == []
    assert listing(dirs.processing) == []
    assert daemon.errors() == []


# -- 4. the partner reads the outcome over SFTP --------------------------------------------


def test_partner_reads_result_over_sftp(
        db_url: str, dirs: CompanyDirs, sftp_server: SFTPServerThread,
        daemon: Daemon) -> None:
    name = "r.persons"
    data = write_persons(["external_person_id", "mdn"],
                         [["r-1", ""], ["r-2", ""], ["r-3", "123"], ["r-4", ""]]).encode()
    with sftp_session(sftp_server) as (_, sftp):
        with sftp.open(f"inbox/{name}.part", "wb") as f:
            f.write(data)
        sftp.rename(f"inbox/{name}.part", f"inbox/{name}")

    wait_done(daemon, dirs, name)

    with sftp_session(sftp_server) as (_, sftp):
        names = set(sftp.listdir("done"))
        assert {name, f"{name}.result.json", f"{name}.errors.csv"} <= names, names
        assert sftp.listdir("inbox") == []
        result = json.loads(_download(sftp, f"done/{name}.result.json"))
        errors_csv = _download(sftp, f"done/{name}.errors.csv").decode()
        assert _download(sftp, f"done/{name}") == data

    assert result["status"] == "done"
    assert result["file"] == name
    assert (result["rows"], result["accepted"], result["rejected"]) == (4, 3, 1)
    assert result["rejected_by_class"] == {errors.INVALID_MDN_FORMAT: 1}
    rows = list(csv.reader(io.StringIO(errors_csv)))
    assert rows[0][:3] == ["record", "error_class", "error_message"]
    assert [(r[0], r[1]) for r in rows[1:]] == [("3", errors.INVALID_MDN_FORMAT)]
    assert ledger_names(db_url) == [name]
    assert daemon.errors() == []


def _download(sftp: paramiko.SFTPClient, path: str) -> bytes:
    buf = io.BytesIO()
    sftp.getfo(path, buf)
    return buf.getvalue()


# -- 5. uploads written in place (issue 16, section 6) --------------------------------------
# sftp `put`, lftp put, rclone and `curl -T` write the final name in place. Two dangers:
# a re-upload begun while the old version waits in the queue, and a killed upload that
# settles half-written. Failpoint gates (ingestd/failpoints.py) hold one worker at a named
# point while the test acts, so each race happens the same way every time.


def start_daemon_with(db_url: str, landing: Path, tmp_path: Path, **extra: str) -> Daemon:
    env = base_env(db_url, landing, tmp_path / "state",
                   INGESTD_SETTLE_SECONDS=str(SETTLE_SECONDS), INGESTD_RESCAN_SECONDS="0.5",
                   **extra)
    return Daemon(env).start()


def ledger_row(db_url: str, name: str) -> dict[str, Any]:
    rows = [r for r in ledger(db_url, COMPANY) if r["name"] == name]
    assert len(rows) == 1, rows
    return rows[0]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wait_gate(gate: Path, daemon: Daemon) -> None:
    wait_for(lambda: gate.with_name(gate.name + ".reached").exists(), PROCESS_TIMEOUT,
             what=f"a worker at the failpoint gate {gate.name}", context=daemon.tail)


@pytest.mark.parametrize("rewrite", ["truncated_and_half_written", "opened_for_append"])
def test_a_reupload_in_place_while_queued_is_not_claimed_mid_write(
        db_url: str, landing: Path, tmp_path: Path, dirs: CompanyDirs,
        sftp_server: SFTPServerThread, rewrite: str) -> None:
    """q.persons is judged ready and queued behind a long file; the partner then begins a
    new upload under the same name (``put`` truncates and writes in place, or a client
    opens it to append). When the queue reaches it, it is not claimed while the upload is
    under way: every row of the final version is applied, and the ledger's sha256 is
    that of the file in done/."""
    gate = tmp_path / "gate"
    daemon = start_daemon_with(db_url, landing, tmp_path,
                               INGESTD_FAILPOINT=f"hang_in_apply:gate:{gate}")
    try:
        (dirs.inbox / "long.persons").write_bytes(persons_text("long", 50))
        wait_gate(gate, daemon)  # long.persons is in hand, its worker held at the gate

        name = "q.persons"
        first = persons_text("q1", 20)
        final = (persons_text("q2", 3000) if rewrite == "truncated_and_half_written"
                 else first + persons_text("q3", 3000).split(b"\n", 1)[1])
        with sftp_session(sftp_server) as (_, sftp):
            with sftp.open(f"inbox/{name}", "wb") as f:
                f.write(first)
            daemon.wait_event("file.ready", file=name, timeout=PROCESS_TIMEOUT)
            # queued behind long.persons; now the new upload begins, in place
            if rewrite == "truncated_and_half_written":
                f = sftp.open(f"inbox/{name}", "wb")
                written = len(final) // 2 + 3  # mid-line, as an SFTP block falls
                f.write(final[:written])
                f.flush()
            else:
                f = sftp.open(f"inbox/{name}", "ab")
                written = len(first)
            gate.touch()  # long.persons goes on; the queue reaches q.persons
            first_look = wait_for(
                lambda: daemon.find("file.not_settled", file=name)
                or daemon.find("file.claimed", file=name), PROCESS_TIMEOUT,
                what=f"the worker to reach {name}", context=daemon.tail)
            if first_look[0]["event"] == "file.claimed":
                # taken mid-upload: let that apply finish, as it would in production
                wait_done(daemon, dirs, name)
            f.write(final[written:])
            f.close()
            closed = datetime.now().astimezone()

        wait_done(daemon, dirs, name)
        claims = daemon.find("file.claimed", file=name)
        assert first_look[0]["event"] == "file.not_settled", (
            f"{name} was claimed while its new upload was under way\n{daemon.tail()}")
        assert len(claims) == 1, claims
        assert event_time(claims[0]) > closed
        row = ledger_row(db_url, name)
        expected = final.count(b"\n") - 1  # the header
        assert (row["status"], row["rows"], row["accepted"]) == ("done", expected, expected)
        assert (dirs.done / name).read_bytes() == final
        assert row["sha256"] == sha256_file(dirs.done / name)
        assert not [n for n in listing(dirs.done) if "~" in n]  # no second copy
        assert daemon.errors() == []
    finally:
        daemon.kill()


def test_a_write_after_the_claim_rolls_back_and_the_file_settles_again(
        db_url: str, landing: Path, tmp_path: Path, dirs: CompanyDirs) -> None:
    """A writer's open descriptor follows the file into .processing/: bytes written there
    after the claim, even at the last moment before the commit, roll the apply back; the
    file goes back to the inbox, settles, and is applied whole, once."""
    gate = tmp_path / "gate"
    daemon = start_daemon_with(db_url, landing, tmp_path,
                               INGESTD_FAILPOINT=f"before_commit:gate:{gate}")
    try:
        name = "w.persons"
        first = persons_text("w", 200)
        more = persons_text("w2", 50).split(b"\n", 1)[1]
        (dirs.inbox / name).write_bytes(first)
        wait_gate(gate, daemon)  # rows and ledger row written, not committed
        [claimed] = [p for p in dirs.processing.glob(f"*/{name}")]
        with open(claimed, "ab") as fh:  # as the uploader's descriptor would
            fh.write(more)
        gate.touch()
        daemon.wait_event("file.changed", file=name, timeout=PROCESS_TIMEOUT)
        wait_done(daemon, dirs, name)

        row = ledger_row(db_url, name)
        assert (row["rows"], row["accepted"]) == (250, 250)
        assert (dirs.done / name).read_bytes() == first + more
        assert row["sha256"] == sha256_file(dirs.done / name)
        assert persons_count(db_url, "w") + persons_count(db_url, "w2") == 250
        assert len(daemon.find("file.claimed", file=name)) == 2
        assert daemon.errors() == []
    finally:
        daemon.kill()


def kill_mid_upload(server: SFTPServerThread, name: str, data: bytes) -> None:
    """An in-place upload whose client dies: the server closes the half-written file."""
    with sftp_session(server) as (transport, sftp):
        f = sftp.open(f"inbox/{name}", "wb")
        f.write(data)
        f.flush()
        transport.close()
    wait_for(lambda: server.sessions() == 0, 30, what="the server to drop the session")


def status_json(db_url: str, landing: Path, tmp_path: Path) -> dict[str, Any]:
    r = run_cli(["status", "--json"], base_env(db_url, landing, tmp_path / "state"))
    assert r.returncode == 0, r.stderr
    report: dict[str, Any] = json.loads(r.stdout)
    return report


def test_a_killed_in_place_upload_is_held_and_a_newer_upload_replaces_it(
        db_url: str, landing: Path, tmp_path: Path, dirs: CompanyDirs,
        sftp_server: SFTPServerThread) -> None:
    """Cut at 40%, mid-line: held as likely partial (file.maybe_partial, in `status`),
    not applied; the client's retry within the grace period replaces it, and only the
    whole upload is applied, once, without a warning."""
    daemon = start_daemon_with(db_url, landing, tmp_path,
                               INGESTD_PARTIAL_GRACE_SECONDS="600")
    try:
        name = "k.persons"
        data = persons_text("k", 3000)
        cut = int(len(data) * 0.4)
        assert data[cut - 1:cut] != b"\n"
        kill_mid_upload(sftp_server, name, data[:cut])

        [held] = daemon.wait_event("file.maybe_partial", file=name, timeout=PROCESS_TIMEOUT)
        assert (held["company"], held["size"]) == (COMPANY, cut)
        report = status_json(db_url, landing, tmp_path)
        [acme] = [c for c in report["companies"] if c["company"] == COMPANY]
        assert [(f["file"], f["size"]) for f in acme["maybe_partial"]] == [(name, cut)]
        table = run_cli(["status"], base_env(db_url, landing, tmp_path / "state"))
        assert "acme: held as likely partial uploads" in table.stdout, table.stdout
        assert f"  {name}  " in table.stdout, table.stdout
        assert not daemon.find("file.claimed", file=name)

        with sftp_session(sftp_server) as (_, sftp), sftp.open(f"inbox/{name}", "wb") as f:
            f.write(data)  # the retry, in place again
        closed = datetime.now().astimezone()

        done = wait_done(daemon, dirs, name)
        [claim] = daemon.find("file.claimed", file=name)
        assert event_time(claim) > closed
        assert (done["rows"], done["accepted"]) == (3000, 3000)
        assert result_warnings(dirs, name) == []
        assert ledger_names(db_url) == [name]
        assert (dirs.done / name).read_bytes() == data
        assert persons_count(db_url, "k") == 3000
        wait_for(lambda: not [c for c in status_json(db_url, landing, tmp_path)["companies"]
                              if c["maybe_partial"]], 30, what="status to forget the hold")
        assert daemon.errors() == []
    finally:
        daemon.kill()


def result_warnings(dirs: CompanyDirs, name: str) -> list[str]:
    warnings: list[str] = json.loads((dirs.done / f"{name}.result.json").read_text())[
        "warnings"]
    return warnings


def test_a_held_partial_upload_is_applied_with_a_warning_after_the_grace_period(
        db_url: str, landing: Path, tmp_path: Path, dirs: CompanyDirs,
        sftp_server: SFTPServerThread) -> None:
    grace = 3.0
    daemon = start_daemon_with(db_url, landing, tmp_path,
                               INGESTD_PARTIAL_GRACE_SECONDS=str(grace))
    try:
        name = "g.persons"
        data = persons_text("g", 1000)
        cut = int(len(data) * 0.4)
        kill_mid_upload(sftp_server, name, data[:cut])

        [held] = daemon.wait_event("file.maybe_partial", file=name, timeout=PROCESS_TIMEOUT)
        done = wait_done(daemon, dirs, name)
        [claim] = daemon.find("file.claimed", file=name)
        assert (event_time(claim) - event_time(held)).total_seconds() >= grace
        [warning] = result_warnings(dirs, name)
        assert "written in place" in warning and "no line break" in warning
        rows = data[:cut].count(b"\n")  # every whole line but the header, and the cut one
        assert (done["rows"], done["accepted"]) == (rows, rows)
        row = ledger_row(db_url, name)
        assert row["sha256"] == sha256_file(dirs.done / name)
        assert (dirs.done / name).read_bytes() == data[:cut]
        assert daemon.errors() == []
    finally:
        daemon.kill()


def test_an_upload_renamed_into_place_is_never_held(
        db_url: str, landing: Path, tmp_path: Path, dirs: CompanyDirs,
        sftp_server: SFTPServerThread) -> None:
    """Put under a temporary name, then renamed: complete by construction, even without a
    line break at the end; applied at once, no warning."""
    daemon = start_daemon_with(db_url, landing, tmp_path,
                               INGESTD_PARTIAL_GRACE_SECONDS="600")
    try:
        name = "n.persons"
        data = persons_text("n", 100).rstrip(b"\n")
        with sftp_session(sftp_server) as (_, sftp):
            with sftp.open(f"inbox/{name}.filepart", "wb") as f:
                f.write(data)
            sftp.rename(f"inbox/{name}.filepart", f"inbox/{name}")
        done = wait_done(daemon, dirs, name)
        assert (done["rows"], done["accepted"]) == (100, 100)
        assert daemon.find("file.maybe_partial") == []
        assert result_warnings(dirs, name) == []
        assert daemon.errors() == []
    finally:
        daemon.kill()
