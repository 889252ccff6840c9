"""A file's life: claim → apply (one transaction with its ledger row) → sidecars → move.

This is where files move (``claim``, ``_finish``) and where the ledger makes it
exactly once: a file in ``.processing/`` whose ledger row committed is only
finished, never applied again (``recover_company``).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import structlog

from ingestd import errors, failpoints, landing, partner_files, progress, sidecars
from ingestd.carrier import CarrierLookup
from ingestd.db import ledger
from ingestd.db.companies import get_company
from ingestd.db.database import Database
from ingestd.errors import FileChangedError, FileError
from ingestd.landing import CompanyDirs
from ingestd.processors.base import ApplyContext, Processor, RowResults
from ingestd.progress import Tracker
from ingestd.settings import Settings

log = structlog.get_logger("ingestd.lifecycle")


def processor_for(fmt: str) -> Processor:
    # Imported lazily: a processor pulls in its format's parser and rules.
    if fmt == "persons":
        from ingestd.persons.apply import PersonsProcessor

        return PersonsProcessor()
    if fmt == "contacts":
        from ingestd.processors.contacts import ContactsProcessor

        return ContactsProcessor()
    raise ValueError(fmt)


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
        p = self.path.with_name(self.name + landing.HEADERS_SUFFIX)
        return p if os.path.lexists(p) else None  # a symlink too: it must be failed


class RecoveryFailed(Exception):
    """A leftover claim could not be finished. Already logged (``file.error``, naming
    the file); the claim stays in .processing/ and is retried."""

    def __init__(self, company: str, claim_id: str) -> None:
        super().__init__(f"{company}: recovery of claim {claim_id} failed")
        self.company = company
        self.claim_id = claim_id


@dataclass
class Outcome:
    status: str  # done | failed | busy | gone | changed
    final_path: Path | None = None
    result: dict[str, Any] = field(default_factory=dict)


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


def _lock_key(company: str) -> str:
    return f"ingestd.company:{company}"


def lock_company(conn: psycopg.Connection[Any], company: str) -> None:
    """Wait for the company's lock until the transaction ends (requeue, prune): meanwhile
    no instance claims, applies, recovers or finishes the company's files."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_lock_key(company),))


class Pipeline:
    """Claims, applies and finishes files. Thread-safe: each call uses its own connection."""

    def __init__(self, settings: Settings, db: Database, carrier: CarrierLookup,
                 tracker: Tracker | None = None) -> None:
        self.settings = settings
        self.db = db
        self.carrier = carrier
        self.tracker = tracker  # None: nobody watches progress
        self.root = settings.landing_root

    # -- per-company lock -------------------------------------------------------------

    @contextmanager
    def company_lock(self, company: str) -> Iterator[psycopg.Connection[Any] | None]:
        """Hold the company's session advisory lock, or yield None if someone else has it.

        Several instances may share a landing root: whoever holds the lock is the only
        one claiming, applying or recovering that company's files, which keeps drop order.
        """
        with self.db.pool.connection() as conn:
            conn.autocommit = True
            got = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))",
                               (_lock_key(company),)).fetchone()
            if not got or not got[0]:
                yield None
                return
            try:
                conn.autocommit = False
                yield conn
            finally:
                if not conn.closed and not conn.broken:
                    conn.rollback()
                    conn.autocommit = True
                    conn.execute("SELECT pg_advisory_unlock(hashtext(%s))",
                                 (_lock_key(company),))

    # -- the whole path for one ready file ---------------------------------------------

    def process(self, path: Path, name: str | None = None) -> Outcome:
        """Claim, apply and finish one ready file. ``name``: the name to keep, when
        ``path`` is a staged copy (``ingestd ingest`` of a file from elsewhere)."""
        company = path.parent.parent.name
        dirs = CompanyDirs(path.parent.parent)
        with self.company_lock(company) as conn:
            if conn is None:
                return Outcome("busy")
            self._recover_locked(conn, dirs)
            claim = self.claim(dirs, path, name)
            if claim is None:
                return Outcome("gone")
            return self._apply_and_finish(conn, claim)

    def claim(self, dirs: CompanyDirs, path: Path, name: str | None = None) -> Claim | None:
        """Atomic rename into .processing/<claim>/; None if someone else took it first."""
        try:
            dirs.ensure()
        except PermissionError as exc:
            # The company folder is root-owned (SFTP chroot): an admin makes these.
            raise RuntimeError(
                f"cannot create {exc.filename}: {exc.strerror}; create .processing (0700), "
                "done/ and failed/ for the ingestd user (README: Install as a service)"
            ) from exc
        claim = Claim(dirs, landing.new_claim_id(), name or path.name)
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
                self.apply(conn, claim)
            except FileChangedError:
                self._unclaim(claim)
                log.warning("file.changed", company=claim.company, file=claim.name,
                            reason="file changed while being read; will retry once it settles")
                return Outcome("changed")
            handle.alive()  # committed; the sidecars and the move come next
            return self._finish(conn, claim)

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
            target = claim.dirs.inbox / p.name
            if os.path.lexists(target):
                target = claim.dirs.inbox / landing.unique_name(claim.dirs.inbox, p.name)
            os.rename(p, target)
        claim.dir.rmdir()

    # -- apply: one transaction ---------------------------------------------------------

    def apply(self, conn: psycopg.Connection[Any], claim: Claim, *,
              dry_run: bool = False) -> dict[str, Any]:
        """Apply the claimed file and commit its rows with its ledger row; return result."""
        started = datetime.now(UTC)
        t0 = time.monotonic()
        path, company_id = claim.path, claim.company
        name = landing.display_name(claim.name)  # what the ledger, logs and sidecars say
        fmt = landing.format_for(name)
        st = os.lstat(path)
        error, sha, before = self._inspect(claim, name, self.settings.marker_mode)
        meta: dict[str, Any] = {}
        duplicate: tuple[int, str] | None = None
        results = RowResults(None, None)
        warnings: list[str] = []
        with conn.transaction(force_rollback=dry_run):
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                         (_lock_key(company_id) + ":apply",))
            company = get_company(conn, company_id)
            if error is not None:
                pass
            elif company is None:
                error = FileError(errors.INVALID_SCHEMA_NAME,
                                  f"company {company_id!r} is not set up")
            elif fmt is None:
                error = FileError(errors.UNSUPPORTED_FILE,
                                  f"{name}: unsupported file type; expected .persons or .csv")
            elif st.st_size == 0:
                error = FileError(errors.EMPTY_FILE, f"{name} is empty")
            file_id = ledger.insert(conn, company=company_id, name=name,
                                    claim_id=claim.claim_id, fmt=fmt, sha256=sha,
                                    size=st.st_size, started_at=started)
            if error is None and not self.settings.allow_duplicates:
                duplicate = ledger.find_duplicate(conn, company_id, sha, file_id)
            if error is None and duplicate is None and company is not None and fmt:
                results = RowResults(conn, file_id)
                ctx = ApplyContext(conn=conn, company=company, path=path, name=name,
                                   headers_path=claim.headers_path, results=results,
                                   settings=self.settings, carrier=self.carrier,
                                   warnings=warnings,
                                   # check writes nothing, not even the carrier cache
                                   side_pool=None if dry_run else self.db.pool,
                                   progress=progress.current())
                try:
                    with conn.transaction():  # savepoint: a file error undoes every row
                        if not dry_run:
                            failpoints.hit(failpoints.HANG_IN_APPLY)
                        processor_for(fmt).apply(ctx)
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
            ledger.complete(conn, file_id, result, meta, duplicate[0] if duplicate else None)
            if not dry_run:
                failpoints.hit(failpoints.BEFORE_COMMIT)
        if not dry_run:
            log.info("file.applied", company=company_id, file=name, status=result["status"],
                     rows=result["rows"], accepted=result["accepted"],
                     rejected=result["rejected"], duration_s=result["duration_s"])
        result["_sample_errors"] = results.sample_errors
        return result

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
    def _result(claim: Claim, fmt: str | None, sha: str, started: datetime, t0: float,
                results: RowResults, error: FileError | None,
                duplicate: tuple[int, str] | None, warnings: list[str]) -> dict[str, Any]:
        result: dict[str, Any] = {
            "status": "failed" if error else "done",
            "format": fmt,
            "company": claim.company,
            "file": landing.display_name(claim.name),
            "sha256": sha,
            "rows": results.rows,
            "accepted": results.accepted,
            "rejected": results.rejected,
            "rejected_by_class": dict(results.rejected_by_class),
            "started_at": started.isoformat(),
            "finished_at": datetime.now(UTC).isoformat(),
            "duration_s": round(time.monotonic() - t0, 3),
            "warnings": warnings,
        }
        if error is not None:
            result["error"] = {"class": error.error_class, "message": error.message}
        if duplicate is not None:
            result["duplicate_of"] = duplicate[1]
            result["warnings"] = [*warnings, f"same content as {duplicate[1]}, "
                                  "which was already applied: nothing applied again"]
        return result

    # -- finish: sidecars, then the move ------------------------------------------------

    def _finish(self, conn: psycopg.Connection[Any], claim: Claim) -> Outcome:
        failpoints.hit(failpoints.AFTER_COMMIT)
        entry = ledger.by_claim(conn, claim.claim_id)
        conn.commit()
        if entry is None:
            raise RuntimeError(f"no ledger row for claim {claim.claim_id}")
        dest = claim.dirs.done if entry.status == "done" else claim.dirs.failed
        if entry.final_path:
            final = Path(entry.final_path)
        else:
            # Recorded before anything is written, so a crash here re-finishes under
            # the same name instead of leaving orphan sidecars behind.
            final = dest / landing.unique_name(dest, claim.name)
            ledger.set_final_path(conn, entry.id, str(final))
            conn.commit()
        self._write_sidecars(conn, entry, final)
        failpoints.hit(failpoints.AFTER_SIDECARS)
        for p in sorted(claim.dir.iterdir(), key=lambda p: p.name == claim.name):
            # companions first, the file itself last: its arrival means "finished"
            suffix = p.name[len(claim.name):] if p.name.startswith(claim.name) else p.name
            os.rename(p, final.parent / (final.name + suffix))
        ledger.set_finished(conn, entry.id)
        conn.commit()
        try:
            claim.dir.rmdir()
        except OSError:
            pass
        result = entry.result
        event = "file.done" if entry.status == "done" else "file.failed"
        fields: dict[str, Any] = {
            "company": claim.company, "file": claim.name, "path": str(final),
            "format": result.get("format"), "rows": result.get("rows"),
            "accepted": result.get("accepted"), "rejected": result.get("rejected"),
            "rejected_by_class": result.get("rejected_by_class"),
            "duration_s": result.get("duration_s"),
        }
        if "error" in result:
            fields["error_class"] = result["error"]["class"]
            fields["error_message"] = result["error"]["message"]
        if "duplicate_of" in result:
            fields["duplicate_of"] = result["duplicate_of"]
        (log.info if entry.status == "done" else log.warning)(event, **fields)
        return Outcome(entry.status, final, result)

    def _write_sidecars(self, conn: psycopg.Connection[Any], entry: ledger.LedgerEntry,
                        final: Path) -> None:
        d, name = final.parent, final.name
        guard = self.settings.sidecar_formula_guard
        result = dict(entry.result)
        result["file"] = entry.name
        if final.name != entry.name:
            result["stored_as"] = final.name
        if entry.format == "persons" and entry.status == "done" \
                and "duplicate_of" not in result:
            columns = entry.meta.get("columns", [])
            sidecars.persons_errors(d, name, columns, ledger.rejected_rows(conn, entry.id),
                                    guard=guard)
            if result.get("rejected_by_class", {}).get(errors.TRANSIENT_LOOKUP_FAILURE):
                sidecars.persons_retry(
                    d, name, columns, entry.meta.get("delimiter", ","),
                    entry.meta.get("multi_select_delimiter", "|"),
                    (r.fields for r in ledger.rejected_rows(
                        conn, entry.id, errors.TRANSIENT_LOOKUP_FAILURE)))
        elif entry.format == "contacts":
            if entry.status == "done" and "duplicate_of" not in result:
                sidecars.contacts_accepted(d, name, ledger.accepted_rows(conn, entry.id),
                                           guard=guard)
                sidecars.contacts_rejected(
                    d, name, ((r.record, r.fields, r.message)
                              for r in ledger.rejected_rows(conn, entry.id)), guard=guard)
            glob = [("*", result["error"]["message"])] if "error" in result else []
            sidecars.contacts_global(d, name, glob, guard=guard)
        conn.commit()
        sidecars.result_json(d, name, result)

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
        entry = ledger.by_claim(conn, claim_dir.name)
        conn.commit()
        name = self._claimed_name(claim_dir) or (entry.name if entry else None)
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
            target = dirs.inbox / p.name
            if os.path.lexists(target):  # the partner sent a new one meanwhile: theirs wins
                p.unlink()
            else:
                os.rename(p, target)
        claim_dir.rmdir()

    def company_dirs(self) -> list[CompanyDirs]:
        if not self.root.is_dir():
            return []
        return [CompanyDirs(p) for p in sorted(self.root.iterdir())
                if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")]

    # -- check on demand ---------------------------------------------------------------

    def check(self, path: Path, company_id: str) -> dict[str, Any]:
        """Validate against the database in a transaction that is always rolled back."""
        claim = Claim(CompanyDirs(self.root / company_id), landing.new_claim_id(), path.name,
                      source=path)
        with self.db.pool.connection() as conn:
            return self.apply(conn, claim, dry_run=True)
