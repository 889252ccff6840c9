"""Files held back as likely partial uploads, as ``ingestd status`` shows them.

The watcher knows which files it holds; ``status`` runs in another process, maybe on
another host sharing the landing root. So the watcher writes the company's held files
to ``.processing/.held.json`` (the daemon's own folder, never the partner's) whenever
they change, by a temporary file and a rename, and ``status`` reads it. Claim folders
are directories; this is the one file there, and recovery passes it by.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ingestd.landing import CompanyDirs

HELD_FILE = ".held.json"


def write(dirs: CompanyDirs, files: list[dict[str, Any]]) -> None:
    """Replace the company's list: each ``{"file", "size", "since", "until"}``."""
    path = dirs.processing / HELD_FILE
    if not files:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        return
    dirs.processing.mkdir(mode=0o700, exist_ok=True)
    tmp = path.with_name(f"{HELD_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"files": files}, sort_keys=True))
    os.replace(tmp, path)


def read(dirs: CompanyDirs) -> list[dict[str, Any]]:
    """The company's held files whose grace period has not ended (a list left behind by
    a daemon that was killed says nothing once its time is past)."""
    try:
        data = json.loads((dirs.processing / HELD_FILE).read_text())
    except (OSError, ValueError):
        return []
    files = data.get("files") if isinstance(data, dict) else None
    now = iso(datetime.now(UTC).timestamp())
    return [f for f in files if isinstance(f, dict) and str(f.get("until", "")) >= now
            ] if isinstance(files, list) else []


def iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds")


def is_claim_dir(p: Path) -> bool:
    """A claim folder in .processing/ (not this module's file, nor its temporary)."""
    return not p.name.startswith(".")
