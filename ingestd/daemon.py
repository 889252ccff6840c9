"""`ingestd run`: wires watcher → scheduler → pipeline, and talks to systemd.

The main thread only supervises: it pings the systemd watchdog while the watcher
and workers are healthy, refreshes STATUS= and the gauges, and handles signals.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType

import structlog

from ingestd import logs, metrics
from ingestd.carrier import make_carrier
from ingestd.db.database import Database
from ingestd.lifecycle import Outcome, Pipeline
from ingestd.notify import Notifier
from ingestd.scheduler import Scheduler
from ingestd.settings import Settings, load_settings
from ingestd.watcher import Watcher

log = structlog.get_logger("ingestd.daemon")


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        # unset: the embedded PostgreSQL must not talk to systemd as if it were us
        self.notifier = Notifier(unset_environment=True)
        self.db_ok = True
        self.started = False

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
            self.stop_event.set()

    def _on_outcome(self, company: str, outcome: Outcome, seconds: float) -> None:
        if outcome.status not in ("done", "failed"):
            return
        r = outcome.result
        kind = "duplicate" if "duplicate_of" in r else outcome.status
        metrics.record_file(company, r.get("format") or "unknown", kind,  # type: ignore[arg-type]
                            r.get("accepted", 0), r.get("rejected_by_class"),
                            r.get("duration_s"))

    @staticmethod
    def _on_carrier_event(event: str, outcome: str) -> None:
        if event == "lookup":
            metrics.record_carrier(outcome)
        elif event == "retry":
            metrics.record_carrier_retry()

    def run(self) -> int:
        settings = self.settings
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        # each worker: its company-lock connection, plus one for the carrier cache
        db = Database(settings, pool_size=max(settings.pool_max_size, 2 * settings.workers + 2))
        try:
            db.upgrade()
            carrier = make_carrier(settings, on_event=self._on_carrier_event)
            pipeline = Pipeline(settings, db, carrier)
            scheduler = Scheduler(pipeline.process, pipeline.recover_company, settings.workers,
                                  on_outcome=self._on_outcome)

            def on_rescan() -> None:
                # Leftover claims (a crash, a failed apply) are recovered under the company lock.
                for dirs in pipeline.company_dirs():
                    if dirs.processing.is_dir() and any(dirs.processing.iterdir()):
                        scheduler.submit_recovery(dirs)

            watcher = Watcher(settings, scheduler.submit, on_rescan)
            scheduler.start()
            watcher.start()
            server = None
            if settings.metrics_address:
                server = metrics.start_server(
                    settings.metrics_address,
                    health=lambda: {"alive": True, "database": self.db_ok,
                                    "observer": watcher.alive(), "workers": scheduler.alive()},
                    ready=lambda: self.started and self.db_ok and watcher.alive(),
                )
            self.started = True
            self.notifier.ready()
            log.info("daemon.started", landing_root=str(settings.landing_root.absolute()),
                     workers=settings.workers, embedded_db=db.embedded is not None,
                     observer="polling" if settings.polling_observer else "native")
            self._supervise(db, watcher, scheduler)
            log.info("daemon.stopping", in_hand=scheduler.in_hand)
            self.notifier.stopping()
            watcher.stop()
            finished = scheduler.stop(settings.stop_timeout)
            if not finished:
                log.warning("daemon.stop_timeout", seconds=settings.stop_timeout,
                            note="unfinished files roll back and are recovered at next start")
            if server is not None:
                server.stop()
        finally:
            db.close()
        log.info("daemon.stopped")
        return 0

    def _supervise(self, db: Database, watcher: Watcher, scheduler: Scheduler) -> None:
        interval = self.notifier.watchdog_interval or 5.0
        tick = min(1.0, interval)
        last_db_check = 0.0
        while not self.stop_event.wait(tick):
            now = time.monotonic()
            if now - last_db_check > 5.0:
                self.db_ok = db.reachable()
                last_db_check = now
            if self.reload_event.is_set():
                self.reload_event.clear()
                self._reload()
            backlog = scheduler.backlog()
            for company, n in backlog.items():
                metrics.set_backlog(company, n)
            oldest = scheduler.oldest_ready_mtime_ns()
            metrics.set_oldest_ready_age(time.time() - oldest / 1e9 if oldest else None)
            # Only a healthy daemon pings: systemd restarts a wedged one.
            if watcher.alive() and scheduler.alive():
                self.notifier.watchdog()
            self.notifier.status(
                f"backlog {sum(backlog.values())}, in hand {scheduler.in_hand}, "
                f"done {scheduler.processed}, db {'ok' if self.db_ok else 'DOWN'}")

    def _reload(self) -> None:
        try:
            fresh = load_settings()
        except Exception as exc:
            log.error("daemon.reload_failed", error=str(exc))
            return
        # Logged before the switch, so a reload to warning still confirms itself.
        # Custom field definitions are read from the database at the start of each file,
        # so a `fields load` takes effect with the next file; nothing else to refresh.
        log.info("daemon.reloaded", log_level=fresh.log_level)
        self.settings.log_level = fresh.log_level
        logs.configure(fresh.log_level, self.settings.log_format)


def run(settings: Settings) -> int:
    return Daemon(settings).run()

