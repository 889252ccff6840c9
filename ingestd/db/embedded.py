"""A private PostgreSQL under the state directory, for running without INGESTD_DATABASE_URL.

The binaries come from the ``pgserver`` wheel (PostgreSQL 16), or from PATH.
We manage the server ourselves rather than through pgserver's Python API
because, started as root, that API loosens the permissions of every parent of
its data directory and stops cleaning up after a ``kill -9`` of its parent.

PostgreSQL refuses to run as root. Instead of creating a system user and opening
directories to it, a root caller runs the server inside a new user namespace
(``unshare --user --map-user=1000``): inside, the server is uid 1000; outside,
its files are still root's, so nothing outside the state directory changes.

The server listens on a unix socket inside the data directory only (no TCP), and
is reused by the next start if still running. Only its owner stops it: the process
that started it, or, after a ``kill -9`` of that process, the next one to start. A
daemon always takes the server over, so that a one-off command that happened to
start it never stops it under the daemon.

One daemon at a time: ``ingestd run`` holds an exclusive lock on the state directory's
server for its whole life, and a second one on the same state directory refuses to
start. Sharing it instead would tie the second daemon's database to the first one's
life (its stop stops the server), for no gain: several instances are meant to share a
real PostgreSQL by URL.

Only ``ingestd run`` and ``ingestd db upgrade`` create the server (``create=True``);
any other command pointed at a state directory without one says so instead of
quietly making a new, empty database there.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import psycopg
import structlog

from ingestd.errors import EmbeddedError, EmbeddedInUse, NoEmbeddedDatabase

log = structlog.get_logger(__name__)

PORT = 5432  # only names the socket file: .s.PGSQL.5432 in the socket directory


def ping(url: str, timeout: int = 3) -> bool:
    """True when a server answers at ``url``."""
    try:
        with psycopg.connect(url, connect_timeout=timeout) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _last_words(text: str) -> str:
    """The line that says why, from a PostgreSQL log or tool output: the last FATAL or
    ERROR line if any, else the last non-empty line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    telling = [line for line in lines if "FATAL" in line or "ERROR" in line]
    return (telling or lines or ["no output"])[-1]


def _bindir() -> Path:
    # find_spec, not import: pgserver's __init__ does work (and warns) we do not need.
    spec = importlib.util.find_spec("pgserver")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "pginstall" / "bin"
        if (candidate / "pg_ctl").exists():
            return candidate
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise EmbeddedError(
        "no PostgreSQL binaries: install the 'pgserver' package or set INGESTD_DATABASE_URL"
    )


def _wrap(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    unshare = shutil.which("unshare")
    if unshare is None:
        raise EmbeddedError(
            "running as root needs util-linux 'unshare' for the embedded PostgreSQL; "
            "or set INGESTD_DATABASE_URL"
        )
    return [unshare, "--user", "--map-user=1000", "--map-group=1000", *cmd]


class EmbeddedPostgres:
    def __init__(self, state_dir: Path, *, create: bool = True,
                 server_settings: Mapping[str, str] | None = None) -> None:
        """``server_settings`` (name to value) are added to the server's command line
        when this starts it: the test suite's server trades durability for speed so."""
        self.state_dir = state_dir.absolute()
        self.create = create
        self.server_settings = dict(server_settings or {})
        self.root = (state_dir / "postgres").resolve()
        self.data = self.root / "data"
        self.socket_dir = self.root / "run"
        if len(str(self.socket_dir / f".s.PGSQL.{PORT}.lock")) > 100:
            # Unix socket paths are limited to ~107 bytes: a deep state dir gets a short
            # private socket directory instead, named after it so restarts find it again.
            digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
            self.socket_dir = Path(tempfile.gettempdir()) / f"ingestd-pg-{os.geteuid()}-{digest}"
        self.log_file = self.root / "server.log"
        self.initdb_log = self.root / "initdb.log"
        self.bindir = _bindir()
        self.started_here = False
        self._daemon_lock: IO[str] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.socket_dir}&port={PORT}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = _wrap([str(self.bindir / args[0]), *args[1:]])
        return subprocess.run(cmd, capture_output=True, text=True, check=check)

    def _responding(self) -> bool:
        return ping(self.url, timeout=2)

    def start(self, timeout: float = 60.0) -> str:
        """Start (or reuse) the server and return its URL; ``EmbeddedError`` if it cannot."""
        try:
            return self._start(timeout)
        except OSError as exc:  # e.g. the state directory is not writable
            raise EmbeddedError(f"embedded PostgreSQL cannot start: {exc}") from exc

    def exists(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def hold_for_daemon(self) -> None:
        """Take this server for one daemon for the life of the process (an flock, freed
        by the kernel however the process ends); ``EmbeddedInUse`` if another has it."""
        if self._daemon_lock is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = open(self.root / "daemon.lock", "a+")  # noqa: SIM115 - held until stop()
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            lock.close()
            raise EmbeddedInUse(
                f"the embedded database in state dir {self.state_dir} is in use by another"
                f" ingestd run (pid {holder}); give each daemon its own INGESTD_STATE_DIR,"
                " or share one PostgreSQL with INGESTD_DATABASE_URL") from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._daemon_lock = lock

    def _start(self, timeout: float) -> str:
        if not self.create and not self.exists():
            raise NoEmbeddedDatabase(
                f"no database: state dir {self.state_dir} holds no embedded PostgreSQL; "
                "`ingestd run` or `ingestd db upgrade` creates it (or set "
                "INGESTD_STATE_DIR or INGESTD_DATABASE_URL)")
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.socket_dir.mkdir(exist_ok=True, mode=0o700)
        if self.socket_dir.stat().st_uid != os.geteuid():
            raise EmbeddedError(f"{self.socket_dir} belongs to another user; refusing to use it")
        if not (self.data / "PG_VERSION").exists():
            if self.data.exists():
                shutil.rmtree(self.data)  # a half-made initdb from an earlier crash
            log.info("db.embedded.initdb", data=str(self.data))
            done = self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                             "-E", "UTF8", "--no-sync", check=False)
            self.initdb_log.write_text(done.stdout + done.stderr)
            if done.returncode != 0:
                raise EmbeddedError(
                    f"embedded PostgreSQL: initdb failed (exit {done.returncode}): "
                    f"{_last_words(done.stderr or done.stdout)}", self.initdb_log)
        if self._responding():
            if self._daemon_lock is not None:
                # A daemon owns its server, even one a one-off command started.
                self._own()
                log.info("db.embedded.adopted", data=str(self.data))
            elif self._owner_alive():
                log.info("db.embedded.reused", data=str(self.data))
            else:
                # Its starter died (kill -9): adopt it, so someone stops it eventually.
                self._own()
                log.info("db.embedded.adopted", data=str(self.data))
            return self.url
        opts = (
            f"-c listen_addresses='' -k {self.socket_dir} -p {PORT}"
            " -c max_connections=200 -c fsync=on"
        ) + "".join(f" -c {name}={value}" for name, value in self.server_settings.items())
        # pg_ctl copes with a stale postmaster.pid left by a kill -9 of the whole tree.
        result = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_file),
                           "-o", opts, "-w", "-t", str(int(timeout)), "start", check=False)
        if result.returncode != 0 and not self._responding():
            said = result.stderr
            if self.log_file.exists():
                said = self.log_file.read_text(errors="replace")[-4000:] or said
            raise EmbeddedError(f"embedded PostgreSQL did not start: {_last_words(said)}",
                                self.log_file)
        deadline = time.monotonic() + timeout
        while not self._responding():
            if time.monotonic() > deadline:
                raise EmbeddedError("embedded PostgreSQL started but does not answer",
                                    self.log_file)
            time.sleep(0.1)
        self._own()
        log.info("db.embedded.started", data=str(self.data))
        return self.url

    @property
    def _owner_file(self) -> Path:
        return self.root / "owner.pid"

    def _own(self) -> None:
        self._owner_file.write_text(str(os.getpid()))
        self.started_here = True

    def _owned_by_me(self) -> bool:
        try:
            return int(self._owner_file.read_text()) == os.getpid()
        except (OSError, ValueError):
            return False

    def _owner_alive(self) -> bool:
        try:
            pid = int(self._owner_file.read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return False
        return pid != os.getpid()

    def stop(self) -> None:
        try:
            self._stop_server()
        finally:
            if self._daemon_lock is not None:
                self._daemon_lock.close()  # frees the flock, once the server is down
                self._daemon_lock = None

    def _stop_server(self) -> None:
        if not self.started_here:
            return
        self.started_here = False
        if not self._owned_by_me() and self._owner_alive():
            return  # a daemon took it over: it stops it
        self._owner_file.unlink(missing_ok=True)
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)
        log.info("db.embedded.stopped", data=str(self.data))
