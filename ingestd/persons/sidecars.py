"""The Person Import's sidecars: ``NAME.errors.csv`` when rows were rejected, and
``NAME.retry.persons`` when rows failed the carrier lookup transiently. A sidecar is
written only when it has something to say; ``result.json`` always is (by the lifecycle)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import psycopg

from ingestd.db import ledger
from ingestd.db.ledger import RejectedRow
from ingestd.errors import TRANSIENT_LOOKUP_FAILURE
from ingestd.landing import ERRORS_CSV, RETRY_PERSONS
from ingestd.persons.reader import iter_persons
from ingestd.results import FileResult
from ingestd.sidecars import Finished, csv_file, csv_text, write_atomic


def write(done: Finished) -> None:
    if not done.result.applied:
        return  # nothing was applied: result.json alone says why
    columns = done.meta.get("columns", [])
    if done.result.rejected:
        errors_csv(done.directory, done.name, columns,
                   ledger.rejected_rows(done.conn, done.file_id), guard=done.guard,
                   bom=done.bom)
    if done.result.rejected_by_class.get(TRANSIENT_LOOKUP_FAILURE):
        retry_file(done.directory, done.name, columns, done.meta.get("delimiter", ","),
                   done.meta.get("multi_select_delimiter", "|"),
                   (r.fields for r in ledger.rejected_rows(
                       done.conn, done.file_id, TRANSIENT_LOOKUP_FAILURE)))


def parts(conn: psycopg.Connection[Any], file_id: int, result: FileResult,
          meta: dict[str, Any], guard: bool) -> tuple[Iterator[str], Iterator[str]]:
    """The text ``write`` writes as NAME.errors.csv and NAME.retry.persons, in chunks
    read lazily from the committed row results; empty where the drop gets no such file."""
    if not result.applied:
        return iter(()), iter(())
    columns = meta.get("columns", [])
    errors: Iterator[str] = iter(())
    if result.rejected:
        errors = csv_text([*ERRORS_HEADER, *columns],
                          _error_lines(ledger.rejected_rows(conn, file_id)), guard,
                          bom=bool(meta.get("bom")))
    retry: Iterator[str] = iter(())
    if result.rejected_by_class.get(TRANSIENT_LOOKUP_FAILURE):
        retry = iter_persons(columns, (r.fields for r in ledger.rejected_rows(
            conn, file_id, TRANSIENT_LOOKUP_FAILURE)), meta.get("delimiter", ","),
            meta.get("multi_select_delimiter", "|"))
    return errors, retry


ERRORS_HEADER = ["record", "error_class", "error_message", "error_field", "error_detail"]


def _error_lines(rejected: Iterable[RejectedRow]) -> Iterator[Sequence[Any]]:
    return ((r.record, r.error_class, r.message, r.error_field, r.error_detail, *r.fields)
            for r in rejected)


def errors_csv(directory: Path, name: str, columns: Sequence[str],
               rejected: Iterable[RejectedRow], *, guard: bool = True,
               bom: bool = False) -> Path:
    """NAME.errors.csv: record, error_class, error_message, error_field, error_detail,
    then the row's fields."""
    return csv_file(directory / (name + ERRORS_CSV), [*ERRORS_HEADER, *columns],
                    _error_lines(rejected), guard, bom=bom)


def retry_file(directory: Path, name: str, columns: Sequence[str], delimiter: str,
               multi_select_delimiter: str, rows: Iterable[Sequence[str]]) -> Path:
    """NAME.retry.persons: the rows that failed the carrier lookup transiently, ready to
    drop again, written so that the persons reader gives back exactly these rows."""
    def fill(fh: TextIO) -> None:
        fh.writelines(iter_persons(columns, rows, delimiter, multi_select_delimiter))
    return write_atomic(directory / (name + RETRY_PERSONS), fill)
