"""Helpers for the end-to-end tests: the real daemon as a subprocess, its JSON log, waits.

Nothing here sleeps and hopes: every wait is ``wait_for(predicate, timeout)``, which
polls until the predicate holds and fails with a description (and the daemon's log
tail) when the deadline passes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from ingestd.db import migrations
from ingestd.db.companies import add_company
from ingestd.landing import CompanyDirs
from ingestd.persons.custom_fields import FieldDefinition
from ingestd.persons.field_store import replace_fields

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TIMEOUT = 30.0

Event = dict[str, Any]


def wait_for(predicate: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT, *,
             what: str = "condition", interval: float = 0.05,
             context: Callable[[], str] | None = None) -> Any:
    """Poll ``predicate`` until it returns something truthy; return that value.

    Fails (AssertionError) once ``timeout`` seconds have passed, naming ``what`` and
    adding ``context()`` (e.g. the daemon's log tail) to the message.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f"\n{context()}" if context else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)


def base_env(db_url: str, landing: Path, state_dir: Path, **extra: str) -> dict[str, str]:
    """The environment for an ingestd subprocess: no stray INGESTD_* from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
    env.update({
        "INGESTD_DATABASE_URL": db_url,
        "INGESTD_LANDING_ROOT": str(landing),
        "INGESTD_STATE_DIR": str(state_dir),
        "INGESTD_SETTLE_SECONDS": "0.5",
        "INGESTD_RESCAN_SECONDS": "2",
        "INGESTD_LOG_FORMAT": "json",
        "INGESTD_WORKERS": "4",
        # Test files are often written without a final line break: no likely-partial
        # hold unless a test asks for one (tests/test_sftp_uploads.py does).
        "INGESTD_PARTIAL_GRACE_SECONDS": "0",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def run_cli(args: list[str], env: Mapping[str, str], timeout: float = 60.0,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m ingestd ARGS`` to completion."""
    return subprocess.run([sys.executable, "-m", "ingestd", *args], env=dict(env),
                          cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout,
                          check=False)


@dataclass
class Daemon:
    """``python -m ingestd run`` in a subprocess, its stdout read line by line in a thread."""

    env: dict[str, str]
    cwd: Path = ROOT
    proc: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    stderr_path: Path | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _reader: threading.Thread | None = None

    # -- process ------------------------------------------------------------------

    def start(self, wait_started: bool = True, timeout: float = DEFAULT_TIMEOUT) -> Daemon:
        self.stderr_path = Path(self.env["INGESTD_STATE_DIR"]) / f"stderr-{time.time_ns()}.log"
        self.stderr_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ingestd", "run"], env=self.env, cwd=self.cwd,
                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True,
                bufsize=1)
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name="daemon-stdout-reader")
        self._reader.start()
        if wait_started:
            self.wait_event("daemon.started", timeout=timeout)
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            try:
                parsed = json.loads(line)
            except ValueError:
                parsed = None
            with self._lock:
                self.lines.append(line)
                if isinstance(parsed, dict):
                    self.events.append(parsed)

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait for the exit; return the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"daemon did not exit within {timeout}s of signal {sig}\n"
                                 + self.tail()) from None
        self.join_reader()
        return code

    def wait_exit(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait for the daemon to exit on its own (a failpoint); return its exit code."""
        assert self.proc is not None
        wait_for(lambda: self.proc is not None and self.proc.poll() is not None, timeout,
                 what="the daemon to exit", context=self.tail)
        self.join_reader()
        code = self.proc.returncode
        assert code is not None
        return code

    def join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(10)

    def kill(self) -> None:
        """Clean-up: SIGKILL if still running (only our own child, by pid)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.join_reader()

    # -- log ----------------------------------------------------------------------

    def snapshot(self) -> list[Event]:
        with self._lock:
            return list(self.events)

    def find(self, event: str, **match: Any) -> list[Event]:
        return [e for e in self.snapshot() if e.get("event") == event
                and all(e.get(k) == v for k, v in match.items())]

    def wait_event(self, event: str, timeout: float = DEFAULT_TIMEOUT, count: int = 1,
                   **match: Any) -> list[Event]:
        """Wait until ``count`` events named ``event`` (with the given fields) were logged."""
        def check() -> list[Event] | None:
            found = self.find(event, **match)
            if len(found) >= count:
                return found
            if not self.alive():
                # one last look: the reader may still be draining the pipe
                self.join_reader()
                found = self.find(event, **match)
                if len(found) >= count:
                    return found
                raise AssertionError(f"daemon exited ({self.returncode}) before "
                                     f"{count}x {event} {match}\n{self.tail()}")
            return None
        result: list[Event] = wait_for(check, timeout, what=f"{count}x {event} {match}",
                                       context=self.tail)
        return result

    def errors(self) -> list[Event]:
        """Logged errors and exceptions (none expected in a healthy run)."""
        return [e for e in self.snapshot()
                if e.get("level") in ("error", "critical") or "exception" in e]

    def tail(self, n: int = 40) -> str:
        with self._lock:
            out = "\n".join(self.lines[-n:])
        if self.stderr_path and self.stderr_path.exists():
            err = self.stderr_path.read_text(errors="replace").strip()
            if err:
                out += "\n--- stderr ---\n" + err[-4000:]
        return "--- daemon log tail ---\n" + out


# ``start_daemon(wait_started=True, **env_overrides)``: the fixture in tests/conftest.py.
StartDaemon = Callable[..., Daemon]


# -- companies, files, database --------------------------------------------------------

NOTE_FIELD = [FieldDefinition(name="note", type="string")]


def company_before(conn: psycopg.Connection[Any], version: int, name: str = "old") -> None:
    """A company as made by a version of ingestd before company migration ``version``:
    the earlier migrations applied and recorded, none from ``version`` on (committed)."""
    conn.execute("INSERT INTO ingestd.companies (id, schema_name) VALUES (%s, %s)",
                 (name, name))
    conn.execute(f'CREATE SCHEMA "{name}"')
    for v, _, text in migrations._scripts("company"):
        if v < version:
            conn.execute(text.replace("{schema}", f'"{name}"'))  # type: ignore[arg-type]
            conn.execute("INSERT INTO ingestd.company_migrations (company, version)"
                         " VALUES (%s, %s)", (name, v))
    conn.commit()


def migrated_database(admin_url: str, dbname: str) -> str:
    """A new database on the server of ``admin_url`` (a test's own), migrated; its URL."""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{dbname}"')
    db_url = make_conninfo(admin_url, dbname=dbname)
    with psycopg.connect(db_url) as conn:
        migrations.upgrade(conn)
    return db_url


def setup_company(db_url: str, landing: Path, company: str,
                  fields: list[FieldDefinition] | None = None) -> CompanyDirs:
    """Add the company (schema and folders) and, optionally, its custom fields."""
    with psycopg.connect(db_url) as conn:
        add_company(conn, company)
        conn.commit()
        if fields:
            replace_fields(conn, company, fields)
            conn.commit()
    dirs = CompanyDirs(landing / company)
    dirs.inbox.mkdir(parents=True, exist_ok=True)
    dirs.ensure()
    return dirs


def drop(dirs: CompanyDirs, name: str, content: str | bytes,
         mtime: float | None = None) -> Path:
    """Write a file into the company's inbox (written, then closed; optional mtime)."""
    path = dirs.inbox / name
    data = content.encode() if isinstance(content, str) else content
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def query(db_url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def scalar(db_url: str, sql: str, params: tuple[Any, ...] = ()) -> Any:
    rows = query(db_url, sql, params)
    assert len(rows) == 1, rows
    return rows[0][0]


def ledger(db_url: str, company: str | None = None) -> list[dict[str, Any]]:
    """Rows of ingestd.files (the ledger), oldest first."""
    with psycopg.connect(db_url) as conn, conn.cursor(
            row_factory=psycopg.rows.dict_row) as cur:
        if company is None:
            cur.execute("SELECT * FROM ingestd.files ORDER BY id")
        else:
            cur.execute("SELECT * FROM ingestd.files WHERE company = %s ORDER BY id",
                        (company,))
        return cur.fetchall()


def listing(directory: Path) -> list[str]:
    """Names in a folder (sorted); [] if it does not exist."""
    return sorted(os.listdir(directory)) if directory.is_dir() else []


def entries(directory: Path) -> Iterator[Path]:
    """Everything under a folder, recursively (for "nothing left behind" checks)."""
    if directory.is_dir():
        for dirpath, dirnames, filenames in os.walk(directory):
            for n in [*dirnames, *filenames]:
                yield Path(dirpath) / n


def result_json(directory: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((directory / f"{name}.result.json").read_text())
    return data


def is_finished(dirs: CompanyDirs, name: str, where: str = "done") -> bool:
    """The file and its result.json are in done/ (or failed/)."""
    d = dirs.done if where == "done" else dirs.failed
    return os.path.lexists(d / name) and (d / f"{name}.result.json").exists()
