"""The subject contacts sidecars, shaped like the API's answers: ``NAME.accepted.csv``
and ``NAME.rejected.csv`` when applied, ``NAME.global.csv`` always (empty unless the
whole file failed)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from ingestd.db import ledger
from ingestd.landing import ACCEPTED_CSV, GLOBAL_CSV, REJECTED_CSV
from ingestd.sidecars import Finished, csv_file


def write(done: Finished) -> None:
    d, name, guard = done.directory, done.name, done.guard
    if done.result.applied:
        # A query only where rows were stored: a clean small file needs no round trip.
        ok = ledger.accepted_rows(done.conn, done.file_id) if done.result.accepted else ()
        accepted(d, name, ok, guard=guard)
        bad = ledger.rejected_rows(done.conn, done.file_id) if done.result.rejected else ()
        rejected(d, name, ((r.record, r.fields, r.message) for r in bad), guard=guard)
    error = done.result.error
    global_csv(d, name, [("*", error.message)] if error is not None else [], guard=guard)


def accepted(directory: Path, name: str, rows: Iterable[tuple[int, str, Sequence[str]]], *,
             guard: bool = True) -> Path:
    """NAME.accepted.csv: record, contact id, the row's columns (no header row, like the API)."""
    return csv_file(directory / (name + ACCEPTED_CSV), None,
                    ((rec, ref, *fields) for rec, ref, fields in rows), guard)


def rejected(directory: Path, name: str, rows: Iterable[tuple[int, Sequence[str], str]], *,
             guard: bool = True) -> Path:
    """NAME.rejected.csv: record, the section's first row, the message."""
    return csv_file(directory / (name + REJECTED_CSV), None,
                    ((rec, *fields, msg) for rec, fields, msg in rows), guard)


def global_csv(directory: Path, name: str, rows: Iterable[tuple[str, str]], *,
               guard: bool = True) -> Path:
    """NAME.global.csv: responseTrackingCode or '*', message."""
    return csv_file(directory / (name + GLOBAL_CSV), None, rows, guard)
