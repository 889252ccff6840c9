"""Recovery: finish or redo every claim left in .processing/ (a crash, a failed apply).

The ledger makes it exactly once: a claim whose ledger row committed is only
finished, never applied again; one without is applied from the start. Only run
under the company lock, so no live worker anywhere owns these claims.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import structlog

from ingestd import landing, sidecars
from ingestd.db import ledger
from ingestd.db.liveness import is_connection_error
from ingestd.errors import RecoveryFailed
from ingestd.fleet import Fleet
from ingestd.lifecycle import claim as claiming
from ingestd.lifecycle.context import Claim, FileContext, Held, Outcome
from ingestd.progress import InHandRows

log = structlog.get_logger("ingestd.lifecycle")

Step = Callable[[FileContext], Outcome]


class Recovery:
    """``apply_and_finish`` redoes a claim never applied; ``finish`` one that was."""

    def __init__(self, marker_mode: bool, apply_and_finish: Step, finish: Step,
                 rows: InHandRows | None) -> None:
        self.marker_mode = marker_mode
        self._apply_and_finish = apply_and_finish
        self._finish = finish
        self._rows = rows

    def run(self, held: Held, fleet: Fleet | None) -> None:
        """Every claim of the held company; ``RecoveryFailed`` for the first that fails
        (logged here, naming the file: the caller only knows the company)."""
        processing = held.dirs.processing
        if not processing.is_dir():
            return
        swept = False
        for claim_dir in sorted(processing.iterdir()):
            if not claim_dir.is_dir() or claim_dir.is_symlink():
                continue
            if not swept:
                # A kill while a sidecar was written leaves its temporary file, and always
                # a claim too (the file moves after its sidecars): sweep them here, once.
                swept = True
                for d in (held.dirs.done, held.dirs.failed):
                    sidecars.remove_temp_files(d)
            try:
                self._recover_claim(held, claim_dir)
            # Whatever failed (the database, the disk, a bug), the claim stays for the
            # next try, and the company's other claims must not be tried out of order.
            except Exception as exc:
                if fleet is not None and held.lease is not None and fleet.lost(held.lease):
                    raise  # not this file's fault: fleet.holding logs instance.fenced
                if is_connection_error(exc):
                    log.warning("db.connection_lost", company=held.company,
                                file=self._claimed_name(claim_dir), claim=claim_dir.name,
                                stage="recovery", error=str(exc).strip())
                else:
                    log.exception("file.error", company=held.company,
                                  file=self._claimed_name(claim_dir), claim=claim_dir.name,
                                  stage="recovery")
                raise RecoveryFailed(held.company, claim_dir.name) from exc

    def _claimed_name(self, claim_dir: Path) -> str | None:
        """The file's own name in its claim folder (the ledger holds it as text, which
        may differ); None once it has been moved out."""
        try:
            names = [p.name for p in claim_dir.iterdir()
                     if not landing.is_companion(p.name, self.marker_mode)]
        except OSError:
            return None
        return names[0] if names else None

    def _recover_claim(self, held: Held, claim_dir: Path) -> None:
        on_disk = self._claimed_name(claim_dir)
        held.working_on(on_disk or claim_dir.name)
        entry = ledger.by_claim(held.conn, claim_dir.name)
        held.conn.commit()
        name = on_disk or (entry.name if entry else None)
        if name is None:
            # Crashed while claiming (between mkdir and the renames) or giving back:
            # the file is in the inbox and any companion here must rejoin it there.
            # Deleting it would drop a CSV's precondition, or in marker mode the
            # marker its file waits for.
            claiming.give_back(held, claim_dir)
            return
        ctx = FileContext(held, Claim(held.dirs, claim_dir.name, name))
        action = "finish" if entry is not None else "apply"
        log.info("file.recovered", company=held.company, file=name,
                 claim=claim_dir.name, action=action)
        if self._rows is not None:
            # Its owner died in hand, maybe with a row; ours is written only if the file
            # lasts to a progress tick, so theirs is not taken over.
            self._rows.discard(claim_dir.name)
        if entry is not None:
            self._finish(ctx)
        else:
            self._apply_and_finish(ctx)
