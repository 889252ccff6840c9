"""`ingestd requeue`: put a finished file back into its company's inbox/ as a new drop.

For after the cause of a failure was fixed (the company set up, a field definition
corrected, the carrier service back). The file and its companions go back under the
name they were dropped with; its result files are deleted (the ledger keeps the
history); and the requeue is recorded, so the next apply of that content is not
turned away as a duplicate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import structlog

from ingestd import landing
from ingestd.db import ledger, locks
from ingestd.errors import IngestdError
from ingestd.lifecycle import sha256_of
from ingestd.settings import Settings

log = structlog.get_logger("ingestd.requeue")


class RequeueError(IngestdError):
    """Why this path cannot be requeued: one line, naming the path."""


@dataclass
class Requeued:
    company: str
    source: Path
    target: Path


def locate(path: Path, landing_root: Path) -> tuple[str, str, str]:
    """(company, done|failed, name) of a path in a company's done/ or failed/ folder."""
    # The folders are resolved, the file itself is not: a symlink named is not followed.
    full = Path(os.path.realpath(path.parent)) / path.name
    root = Path(os.path.realpath(landing_root))
    try:
        parts = full.relative_to(root).parts
    except ValueError:
        raise RequeueError(f"{path}: not under the landing root {root}") from None
    if len(parts) != 3 or parts[1] not in (landing.DONE, landing.FAILED):
        raise RequeueError(f"{path}: not a file in a company's done/ or failed/ folder")
    return parts[0], parts[1], parts[2]


def requeue(conn: psycopg.Connection[Any], settings: Settings, path: Path) -> Requeued:
    """Move one finished file back into its company's inbox/; RequeueError says why not."""
    company, folder, name = locate(path, settings.landing_root)
    source = settings.landing_root.absolute() / company / folder / name
    if not os.path.lexists(source):
        raise RequeueError(f"{path}: no such file")
    if landing.display_name(name) != name:
        # ingestd never finishes a file under a name that is not UTF-8
        raise RequeueError(f"{path}: not a file ingestd finished (no ledger row for it)")
    with conn.transaction():
        locks.xact_lock(conn, locks.company(company))
        entry = ledger.finished_at(conn, company, folder, name)
        if entry is None:
            raise RequeueError(_why_not_finished(conn, settings, path, company, folder, name))
        dirs = landing.CompanyDirs(settings.landing_root.absolute() / company)
        if not dirs.inbox.is_dir():
            raise RequeueError(f"{path}: the company has no inbox folder {dirs.inbox}")
        # The name as dropped, unless it was one that cannot be kept (then as stored).
        dropped = entry.name if landing.name_problem(entry.name) is None else name
        target = dirs.inbox / landing.unique_name(dirs.inbox, dropped)
        comps = landing.companions(source.parent, name, settings.marker_mode)
        try:
            sha = sha256_of(source, next((c for c in comps
                                          if c.name.endswith(landing.HEADERS_SUFFIX)), None))
        except OSError:
            sha = entry.sha256  # unreadable to us; the daemon will say so again
        ledger.mark_requeued(conn, entry, sha)
        _move(source, comps, target, path)
        for suffix in landing.RESULT_SUFFIXES:
            try:
                os.unlink(source.parent / (name + suffix))
            except FileNotFoundError:
                pass
    log.info("file.requeued", company=company, file=entry.name, path=str(source),
             to=str(target))
    return Requeued(company, source, target)


def _move(source: Path, comps: list[Path], target: Path, shown: Path) -> None:
    # A requeued file is a new drop: it goes after the files already waiting (drop order
    # is mtime, then name). Touched before the move, so the watcher sees only the rename.
    try:
        os.utime(source)
    except PermissionError:
        pass  # the partner owns it; it keeps its old place in the drop order
    moved: list[tuple[Path, Path]] = []
    try:
        # Companions first: a .headers file must be there when its CSV is seen.
        for comp in [*comps, source]:
            dest = target.with_name(target.name + comp.name[len(source.name):])
            os.rename(comp, dest)
            moved.append((comp, dest))
    except OSError as exc:
        for back, dest in reversed(moved):
            os.rename(dest, back)
        raise RequeueError(f"{shown}: cannot move it to {target.parent}: {exc.strerror}") \
            from None


def _why_not_finished(conn: psycopg.Connection[Any], settings: Settings, path: Path,
                      company: str, folder: str, name: str) -> str:
    suffixes = [*landing.RESULT_SUFFIXES, landing.HEADERS_SUFFIX]
    if settings.marker_mode:
        suffixes.append(landing.MARKER_SUFFIX)
    for suffix in suffixes:
        base = name[:-len(suffix)]
        if name.endswith(suffix) and base \
                and ledger.finished_at(conn, company, folder, base) is not None:
            return f"{path}: a result file of {base}; requeue {path.with_name(base)} itself"
    return f"{path}: not a file ingestd finished (no ledger row for it)"
