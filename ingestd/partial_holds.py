"""Likely partial uploads: which settled files the watcher holds back, and for how long.

Likely partial: written in place (not renamed in from an in-flight name; a file no
event told us about counts as written in place), and its last record has no line
break, which is where a killed upload almost always stops. It waits
``partial_grace_seconds`` for the client's retry to replace it (a newer version is a
new candidate: its clock starts again), then goes on, flagged. The files held are
written where ``ingestd status`` reads them (``ingestd.held``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from ingestd import held, landing, readiness
from ingestd.settings import Settings

if TYPE_CHECKING:
    from ingestd.settling import Candidate

log = structlog.get_logger("ingestd.watcher")


class PartialHolds:
    def __init__(self, settings: Settings, root: Path) -> None:
        self.settings = settings
        self.root = root
        self._held: dict[str, list[dict[str, object]]] = {}  # company -> as last written

    def hold(self, path: Path, cand: Candidate, now: float) -> float | None:
        """Until when a settled file is held as a likely partial upload, or None."""
        grace = self.settings.partial_grace_seconds
        if grace <= 0 or self.settings.marker_mode or cand.arrival == "renamed":
            return None
        if cand.partial is None:
            cand.partial = readiness.ends_without_line_break(path)
        if not cand.partial:
            return None
        if cand.held_until is None:
            cand.held_until, cand.held_at = now + grace, time.time()
            log.warning("file.maybe_partial", company=landing.drop_company(path),
                        file=path.name, size=cand.key[0], arrival=cand.arrival,
                        grace_s=grace,
                        reason="written in place and its last record has no line break: "
                               "held for a newer upload, then applied with a warning")
        return cand.held_until if cand.held_until > now else None

    def publish(self, candidates: dict[Path, Candidate]) -> None:
        """Write each company's held files where ``ingestd status`` reads them, when
        they changed."""
        by_company: dict[str, list[dict[str, object]]] = {}
        now = time.monotonic()
        for path, cand in candidates.items():
            if cand.held_until is not None and cand.held_until > now:
                by_company.setdefault(landing.drop_company(path), []).append({
                    "file": landing.display_name(path.name), "size": cand.key[0],
                    "since": held.iso(cand.held_at),
                    "until": held.iso(cand.held_at + self.settings.partial_grace_seconds),
                })
        for company in set(by_company) | set(self._held):
            files = sorted(by_company.get(company, []), key=lambda f: str(f["file"]))
            if files == self._held.get(company, []):
                continue
            try:
                held.write(landing.company_dirs_of(self.root, company), files)
            except OSError as exc:
                log.warning("watcher.held_not_written", company=company, error=str(exc))
                continue
            if files:
                self._held[company] = files
            else:
                self._held.pop(company, None)

    def count(self) -> int:
        return sum(len(f) for f in list(self._held.values()))  # read from another thread

    def release(self) -> None:
        """Nobody holds them any more (the watcher stops)."""
        for company in list(self._held):
            try:
                held.write(landing.company_dirs_of(self.root, company), [])
            except OSError:
                pass
