"""Opening the database: embedded or given by URL, a connection pool, migrations at start."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from ingestd.db import migrations
from ingestd.db.embedded import EmbeddedPostgres, ping
from ingestd.settings import Settings


class Database:
    """Owns the embedded server (if any) and the pool. Use as a context manager."""

    def __init__(self, settings: Settings, *, pool_size: int | None = None) -> None:
        self.settings = settings
        self.embedded: EmbeddedPostgres | None = None
        if settings.database_url:
            self.url = settings.database_url
        else:
            self.embedded = EmbeddedPostgres(settings.state_dir)
            self.url = self.embedded.start()
        size = pool_size or settings.pool_max_size
        self.pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            self.url, min_size=min(settings.pool_min_size, size), max_size=size,
            open=True, name="ingestd", timeout=60,
        )

    def connect(self) -> psycopg.Connection[Any]:
        """A dedicated connection outside the pool (migrations, CLI one-offs)."""
        return psycopg.connect(self.url)

    def upgrade(self) -> list[str]:
        with self.connect() as conn:
            return migrations.upgrade(conn)

    def reachable(self) -> bool:
        return ping(self.url)

    def close(self) -> None:
        self.pool.close()
        if self.embedded is not None:
            self.embedded.stop()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
