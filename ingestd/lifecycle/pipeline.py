"""One ready file's whole life, from the parts: hold → claim → apply → finish.

``Pipeline`` only wires the parts together and keeps the file's in-hand row for the
time it is in hand; each part gets the file's ``FileContext`` and nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from pathlib import Path

import structlog

from ingestd import formats, landing, progress
from ingestd.db import ledger
from ingestd.db.database import Database
from ingestd.errors import FileChangedError, NotSettled
from ingestd.fleet import Fleet
from ingestd.lifecycle import claim as claiming
from ingestd.lifecycle.apply import Applying
from ingestd.lifecycle.context import Claim, FileContext, Held, Outcome
from ingestd.lifecycle.finish import finish
from ingestd.lifecycle.recovery import Recovery
from ingestd.progress import Tracker
from ingestd.results import FileResult
from ingestd.settings import Settings
from ingestd.work import Drop, Recover

log = structlog.get_logger("ingestd.lifecycle")

Then = Callable[[Drop, Outcome], Drop | None]


class Pipeline:
    """Claims, applies and finishes files. Thread-safe: each call uses its own connection."""

    def __init__(self, settings: Settings, db: Database, carrier: formats.CarrierLookup,
                 tracker: Tracker | None = None) -> None:
        self.settings = settings
        self.db = db
        # None: nobody watches progress
        self.registry = tracker.registry if tracker is not None else None
        self.rows = tracker.rows if tracker is not None else None
        self.root = settings.landing_root
        self.fleet: Fleet | None = None  # set by `ingestd run`: company leases
        # `check` looks up uncached: it writes nothing
        self.applying = Applying(settings, carrier, formats.cached_carrier(
            carrier, db.pool, settings.carrier_cache_ttl))
        self.recovery = Recovery(settings.marker_mode, self._apply_and_finish, self._finish,
                                 self.rows)

    def process(self, drop: Drop, name: str | None = None, *,
                then: Then | None = None) -> Outcome:
        """Claim, apply and finish one ready file. ``name``: the name to keep, when the
        drop is a staged copy (``ingestd ingest`` of a file from elsewhere).

        ``then`` is told each file's outcome while the company is still held and
        answers the company's next file to do under the same lock and lease, or None
        to let go: a backlog then pays for taking them once, not once a file. The
        return value is the last file's outcome ("busy" and "fenced" never reach
        ``then``)."""
        with claiming.hold(self.db, self.fleet, landing.drop_dirs(drop)) as held:
            if held is None:
                return Outcome("busy")
            while True:
                outcome = self._process_held(held, drop, name)
                following = then(drop, outcome) if then is not None else None
                if following is None:
                    return outcome
                drop, name = following, None
        # Reached when fleet.holding swallowed a fence (logged): mypy cannot tell.
        return Outcome("fenced")  # type: ignore[unreachable]

    def process_waiting(self, drop: Drop, name: str | None = None) -> Outcome:
        """``process`` one file, waiting for its company's lock if another worker or
        instance holds it (``ingestd ingest``): never "busy"."""
        with claiming.hold(self.db, self.fleet, landing.drop_dirs(drop), wait=True) as held:
            if held is None:
                return Outcome("busy")
            return self._process_held(held, drop, name)
        return Outcome("fenced")  # type: ignore[unreachable]

    def recover(self, work: Recover) -> None:
        """Finish or redo the company's leftover claims, if it can be held now."""
        dirs = landing.company_dirs_of(self.root, work.company)
        with claiming.hold(self.db, self.fleet, dirs) as held:
            if held is not None:
                self.recovery.run(held, self.fleet)

    def process_spooled(self, spool: Path, name: str, claim_id: str) -> Outcome:
        """An HTTP request's body (``landing.spool_path``): claimed as ``claim_id`` and
        applied like a drop, under the company lock, after the company's leftover claims.

        A client that retries after a crash brings the same claim id: if an earlier
        attempt's body was claimed, recovery applies it first, and then this spool is
        dropped and that outcome returned, so the body is applied once. "busy": another
        worker or instance holds the company; try again."""
        dirs = landing.spool_dirs(spool)
        with claiming.hold(self.db, self.fleet, dirs) as held:
            if held is None:
                return Outcome("busy")
            self.recovery.run(held, self.fleet)
            entry = ledger.by_claim(held.conn, claim_id)
            held.conn.commit()
            if entry is None:
                taken = claiming.claim(held, spool, name, self.settings.marker_mode,
                                       claim_id=claim_id)
                if taken is not None:
                    return self._apply_and_finish(FileContext(held, taken))
                entry = ledger.by_claim(held.conn, claim_id)
                held.conn.commit()
            for p in [spool, *landing.companions(spool.parent, spool.name)]:
                p.unlink(missing_ok=True)
            if entry is None:
                return Outcome("gone")
            final = Path(entry.final_path) if entry.final_path else None
            return Outcome("done" if entry.status == "done" else "failed", final,
                           FileResult.from_json(entry.result))
        return Outcome("fenced")  # type: ignore[unreachable]

    def check(self, path: Path, company_id: str, *, request_id: str | None = None,
              name: str | None = None) -> FileResult:
        """Validate against the database in a transaction that is always rolled back.
        ``request_id``: the HTTP request whose body this is (its rules apply)."""
        dirs = landing.company_dirs_of(self.root, company_id)
        taken = Claim(dirs, landing.new_claim_id(request_id), name or path.name,
                      source=path)
        with self.db.pool.connection() as conn:
            return self.applying.apply(FileContext(Held(dirs, conn), taken), dry_run=True)[0]

    def _process_held(self, held: Held, drop: Drop, name: str | None) -> Outcome:
        self.recovery.run(held, self.fleet)  # a listing: cheap when there is nothing left
        try:
            taken = claiming.claim(held, drop.path, name, self.settings.marker_mode,
                                   drop.settled)
        except NotSettled as exc:
            log.info("file.not_settled", company=drop.company, file=drop.name,
                     reason=str(exc))
            return Outcome("unsettled", given_back=drop.path)
        if taken is None:
            return Outcome("gone")
        return self._apply_and_finish(FileContext(held, taken))

    def _apply_and_finish(self, ctx: FileContext) -> Outcome:
        with self._in_hand(ctx.claim) as handle:
            ctx = replace(ctx, progress=handle)
            try:
                applied, entry = self.applying.apply(ctx)
            except FileChangedError:
                claiming.unclaim(ctx)
                log.warning("file.changed", company=ctx.claim.company, file=ctx.claim.name,
                            reason="file changed while being read; will retry once it settles")
                return Outcome("changed")
            handle.alive()  # committed; the sidecars and the move come next
            outcome = finish(ctx, self.settings.sidecar_formula_guard, self.rows, entry)
            if outcome.result is not None:  # rebuilt from the ledger: add what it keeps not
                outcome.result.sample_errors = applied.sample_errors
            return outcome

    def _finish(self, ctx: FileContext) -> Outcome:
        return finish(ctx, self.settings.sidecar_formula_guard, self.rows)

    def _in_hand(self, taken: Claim) -> AbstractContextManager[progress.Handle]:
        if self.registry is None:
            return nullcontext(progress.NO_PROGRESS)
        try:
            size = os.lstat(taken.path).st_size
        except OSError:
            size = 0
        return self.registry.tracking(taken.company, landing.display_name(taken.name),
                                     taken.claim_id, size)
