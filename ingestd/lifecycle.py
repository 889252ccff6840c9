"""A file's life: claim → apply (one transaction with its ledger row) → sidecars → move.

This is where files move (``claim``, ``_finish``) and where the ledger makes it
exactly once: a file in ``.processing/`` whose ledger row committed is only
finished, never applied again (``recover_company``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import structlog

from ingestd import errors, failpoints, landing, sidecars
from ingestd.carrier import CarrierLookup
from ingestd.db import ledger
from ingestd.db.companies import get_company
from ingestd.db.database import Database
from ingestd.errors import FileChangedError, FileError
from ingestd.landing import CompanyDirs
from ingestd.processors.base import ApplyContext, Processor, RowResults
from ingestd.settings import Settings

log = structlog.get_logger("ingestd.lifecycle")


def processor_for(fmt: str) -> Processor:
    # Imported lazily: a processor pulls in its format's parser and rules.
    if fmt == "persons":
        from ingestd.processors.persons import PersonsProcessor

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
        return p if p.exists() else None


@dataclass
class Outcome:
    status: str  # done | failed | busy | gone | changed
    final_path: Path | None = None
    result: dict[str, Any] = field(default_factory=dict)


def sha256_of(path: Path, companion: Path | None = None) -> str:
    """The file's content hash; a companion (NAME.csv.headers) is part of the content,
    so a CSV re-sent with the precondition it lacked is not taken for a duplicate."""
    h = hashlib.sha256()
    for p in (path, companion) if companion else (path,):
        if p is companion:
            h.update(b"\0" + p.name[len(path.name):].encode() + b"\0")
        with open(p, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def _stat_key(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_size, st.st_mtime_ns


def _lock_key(company: str) -> str:
    return f"ingestd.company:{company}"


class Pipeline:
    """Claims, applies and finishes files. Thread-safe: each call uses its own connection."""

    def __init__(self, settings: Settings, db: Database, carrier: CarrierLookup) -> None:
        self.settings = settings
        self.db = db
        self.carrier = carrier
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
        try:
            self.apply(conn, claim)
        except FileChangedError:
            self._unclaim(claim)
            log.warning("file.changed", company=claim.company, file=claim.name,
                        reason="file changed while being read; will retry once it settles")
            return Outcome("changed")
        return self._finish(conn, claim)

    def _unclaim(self, claim: Claim) -> None:
        for p in list(claim.dir.iterdir()):
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
        error, sha, before = self._inspect(claim, name)
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
                                   side_pool=None if dry_run else self.db.pool)
                try:
                    with conn.transaction():  # savepoint: a file error undoes every row
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
    def _inspect(claim: Claim, name: str) -> tuple[FileError | None, str, tuple[int, int]]:
        """What can be known before the transaction: a file-level problem, or the content
        hash and the (size, mtime) that must still hold after reading."""
        path = claim.path
        bad_name = landing.name_problem(claim.name)
        if bad_name is not None:
            return FileError(errors.INVALID_FILE_NAME, f"{name}: {bad_name}"), "", (0, 0)
        if not landing.is_regular(path):
            kind = "a symbolic link" if os.path.islink(path) else "not a regular file"
            return FileError(errors.NOT_A_REGULAR_FILE,
                             f"{name} is {kind}; only regular files are imported"), "", (0, 0)
        before = _stat_key(path)
        try:
            return None, sha256_of(path, claim.headers_path), before
        except OSError as exc:  # e.g. uploaded with mode 0600: we may move it, not read it
            return FileError(errors.UNREADABLE_FILE,
                             f"{name} cannot be read by ingestd: {exc.strerror}"), "", before

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
        result = dict(entry.result)
        result["file"] = entry.name
        if final.name != entry.name:
            result["stored_as"] = final.name
        if entry.format == "persons" and entry.status == "done" \
                and "duplicate_of" not in result:
            columns = entry.meta.get("columns", [])
            sidecars.persons_errors(
                d, name, columns,
                ((r, c, m, f) for r, c, m, f in ledger.rejected_rows(conn, entry.id)))
            if result.get("rejected_by_class", {}).get(errors.TRANSIENT_LOOKUP_FAILURE):
                sidecars.persons_retry(
                    d, name, columns, entry.meta.get("delimiter", ","),
                    entry.meta.get("multi_select_delimiter", "|"),
                    (f for _, _, _, f in ledger.rejected_rows(
                        conn, entry.id, errors.TRANSIENT_LOOKUP_FAILURE)))
        elif entry.format == "contacts":
            if entry.status == "done" and "duplicate_of" not in result:
                sidecars.contacts_accepted(d, name, ledger.accepted_rows(conn, entry.id))
                sidecars.contacts_rejected(
                    d, name, ((r, f, m) for r, _, m, f in ledger.rejected_rows(conn, entry.id)))
            glob = [("*", result["error"]["message"])] if "error" in result else []
            sidecars.contacts_global(d, name, glob)
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
        for claim_dir in sorted(dirs.processing.iterdir()):
            if not claim_dir.is_dir() or claim_dir.is_symlink():
                continue
            entry = ledger.by_claim(conn, claim_dir.name)
            conn.commit()
            marker = self.settings.marker_mode
            names = [p.name for p in claim_dir.iterdir()
                     if not landing.is_companion(p.name, marker)]
            # The file's own name (the ledger holds it as text, which may differ).
            name = names[0] if names else (entry.name if entry else None)
            if name is None:
                shutil.rmtree(claim_dir, ignore_errors=True)  # crashed between mkdir and rename
                continue
            claim = Claim(dirs, claim_dir.name, name)
            if entry is not None:
                log.info("file.recovered", company=dirs.company, file=name,
                         claim=claim.claim_id, action="finish")
                self._finish(conn, claim)
            else:
                log.info("file.recovered", company=dirs.company, file=name,
                         claim=claim.claim_id, action="apply")
                self._apply_and_finish(conn, claim)

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
