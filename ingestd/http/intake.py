"""The HTTP intake's work, apart from HTTP: who is calling, a request's row, its body
handed to the lifecycle like a drop, and its stored outcome. Blocking calls, run on
the server's worker threads; the routes (``app.py``, ``posting.py``) only translate.

A request's body becomes a claim exactly as a drop does: spooled into the company's
.processing/ (``landing.spool_path``), then ``Pipeline.process_spooled`` claims and
applies it under the company lock. Its row in ``ingestd.http_requests`` names its
claim, so its outcome is the ledger's row for that claim, whoever applied it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ingestd import landing
from ingestd.db import ledger
from ingestd.db.companies import Company, get_company
from ingestd.db.database import Database
from ingestd.db.ledger import LedgerEntry
from ingestd.http import tokens
from ingestd.http.tokens import Token
from ingestd.landing import CompanyDirs
from ingestd.lifecycle import Outcome, Pipeline
from ingestd.results import FileResult
from ingestd.settings import Settings
from ingestd.uuid7 import uuid7s

EXTENSIONS = {"contacts": ".csv", "persons": ".persons"}

_ids = uuid7s()
_ids_lock = threading.Lock()


def new_request_id() -> str:
    with _ids_lock:
        return next(_ids).replace("-", "")


@dataclass(frozen=True, slots=True)
class RequestRow:
    id: str
    company: str
    route: str  # contacts | persons
    idempotency_key: str | None
    claim_id: str
    status: int | None  # an answer decided before the body became a claim
    answer: dict[str, Any] | None

    @property
    def name(self) -> str:
        """The body's name in the landing folder (done/, failed/) and the ledger."""
        return f"http-{self.id}{EXTENSIONS[self.route]}"


@dataclass(frozen=True, slots=True)
class Begun:
    row: RequestRow
    new: bool  # False: a retry of an earlier attempt with the same Idempotency-Key
    conn: psycopg.Connection[Any] | None  # holds the key's lock
    lock_key: str


class KeyInHand(Exception):
    """Another request with this Idempotency-Key is being handled."""


class Intake:
    def __init__(self, settings: Settings, db: Database, pipeline: Pipeline,
                 on_outcome: Callable[[str, Outcome, float], None] | None = None) -> None:
        self.settings = settings
        self.db = db
        self.pipeline = pipeline
        self._on_outcome = on_outcome
        self._turns: dict[str, _Turns] = {}
        self._turns_lock = threading.Lock()
        self.stopping = threading.Event()

    # -- who is calling -----------------------------------------------------------------

    def authenticate(self, bearer: str) -> Token | None:
        with self.db.pool.connection() as conn:
            return tokens.check(conn, bearer)

    def company(self, company_id: str) -> Company | None:
        with self.db.pool.connection() as conn:
            found = get_company(conn, company_id)
            conn.commit()
            return found

    def dirs(self, company: str) -> CompanyDirs:
        dirs = CompanyDirs(self.settings.landing_root / company)
        dirs.root.mkdir(exist_ok=True)
        dirs.ensure()
        return dirs

    # -- a request's row ----------------------------------------------------------------

    def begin(self, company: str, route: str, key: str | None) -> Begun:
        """The request's row, made now or (same Idempotency-Key) the earlier attempt's.
        With a key, the key is held (a session advisory lock on a connection of its own)
        until ``end``: a second request with it raises ``KeyInHand``, and an attempt whose
        holder died (its session ended with it) is taken over by the next."""
        if key is None:
            with self.db.pool.connection() as conn:
                return Begun(self._insert(conn, company, route, None), True, None, "")
        conn = self.db.pool.getconn()
        try:
            conn.autocommit = True
            lock_key = f"ingestd.http:{company}:{key}"
            got = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))",
                               (lock_key,)).fetchone()
            if not (got and got[0]):
                raise KeyInHand(key)
            conn.autocommit = False
            earlier = _find(conn, "company = %s AND idempotency_key = %s", (company, key))
            conn.commit()
            if earlier is not None:
                return Begun(earlier, False, conn, lock_key)
            return Begun(self._insert(conn, company, route, key), True, conn, lock_key)
        except BaseException:
            self.db.pool.putconn(conn)  # closing the session lets go of a lock it took
            raise

    def end(self, begun: Begun) -> None:
        """Let go of the Idempotency-Key (once the body is committed, or never will be)."""
        conn = begun.conn
        if conn is None:
            return
        try:
            if not conn.closed and not conn.broken:
                conn.rollback()
                conn.autocommit = True
                conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (begun.lock_key,))
        except psycopg.Error:
            pass  # a dead session holds no lock
        finally:
            self.db.pool.putconn(conn)

    @staticmethod
    def unrecorded(company: str, route: str) -> RequestRow:
        """A dry run's request: never written down (its spool is its own)."""
        request_id = new_request_id()
        return RequestRow(request_id, company, route, None, landing.new_claim_id(request_id),
                          None, None)

    @staticmethod
    def _insert(conn: psycopg.Connection[Any], company: str, route: str,
                key: str | None) -> RequestRow:
        request_id = new_request_id()
        row = RequestRow(request_id, company, route, key, landing.new_claim_id(request_id),
                         None, None)
        conn.execute("INSERT INTO ingestd.http_requests (id, company, route, idempotency_key,"
                     " claim_id) VALUES (%s, %s, %s, %s, %s)",
                     (row.id, company, route, key, row.claim_id))
        conn.commit()
        return row

    def find(self, company: str, request_id: str) -> RequestRow | None:
        with self.db.pool.connection() as conn:
            found = _find(conn, "company = %s AND id = %s", (company, request_id))
            conn.commit()
            return found

    def store_answer(self, row: RequestRow, status: int, answer: dict[str, Any]) -> None:
        """An answer given before the body became a claim (400, 413): kept for retries."""
        with self.db.pool.connection() as conn:
            conn.execute("UPDATE ingestd.http_requests SET status = %s, answer = %s"
                         " WHERE id = %s", (status, psycopg.types.json.Jsonb(answer), row.id))

    def entry(self, row: RequestRow) -> LedgerEntry | None:
        """The ledger row of the request's body: it was applied (or failed) once."""
        with self.db.pool.connection() as conn:
            found = ledger.by_claim(conn, row.claim_id)
            conn.commit()
            return found

    def in_hand(self, row: RequestRow) -> bool:
        """Its body is spooled or claimed and not yet committed."""
        dirs = CompanyDirs(self.settings.landing_root / row.company)
        ext = EXTENSIONS[row.route]
        return (landing.spool_path(dirs, row.claim_id, ext).exists()
                or (dirs.processing / row.claim_id).exists())

    # -- the body, through the lifecycle --------------------------------------------------

    def spool(self, row: RequestRow) -> Path:
        """Where the body is written; an earlier attempt's partial body is dropped."""
        path = landing.spool_path(self.dirs(row.company), row.claim_id, EXTENSIONS[row.route])
        for p in (path, path.with_name(path.name + landing.HEADERS_SUFFIX)):
            p.unlink(missing_ok=True)
        return path

    def discard(self, spool: Path) -> None:
        for p in (spool, spool.with_name(spool.name + landing.HEADERS_SUFFIX)):
            p.unlink(missing_ok=True)

    def apply(self, row: RequestRow, spool: Path) -> Outcome:
        """Apply the spooled body like a drop: after this instance's earlier requests
        for the company (arrival order) and under the company lock, which a drop's
        worker or another instance may hold for a while (then this waits)."""
        t0 = time.monotonic()
        with self._turn(row.company):
            delay = 0.02
            while True:
                outcome = self.pipeline.process_spooled(spool, row.name, row.claim_id)
                if outcome.status != "busy":
                    break
                # Held by a worker (for its company's next files, HOLD_SECONDS at most)
                # or by a peer instance: asking again is all a try-lock allows.
                if self.stopping.wait(delay):
                    break
                delay = min(delay * 2, 0.5)
        if self._on_outcome is not None:
            self._on_outcome(row.company, outcome, time.monotonic() - t0)
        return outcome

    @contextmanager
    def _turn(self, company: str) -> Iterator[None]:
        with self._turns_lock:
            turns = self._turns.setdefault(company, _Turns())
        with turns.turn():
            yield

    def check(self, row: RequestRow, spool: Path) -> FileResult:
        """`ingestd check` of the spooled body, as this request: nothing written."""
        return self.pipeline.check(spool, row.company, request_id=row.id, name=row.name)


class _Turns:
    """First come, first served: tickets, as a plain lock does not queue fairly."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next_ticket = 0
        self._serving = 0

    @contextmanager
    def turn(self) -> Iterator[None]:
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            self._cond.wait_for(lambda: self._serving == ticket)
        try:
            yield
        finally:
            with self._cond:
                self._serving += 1
                self._cond.notify_all()


def _find(conn: psycopg.Connection[Any], where: str,
          params: tuple[Any, ...]) -> RequestRow | None:
    with conn.cursor(row_factory=dict_row) as cur:
        found = cur.execute(
            "SELECT id, company, route, idempotency_key, claim_id, status, answer"
            " FROM ingestd.http_requests WHERE " + where, params).fetchone()
    return RequestRow(**found) if found else None


def modified_since(value: str) -> datetime | None:
    """A ``modifiedSince`` value (ISO-8601 or an HTTP date), or None if it is neither."""
    from ingestd.contacts.reader import parse_headers_file
    from ingestd.errors import FileError

    try:
        return parse_headers_file(f"If-Unmodified-Since: {value}")
    except FileError:
        return None
