"""Companies: one PostgreSQL schema each, named after the validated company id."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ingestd.db import locks, migrations
from ingestd.errors import IngestdError

# Lowercase so the schema name needs no case games; no leading pg_ (reserved by PostgreSQL).
COMPANY_ID = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
RESERVED = {"ingestd", "public", "information_schema"}


@dataclass(frozen=True, slots=True)
class Company:
    id: str
    schema: str
    default_region: str = "US"


class CompanyError(IngestdError, ValueError):
    pass


def validate_company_id(company_id: str) -> str:
    if not COMPANY_ID.match(company_id) or company_id.startswith("pg_") \
            or company_id in RESERVED:
        raise CompanyError(
            f"invalid company id {company_id!r}: use 1-63 characters a-z, 0-9 and _, "
            "starting with a letter (not pg_, ingestd, public)"
        )
    return company_id


def add_company(conn: psycopg.Connection[Any], company_id: str, default_region: str = "US") -> bool:
    """Create the company and its schema; False if it already existed. Idempotent."""
    validate_company_id(company_id)
    # The migrations' lock: a company added while another process upgrades gets
    # every company migration exactly once.
    with locks.session_lock(conn, locks.MIGRATIONS):
        with conn.transaction():
            created = conn.execute(
                "INSERT INTO ingestd.companies (id, schema_name, default_region)"
                " VALUES (%s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING id",
                (company_id, company_id, default_region.upper()),
            ).fetchone() is not None
            conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(company_id))
            )
        migrations.upgrade_company(conn, company_id)
    return created


def get_company(conn: psycopg.Connection[Any], company_id: str) -> Company | None:
    return get_company_later(conn, company_id)()


def get_company_later(conn: psycopg.Connection[Any],
                      company_id: str) -> Callable[[], Company | None]:
    """Send the query; the function returned reads its answer (in pipeline mode, call
    it once the pipeline has synced, so that one round trip carries several queries)."""
    if not COMPANY_ID.match(company_id):
        return lambda: None
    cur = conn.execute(
        "SELECT id, schema_name, default_region FROM ingestd.companies WHERE id = %s",
        (company_id,),
    )

    def read() -> Company | None:
        row = cur.fetchone()
        return Company(row[0], row[1], row[2]) if row else None
    return read


def list_companies(conn: psycopg.Connection[Any]) -> list[Company]:
    rows = conn.execute(
        "SELECT id, schema_name, default_region FROM ingestd.companies ORDER BY id"
    ).fetchall()
    return [Company(*r) for r in rows]
