"""Retention: delete finished files, their sidecars and stored row results after a while.

The ledger row stays (marked ``pruned_at``): its sha256 still makes a re-drop of the
same content a duplicate, and ``ingestd status`` still shows the file's history.
``ingestd prune`` does it on demand; with ``retention_days`` the daemon does it hourly.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import structlog

from ingestd import landing
from ingestd.db import ledger, locks
from ingestd.db.database import Database
from ingestd.settings import Settings

log = structlog.get_logger("ingestd.retention")

INTERVAL_SECONDS = 3600.0  # how often the daemon prunes with retention_days set


@dataclass
class Pruned:
    """What one company's pruning deleted (or would delete, in a dry run)."""

    company: str
    files: list[Path] = field(default_factory=list)  # the finished files themselves
    paths: list[Path] = field(default_factory=list)  # those, their companions and sidecars
    bytes: int = 0  # the files, their companions and their result files


def prune(conn: psycopg.Connection[Any], settings: Settings, older_than_days: int, *,
          dry_run: bool = False) -> list[Pruned]:
    """Prune every file that finished at least ``older_than_days`` days ago (0: all)."""
    report = []
    companies = ledger.companies_finished_before(conn, older_than_days)
    conn.commit()  # each company in a transaction of its own, holding its lock
    for company in companies:
        with conn.transaction(force_rollback=dry_run):
            # Under the company's lock: a requeue or a finish cannot move files meanwhile.
            locks.xact_lock(conn, locks.company(company))
            pruned = Pruned(company)
            for entry in ledger.finished_before(conn, company, older_than_days):
                if entry.requeued_at is None:  # else the file is no longer there
                    _delete(settings, entry, pruned, dry_run)
                if not dry_run:
                    ledger.mark_pruned(conn, entry.id)
        report.append(pruned)
        log.info("files.pruned", company=company, files=len(pruned.files), bytes=pruned.bytes,
                 older_than_days=older_than_days, dry_run=dry_run)
    return report


def _delete(settings: Settings, entry: ledger.FinishedFile, pruned: Pruned,
            dry_run: bool) -> None:
    stored = Path(entry.final_path)
    # Where the file is under this landing root (final_path is as absolute as the
    # landing root of whoever finished it).
    final = settings.landing_root.absolute() / entry.company / stored.parent.name / stored.name
    paths = [final, *landing.companions(final.parent, final.name, settings.marker_mode),
             *(final.with_name(final.name + s) for s in landing.RESULT_SUFFIXES)]
    for p in paths:
        try:
            size = os.lstat(p).st_size
            if not dry_run:
                os.unlink(p)
        except FileNotFoundError:
            continue  # already gone (deleted by hand, or this is a retry)
        pruned.bytes += size
        pruned.paths.append(p)
        if p == final:
            pruned.files.append(final)


def days_to_keep(settings: Settings, older_than: int | None) -> int | None:
    """``ingestd prune``'s age: ``--older-than`` if given, else ``retention_days`` when set
    (0 there means keep forever); None when neither says."""
    if older_than is not None:
        return older_than
    return settings.retention_days or None


def start_pruner(settings: Settings, db: Database, stop: threading.Event) -> threading.Thread:
    """Prune by ``retention_days`` now and then hourly until ``stop`` is set."""
    def loop() -> None:
        while True:
            try:
                with db.pool.connection() as conn:
                    prune(conn, settings, settings.retention_days)
            except Exception:  # the database may be down: the next round retries
                log.exception("files.prune_failed")
            if stop.wait(INTERVAL_SECONDS):
                return

    thread = threading.Thread(target=loop, name="ingestd-pruner", daemon=True)
    thread.start()
    return thread
