"""`ingestd run`: wires watcher → scheduler → pipeline, and talks to systemd.

The main thread only supervises: it pings the systemd watchdog while the watcher
and workers are healthy and no busy worker is stuck (no progress for stuck_seconds),
refreshes STATUS= and the gauges, and handles signals.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType

import psycopg
import structlog

from ingestd import errors, landing, logs, metrics, readiness, retention
from ingestd.db.companies import list_companies
from ingestd.db.database import Database
from ingestd.errors import DatabaseUnavailable, EmbeddedError
from ingestd.fleet import Fleet
from ingestd.lifecycle import Outcome, Pipeline
from ingestd.notify import Notifier
from ingestd.persons import phones
from ingestd.persons.carrier import HttpCarrierLookup, make_carrier
from ingestd.progress import Handle, Tracker
from ingestd.scheduler import Scheduler
from ingestd.settings import Settings, load_settings
from ingestd.watcher import Watcher

log = structlog.get_logger("ingestd.daemon")

# While waiting for the database, every message to systemd asks for this much more
# start-up time: enough for one attempt (an embedded initdb and start, or a connect
# timeout plus migrations) before the next message.
START_GRACE_SECONDS = 120.0

# The supervisor's look at the database every few seconds: a new connection that gets no
# answer in this long means the database is down.
CHECK_TIMEOUT = 3


def backoff(attempt: int, initial: float, maximum: float) -> float:
    """Seconds before retry ``attempt + 1``: doubling from ``initial``, capped at
    ``maximum``, less up to half at random so several instances do not retry in step."""
    base = min(maximum, initial * 2 ** min(attempt - 1, 32))
    return random.uniform(base / 2, base)


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        # unset: the embedded PostgreSQL must not talk to systemd as if it were us
        self.notifier = Notifier(unset_environment=True)
        self.db_ok = True
        self.started = False
        self.tracker: Tracker | None = None
        self._stuck_logged: set[str] = set()  # claims whose stuck episode was logged
        self._on_given_back: Callable[[Path], None] = lambda path: None
        self._companies: set[str] | None = None  # set-up companies, when last listed
        self._misplaced = landing.MisplacedLog()
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

    def _on_outcome(self, company: str, outcome: Outcome, seconds: float) -> None:
        if outcome.status == "unsettled" and outcome.given_back is not None:
            self._on_given_back(outcome.given_back)
        r = outcome.result
        if r is None:
            return  # not finished: busy, gone or changed
        if r.error is not None and r.error.error_class == errors.INVALID_SCHEMA_NAME:
            # A folder that is not a set-up company: counted under its name, without
            # the zero series of every format and outcome a company gets.
            metrics.record_file(company, r.format or "unknown", "failed")
            return
        metrics.init_company(company)  # set up since the last refresh
        kind: metrics.Outcome = ("duplicate" if r.duplicate_of is not None
                                 else "done" if r.status == "done" else "failed")
        metrics.record_file(company, r.format or "unknown", kind, r.accepted,
                            r.rejected_by_class, r.duration_s)

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
        readiness.enable_leases()  # here, in the main thread, before any worker starts
        phones.configure_cache(settings.mdn_cache_entries)
        metrics.watch_cache("mdn", phones.cache_entries)
        try:
            # each worker: its company-lock connection, plus one for the carrier cache
            db = Database(settings, start=False, create=True, daemon=True,
                          pool_size=max(settings.pool_max_size, 2 * settings.workers + 2))
            connected = self._connect(db)
        except EmbeddedError as exc:
            # Not retried: a fault of this machine (permissions, binaries, data directory)
            # that waiting does not fix; Restart= tries a few times, then the unit fails.
            log.error("db.embedded.failed", error=str(exc),
                      log=str(exc.log_file) if exc.log_file else None)
            return 1
        if not connected:  # asked to stop while waiting
            db.close()
            log.info("daemon.stopped")
            return 0
        try:
            carrier = make_carrier(settings, on_event=self._on_carrier_event)
            if isinstance(carrier, HttpCarrierLookup):
                metrics.watch_carrier_circuit(carrier.circuit_open)
            self._company_metrics(db)
            self.tracker = Tracker(progress_seconds=settings.progress_seconds,
                                   stuck_seconds=settings.stuck_seconds, pool=db.pool)
            pipeline = Pipeline(settings, db, carrier, self.tracker)
            scheduler = Scheduler(pipeline.process, pipeline.recover, settings.workers,
                                  on_outcome=self._on_outcome)

            def on_rescan() -> None:
                # Leftover claims (a crash, a failed apply) are recovered under the company lock.
                for recovery in landing.leftover_claims(settings.landing_root):
                    scheduler.submit(recovery)
                self._report_misplaced()

            watcher = Watcher(settings, scheduler.submit, on_rescan)
            metrics.watch_maybe_partial(watcher.held_count)
            # A file given back unsettled is still where it was: the watcher looks again.
            self._on_given_back = watcher.poke
            # A stale peer's claims are recovered at once, not at the next rescan.
            fleet = Fleet(db, settings.lease_seconds,
                          on_expired=lambda companies: watcher.rescan())
            fleet.start()
            pipeline.fleet = fleet
            self.tracker.start()
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
                     state_dir=str(settings.state_dir.absolute()), database=db.target,
                     workers=settings.workers, embedded_db=db.embedded is not None,
                     observer="polling" if settings.polling_observer else "native")
            pruner = (retention.start_pruner(settings, db, self.stop_event)
                      if settings.retention_days else None)
            self._supervise(db, watcher, scheduler)
            # Everything below within stop_timeout of the signal, even with the database
            # silent (a cut): each step that talks to it may wait db_dead_after_seconds.
            deadline = (self.stop_asked_at or time.monotonic()) + settings.stop_timeout
            log.info("daemon.stopping", in_hand=scheduler.in_hand)
            self.notifier.stopping()
            watcher.stop()
            finished = scheduler.stop(max(0.0, deadline - time.monotonic()))
            tracker = self.tracker

            def wind_down() -> None:
                tracker.stop()
                fleet.stop()
                if server is not None:
                    server.stop()
                if pruner is not None:
                    pruner.join(max(0.0, deadline - time.monotonic()))
                db.close()

            wound_down = _within(deadline - time.monotonic(), wind_down)
            if not (finished and wound_down):
                log.warning("daemon.stop_timeout", seconds=settings.stop_timeout,
                            note="unfinished files roll back and are recovered at next start")
            if not wound_down or not scheduler.stopped():
                # A thread still waits on the database (at most db_dead_after_seconds more);
                # the interpreter would join it at exit. Nothing is lost by not waiting:
                # open transactions roll back, claims are recovered at the next start.
                log.info("daemon.stopped")
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(0)
        finally:
            db.close()
        log.info("daemon.stopped")
        return 0

    def _connect(self, db: Database) -> bool:
        """Start and migrate the database, waiting with backoff while it is unreachable.

        True once connected; False when asked to stop first. Until then nothing else
        starts: uploads wait in inbox/ and are found by the first scan.
        """
        attempt = 0
        try:
            while not self.stop_event.is_set():
                attempt += 1
                try:
                    db.start()
                except DatabaseUnavailable as exc:
                    if self.stop_event.is_set():
                        break  # a signal cut the attempt short: not the database's fault
                    delay = backoff(attempt, self.settings.db_retry_initial,
                                    self.settings.db_retry_max)
                    next_try = datetime.now(UTC) + timedelta(seconds=delay)
                    log.warning("db.unavailable", reason=str(exc), database=db.target,
                                attempt=attempt, retry_in_s=round(delay, 2),
                                next_try_at=next_try.isoformat(timespec="milliseconds"))
                    self.notifier.status(f"waiting for database: {exc}")
                    self._wait(delay)
                    continue
                if attempt > 1:
                    log.info("db.connected", attempts=attempt, database=db.target)
                return True
        except BaseException:
            db.close()
            raise
        return False

    def _wait(self, seconds: float) -> None:
        """Wait ``seconds`` or until asked to stop, telling systemd we are still starting."""
        deadline = time.monotonic() + seconds
        tick = min(1.0, self.notifier.watchdog_interval or 1.0)
        self._still_starting()
        while (left := deadline - time.monotonic()) > 0:
            if self.stop_event.wait(min(tick, left)):
                return
            self._still_starting()

    def _still_starting(self) -> None:
        # Waiting for the database is a healthy start: neither the start timeout nor
        # the watchdog should end it. (A start that succeeds at once sends nothing
        # before READY=1.)
        self.notifier.extend_timeout(START_GRACE_SECONDS)
        self.notifier.watchdog()

    def _supervise(self, db: Database, watcher: Watcher, scheduler: Scheduler) -> None:
        interval = self.notifier.watchdog_interval or 5.0
        tick = min(1.0, interval)
        last_db_check = 0.0
        while not self.stop_event.wait(tick):
            now = time.monotonic()
            if now - last_db_check > 5.0:
                self.db_ok = self._check_database(db)
                last_db_check = now
                metrics.set_database_up(self.db_ok)
            if self.reload_event.is_set():
                self.reload_event.clear()
                self._reload()
            backlog = scheduler.backlog()
            oldest_by_company = scheduler.oldest_ready_by_company()
            for company, n in backlog.items():
                if metrics.is_company(company):
                    metrics.set_backlog(company, n)
                    since = oldest_by_company.get(company)
                    metrics.set_backlog_oldest_age(
                        company, time.time() - since / 1e9 if since else None)
            oldest = scheduler.oldest_ready_mtime_ns()
            metrics.set_oldest_ready_age(time.time() - oldest / 1e9 if oldest else None)
            stuck = self.tracker.stuck() if self.tracker else []
            self._report_stuck(stuck)
            # Only a healthy daemon pings: systemd restarts a wedged one. A worker blocked
            # in a system call is a live thread, hence the progress check.
            if watcher.alive() and scheduler.alive() and not stuck:
                self.notifier.watchdog()
            text = (f"backlog {sum(backlog.values())}, in hand {scheduler.in_hand}, "
                    f"done {scheduler.processed}, db {'ok' if self.db_ok else 'DOWN'}")
            if stuck:
                text = "; ".join(f"STUCK {h.company}/{h.file} ({h.idle_s():.0f} s without "
                                 "progress)" for h in stuck) + "; " + text
            self.notifier.status(text)

    def _report_misplaced(self) -> None:
        """Each file no inbox holds: logged once, and counted while it stays."""
        found = landing.find_misplaced(self.settings.landing_root, self._companies)
        for m in self._misplaced.new(found):
            log.warning("file.misplaced", company=m.folder, file=m.path.name,
                        path=str(m.path), should_be=m.should_be,
                        note="never picked up where it is: move it there")
        metrics.set_misplaced_files(len(found))

    def _report_stuck(self, stuck: list[Handle]) -> None:
        """Log each stuck episode once; the gauge follows every tick."""
        metrics.set_workers_stuck(len(stuck))
        for h in stuck:
            if h.claim_id not in self._stuck_logged:
                log.error("worker.stuck", company=h.company, file=h.file, claim=h.claim_id,
                          idle_s=round(h.idle_s(), 1))
        self._stuck_logged = {h.claim_id for h in stuck}

    def _check_database(self, db: Database) -> bool:
        """Whether the database answers a new client, and every set-up company's series
        at zero (companies added while running too). A fresh connection, as a new client
        would open: a pooled one may be silently dead (a failover), and the supervisor
        must not wait on it (the watchdog pings, a stop)."""
        try:
            with db.connect(connect_timeout=CHECK_TIMEOUT) as conn:
                companies = list_companies(conn)
        except psycopg.Error:
            return False
        self._companies = {c.id for c in companies}
        for company in companies:
            metrics.init_company(company.id)
        return True

    def _company_metrics(self, db: Database) -> None:
        """Every set-up company's series at zero (companies added while running too)."""
        try:
            # A short wait: the supervisor must not miss a watchdog ping for a busy pool.
            with db.pool.connection(timeout=1.0) as conn:
                companies = list_companies(conn)
            self._companies = {c.id for c in companies}
            for company in companies:
                metrics.init_company(company.id)
        except psycopg.Error:
            pass  # the reachability check reports it; the next round tries again

    def _reload(self) -> None:
        # systemd's Type=notify-reload contract: RELOADING=1 when a reload starts, READY=1
        # when it is over, failed or not (until then `systemctl reload` waits).
        self.notifier.reloading()
        try:
            self._apply_reload()
        finally:
            self.notifier.ready()

    def _apply_reload(self) -> None:
        try:
            fresh = load_settings()
        except Exception as exc:  # a bad reload keeps the running settings, never stops us
            log.error("daemon.reload_failed", error=str(exc))
            return
        # Logged before the switch, so a reload to warning still confirms itself.
        # Custom field definitions are read from the database at the start of each file,
        # so a `fields load` takes effect with the next file; nothing else to refresh.
        log.info("daemon.reloaded", log_level=fresh.log_level)
        self.settings.log_level = fresh.log_level
        logs.configure(fresh.log_level, self.settings.log_format)


def _within(seconds: float, steps: Callable[[], None]) -> bool:
    """Run ``steps`` on a thread of its own; whether they ended within ``seconds``."""
    def guarded() -> None:
        try:
            steps()
        except Exception:
            log.exception("daemon.stop_failed")

    thread = threading.Thread(target=guarded, name="ingestd-stop", daemon=True)
    thread.start()
    thread.join(max(0.0, seconds))
    return not thread.is_alive()


def run(settings: Settings) -> int:
    return Daemon(settings).run()

