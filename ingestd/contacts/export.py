"""A company's contacts as CSV text that the import takes back (the API's counterpart
GET): an ``id`` column, then every column of docs/formats.md section 2, one line per
treatment, a contact's lines together (one section). Values are written as the import
reads them, so a line posted back compares equal on every immutable column."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from ingestd.contacts.reader import COLUMNS, Kind, Level
from ingestd.contacts.store import DB_COLUMN
from ingestd.sidecars import csv_text

HEADER = ["id", *(c.name for c in COLUMNS)]
_ROWS_PER_FETCH = 5000


def _cell(kind: Kind, column: sql.Composable) -> sql.Composable:
    if kind is Kind.TIMESTAMP:
        # Milliseconds as the API writes them; microseconds only when stored (so the
        # value reads back equal).
        return sql.SQL(
            "CASE WHEN extract(microseconds FROM {c})::bigint %% 1000 = 0"
            " THEN to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
            " ELSE to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') END"
        ).format(c=column)
    if kind is Kind.BOOLEAN:
        return sql.SQL("CASE WHEN {c} THEN 'true' WHEN NOT {c} THEN 'false' END").format(
            c=column)
    return column


def _query(schema: str) -> sql.Composed:
    cells: list[sql.Composable] = [sql.SQL("c.id::text")]
    for column in COLUMNS:
        table = "c" if column.level is Level.CONTACT else "t"
        cells.append(_cell(column.kind, sql.Identifier(table, DB_COLUMN[column.name])))
    return sql.SQL(
        "SELECT {cells} FROM {contacts} c JOIN {treatments} t ON t.contact_id = c.id"
        " WHERE %(since)s::timestamptz IS NULL OR c.modified_at > %(since)s"
        " ORDER BY c.modified_at, c.id, t.ordinal"
    ).format(cells=sql.SQL(", ").join(cells),
             contacts=sql.Identifier(schema, "contacts"),
             treatments=sql.Identifier(schema, "contact_treatments"))


def export(conn: psycopg.Connection[Any], schema: str,
           modified_since: datetime | None = None) -> Iterator[str]:
    """The CSV text in chunks, read with a server-side cursor (bounded memory).
    ``modified_since``: only contacts created or updated after it."""
    with conn.transaction(), conn.cursor(name="contacts_export") as cur:
        cur.itersize = _ROWS_PER_FETCH
        cur.execute(_query(schema), {"since": modified_since})
        rows = ([cell if cell is not None else "" for cell in row] for row in cur)
        yield from csv_text(HEADER, rows, guard=False)
