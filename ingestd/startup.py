"""`ingestd run`'s start: the database, waited for with backoff (tenacity) while it is
unreachable, with systemd told that the start is still healthy.

Until it is connected nothing else starts: uploads wait in inbox/ and are found by
the first scan.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import structlog
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_when_event_set,
    wait_exponential,
    wait_random_exponential,
)
from tenacity.wait import wait_base

from ingestd.db.database import Database
from ingestd.errors import DatabaseUnavailable
from ingestd.notify import Notifier

log = structlog.get_logger("ingestd.daemon")

# While waiting for the database, every message to systemd asks for this much more
# start-up time: enough for one attempt (an embedded initdb and start, or a connect
# timeout plus migrations) before the next message.
START_GRACE_SECONDS = 120.0


def connect_backoff(initial: float, maximum: float) -> wait_base:
    """Seconds before the next try: doubling from ``initial``, capped at ``maximum``, less
    up to half at random ("equal jitter"), so several instances do not retry in step:
    half the step fixed, plus up to the other half at random."""
    return (wait_exponential(multiplier=initial / 2, max=maximum / 2)
            + wait_random_exponential(multiplier=initial / 2, max=maximum / 2))


class DatabaseWait:
    """Start and migrate the database, waiting while it is unreachable."""

    def __init__(self, *, retry_initial: float, retry_max: float, notifier: Notifier,
                 stop: threading.Event) -> None:
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.notifier = notifier
        self.stop = stop

    def connect(self, db: Database) -> bool:
        """True once connected; False when asked to stop first."""
        retrying = Retrying(
            retry=retry_if_exception_type(DatabaseUnavailable),
            wait=connect_backoff(self.retry_initial, self.retry_max),
            # A signal cuts the attempt or the wait short: not the database's fault.
            stop=stop_when_event_set(self.stop),
            sleep=self._wait,
            before_sleep=lambda state: self._unavailable(db, state),
        )
        try:
            for attempt in retrying:
                if self.stop.is_set():
                    return False  # asked to stop before the first try, or while waiting
                with attempt:
                    db.start()
        except RetryError:  # asked to stop during a failed try
            return False
        except BaseException:
            db.close()
            raise
        attempts = retrying.statistics.get("attempt_number", 1)
        if attempts > 1:
            log.info("db.connected", attempts=attempts, database=db.target)
        return True

    def _unavailable(self, db: Database, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.upcoming_sleep
        next_try = datetime.now(UTC) + timedelta(seconds=delay)
        log.warning("db.unavailable", reason=str(exc), database=db.target,
                    attempt=state.attempt_number, retry_in_s=round(delay, 2),
                    next_try_at=next_try.isoformat(timespec="milliseconds"))
        self.notifier.status(f"waiting for database: {exc}")

    def _wait(self, seconds: float) -> None:
        """Wait ``seconds`` or until asked to stop, telling systemd we are still starting."""
        deadline = time.monotonic() + seconds
        tick = min(1.0, self.notifier.watchdog_interval or 1.0)
        self._still_starting()
        while (left := deadline - time.monotonic()) > 0:
            if self.stop.wait(min(tick, left)):
                return
            self._still_starting()

    def _still_starting(self) -> None:
        # Waiting for the database is a healthy start: neither the start timeout nor
        # the watchdog should end it. (A start that succeeds at once sends nothing
        # before READY=1.)
        self.notifier.extend_timeout(START_GRACE_SECONDS)
        self.notifier.watchdog()
