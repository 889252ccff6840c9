"""The running daemon's main thread: one tick a second, each concern a part of its own.

* ``DatabasePing``: does the database answer a new client (every 5 s), and every set-up
  company's series at zero;
* ``MisplacedReport``: files no inbox holds, logged once and counted (at each rescan);
* ``Reload``: SIGHUP re-reads the settings (systemd's notify-reload contract);
* ``BacklogGauges``: the queues' sizes and ages into the gauges;
* ``StuckReports``: each stuck worker logged once an episode, the gauge every tick;
* ``SystemdStatus``: the watchdog ping, only while healthy, and STATUS=.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
import structlog

from ingestd import landing, logs
from ingestd.db.companies import list_companies
from ingestd.db.database import Database
from ingestd.metrics import Metrics
from ingestd.notify import Notifier
from ingestd.progress import Handle
from ingestd.scheduler import Scheduler
from ingestd.settings import Settings, load_settings

log = structlog.get_logger("ingestd.daemon")

DB_PING_SECONDS = 5.0
# The look at the database every few seconds: a new connection that gets no answer in
# this long means the database is down.
CHECK_TIMEOUT = 3


@dataclass
class Health:
    """What the probes (/healthz, /readyz) and STATUS= report, kept by the supervisor;
    and the set-up companies when last listed (to tell a stray folder apart)."""

    db_ok: bool = True
    started: bool = False
    companies: set[str] | None = None


class DatabasePing:
    def __init__(self, db: Database, metrics: Metrics, health: Health) -> None:
        self.db, self.metrics, self.health = db, metrics, health
        self._last = 0.0

    def tick(self, now: float) -> None:
        if now - self._last <= DB_PING_SECONDS:
            return
        self.health.db_ok = self._check()
        self._last = now
        self.metrics.set_database_up(self.health.db_ok)

    def _check(self) -> bool:
        """Whether the database answers a new client, and every set-up company's series
        at zero (companies added while running too). A fresh connection, as a new client
        would open: a pooled one may be silently dead (a failover), and the supervisor
        must not wait on it (the watchdog pings, a stop)."""
        try:
            with self.db.connect(connect_timeout=CHECK_TIMEOUT) as conn:
                companies = list_companies(conn)
        except psycopg.Error:
            return False
        self.health.companies = {c.id for c in companies}
        for company in companies:
            self.metrics.init_company(company.id)
        return True


def company_series(db: Database, metrics: Metrics, health: Health) -> None:
    """Every set-up company's series at zero, at the start."""
    try:
        # A short wait: the supervisor must not miss a watchdog ping for a busy pool.
        with db.pool.connection(timeout=1.0) as conn:
            companies = list_companies(conn)
        health.companies = {c.id for c in companies}
        for company in companies:
            metrics.init_company(company.id)
    except psycopg.Error:
        pass  # the reachability check reports it; the next round tries again


class MisplacedReport:
    """Each file no inbox holds: logged once, and counted while it stays."""

    def __init__(self, root: Path, metrics: Metrics, health: Health) -> None:
        self.root, self.metrics, self.health = root, metrics, health
        self._log = landing.MisplacedLog()

    def __call__(self) -> None:
        found = landing.find_misplaced(self.root, self.health.companies)
        for m in self._log.new(found):
            log.warning("file.misplaced", company=m.folder, file=m.path.name,
                        path=str(m.path), should_be=m.should_be,
                        note="never picked up where it is: move it there")
        self.metrics.set_misplaced_files(len(found))


class Reload:
    """SIGHUP: the log level from fresh settings; a bad reload keeps the running ones."""

    def __init__(self, settings: Settings, notifier: Notifier) -> None:
        self.settings, self.notifier = settings, notifier

    def __call__(self) -> None:
        # systemd's Type=notify-reload contract: RELOADING=1 when a reload starts, READY=1
        # when it is over, failed or not (until then `systemctl reload` waits).
        self.notifier.reloading()
        try:
            self._apply()
        finally:
            self.notifier.ready()

    def _apply(self) -> None:
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


class BacklogGauges:
    def __init__(self, scheduler: Scheduler, metrics: Metrics) -> None:
        self.scheduler, self.metrics = scheduler, metrics

    def update(self) -> dict[str, int]:
        """Set the gauges; the backlog per company, for STATUS=."""
        waiting = self.scheduler.waiting()
        now = time.time()
        for company, ages in waiting.items():
            if self.metrics.is_company(company):
                self.metrics.set_backlog(company, len(ages))
                # files of no known age (0) are left out of the company's oldest
                since = min((a for a in ages if a > 0), default=None)
                self.metrics.set_backlog_oldest_age(
                    company, now - since / 1e9 if since else None)
        oldest = min((a for ages in waiting.values() for a in ages), default=None)
        self.metrics.set_oldest_ready_age(now - oldest / 1e9 if oldest else None)
        return {company: len(ages) for company, ages in waiting.items()}


class StuckReports:
    """Log each stuck episode once; the gauge follows every tick."""

    def __init__(self, stuck: Callable[[], list[Handle]], metrics: Metrics) -> None:
        self._stuck, self.metrics = stuck, metrics
        self._logged: set[str] = set()  # claims whose stuck episode was logged

    def report(self) -> list[Handle]:
        stuck = self._stuck()
        self.metrics.set_workers_stuck(len(stuck))
        for h in stuck:
            if h.claim_id not in self._logged:
                log.error("worker.stuck", company=h.company, file=h.file, claim=h.claim_id,
                          idle_s=round(h.idle_s(), 1))
        self._logged = {h.claim_id for h in stuck}
        return stuck


class SystemdStatus:
    def __init__(self, notifier: Notifier, scheduler: Scheduler, health: Health,
                 healthy: Callable[[], bool]) -> None:
        self.notifier, self.scheduler, self.health = notifier, scheduler, health
        self._healthy = healthy  # the watcher's and the workers' threads are running

    def tell(self, backlog: dict[str, int], stuck: list[Handle]) -> None:
        # Only a healthy daemon pings: systemd restarts a wedged one. A worker blocked
        # in a system call is a live thread, hence the progress check.
        if self._healthy() and not stuck:
            self.notifier.watchdog()
        s = self.scheduler
        text = (f"backlog {sum(backlog.values())}, in hand {s.in_hand}, "
                f"done {s.processed}, db {'ok' if self.health.db_ok else 'DOWN'}")
        if stuck:
            text = "; ".join(f"STUCK {h.company}/{h.file} ({h.idle_s():.0f} s without "
                             "progress)" for h in stuck) + "; " + text
        self.notifier.status(text)


@dataclass
class Supervisor:
    ping: DatabasePing
    reload: Reload
    gauges: BacklogGauges
    stuck: StuckReports
    status: SystemdStatus

    def run(self, stop: threading.Event, reload_asked: threading.Event,
            interval: float) -> None:
        """Tick until ``stop`` is set."""
        while not stop.wait(min(1.0, interval)):
            self.ping.tick(time.monotonic())
            if reload_asked.is_set():
                reload_asked.clear()
                self.reload()
            backlog = self.gauges.update()
            self.status.tell(backlog, self.stuck.report())
