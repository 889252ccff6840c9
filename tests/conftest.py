"""Shared fixtures: a real PostgreSQL for the whole run, a fresh database per test.

By default the suite starts its own server (the same embedded PostgreSQL the daemon
uses). Set INGESTD_TEST_DATABASE_URL to use a given server instead; each test then
gets a database cloned from a migrated template (as procrastinate does), so tests
start clean and fast.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from ingestd.apply_context import Company
from ingestd.db import migrations
from ingestd.db.companies import add_company
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
def db_url(pg_server_url: str, template_url: str) -> Iterator[str]:
    """A fresh, migrated database for this test."""
    name = f"ingestd_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
    yield make_conninfo(pg_server_url, dbname=name)
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
