"""What a format's applier gets to work with (``ApplyContext``) and what it is (``Applier``).

An applier must not know the landing folder: it reads ``ctx.path`` (the claimed
file) and writes only through ``ctx.conn`` (already inside the file's single
transaction, together with the ledger row) and ``ctx.results``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import psycopg

from ingestd.db.companies import Company
from ingestd.db.ledger import RowResults
from ingestd.progress import NO_PROGRESS, Handle

if TYPE_CHECKING:
    from ingestd.persons.carrier import CarrierLookup
    from ingestd.settings import Settings


@dataclass
class ApplyContext:
    conn: psycopg.Connection[Any]
    company: Company
    path: Path  # the claimed file, in .processing/
    name: str  # the name as dropped
    headers_path: Path | None  # companion NAME.headers, if it came with the file
    results: RowResults
    settings: Settings
    # The Person Import's lookup: cached in PostgreSQL for a real apply, uncached for
    # `ingestd check` (which writes nothing). Other formats ignore it.
    carrier: CarrierLookup
    warnings: list[str] = field(default_factory=list)
    # Set by the applier and kept in the ledger (``meta``) for its sidecar writer, which
    # may run after a crash: the file's field names (persons errors.csv header) and
    # anything else it needs, JSON-serialisable (persons: the delimiters that the retry
    # file must be written with).
    columns: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    # An HTTP request is answered 428/412 as a whole (the SAS API's contract): a
    # precondition that fails is then a file error, not one rejected section.
    whole_request: bool = False
    # Advanced after every chunk: `ingestd status`, file.progress and the stuck watchdog.
    progress: Handle = NO_PROGRESS


class Applier(Protocol):
    """Applies a whole file; raises ``FileError`` for a file-level problem."""

    def apply(self, ctx: ApplyContext) -> None: ...
