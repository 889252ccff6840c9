"""Versioned SQL migrations: core ones for schema ``ingestd``, company ones per company schema.

Files are ``migrations/{core,company}/NNNN_name.sql``, applied in order, each in
its own transaction together with its version row. A session-level advisory lock
serialises concurrent upgrades (two daemons starting at once).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import psycopg
import structlog
from psycopg import sql

from ingestd.db import locks

log = structlog.get_logger(__name__)


def _scripts(kind: str) -> list[tuple[int, str, str]]:
    folder = resources.files("ingestd.db").joinpath("migrations", kind)
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def upgrade(conn: psycopg.Connection[Any]) -> list[str]:
    """Apply every pending core and company migration; return the names applied."""
    applied: list[str] = []
    with locks.session_lock(conn, locks.MIGRATIONS):
        with conn.transaction():
            conn.execute("CREATE SCHEMA IF NOT EXISTS ingestd")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS ingestd.schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
        done = {r[0] for r in conn.execute("SELECT version FROM ingestd.schema_migrations")}
        conn.commit()
        for version, name, text in _scripts("core"):
            if version in done:
                continue
            with conn.transaction():
                conn.execute(text.encode())
                conn.execute(
                    "INSERT INTO ingestd.schema_migrations (version, name) VALUES (%s, %s)",
                    (version, name),
                )
            applied.append(name)
            log.info("db.migrated", migration=name)
        companies = [r[0] for r in conn.execute("SELECT id FROM ingestd.companies ORDER BY id")]
        conn.commit()
        for company in companies:
            applied += upgrade_company(conn, company)
    return applied


def upgrade_company(conn: psycopg.Connection[Any], company: str) -> list[str]:
    """Apply pending company migrations to one company's schema."""
    row = conn.execute(
        "SELECT schema_name FROM ingestd.companies WHERE id = %s", (company,)
    ).fetchone()
    if row is None:
        raise LookupError(f"company {company!r} is not set up")
    schema = sql.Identifier(row[0])
    done = {
        r[0]
        for r in conn.execute(
            "SELECT version FROM ingestd.company_migrations WHERE company = %s", (company,)
        )
    }
    conn.commit()
    applied = []
    for version, name, text in _scripts("company"):
        if version in done:
            continue
        # Only {schema} is substituted, and only with a quoted identifier.
        statement = sql.SQL(text.replace("{", "{{").replace("}", "}}").replace(
            "{{schema}}", "{schema}")).format(schema=schema)
        with conn.transaction():
            conn.execute(statement)
            conn.execute(
                "INSERT INTO ingestd.company_migrations (company, version) VALUES (%s, %s)",
                (company, version),
            )
        applied.append(f"{company}:{name}")
        log.info("db.migrated", company=company, migration=name)
    return applied
