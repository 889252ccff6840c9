"""Custom field definitions per company (ingestd.custom_fields)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from ingestd.persons.custom_fields import FieldDefinition


def replace_fields(conn: psycopg.Connection[Any], company: str,
                   definitions: Sequence[FieldDefinition]) -> None:
    """Replace the company's definitions with these; stored person data is kept."""
    with conn.transaction():
        conn.execute("DELETE FROM ingestd.custom_fields WHERE company = %s", (company,))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO ingestd.custom_fields (company, position, name, type, charset,"
                " options) VALUES (%s, %s, %s, %s, %s, %s)",
                [(company, i, d.name, d.type, d.charset, list(d.options))
                 for i, d in enumerate(definitions)],
            )


def list_fields(conn: psycopg.Connection[Any], company: str) -> list[FieldDefinition]:
    rows = conn.execute(
        "SELECT name, type, charset, options FROM ingestd.custom_fields WHERE company = %s"
        " ORDER BY position", (company,),
    ).fetchall()
    return [FieldDefinition(name=n, type=t, options=list(o),
                            **({"charset": c} if t == "string" else {}))
            for n, t, c, o in rows]
