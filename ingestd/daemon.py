"""`ingestd run`: signals, the database, the parts (``wiring``), then supervision.

The main thread only supervises (``supervisor``): it pings the systemd watchdog while
the watcher and workers are healthy and no busy worker is stuck (no progress for
stuck_seconds), refreshes STATUS= and the gauges, and handles signals.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from types import FrameType

import structlog

from ingestd import readiness
from ingestd.db.database import Database
from ingestd.errors import EmbeddedError
from ingestd.metrics import Metrics
from ingestd.notify import Notifier
from ingestd.persons import phones
from ingestd.settings import Settings
from ingestd.startup import DatabaseWait
from ingestd.supervisor import (
    BacklogGauges,
    DatabasePing,
    Health,
    Reload,
    StuckReports,
    Supervisor,
    SystemdStatus,
    company_series,
)
from ingestd.wiring import Parts

log = structlog.get_logger("ingestd.daemon")


class Daemon:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        # unset: the embedded PostgreSQL must not talk to systemd as if it were us
        self.notifier = Notifier(unset_environment=True)
        self.health = Health()
        self.stop_asked_at = 0.0  # monotonic time of the first stop signal

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reload_event.set()
        elif signum == signal.SIGINT and self.stop_event.is_set():
            # A second Ctrl-C: the operator will not wait. Nothing is lost: uncommitted
            # work rolls back with the connections, claims stay in .processing/ and are
            # recovered at the next start. os.write, not the logger: a handler must not
            # take the lock the interrupted code may hold.
            os.write(2, b"ingestd: second interrupt: stopping now; files in hand roll back"
                        b" and are recovered at the next start\n")
            os._exit(130)
        else:
            if not self.stop_event.is_set():
                self.stop_asked_at = time.monotonic()
            self.stop_event.set()

    def run(self) -> int:
        settings = self.settings
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        readiness.enable_leases()  # here, in the main thread, before any worker starts
        phones.configure_cache(settings.mdn_cache_entries)
        self.metrics.watch_cache("mdn", phones.cache_entries)
        try:
            # each worker: its company-lock connection, plus one for the carrier cache
            # HTTP: a request in hand may hold its Idempotency-Key's connection, the
            # company lock's and the one its answer streams from.
            http = 3 * settings.http_max_concurrency if settings.http_address else 0
            db = Database(settings, start=False, create=True, daemon=True,
                          pool_size=max(settings.pool_max_size,
                                        2 * settings.workers + 2 + http))
            connected = DatabaseWait(
                retry_initial=settings.db_retry_initial, retry_max=settings.db_retry_max,
                notifier=self.notifier, stop=self.stop_event).connect(db)
        except EmbeddedError as exc:
            # Not retried: a fault of this machine (permissions, binaries, data directory)
            # that waiting does not fix; Restart= tries a few times, then the unit fails.
            log.error("db.embedded.failed", error=str(exc),
                      log=str(exc.log_file) if exc.log_file else None)
            return 1
        try:
            if connected:  # else asked to stop while waiting
                self._serve(db)
        finally:
            db.close()
        log.info("daemon.stopped")
        return 0

    def _serve(self, db: Database) -> None:
        settings = self.settings
        parts = Parts.build(settings, db, self.metrics, self.health)
        company_series(db, self.metrics, self.health)
        parts.start(settings, self.metrics, self.health)
        self.health.started = True
        self.notifier.ready()
        log.info("daemon.started", landing_root=str(settings.landing_root.absolute()),
                 state_dir=str(settings.state_dir.absolute()), database=db.target,
                 workers=settings.workers, embedded_db=db.embedded is not None,
                 observer="polling" if settings.polling_observer else "native")
        parts.start_pruner(settings, db, self.stop_event)
        self._supervisor(db, parts).run(self.stop_event, self.reload_event,
                                        self.notifier.watchdog_interval or 5.0)
        # Everything below within stop_timeout of the signal, even with the database
        # silent (a cut): each step that talks to it may wait db_dead_after_seconds.
        deadline = (self.stop_asked_at or time.monotonic()) + settings.stop_timeout
        log.info("daemon.stopping", in_hand=parts.scheduler.in_hand)
        self.notifier.stopping()
        if not parts.stop(db, deadline, settings.stop_timeout):
            # A thread still waits on the database (at most db_dead_after_seconds more);
            # the interpreter would join it at exit. Nothing is lost by not waiting:
            # open transactions roll back, claims are recovered at the next start.
            log.info("daemon.stopped")
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

    def _supervisor(self, db: Database, parts: Parts) -> Supervisor:
        return Supervisor(
            ping=DatabasePing(db, self.metrics, self.health),
            reload=Reload(self.settings, self.notifier),
            gauges=BacklogGauges(parts.scheduler, self.metrics),
            stuck=StuckReports(parts.tracker.stuck, self.metrics),
            status=SystemdStatus(self.notifier, parts.scheduler, self.health, parts.healthy),
        )


def run(settings: Settings) -> int:
    return Daemon(settings).run()
