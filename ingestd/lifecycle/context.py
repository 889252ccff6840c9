"""What a file's life hands down, from part to part: the company held, the claim and
the file's progress handle.

Frozen and passed explicitly (as procrastinate's ``JobContext``), never looked up: a
part knows about the file what its context says and nothing else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg

from ingestd import fleet, landing, readiness
from ingestd.landing import CompanyDirs
from ingestd.progress import NO_PROGRESS, Handle
from ingestd.results import FileResult


@dataclass(frozen=True)
class Claim:
    """A file taken out of the inbox into .processing/<claim_id>/, under its name."""

    dirs: CompanyDirs
    claim_id: str
    name: str  # as dropped
    source: Path | None = None  # `ingestd check` reads the file where it is
    settled: readiness.Settled | None = None  # as judged ready (None: not known)

    @property
    def company(self) -> str:
        return self.dirs.company

    @property
    def dir(self) -> Path:
        return self.dirs.processing / self.claim_id

    @property
    def path(self) -> Path:
        return self.source if self.source else self.dir / self.name

    @property
    def headers_path(self) -> Path | None:
        if landing.name_problem(self.name) is not None:
            return None  # such a name cannot have a companion (nor be applied)
        p = self.path.with_name(self.path.name + landing.HEADERS_SUFFIX)
        return p if os.path.lexists(p) else None  # a symlink too: it must be failed


@dataclass(frozen=True)
class Held:
    """A company this worker holds: the session that holds its advisory lock (and does
    the work) and, under ``ingestd run``, its lease."""

    dirs: CompanyDirs
    conn: psycopg.Connection[Any]
    lease: fleet.Lease | None = None  # None: the CLI, where the lock alone decides

    @property
    def company(self) -> str:
        return self.dirs.company

    def guard(self, file: str) -> None:
        """Before a commit, move or write for ``file``: ``Fenced`` unless still ours."""
        if self.lease is not None:
            fleet.guard(self.lease, file)

    def working_on(self, file: str) -> None:
        """Name the file in hand, for ``instance.fenced``."""
        if self.lease is not None:
            self.lease.file = file


@dataclass(frozen=True)
class FileContext:
    """One claimed file in the hands of a worker that holds its company."""

    held: Held
    claim: Claim
    progress: Handle = NO_PROGRESS  # advanced by the applier; NO_PROGRESS: unwatched

    @property
    def conn(self) -> psycopg.Connection[Any]:
        return self.held.conn

    def guard(self) -> None:
        self.held.guard(self.claim.name)


# done, failed: finished (``result`` says how); busy: another worker or instance holds
# the company; gone: someone else claimed the file first; changed: it changed while
# being read and went back to the inbox; fenced: the lease was lost meanwhile;
# unsettled: changed (or open for writing) since it was judged ready, so not claimed: it
# settles again in the inbox.
Status = Literal["done", "failed", "busy", "gone", "changed", "fenced", "unsettled"]


@dataclass
class Outcome:
    status: Status
    final_path: Path | None = None
    result: FileResult | None = None  # only when done or failed
    given_back: Path | None = None  # unsettled: the file, still in the inbox
