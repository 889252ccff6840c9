"""The subject contacts sidecars, shaped like the API's answers: ``NAME.accepted.csv``
and ``NAME.rejected.csv`` when applied, ``NAME.global.csv`` always (empty unless the
whole file failed). The same lines are the parts of the HTTP answer (``parts``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg

from ingestd.db import ledger
from ingestd.landing import ACCEPTED_CSV, GLOBAL_CSV, REJECTED_CSV
from ingestd.results import FileResult
from ingestd.sidecars import Finished, csv_file, csv_text


def write(done: Finished) -> None:
    d, name, guard = done.directory, done.name, done.guard
    if done.result.applied:
        # A query only where rows were stored: a clean small file needs no round trip.
        ok = ledger.accepted_rows(done.conn, done.file_id) if done.result.accepted else ()
        accepted(d, name, ok, guard=guard)
        bad = ledger.rejected_rows(done.conn, done.file_id) if done.result.rejected else ()
        rejected(d, name, ((r.record, r.fields, r.message) for r in bad), guard=guard)
    global_csv(d, name, _global_lines(done.result), guard=guard)


def parts(conn: psycopg.Connection[Any], file_id: int, result: FileResult,
          guard: bool) -> tuple[Iterator[str], Iterator[str], Iterator[str]]:
    """The text of what ``write`` writes as accepted, rejected and global files, in
    chunks read from the committed row results (lazily: each is read when iterated, in
    that order, with ``conn`` outside a transaction of its own). Empty where the drop
    gets no such file."""
    applied = result.applied
    ok = ledger.accepted_rows(conn, file_id) if applied and result.accepted else ()
    bad = ledger.rejected_rows(conn, file_id) if applied and result.rejected else ()
    return (csv_text(None, _accepted_lines(ok), guard),
            csv_text(None, _rejected_lines((r.record, r.fields, r.message) for r in bad),
                     guard),
            csv_text(None, _global_lines(result), guard))


def _accepted_lines(rows: Iterable[tuple[int, str, Sequence[str]]]) -> Iterator[Sequence[Any]]:
    return ((rec, ref, *fields) for rec, ref, fields in rows)


def _rejected_lines(rows: Iterable[tuple[int, Sequence[str], str]]) -> Iterator[Sequence[Any]]:
    return ((rec, *fields, msg) for rec, fields, msg in rows)


def _global_lines(result: FileResult) -> list[tuple[str, str]]:
    return [("*", result.error.message)] if result.error is not None else []


def accepted(directory: Path, name: str, rows: Iterable[tuple[int, str, Sequence[str]]], *,
             guard: bool = True) -> Path:
    """NAME.accepted.csv: record, contact id, the row's columns (no header row, like the API)."""
    return csv_file(directory / (name + ACCEPTED_CSV), None, _accepted_lines(rows), guard)


def rejected(directory: Path, name: str, rows: Iterable[tuple[int, Sequence[str], str]], *,
             guard: bool = True) -> Path:
    """NAME.rejected.csv: record, the section's first row, the message."""
    return csv_file(directory / (name + REJECTED_CSV), None, _rejected_lines(rows), guard)


def global_csv(directory: Path, name: str, rows: Iterable[tuple[str, str]], *,
               guard: bool = True) -> Path:
    """NAME.global.csv: responseTrackingCode or '*', message."""
    return csv_file(directory / (name + GLOBAL_CSV), None, rows, guard)
