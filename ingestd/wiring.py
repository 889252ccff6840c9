"""`ingestd run`'s parts, built and wired once the database is there, started in order
and stopped in reverse: carrier → pipeline → scheduler ← watcher, the fleet, the
progress tracker, the metrics server and the pruner.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from ingestd import errors, landing, retention
from ingestd.db.database import Database
from ingestd.fleet import Fleet
from ingestd.lifecycle import Outcome, Pipeline
from ingestd.metrics import Metrics, ServerHandle, start_server
from ingestd.metrics import Outcome as FileOutcome
from ingestd.persons.carrier import EventHook, HttpCarrierLookup, make_carrier
from ingestd.progress import Tracker
from ingestd.scheduler import Scheduler
from ingestd.settings import Settings
from ingestd.supervisor import Health, MisplacedReport
from ingestd.watcher import Watcher

if TYPE_CHECKING:
    from ingestd.http.server import HttpServer

log = structlog.get_logger("ingestd.daemon")


def outcome_recorder(metrics: Metrics, given_back: Callable[[Path], None],
                     ) -> Callable[[str, Outcome, float], None]:
    """The scheduler's ``on_outcome``: each finished file into the metrics; a file given
    back unsettled to ``given_back``."""
    def record(company: str, outcome: Outcome, seconds: float) -> None:
        if outcome.status == "unsettled" and outcome.given_back is not None:
            given_back(outcome.given_back)
        r = outcome.result
        if r is None:
            return  # not finished: busy, gone or changed
        if r.error is not None and r.error.error_class == errors.INVALID_SCHEMA_NAME:
            # A folder that is not a set-up company: counted under its name, without
            # the zero series of every format and outcome a company gets.
            metrics.record_file(company, r.format or "unknown", "failed")
            return
        metrics.init_company(company)  # set up since the last refresh
        kind: FileOutcome = ("duplicate" if r.duplicate_of is not None
                             else "done" if r.status == "done" else "failed")
        metrics.record_file(company, r.format or "unknown", kind, r.accepted,
                            r.rejected_by_class, r.duration_s)
    return record


def carrier_recorder(metrics: Metrics) -> EventHook:
    """The carrier lookup's ``on_event``: lookups and retries into the metrics."""
    def record(event: str, outcome: str) -> None:
        if event == "lookup":
            metrics.record_carrier(outcome)
        elif event == "retry":
            metrics.record_carrier_retry()
    return record


@dataclass
class Parts:
    tracker: Tracker
    pipeline: Pipeline
    scheduler: Scheduler
    watcher: Watcher
    fleet: Fleet
    server: ServerHandle | None = None
    pruner: threading.Thread | None = None
    http: HttpServer | None = None
    on_outcome: Callable[[str, Outcome, float], None] | None = None

    @classmethod
    def build(cls, settings: Settings, db: Database, metrics: Metrics,
              health: Health) -> Parts:
        carrier = make_carrier(settings, on_event=carrier_recorder(metrics))
        if isinstance(carrier, HttpCarrierLookup):
            metrics.watch_carrier_circuit(carrier.circuit_open)
        tracker = Tracker(progress_seconds=settings.progress_seconds,
                          stuck_seconds=settings.stuck_seconds, pool=db.pool)
        pipeline = Pipeline(settings, db, carrier, tracker)

        def given_back(path: Path) -> None:
            watcher.poke(path)  # given back unsettled, still where it was: look again

        on_outcome = outcome_recorder(metrics, given_back)
        scheduler = Scheduler(pipeline.process, pipeline.recover, settings.workers,
                              on_outcome=on_outcome)
        misplaced = MisplacedReport(settings.landing_root, metrics, health)

        def on_rescan() -> None:
            # Leftover claims (a crash, a failed apply) are recovered under the company lock.
            for recovery in landing.leftover_claims(settings.landing_root):
                scheduler.submit(recovery)
            misplaced()

        watcher = Watcher(settings, scheduler.submit, on_rescan)
        metrics.watch_maybe_partial(watcher.held_count)
        # A stale peer's claims are recovered at once, not at the next rescan.
        fleet = Fleet(db, settings.lease_seconds, on_expired=lambda companies: watcher.rescan())
        pipeline.fleet = fleet
        return cls(tracker, pipeline, scheduler, watcher, fleet, on_outcome=on_outcome)

    def healthy(self) -> bool:
        """The watcher's and the workers' threads are running."""
        return self.watcher.alive() and self.scheduler.alive()

    def start(self, settings: Settings, metrics: Metrics, health: Health) -> None:
        self.fleet.start()
        self.tracker.start()
        self.scheduler.start()
        self.watcher.start()
        if settings.metrics_address:
            self.server = start_server(
                settings.metrics_address,
                health=lambda: {"alive": True, "database": health.db_ok,
                                "observer": self.watcher.alive(),
                                "workers": self.scheduler.alive()},
                ready=lambda: health.started and health.db_ok and self.watcher.alive(),
                metrics=metrics)
        if settings.http_address:
            from ingestd.http.intake import Intake
            from ingestd.http.server import HttpServer

            self.http = HttpServer(Intake(settings, self.pipeline.db, self.pipeline,
                                          on_outcome=self.on_outcome), metrics)
            self.http.start()

    def start_pruner(self, settings: Settings, db: Database, stop: threading.Event) -> None:
        if settings.retention_days:
            self.pruner = retention.start_pruner(settings, db, stop)

    def stop(self, db: Database, deadline: float, stop_timeout: float) -> bool:
        """Stop in reverse, by ``deadline`` (monotonic) even with the database silent;
        whether every thread has ended (else one still waits on the database)."""
        self.watcher.stop()
        if self.http is not None:  # requests in hand are answered first
            self.http.stop(max(0.0, deadline - time.monotonic()))
        finished = self.scheduler.stop(max(0.0, deadline - time.monotonic()))

        def wind_down() -> None:
            self.tracker.stop()
            self.fleet.stop()
            if self.server is not None:
                self.server.stop()
            if self.pruner is not None:
                self.pruner.join(max(0.0, deadline - time.monotonic()))
            db.close()

        wound_down = _within(deadline - time.monotonic(), wind_down)
        if not (finished and wound_down):
            log.warning("daemon.stop_timeout", seconds=stop_timeout,
                        note="unfinished files roll back and are recovered at next start")
        return wound_down and self.scheduler.stopped()


def _within(seconds: float, steps: Callable[[], None]) -> bool:
    """Run ``steps`` on a thread of its own; whether they ended within ``seconds``."""
    def guarded() -> None:
        try:
            steps()
        except Exception:  # the stop goes on whatever one step did: log it, not raise
            log.exception("daemon.stop_failed")

    thread = threading.Thread(target=guarded, name="ingestd-stop", daemon=True)
    thread.start()
    thread.join(max(0.0, seconds))
    return not thread.is_alive()
