"""Applying a claimed file: one transaction with its ledger row, for any format.

Which applier reads the file is ``formats``' answer; this part only opens the
transaction, decides the file-level problems, runs the applier inside a savepoint,
builds the typed result and records it, with the file's final name, in the same
commit.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import structlog

from ingestd import errors, failpoints, formats, landing, partner_files, readiness
from ingestd.apply_context import ApplyContext
from ingestd.db import ledger, locks
from ingestd.db.companies import Company, get_company_later
from ingestd.db.ledger import RowResults
from ingestd.errors import FileChangedError, FileError
from ingestd.lifecycle.context import Claim, FileContext
from ingestd.progress import NO_PROGRESS, Handle
from ingestd.results import FileResult
from ingestd.settings import Settings

log = structlog.get_logger("ingestd.lifecycle")


def sha256_of(path: Path, companion: Path | None = None,
              progress: Handle = NO_PROGRESS) -> str:
    """The file's content hash; a companion (NAME.csv.headers) is part of the content,
    so a CSV re-sent with the precondition it lacked is not taken for a duplicate.
    Hashing a huge file is progress too, not a stuck worker."""
    h = hashlib.sha256()
    for p in (path, companion) if companion else (path,):
        if p is companion:
            h.update(b"\0" + p.name[len(path.name):].encode() + b"\0")
        with partner_files.open_partner_file(p) as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
                progress.alive()
    return h.hexdigest()


def starts_with_bom(path: Path) -> bool:
    """The file begins with a UTF-8 byte-order mark: its CSV sidecars will too, since the
    partner's tool wrote one and expects one (Excel reads UTF-8 only with it)."""
    try:
        with partner_files.open_partner_file(path) as fh:
            return fh.read(len(_BOM)) == _BOM
    except OSError:
        return False  # unreadable: the file fails, and says why, elsewhere


_BOM = b"\xef\xbb\xbf"


def _stat_key(path: Path) -> readiness.Key:
    # ctime and inode too: any write (even one keeping size and mtime) moves the ctime.
    return readiness.key_of(os.lstat(path))


@dataclass
class _Run:
    """What one apply has found out so far (its transaction's working notes)."""

    company: str
    name: str  # as the ledger, logs and sidecars say it
    fmt: formats.Format | None
    size: int
    started: datetime
    t0: float
    sha: str = ""
    before: readiness.Key | None = None  # the stat key that must still hold at the commit
    error: FileError | None = None
    duplicate: tuple[int, str] | None = None
    results: RowResults = field(default_factory=lambda: RowResults(None, None))
    warnings: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


class Applying:
    """Applies claimed files. ``carrier``: looked up uncached (a dry run writes
    nothing); ``cached_carrier``: through the PostgreSQL cache, for a real apply."""

    def __init__(self, settings: Settings, carrier: formats.CarrierLookup,
                 cached_carrier: formats.CarrierLookup) -> None:
        self.settings = settings
        self.carrier = carrier
        self.cached_carrier = cached_carrier

    def apply(self, ctx: FileContext, *,
              dry_run: bool = False) -> tuple[FileResult, ledger.LedgerEntry]:
        """Apply the claimed file and commit its rows with its ledger row (a dry run
        rolls everything back); the result and the ledger row as committed."""
        started, t0 = datetime.now(UTC), time.monotonic()
        conn, claim = ctx.conn, ctx.claim
        name = landing.display_name(claim.name)
        run = _Run(claim.company, name, formats.for_file(name), os.lstat(claim.path).st_size,
                   started, t0)
        run.error, run.sha, run.before = self._inspect(ctx, name, self.settings.marker_mode)
        if claim.settled is not None and claim.settled.maybe_partial:
            run.warnings.append(
                f"{name} was written in place and its last record has no line break, as "
                "a cut-off upload leaves it; it was held "
                f"{self.settings.partial_grace_seconds:g} s for a newer upload, none came, "
                "and it was applied as it is: check its last row")
        with conn.transaction(force_rollback=dry_run):
            company, file_id = self._open(conn, claim, run)
            if run.error is None:
                run.error = _file_problem(company, run)
            if run.error is None and not self.settings.allow_duplicates:
                run.duplicate = ledger.find_duplicate(conn, claim.company, run.sha, file_id)
            if (run.error is None and run.duplicate is None and company is not None
                    and run.fmt is not None):
                self._apply_rows(ctx, run, company, run.fmt, file_id, dry_run)
            if run.sha and starts_with_bom(claim.path):  # sha: a plain file we could read
                run.meta["bom"] = True
            result = _result(claim, run)
            # The final name is chosen and recorded in the apply's own commit, before
            # anything is written, so a crash re-finishes under the same name (under the
            # company lock nothing else names files in done/ or failed/ meanwhile).
            final = None
            if not dry_run:
                dest = claim.dirs.done if result.status == "done" else claim.dirs.failed
                final = str(dest / landing.unique_name(dest, claim.name))
            entry = ledger.complete(conn, file_id, result.to_json(), run.meta,
                                    run.duplicate[0] if run.duplicate else None, final)
            if not dry_run:
                failpoints.hit(failpoints.BEFORE_COMMIT, conn)
                ctx.guard()
            # Last thing before the commit: the bytes hashed and read are still the file's.
            # A writer's open descriptor follows the file into .processing/, so a write
            # after the claim lands here; rolled back, the file goes back to settle.
            if run.before is not None and _stat_key(claim.path) != run.before:
                raise FileChangedError(run.name)
        if not dry_run:
            log.info("file.applied", company=claim.company, file=run.name,
                     status=result.status, rows=result.rows, accepted=result.accepted,
                     rejected=result.rejected, duration_s=result.duration_s)
        result.sample_errors = run.results.sample_errors
        return result, entry

    @staticmethod
    def _open(conn: psycopg.Connection[Any], claim: Claim,
              run: _Run) -> tuple[Company | None, int]:
        """The opening statements, in one round trip (pipeline mode), read once it has
        synced: the company's apply lock, the company, the new ledger row. (BEGIN cannot
        join them: a transaction entered in pipeline mode keeps the connection in it,
        and COPY cannot run there.)"""
        with conn.pipeline():
            locks.xact_lock(conn, locks.company_apply(claim.company))
            read_company = get_company_later(conn, claim.company)
            read_file_id = ledger.insert_later(
                conn, company=claim.company, name=run.name, claim_id=claim.claim_id,
                fmt=run.fmt.name if run.fmt else None, sha256=run.sha, size=run.size,
                started_at=run.started)
        return read_company(), read_file_id()

    def _apply_rows(self, ctx: FileContext, run: _Run, company: Company,
                    fmt: formats.Format, file_id: int, dry_run: bool) -> None:
        """The format's applier, in a savepoint: a file error undoes every row."""
        conn, claim = ctx.conn, ctx.claim
        run.results = RowResults(conn, file_id)
        actx = ApplyContext(conn=conn, company=company, path=claim.path, name=run.name,
                            headers_path=claim.headers_path, results=run.results,
                            settings=self.settings,
                            carrier=self.carrier if dry_run else self.cached_carrier,
                            warnings=run.warnings, progress=ctx.progress,
                            whole_request=landing.request_of(claim.claim_id) is not None)
        try:
            with conn.transaction():
                if not dry_run:
                    failpoints.hit(failpoints.HANG_IN_APPLY)
                fmt.applier().apply(actx)
                run.results.flush()
        except FileError as exc:
            run.error, run.results = exc, RowResults(None, None)
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise  # the database is unreachable: leave the claim, recover later
        # A bug must not wedge the file in .processing/ forever: fail it, nothing
        # applied (the savepoint is rolled back), and say why.
        except Exception as exc:
            log.exception("file.internal_error", company=claim.company, file=run.name)
            run.error = FileError(errors.INTERNAL_ERROR,
                                  f"internal error: {type(exc).__name__}: {exc}")
            run.results = RowResults(None, None)
        run.meta = {"columns": actx.columns, **actx.extra}

    @staticmethod
    def _inspect(ctx: FileContext, name: str,
                 marker_mode: bool) -> tuple[FileError | None, str, readiness.Key | None]:
        """What can be known before the transaction: a file-level problem, or the
        content hash and the stat key that must still hold at the commit."""
        claim = ctx.claim
        path = claim.path
        bad_name = landing.name_problem(claim.name)
        if bad_name is not None:
            return FileError(errors.INVALID_FILE_NAME, f"{name}: {bad_name}"), "", None
        try:
            # The drop, then every companion (a marker too, though it is never read):
            # nothing of the file is opened unless all of them are plain files.
            for p in [path, *landing.companions(path.parent, claim.name, marker_mode)]:
                partner_files.check(p)
            before = _stat_key(path)
            return None, sha256_of(path, claim.headers_path, ctx.progress), before
        except FileError as exc:
            return exc, "", None
        except OSError as exc:  # e.g. uploaded with mode 0600: we may move it, not read it
            which = landing.display_name(Path(exc.filename).name) if exc.filename else name
            return FileError(errors.UNREADABLE_FILE,
                             f"{which} cannot be read by ingestd: {exc.strerror}"), "", None


def _file_problem(company: Company | None, run: _Run) -> FileError | None:
    """Why the whole file cannot be applied, known once the transaction is open."""
    if company is None:
        return FileError(errors.INVALID_SCHEMA_NAME, f"company {run.company!r} is not set up")
    if run.fmt is None:
        return FileError(errors.UNSUPPORTED_FILE, f"{run.name}: unsupported file type;"
                         f" expected {formats.expected()}")
    if run.size == 0:
        return FileError(errors.EMPTY_FILE, f"{run.name} is empty")
    return None


def _result(claim: Claim, run: _Run) -> FileResult:
    warnings = run.warnings
    if run.duplicate is not None:
        warnings = [*warnings, f"same content as {run.duplicate[1]}, "
                    "which was already applied: nothing applied again"]
    results = run.results
    return FileResult(
        status="failed" if run.error else "done",
        format=run.fmt.name if run.fmt else None,
        company=claim.company,
        file=landing.display_name(claim.name),
        sha256=run.sha,
        rows=results.rows,
        accepted=results.accepted,
        rejected=results.rejected,
        rejected_by_class=dict(results.rejected_by_class),
        rejected_sections=results.rejected_sections,
        started_at=run.started.isoformat(),
        finished_at=datetime.now(UTC).isoformat(),
        duration_s=round(time.monotonic() - run.t0, 3),
        warnings=warnings,
        error=run.error,
        duplicate_of=run.duplicate[1] if run.duplicate else None,
        request_id=landing.request_of(claim.claim_id),
    )
