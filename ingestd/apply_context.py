"""What a processor gets to work with, and where it records each row's outcome.

A processor must not know the landing folder: it reads ``ctx.path`` (the claimed
file) and writes only through ``ctx.conn`` (already inside the file's single
transaction, together with the ledger row) and ``ctx.results``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
from psycopg_pool import ConnectionPool

from ingestd.errors import RowError
from ingestd.progress import NO_PROGRESS, Handle

if TYPE_CHECKING:
    from ingestd.persons.carrier import CarrierLookup
    from ingestd.settings import Settings


@dataclass(frozen=True, slots=True)
class Company:
    id: str
    schema: str
    default_region: str = "US"


class RowResults:
    """Counts outcomes and stores the ones sidecars need in ``ingestd.row_results``.

    Rejected rows are always stored (sidecars can be rebuilt after a crash);
    accepted rows only when ``keep=True`` (contacts need them for accepted.csv).
    Stored in batches with COPY so a million-row file stays fast.
    """

    BATCH = 5000

    def __init__(self, conn: psycopg.Connection[Any] | None, file_id: int | None) -> None:
        self._conn = conn
        self._file_id = file_id
        self._pending: list[tuple[Any, ...]] = []
        self.rows = 0
        self.accepted = 0
        self.rejected = 0
        self.rejected_by_class: Counter[str] = Counter()
        # kept in memory only up to a bound, for `ingestd check` to print
        self.sample_errors: list[tuple[int, RowError]] = []

    def accept(
        self, record: int, fields: Sequence[str], ref: str | None = None, *, keep: bool = False
    ) -> None:
        self.rows += 1
        self.accepted += 1
        if keep:
            self._add((record, True, ref, None, None, "", "", list(fields)))

    def reject(self, record: int, error: RowError, fields: Sequence[str], *, rows: int = 1) -> None:
        """Record one rejected record (or a contacts section of ``rows`` rows led by it)."""
        self.rows += rows
        self.rejected += rows
        self.rejected_by_class[error.error_class] += rows
        if len(self.sample_errors) < 1000:
            self.sample_errors.append((record, error))
        self._add((record, False, None, error.error_class, error.message, error.field,
                   error.detail, list(fields)))

    def _add(self, row: tuple[Any, ...]) -> None:
        if self._conn is None:
            return
        self._pending.append(row)
        if len(self._pending) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        if self._conn is None or not self._pending:
            return
        with self._conn.cursor() as cur, cur.copy(
            "COPY ingestd.row_results"
            " (file_id, record, accepted, ref, error_class, message, error_field, error_detail,"
            " fields) FROM STDIN"
        ) as copy:
            for row in self._pending:
                copy.write_row((self._file_id, *row))
        self._pending.clear()


@dataclass
class ApplyContext:
    conn: psycopg.Connection[Any]
    company: Company
    path: Path  # the claimed file, in .processing/
    name: str  # the name as dropped
    headers_path: Path | None  # companion NAME.headers, if it came with the file
    results: RowResults
    settings: Settings
    carrier: CarrierLookup
    warnings: list[str] = field(default_factory=list)
    # Connections outside the file's transaction, for what must not roll back or wait
    # with it (the shared carrier cache). None: the cache is skipped.
    side_pool: ConnectionPool[psycopg.Connection[Any]] | None = None
    # Set by the processor: the file's field names (persons errors.csv header) and,
    # for persons, the records that failed the carrier lookup transiently (retry file).
    columns: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    # Advanced after every chunk: `ingestd status`, file.progress and the stuck watchdog.
    progress: Handle = NO_PROGRESS


class Processor(Protocol):
    """Applies a whole file; raises ``FileError`` for a file-level problem."""

    format: str

    def apply(self, ctx: ApplyContext) -> None: ...
