"""Opening the database: embedded or given by URL, a connection pool, migrations at start."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from ingestd.db import identity, leases, migrations
from ingestd.db.embedded import EmbeddedPostgres
from ingestd.db.liveness import Sessions, connection_params
from ingestd.errors import DatabaseRefused, DatabaseUnavailable
from ingestd.settings import Settings

log = structlog.get_logger("ingestd.db")


# What waiting can fix. SQLSTATEs where the server sent one: connection exceptions
# (08), insufficient resources (53: too many connections), operator intervention (57P:
# shutting down, starting up, in recovery). A failed connection attempt carries no
# SQLSTATE in psycopg (libpq reports it as text only), so its message decides: these
# are libpq's and the server's words for a server that is not there *yet*. Everything
# else (3D000 unknown database, 28000/28P01 role and password, SSL set-up) is final.
_TRANSIENT_SQLSTATES = ("08", "53", "57P")
_TRANSIENT_MESSAGES = (
    "connection refused", "timeout expired", "timed out", "no such file or directory",
    "the database system is starting up", "the database system is shutting down",
    "the database system is in recovery mode", "not yet accepting connections",
    "the database system is not accepting connections",  # a standby, not yet promoted
    "too many clients", "too many connections", "remaining connection slots are reserved",
    "server closed the connection unexpectedly", "connection reset by peer",
    "no route to host", "network is unreachable", "temporary failure in name resolution",
    # An unknown host name: a DNS answer that can change (a failover points the name
    # elsewhere; a container's name appears when it starts), so it is waited for.
    "failed to resolve host", "could not translate host name",
    "terminating connection due to administrator command", "eof detected",
    "ssl connection has been closed unexpectedly",
)


def waiting_helps(exc: BaseException) -> bool:
    """True when ``exc`` (a failed connection or query) may go away by itself."""
    state = getattr(exc, "sqlstate", None)
    if state:
        return str(state).startswith(_TRANSIENT_SQLSTATES)
    text = str(exc).lower()
    return any(m in text for m in _TRANSIENT_MESSAGES)


def refusal(exc: BaseException, settings: Settings) -> DatabaseRefused:
    """A final connection error as one line naming the cause and the setting to fix."""
    reason = unavailable_reason(exc, settings.database_url)
    if "FATAL:" in reason:  # the server's own words, without libpq's socket preamble
        reason = reason.rsplit("FATAL:", 1)[1].strip()
    where = (f"INGESTD_DATABASE_URL ({describe(settings.database_url)})"
             if settings.database_url
             else f"the embedded database in state dir {settings.state_dir.absolute()}")
    return DatabaseRefused(f"database refused: {reason}; waiting will not fix this: "
                           f"check {where}")


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
    False and calls ``start()`` until the database is there. ``create``: an embedded
    server may be made where there is none (only ``run`` and ``db upgrade``);
    ``daemon``: this process is the daemon, the one owner of the embedded server.
    """

    def __init__(self, settings: Settings, *, pool_size: int | None = None,
                 start: bool = True, create: bool = False, daemon: bool = False) -> None:
        self.settings = settings
        self.embedded: EmbeddedPostgres | None = None
        if settings.database_url:
            self.url = settings.database_url
        else:
            self.embedded = EmbeddedPostgres(settings.state_dir, create=create)
            self.url = self.embedded.url
            if create and not self.embedded.exists():
                identity.refuse_new_database(settings.landing_root, settings.state_dir)
            if daemon:
                self.embedded.hold_for_daemon()
        self._server_started = False
        # Every connection opened here is named after this process and fails once the
        # server is silent for db_dead_after_seconds (ingestd/db/liveness.py).
        self.instance_id = uuid.uuid4().hex[:12]
        self.params = connection_params(settings.db_dead_after_seconds)
        # A connect outlives its connect_timeout only by what the name lookup takes.
        self.sessions = Sessions(self.instance_id,
                                 connecting_for=2.0 * self.params["connect_timeout"] + 10)
        size = pool_size or settings.pool_max_size
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            self.url, min_size=min(settings.pool_min_size, size), max_size=size,
            open=False, name="ingestd", timeout=settings.db_dead_after_seconds,
            kwargs=self._connect_kwargs, configure=self._configure,
            # A connection the server dropped (a restart) is found out here, not by the
            # file that would get it next.
            check=ConnectionPool.check_connection,
        )
        self._pool_opened = False
        self._pool_lock = threading.Lock()
        if start:
            self._start_server()

    def _connect_kwargs(self) -> dict[str, Any]:
        return {**self.params, "application_name": self.sessions.reserve()}

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        self.sessions.opened(conn)
        # Connected again: a session of ours the server kept from before must not hold
        # a company (or a row) against us.
        self.end_dead_sessions(conn)
        conn.commit()

    def end_dead_sessions(self, conn: psycopg.Connection[Any]) -> list[int]:
        """End this process's server sessions whose connections broke here (the server
        kept them: a partition) on ``conn``; their pids."""
        # The server's clock first, our live connections next: a connection made after
        # that look started after that time, and is spared.
        now = leases.server_time(conn)
        live = self.sessions.live()
        # A dead connection was given up after about db_dead_after_seconds of silence;
        # half of that spares any live one of ours that was used a moment ago.
        ended = leases.end_own_sessions(conn, self.sessions.prefix, live, started_before=now,
                                        quiet_for=self.settings.db_dead_after_seconds / 2)
        if ended:
            log.warning("db.own_sessions_ended", pids=ended, instance=self.instance_id,
                        reason="connections of ours that broke, kept by the server: their"
                               " transactions roll back and their locks go")
        return ended

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        """A dedicated connection outside the pool (migrations, heartbeat, CLI one-offs),
        named and watched like the pool's."""
        conn = psycopg.connect(self.url, **{**self._connect_kwargs(), **kwargs})
        self.sessions.opened(conn)
        return conn

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
        """The daemon's start: start the embedded server (if any), check the landing root
        belongs to this database, apply pending migrations, open the pool.

        Raises ``DatabaseUnavailable`` while the server cannot be reached,
        ``DatabaseRefused`` when it will never accept us as configured, and
        ``EmbeddedError`` when the embedded server cannot be started.
        """
        self._start_server()
        try:
            with self.connect() as conn:
                # Before any migration: a landing root's wrong database stays untouched.
                self._bind_landing_root(conn)
                applied = migrations.upgrade(conn)
        except psycopg.OperationalError as exc:
            if not waiting_helps(exc):
                raise refusal(exc, self.settings) from exc
            raise DatabaseUnavailable(unavailable_reason(exc, self.url)) from exc
        self._open_pool()
        return applied

    def _bind_landing_root(self, conn: psycopg.Connection[Any]) -> None:
        """The daemon's check that the landing root is this database's (binding it if it
        is nobody's yet); ``WrongDatabase`` if not."""
        try:
            identity.bind(conn, self.settings.landing_root, create=True)
        except identity.Unbindable as exc:
            log.warning("landing.unbound", reason=str(exc),
                        note="instances on another database would not be refused; create "
                             "the file empty, writable for the daemon")

    def upgrade(self) -> list[str]:
        with self.connect() as conn:
            return migrations.upgrade(conn)

    def close(self) -> None:
        self._pool.close()
        if self.embedded is not None:
            self.embedded.stop()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
