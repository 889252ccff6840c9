"""Fixtures of the Person Import processor tests: ``env`` (a landing root and a database
with company acme and its custom fields; it stands in for the suite's daemon ``env``
here) and ``server`` (a strict local carrier lookup service)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from carrier_server import CarrierServer, serving
from persons_helpers import FIELDS, Conn, Env

from ingestd.db.companies import Company
from ingestd.db.database import Database


@pytest.fixture
def env(db_url: str, conn: Conn, company: Company, landing: Path, tmp_path: Path,
        pipeline_db: Database) -> Env:
    return Env.acme(FIELDS, db_url, conn, landing, tmp_path, pipeline_db)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[CarrierServer]:
    with serving(monkeypatch, strict=True) as srv:
        yield srv
    assert srv.bad_requests == []
