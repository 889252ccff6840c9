"""The subject contacts sidecars. Shaped like the API's answers, with no header rows:
``NAME.accepted.csv`` and ``NAME.rejected.csv`` when applied, ``NAME.global.csv`` when
the whole file failed. For the partner, ``NAME.errors.csv`` (a header row; every row of
every rejected section, with the column at fault and what was wrong). Each is written
only when it has something to say; ``result.json`` always is (by the lifecycle). The
API's three are also the parts of the HTTP answer (``parts``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg

from ingestd.db import ledger
from ingestd.db.ledger import RejectedRow
from ingestd.landing import ACCEPTED_CSV, ERRORS_CSV, GLOBAL_CSV, REJECTED_CSV
from ingestd.results import FileResult
from ingestd.sidecars import Finished, csv_file, csv_text

ERRORS_HEADER = ["record", "error_message", "error_field", "error_detail"]


def write(done: Finished) -> None:
    d, name, guard, bom = done.directory, done.name, done.guard, done.bom
    if done.result.applied:
        # A query only where rows were stored: a clean small file needs no round trip.
        if done.result.accepted:
            accepted(d, name, ledger.accepted_rows(done.conn, done.file_id), guard=guard,
                     bom=bom)
        if done.result.rejected:
            bad = ledger.rejected_rows(done.conn, done.file_id, leaders_only=True)
            rejected(d, name, ((r.record, r.fields, r.message) for r in bad), guard=guard,
                     bom=bom)
            errors_csv(d, name, done.meta.get("columns", []),
                       ledger.rejected_rows(done.conn, done.file_id), guard=guard, bom=bom)
    error = done.result.error
    if error is not None:
        global_csv(d, name, [("*", error.message)], guard=guard, bom=bom)


def parts(conn: psycopg.Connection[Any], file_id: int, result: FileResult,
          meta: dict[str, Any], guard: bool) -> tuple[Iterator[str], Iterator[str], Iterator[str]]:
    """The text of what ``write`` writes as NAME.accepted.csv, NAME.rejected.csv and
    NAME.global.csv, in chunks read lazily from the committed row results (each when
    iterated, in that order, inside a transaction of ``conn``'s). Empty where the drop
    gets no such file."""
    bom = bool(meta.get("bom"))
    applied = result.applied
    ok = ledger.accepted_rows(conn, file_id) if applied and result.accepted else None
    bad = (ledger.rejected_rows(conn, file_id, leaders_only=True)
           if applied and result.rejected else None)
    error = result.error
    return (
        csv_text(None, _accepted_lines(ok), guard, bom=bom) if ok is not None else iter(()),
        csv_text(None, _rejected_lines((r.record, r.fields, r.message) for r in bad), guard,
                 bom=bom) if bad is not None else iter(()),
        csv_text(None, [("*", error.message)], guard, bom=bom)
        if error is not None else iter(()),
    )


def _accepted_lines(rows: Iterable[tuple[int, str, Sequence[str]]]) -> Iterator[Sequence[Any]]:
    return ((rec, ref, *fields) for rec, ref, fields in rows)


def _rejected_lines(rows: Iterable[tuple[int, Sequence[str], str]]) -> Iterator[Sequence[Any]]:
    return ((rec, *fields, msg) for rec, fields, msg in rows)


def accepted(directory: Path, name: str, rows: Iterable[tuple[int, str, Sequence[str]]], *,
             guard: bool = True, bom: bool = False) -> Path:
    """NAME.accepted.csv: record, contact id, the row's columns (no header row, like the API)."""
    return csv_file(directory / (name + ACCEPTED_CSV), None, _accepted_lines(rows), guard,
                    bom=bom)


def rejected(directory: Path, name: str, rows: Iterable[tuple[int, Sequence[str], str]], *,
             guard: bool = True, bom: bool = False) -> Path:
    """NAME.rejected.csv: record, the section's first row, the message."""
    return csv_file(directory / (name + REJECTED_CSV), None, _rejected_lines(rows), guard,
                    bom=bom)


def errors_csv(directory: Path, name: str, columns: Sequence[str],
               rows: Iterable[RejectedRow], *, guard: bool = True, bom: bool = False) -> Path:
    """NAME.errors.csv: record, error_message, error_field, error_detail, the row's fields;
    a line for every row of a rejected section."""
    return csv_file(directory / (name + ERRORS_CSV), [*ERRORS_HEADER, *columns],
                    ((r.record, r.message, r.error_field, r.error_detail, *r.fields)
                     for r in rows), guard, bom=bom)


def global_csv(directory: Path, name: str, rows: Iterable[tuple[str, str]], *,
               guard: bool = True, bom: bool = False) -> Path:
    """NAME.global.csv: responseTrackingCode or '*', message."""
    return csv_file(directory / (name + GLOBAL_CSV), None, rows, guard, bom=bom)
