"""The subject contacts sidecars. Shaped like the API's answers, with no header rows:
``NAME.accepted.csv`` and ``NAME.rejected.csv`` when applied, ``NAME.global.csv`` when
the whole file failed. For the partner, ``NAME.errors.csv`` (a header row; every row of
every rejected section, with the column at fault and what was wrong). Each is written
only when it has something to say; ``result.json`` always is (by the lifecycle)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from ingestd.db import ledger
from ingestd.db.ledger import RejectedRow
from ingestd.landing import ACCEPTED_CSV, ERRORS_CSV, GLOBAL_CSV, REJECTED_CSV
from ingestd.sidecars import Finished, csv_file

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


def accepted(directory: Path, name: str, rows: Iterable[tuple[int, str, Sequence[str]]], *,
             guard: bool = True, bom: bool = False) -> Path:
    """NAME.accepted.csv: record, contact id, the row's columns (no header row, like the API)."""
    return csv_file(directory / (name + ACCEPTED_CSV), None,
                    ((rec, ref, *fields) for rec, ref, fields in rows), guard, bom=bom)


def rejected(directory: Path, name: str, rows: Iterable[tuple[int, Sequence[str], str]], *,
             guard: bool = True, bom: bool = False) -> Path:
    """NAME.rejected.csv: record, the section's first row, the message."""
    return csv_file(directory / (name + REJECTED_CSV), None,
                    ((rec, *fields, msg) for rec, fields, msg in rows), guard, bom=bom)


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
