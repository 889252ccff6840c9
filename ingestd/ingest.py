"""`ingestd ingest PATH`: one file through the same claim, apply, finish path, now.

Under the same company lock as the daemon, so it is safe next to a running one: if a
daemon holds the company, this waits in PostgreSQL's lock queue until it lets go (a
wait on the lock itself, not a polling loop). A file from outside the landing root
is first copied into the company's inbox/ under an in-flight name (which a daemon
never takes) and keeps its own name.
"""

from __future__ import annotations

import os
import shutil
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TextIO

from ingestd import landing, logs, progress_bar
from ingestd.db.database import Database
from ingestd.errors import IngestdError
from ingestd.lifecycle import Outcome, Pipeline
from ingestd.persons.carrier import make_carrier
from ingestd.progress import Tracker
from ingestd.settings import Settings


class NotImportable(IngestdError):
    """Only a regular file can be copied in (in an inbox, the pipeline fails the rest)."""


def check_importable(path: Path, dirs: landing.CompanyDirs) -> None:
    """``NotImportable`` for a directory, FIFO or the like from outside the inbox."""
    if _outside(path, dirs) and not landing.is_regular(path):
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise NotImportable(f"{path} is {kind}; only regular files are imported")


def ingest(settings: Settings, db: Database, path: Path, company: str, *,
           terminal: TextIO | None = None, quiet: tuple[str, ...] = ()) -> Outcome:
    """Apply ``path`` for ``company`` and finish it; ``terminal``: draw a progress bar
    there (else ``file.progress`` log lines say the same), the loggers ``quiet`` left
    out of the lines shown above it."""
    dirs = landing.company_dirs_of(settings.landing_root, company)
    check_importable(path, dirs)
    dirs.inbox.mkdir(parents=True, exist_ok=True)
    # the company lock, the carrier cache and the progress rows (ingestd.in_hand)
    tracker = Tracker(progress_seconds=settings.progress_seconds,
                      stuck_seconds=settings.stuck_seconds, pool=db.pool,
                      log_lines=terminal is None)
    staged: list[Path] = []
    tracker.start()
    try:
        source = (_stage(path, dirs.inbox, settings.marker_mode, staged)
                  if _outside(path, dirs) else path)
        pipeline = Pipeline(settings, db, make_carrier(settings), tracker)
        with _view(tracker, terminal, settings, quiet):
            return pipeline.process_waiting(landing.drop(source, 0), name=path.name)
    finally:
        tracker.stop()
        for p in staged:  # copies the pipeline did not claim (interrupted)
            if os.path.lexists(p):
                p.unlink()


def _outside(path: Path, dirs: landing.CompanyDirs) -> bool:
    return path.parent.absolute() != dirs.inbox.absolute()


def _view(tracker: Tracker, terminal: TextIO | None, settings: Settings,
          quiet: tuple[str, ...]) -> AbstractContextManager[None]:
    if terminal is None:
        return nullcontext()

    def relog(stream: TextIO) -> None:
        logs.configure("info", settings.log_format, stream=stream, quiet=quiet)
    return progress_bar.bar(tracker, terminal, relog)


def _stage(path: Path, inbox: Path, marker_mode: bool, staged: list[Path]) -> Path:
    """Copy a file from elsewhere into the inbox under an in-flight name, so a running
    daemon leaves it alone; the pipeline keeps ``path.name`` as the file's name."""
    target = inbox / f".ingest-{landing.new_claim_id()}-{path.name}"
    for comp in landing.companions(path.parent, path.name, marker_mode):
        staged.append(inbox / (target.name + comp.name[len(path.name):]))
        shutil.copy2(comp, staged[-1])
    staged.append(target)
    shutil.copy2(path, target, follow_symlinks=False)
    return target
