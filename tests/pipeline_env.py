"""What the tests that run ``Pipeline.process`` in this process share (tests/persons/,
test_sidecar_safety.py): a landing root, the test database with company acme and its
custom fields, a pool, and pipelines on them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import psycopg

from ingestd.db.database import Database
from ingestd.lifecycle import Pipeline
from ingestd.persons.carrier import CarrierLookup, make_carrier
from ingestd.persons.custom_fields import FieldDefinition
from ingestd.persons.field_store import replace_fields
from ingestd.settings import Settings, load_settings

Conn = psycopg.Connection[Any]


@dataclass
class PipelineEnv:
    db_url: str
    landing: Path
    state: Path
    conn: Conn
    db: Database

    @classmethod
    def acme(cls, fields: list[FieldDefinition], db_url: str, conn: Conn, landing: Path,
             tmp_path: Path, db: Database) -> Self:
        """Company acme (already added) with ``fields`` as its custom fields."""
        replace_fields(conn, "acme", fields)
        conn.commit()
        return cls(db_url, landing, tmp_path / "state", conn, db)

    def settings(self, **overrides: Any) -> Settings:
        return load_settings(database_url=self.db_url, landing_root=self.landing,
                             state_dir=self.state, **overrides)

    def pipeline(self, carrier: CarrierLookup | None = None, **overrides: Any) -> Pipeline:
        settings = self.settings(**overrides)
        return Pipeline(settings, self.db, carrier or make_carrier(settings))
