from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from ingestd.db import migrations
from ingestd.db.companies import CompanyError, add_company, get_company, validate_company_id


def test_upgrade_is_idempotent_and_safe_concurrently(db_url: str) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(db_url) as c:
                migrations.upgrade(c)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with psycopg.connect(db_url) as c:
        versions = [r[0] for r in c.execute("SELECT version FROM ingestd.schema_migrations")]
    assert versions == sorted(set(versions))


def test_company_gets_its_own_schema(conn: psycopg.Connection[Any]) -> None:
    assert add_company(conn, "acme") is True
    assert add_company(conn, "acme") is False
    conn.execute("INSERT INTO acme.persons (mdn) VALUES ('+12295551234')")
    company = get_company(conn, "acme")
    assert company is not None and company.schema == "acme"


@pytest.mark.parametrize("bad", ["Acme", "1acme", "pg_catalog", "ingestd", "a-b", 'x"; drop', ""])
def test_company_ids_are_validated(bad: str) -> None:
    with pytest.raises(CompanyError):
        validate_company_id(bad)
