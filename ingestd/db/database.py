"""Opening the database: embedded or given by URL, a connection pool, migrations at start."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from ingestd.db import migrations
from ingestd.db.embedded import EmbeddedPostgres, ping
from ingestd.errors import DatabaseUnavailable
from ingestd.settings import Settings

# A start-up attempt against an unroutable host must not outlast a SIGTERM by minutes
# (libpq's own default is no timeout; psycopg's is 130 s).
CONNECT_TIMEOUT = 10


def describe(url: str) -> str:
    """``url`` as conninfo without its password, for logs."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        return "(unparsable database URL)"
    params.pop("password", None)
    return make_conninfo("", **params)


def unavailable_reason(exc: BaseException, url: str | None) -> str:
    """A connection error as one line, with any password in it masked."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = text or type(exc).__name__
    if url:
        try:
            password = conninfo_to_dict(url).get("password")
        except psycopg.Error:
            password = None
        if password:
            text = text.replace(str(password), "***")
    return text


class Database:
    """Owns the embedded server (if any) and the pool. Use as a context manager.

    ``start=True`` starts the embedded server at once (the CLI); the daemon passes
    False and calls ``start()`` until the database is there.
    """

    def __init__(self, settings: Settings, *, pool_size: int | None = None,
                 start: bool = True) -> None:
        self.settings = settings
        self.embedded: EmbeddedPostgres | None = None
        if settings.database_url:
            self.url = settings.database_url
        else:
            self.embedded = EmbeddedPostgres(settings.state_dir)
            self.url = self.embedded.url
        self._server_started = False
        size = pool_size or settings.pool_max_size
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            self.url, min_size=min(settings.pool_min_size, size), max_size=size,
            open=False, name="ingestd", timeout=60,
        )
        self._pool_opened = False
        self._pool_lock = threading.Lock()
        if start:
            self._start_server()

    @property
    def target(self) -> str:
        """Where the database is, for logs (no password)."""
        return describe(self.url)

    @property
    def pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        # Opened on first use, after the migrations: a server that is down then fails
        # once, with one clear error, rather than through the pool's reconnect warnings.
        if not self._pool_opened:
            self._open_pool()
        return self._pool

    def _open_pool(self) -> None:
        with self._pool_lock:
            if not self._pool_opened:
                self._pool.open()
                self._pool_opened = True

    def _start_server(self) -> None:
        if self.embedded is not None and not self._server_started:
            self.embedded.start()
        self._server_started = True

    def start(self) -> list[str]:
        """Start the embedded server (if any), apply pending migrations, open the pool.

        Raises ``DatabaseUnavailable`` while the server cannot be reached, and
        ``EmbeddedError`` when the embedded server cannot be started.
        """
        self._start_server()
        try:
            with psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT) as conn:
                applied = migrations.upgrade(conn)
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(unavailable_reason(exc, self.url)) from exc
        self._open_pool()
        return applied

    def connect(self) -> psycopg.Connection[Any]:
        """A dedicated connection outside the pool (migrations, CLI one-offs)."""
        return psycopg.connect(self.url)

    def upgrade(self) -> list[str]:
        with self.connect() as conn:
            return migrations.upgrade(conn)

    def reachable(self) -> bool:
        return ping(self.url)

    def close(self) -> None:
        self._pool.close()
        if self.embedded is not None:
            self.embedded.stop()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
