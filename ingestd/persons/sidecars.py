"""The Person Import's sidecars: ``NAME.errors.csv`` when rows were rejected, and
``NAME.retry.persons`` when rows failed the carrier lookup transiently. A sidecar is
written only when it has something to say; ``result.json`` always is (by the lifecycle)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TextIO

from ingestd.db import ledger
from ingestd.db.ledger import RejectedRow
from ingestd.errors import TRANSIENT_LOOKUP_FAILURE
from ingestd.landing import ERRORS_CSV, RETRY_PERSONS
from ingestd.persons.reader import iter_persons
from ingestd.sidecars import Finished, csv_file, write_atomic


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


def errors_csv(directory: Path, name: str, columns: Sequence[str],
               rejected: Iterable[RejectedRow], *, guard: bool = True,
               bom: bool = False) -> Path:
    """NAME.errors.csv: record, error_class, error_message, error_field, error_detail,
    then the row's fields."""
    return csv_file(directory / (name + ERRORS_CSV),
                    ["record", "error_class", "error_message", "error_field", "error_detail",
                     *columns],
                    ((r.record, r.error_class, r.message, r.error_field, r.error_detail,
                      *r.fields) for r in rejected), guard, bom=bom)


def retry_file(directory: Path, name: str, columns: Sequence[str], delimiter: str,
               multi_select_delimiter: str, rows: Iterable[Sequence[str]]) -> Path:
    """NAME.retry.persons: the rows that failed the carrier lookup transiently, ready to
    drop again, written so that the persons reader gives back exactly these rows."""
    def fill(fh: TextIO) -> None:
        fh.writelines(iter_persons(columns, rows, delimiter, multi_select_delimiter))
    return write_atomic(directory / (name + RETRY_PERSONS), fill)
