"""A file's life: claim → apply (one transaction with its ledger row) → sidecars → move.

This is where files move (``claim``, ``_finish``) and where the ledger makes it
exactly once: a file in ``.processing/`` whose ledger row committed is only
finished, never applied again (``recover_company``). It works the same for every
format: which applier reads a file and which sidecars it gets is ``formats``' answer.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psycopg
import structlog

from ingestd import errors, failpoints, fleet, formats, landing, partner_files, progress, sidecars
from ingestd.apply_context import ApplyContext
from ingestd.db import ledger, locks
from ingestd.db.companies import get_company_later
from ingestd.db.database import Database
from ingestd.db.ledger import RowResults
from ingestd.errors import FileChangedError, FileError
from ingestd.landing import CompanyDirs
from ingestd.progress import Tracker
from ingestd.results import FileResult
from ingestd.settings import Settings

log = structlog.get_logger("ingestd.lifecycle")


@dataclass
class Claim:
    dirs: CompanyDirs
    claim_id: str
    name: str  # as dropped
    source: Path | None = None  # `ingestd check` reads the file where it is

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


class RecoveryFailed(Exception):
    """A leftover claim could not be finished. Already logged (``file.error``, naming
    the file); the claim stays in .processing/ and is retried."""

    def __init__(self, company: str, claim_id: str) -> None:
        super().__init__(f"{company}: recovery of claim {claim_id} failed")
        self.company = company
        self.claim_id = claim_id


# done, failed: finished (``result`` says how); busy: another worker or instance holds
# the company; gone: someone else claimed the file first; changed: it changed while
# being read and went back to the inbox.
Status = Literal["done", "failed", "busy", "gone", "changed", "fenced"]


@dataclass
class Outcome:
    status: Status
    final_path: Path | None = None
    result: FileResult | None = None  # only when done or failed


def sha256_of(path: Path, companion: Path | None = None) -> str:
    """The file's content hash; a companion (NAME.csv.headers) is part of the content,
    so a CSV re-sent with the precondition it lacked is not taken for a duplicate."""
    h = hashlib.sha256()
    handle = progress.current()  # hashing a huge file is progress too, not a stuck worker
    for p in (path, companion) if companion else (path,):
        if p is companion:
            h.update(b"\0" + p.name[len(path.name):].encode() + b"\0")
        with partner_files.open_partner_file(p) as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
                handle.alive()
    return h.hexdigest()


def _stat_key(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_size, st.st_mtime_ns


class Pipeline:
    """Claims, applies and finishes files. Thread-safe: each call uses its own connection."""

    def __init__(self, settings: Settings, db: Database, carrier: formats.CarrierLookup,
                 tracker: Tracker | None = None) -> None:
        self.settings = settings
        self.db = db
        self.carrier = carrier  # `check` looks up uncached: it writes nothing
        self._cached_carrier = formats.cached_carrier(carrier, db.pool,
                                                      settings.carrier_cache_ttl)
        self.tracker = tracker  # None: nobody watches progress
        self.root = settings.landing_root
        self.fleet: fleet.Fleet | None = None  # set by `ingestd run`: company leases

    # -- per-company lock -------------------------------------------------------------

    @contextmanager
    def company_lock(self, company: str) -> Iterator[psycopg.Connection[Any] | None]:
        """Hold the company's session advisory lock, or yield None if someone else has it.

        Several instances may share a landing root: whoever holds the lock is the only
        one claiming, applying or recovering that company's files, which keeps drop order.
        """
        key = locks.company(company)
        with self.db.pool.connection() as conn:
            conn.autocommit = True
            if not locks.try_lock(conn, key):
                yield None
                return
            try:
                # The lease decides when its holder stops heartbeating (fleet.py).
                with fleet.holding(self.fleet, conn, company) as held:
                    conn.autocommit = False
                    yield conn if held else None
            finally:
                if not conn.closed and not conn.broken:
                    conn.rollback()
                    conn.autocommit = True
                    locks.unlock(conn, key)

    # -- the whole path for one ready file ---------------------------------------------

    def process(self, path: Path, name: str | None = None, *,
                then: Callable[[Path, Outcome], Path | None] | None = None) -> Outcome:
        """Claim, apply and finish one ready file. ``name``: the name to keep, when
        ``path`` is a staged copy (``ingestd ingest`` of a file from elsewhere).

        ``then`` is told each file's outcome while the company is still held and
        answers the company's next file to do under the same lock and lease, or None
        to let go: a backlog then pays for taking them once, not once a file. The
        return value is the last file's outcome ("busy" and "fenced" never reach
        ``then``)."""
        company = path.parent.parent.name
        dirs = CompanyDirs(path.parent.parent)
        with self.company_lock(company) as conn:
            if conn is None:
                return Outcome("busy")
            while True:
                outcome = self._process_locked(conn, dirs, path, name)
                following = then(path, outcome) if then is not None else None
                if following is None:
                    return outcome
                path, name = following, None
        # Reached when fleet.holding swallowed a fence (logged): mypy cannot tell.
        return Outcome("fenced")  # type: ignore[unreachable]

    def _process_locked(self, conn: psycopg.Connection[Any], dirs: CompanyDirs, path: Path,
                        name: str | None) -> Outcome:
        self._recover_locked(conn, dirs)  # a listing: cheap when there is nothing left
        claim = self.claim(dirs, path, name)
        if claim is None:
            return Outcome("gone")
        return self._apply_and_finish(conn, claim)

    def process_spooled(self, spool: Path, name: str, claim_id: str) -> Outcome:
        """An HTTP request's body (``landing.spool_path``): claimed as ``claim_id`` and
        applied like a drop, under the company lock, after the company's leftover claims.

        A client that retries after a crash brings the same claim id: if an earlier
        attempt's body was claimed, recovery applies it first, and then this spool is
        dropped and that outcome returned, so the body is applied once. "busy": another
        worker or instance holds the company; try again."""
        dirs = CompanyDirs(spool.parent.parent)
        with self.company_lock(dirs.company) as conn:
            if conn is None:
                return Outcome("busy")
            self._recover_locked(conn, dirs)
            entry = ledger.by_claim(conn, claim_id)
            conn.commit()
            if entry is None:
                claim = self.claim(dirs, spool, name, claim_id=claim_id)
                if claim is not None:
                    return self._apply_and_finish(conn, claim)
                entry = ledger.by_claim(conn, claim_id)
                conn.commit()
            for p in [spool, *landing.companions(spool.parent, spool.name)]:
                p.unlink(missing_ok=True)
            if entry is None:
                return Outcome("gone")
            final = Path(entry.final_path) if entry.final_path else None
            return Outcome("done" if entry.status == "done" else "failed", final,
                           FileResult.from_json(entry.result))
        return Outcome("fenced")  # type: ignore[unreachable]

    def claim(self, dirs: CompanyDirs, path: Path, name: str | None = None,
              claim_id: str | None = None) -> Claim | None:
        """Atomic rename into .processing/<claim>/; None if someone else took it first."""
        try:
            dirs.ensure()
        except PermissionError as exc:
            # The company folder is root-owned (SFTP chroot): an admin makes these.
            raise RuntimeError(
                f"cannot create {exc.filename}: {exc.strerror}; create .processing (0700), "
                "done/ and failed/ for the ingestd user (docs/operations.md: SFTP accounts)"
            ) from exc
        claim = Claim(dirs, claim_id or landing.new_claim_id(), name or path.name)
        fleet.guard(claim.name)
        claim.dir.mkdir(mode=0o700)
        # The .headers companion goes first: it must travel with its CSV.
        for comp in landing.companions(path.parent, path.name, self.settings.marker_mode):
            try:
                os.rename(comp, claim.dir / (claim.name + comp.name[len(path.name):]))
            except FileNotFoundError:
                pass
        try:
            os.rename(path, claim.path)
        except FileNotFoundError:
            for comp in claim.dir.iterdir():  # give companions back
                os.rename(comp, path.parent / (path.name + comp.name[len(claim.name):]))
            claim.dir.rmdir()
            return None
        log.info("file.claimed", company=dirs.company, file=claim.name, claim=claim.claim_id)
        return claim

    def _apply_and_finish(self, conn: psycopg.Connection[Any], claim: Claim) -> Outcome:
        with self._in_hand(claim) as handle:
            try:
                _, entry = self._apply(conn, claim)
            except FileChangedError:
                self._unclaim(claim)
                log.warning("file.changed", company=claim.company, file=claim.name,
                            reason="file changed while being read; will retry once it settles")
                return Outcome("changed")
            handle.alive()  # committed; the sidecars and the move come next
            return self._finish(conn, claim, entry, handle)

    def _in_hand(self, claim: Claim) -> AbstractContextManager[progress.Handle]:
        if self.tracker is None:
            return nullcontext(progress.NO_PROGRESS)
        try:
            size = os.lstat(claim.path).st_size
        except OSError:
            size = 0
        return self.tracker.tracking(claim.company, landing.display_name(claim.name),
                                     claim.claim_id, size)

    def _unclaim(self, claim: Claim) -> None:
        # The file first, its companions after: a crash in between leaves a claim with
        # only companions, which recovery gives back (never a file without its companion).
        for p in sorted(claim.dir.iterdir(), key=lambda p: p.name != claim.name):
            fleet.guard(claim.name)
            target = claim.dirs.inbox / p.name
            if os.path.lexists(target):
                target = claim.dirs.inbox / landing.unique_name(claim.dirs.inbox, p.name)
            os.rename(p, target)
        claim.dir.rmdir()

    # -- apply: one transaction ---------------------------------------------------------

    def apply(self, conn: psycopg.Connection[Any], claim: Claim, *,
              dry_run: bool = False) -> FileResult:
        """Apply the claimed file and commit its rows with its ledger row; return result."""
        return self._apply(conn, claim, dry_run=dry_run)[0]

    def _apply(self, conn: psycopg.Connection[Any], claim: Claim, *,
               dry_run: bool = False) -> tuple[FileResult, ledger.LedgerEntry]:
        started = datetime.now(UTC)
        t0 = time.monotonic()
        path, company_id = claim.path, claim.company
        name = landing.display_name(claim.name)  # what the ledger, logs and sidecars say
        fmt = formats.for_file(name)
        st = os.lstat(path)
        error, sha, before = self._inspect(claim, name, self.settings.marker_mode)
        meta: dict[str, Any] = {}
        duplicate: tuple[int, str] | None = None
        results = RowResults(None, None)
        warnings: list[str] = []
        with conn.transaction(force_rollback=dry_run):
            # The opening statements go in one round trip (pipeline mode), their results
            # read once it has synced. (BEGIN cannot join them: a transaction entered in
            # pipeline mode keeps the connection in it, and COPY cannot run there.)
            with conn.pipeline():
                locks.xact_lock(conn, locks.company_apply(company_id))
                read_company = get_company_later(conn, company_id)
                read_file_id = ledger.insert_later(
                    conn, company=company_id, name=name, claim_id=claim.claim_id,
                    fmt=fmt.name if fmt else None, sha256=sha, size=st.st_size,
                    started_at=started)
            company, file_id = read_company(), read_file_id()
            if error is not None:
                pass
            elif company is None:
                error = FileError(errors.INVALID_SCHEMA_NAME,
                                  f"company {company_id!r} is not set up")
            elif fmt is None:
                error = FileError(errors.UNSUPPORTED_FILE, f"{name}: unsupported file type;"
                                  f" expected {formats.expected()}")
            elif st.st_size == 0:
                error = FileError(errors.EMPTY_FILE, f"{name} is empty")
            if error is None and not self.settings.allow_duplicates:
                duplicate = ledger.find_duplicate(conn, company_id, sha, file_id)
            if error is None and duplicate is None and company is not None and fmt is not None:
                results = RowResults(conn, file_id)
                ctx = ApplyContext(conn=conn, company=company, path=path, name=name,
                                   headers_path=claim.headers_path, results=results,
                                   settings=self.settings,
                                   carrier=self.carrier if dry_run else self._cached_carrier,
                                   warnings=warnings, progress=progress.current(),
                                   whole_request=landing.request_of(claim.claim_id) is not None)
                try:
                    with conn.transaction():  # savepoint: a file error undoes every row
                        if not dry_run:
                            failpoints.hit(failpoints.HANG_IN_APPLY)
                        fmt.applier().apply(ctx)
                        results.flush()
                except FileError as exc:
                    error = exc
                    results = RowResults(None, None)
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    raise  # the database is unreachable: leave the claim, recover later
                except Exception as exc:
                    # A bug must not wedge the file in .processing/ forever: fail it,
                    # nothing applied (the savepoint is rolled back), and say why.
                    log.exception("file.internal_error", company=company_id, file=name)
                    error = FileError(errors.INTERNAL_ERROR,
                                      f"internal error: {type(exc).__name__}: {exc}")
                    results = RowResults(None, None)
                meta = {"columns": ctx.columns, **ctx.extra}
                if _stat_key(path) != before:
                    raise FileChangedError(name)
            result = self._result(claim, fmt, sha, started, t0, results, error,
                                  duplicate, warnings)
            # The final name is chosen and recorded in the apply's own commit, before
            # anything is written, so a crash re-finishes under the same name (under the
            # company lock nothing else names files in done/ or failed/ meanwhile).
            final = None
            if not dry_run:
                dest = claim.dirs.done if result.status == "done" else claim.dirs.failed
                final = str(dest / landing.unique_name(dest, claim.name))
            entry = ledger.complete(conn, file_id, result.to_json(), meta,
                                    duplicate[0] if duplicate else None, final)
            if not dry_run:
                failpoints.hit(failpoints.BEFORE_COMMIT)
                fleet.guard(claim.name)
        if not dry_run:
            log.info("file.applied", company=company_id, file=name, status=result.status,
                     rows=result.rows, accepted=result.accepted, rejected=result.rejected,
                     duration_s=result.duration_s)
        result.sample_errors = results.sample_errors
        return result, entry

    @staticmethod
    def _inspect(claim: Claim, name: str,
                 marker_mode: bool) -> tuple[FileError | None, str, tuple[int, int]]:
        """What can be known before the transaction: a file-level problem, or the content
        hash and the (size, mtime) that must still hold after reading."""
        path = claim.path
        bad_name = landing.name_problem(claim.name)
        if bad_name is not None:
            return FileError(errors.INVALID_FILE_NAME, f"{name}: {bad_name}"), "", (0, 0)
        try:
            # The drop, then every companion (a marker too, though it is never read):
            # nothing of the file is opened unless all of them are plain files.
            for p in [path, *landing.companions(path.parent, claim.name, marker_mode)]:
                partner_files.check(p)
            before = _stat_key(path)
            return None, sha256_of(path, claim.headers_path), before
        except FileError as exc:
            return exc, "", (0, 0)
        except OSError as exc:  # e.g. uploaded with mode 0600: we may move it, not read it
            which = landing.display_name(Path(exc.filename).name) if exc.filename else name
            return FileError(errors.UNREADABLE_FILE,
                             f"{which} cannot be read by ingestd: {exc.strerror}"), "", (0, 0)

    @staticmethod
    def _result(claim: Claim, fmt: formats.Format | None, sha: str, started: datetime,
                t0: float, results: RowResults, error: FileError | None,
                duplicate: tuple[int, str] | None, warnings: list[str]) -> FileResult:
        if duplicate is not None:
            warnings = [*warnings, f"same content as {duplicate[1]}, "
                        "which was already applied: nothing applied again"]
        return FileResult(
            status="failed" if error else "done",
            format=fmt.name if fmt else None,
            company=claim.company,
            file=landing.display_name(claim.name),
            sha256=sha,
            rows=results.rows,
            accepted=results.accepted,
            rejected=results.rejected,
            rejected_by_class=dict(results.rejected_by_class),
            started_at=started.isoformat(),
            finished_at=datetime.now(UTC).isoformat(),
            duration_s=round(time.monotonic() - t0, 3),
            warnings=warnings,
            error=error,
            duplicate_of=duplicate[1] if duplicate else None,
            request_id=landing.request_of(claim.claim_id),
        )

    # -- finish: sidecars, then the move ------------------------------------------------

    def _finish(self, conn: psycopg.Connection[Any], claim: Claim,
                entry: ledger.LedgerEntry | None = None,
                handle: progress.Handle | None = None) -> Outcome:
        """Sidecars, then the move. ``entry``: the ledger row as the apply committed it
        (None: read it, as recovery does); ``handle``: the file's in hand."""
        failpoints.hit(failpoints.AFTER_COMMIT)
        if entry is None:
            entry = ledger.by_claim(conn, claim.claim_id)
            conn.commit()
        fleet.guard(claim.name)  # before anything of it is written or moved
        if entry is None:
            raise RuntimeError(f"no ledger row for claim {claim.claim_id}")
        dest = claim.dirs.done if entry.status == "done" else claim.dirs.failed
        if entry.final_path:
            final = Path(entry.final_path)
        else:  # committed by an older version, which chose the name here
            # Recorded before anything is written, so a crash here re-finishes under
            # the same name instead of leaving orphan sidecars behind.
            final = dest / landing.unique_name(dest, claim.name)
            ledger.set_final_path(conn, entry.id, str(final))
            conn.commit()
        result = FileResult.from_json(entry.result)
        self._write_sidecars(conn, entry, result, final)
        failpoints.hit(failpoints.AFTER_SIDECARS)
        for p in sorted(claim.dir.iterdir(), key=lambda p: p.name == claim.name):
            # companions first, the file itself last: its arrival means "finished"
            suffix = p.name[len(claim.name):] if p.name.startswith(claim.name) else p.name
            fleet.guard(claim.name)
            os.rename(p, final.parent / (final.name + suffix))
        if self.tracker is not None and handle is not None:
            # Its in-hand row goes in the same commit: one round trip fewer a file.
            tracker = self.tracker
            ledger.set_finished(conn, entry.id, also=lambda c: tracker.delete_row(c, handle))
            tracker.row_deleted(handle)
        else:
            ledger.set_finished(conn, entry.id)
        try:
            claim.dir.rmdir()
        except OSError:
            pass
        event = "file.done" if result.status == "done" else "file.failed"
        fields: dict[str, Any] = {
            "company": claim.company, "file": claim.name, "path": str(final),
            "format": result.format, "rows": result.rows, "accepted": result.accepted,
            "rejected": result.rejected, "rejected_by_class": result.rejected_by_class,
            "duration_s": result.duration_s,
        }
        if result.error is not None:
            fields["error_class"] = result.error.error_class
            fields["error_message"] = result.error.message
        if result.duplicate_of is not None:
            fields["duplicate_of"] = result.duplicate_of
        (log.info if result.status == "done" else log.warning)(event, **fields)
        return Outcome("done" if result.status == "done" else "failed", final, result)

    def _write_sidecars(self, conn: psycopg.Connection[Any], entry: ledger.LedgerEntry,
                        result: FileResult, final: Path) -> None:
        """The format's sidecars, then result.json: rebuilt from the ledger alone, so a
        finish redone after a crash writes the same files."""
        result = replace(result, file=entry.name,
                         stored_as=final.name if final.name != entry.name else None)
        fmt = formats.named(entry.format)
        if fmt is not None:
            fmt.write_sidecars(sidecars.Finished(
                conn=conn, file_id=entry.id, directory=final.parent, name=final.name,
                result=result, meta=entry.meta, guard=self.settings.sidecar_formula_guard))
        conn.commit()
        sidecars.result_json(final.parent, final.name, result.to_json())

    # -- recovery -----------------------------------------------------------------------

    def recover_company(self, dirs: CompanyDirs) -> None:
        with self.company_lock(dirs.company) as conn:
            if conn is not None:
                self._recover_locked(conn, dirs)

    def _recover_locked(self, conn: psycopg.Connection[Any], dirs: CompanyDirs) -> None:
        """Finish or redo every claim left in .processing/. Only called under the company
        lock, so no live worker anywhere owns these claims."""
        if not dirs.processing.is_dir():
            return
        swept = False
        for claim_dir in sorted(dirs.processing.iterdir()):
            if not claim_dir.is_dir() or claim_dir.is_symlink():
                continue
            if not swept:
                # A kill while a sidecar was written leaves its temporary file, and always
                # a claim too (the file moves after its sidecars): sweep them here, once.
                swept = True
                for d in (dirs.done, dirs.failed):
                    sidecars.remove_temp_files(d)
            try:
                self._recover_claim(conn, dirs, claim_dir)
            except Exception as exc:
                if self.fleet is not None and self.fleet.lost():
                    raise  # not this file's fault: fleet.holding logs instance.fenced
                # Logged here, where the file is known; the caller only knows the company.
                log.exception("file.error", company=dirs.company,
                              file=self._claimed_name(claim_dir), claim=claim_dir.name,
                              stage="recovery")
                raise RecoveryFailed(dirs.company, claim_dir.name) from exc

    def _claimed_name(self, claim_dir: Path) -> str | None:
        """The file's own name in its claim folder (the ledger holds it as text, which
        may differ); None once it has been moved out."""
        try:
            names = [p.name for p in claim_dir.iterdir()
                     if not landing.is_companion(p.name, self.settings.marker_mode)]
        except OSError:
            return None
        return names[0] if names else None

    def _recover_claim(self, conn: psycopg.Connection[Any], dirs: CompanyDirs,
                       claim_dir: Path) -> None:
        on_disk = self._claimed_name(claim_dir)
        fleet.working_on(on_disk or claim_dir.name)
        entry = ledger.by_claim(conn, claim_dir.name)
        conn.commit()
        name = on_disk or (entry.name if entry else None)
        if name is None:
            # Crashed while claiming (between mkdir and the renames) or giving back:
            # the file is in the inbox and any companion here must rejoin it there.
            # Deleting it would drop a CSV's precondition, or in marker mode the
            # marker its file waits for.
            self._give_back(claim_dir, dirs)
            return
        claim = Claim(dirs, claim_dir.name, name)
        if entry is not None:
            log.info("file.recovered", company=dirs.company, file=name,
                     claim=claim.claim_id, action="finish")
            if self.tracker is not None:
                self.tracker.discard(claim.claim_id)  # its owner died in hand
            self._finish(conn, claim)
        else:
            log.info("file.recovered", company=dirs.company, file=name,
                     claim=claim.claim_id, action="apply")
            self._apply_and_finish(conn, claim)

    @staticmethod
    def _give_back(claim_dir: Path, dirs: CompanyDirs) -> None:
        for p in list(claim_dir.iterdir()):
            fleet.guard(p.name)
            target = dirs.inbox / p.name
            if os.path.lexists(target):  # the partner sent a new one meanwhile: theirs wins
                p.unlink()
            else:
                os.rename(p, target)
        claim_dir.rmdir()

    def company_dirs(self) -> list[CompanyDirs]:
        return landing.company_dirs(self.root)

    # -- check on demand ---------------------------------------------------------------

    def check(self, path: Path, company_id: str, *, request_id: str | None = None,
              name: str | None = None) -> FileResult:
        """Validate against the database in a transaction that is always rolled back.
        ``request_id``: the HTTP request whose body this is (its rules apply)."""
        claim = Claim(CompanyDirs(self.root / company_id), landing.new_claim_id(request_id),
                      name or path.name, source=path)
        with self.db.pool.connection() as conn:
            return self.apply(conn, claim, dry_run=True)
