"""Carrier lookup: a small port (``CarrierLookup``) with two adapters, chosen by ``carrier_mode``.

``lookup_many`` takes E.164 numbers and returns one ``CarrierResult`` per distinct number.
It never raises for a lookup problem: every failure is a ``RowError`` value with one of

* ``CarrierLookupService::PermanentLookupFailureError`` -- the number is not an active mobile
  on a valid carrier; the row is rejected for good;
* ``CarrierLookupService::TransientLookupFailureError`` -- the service could not answer, even
  after the retries; the row belongs in the retry file.

docs/formats.md leaves the message column empty for both classes, so their messages are its
descriptions (``PERMANENT_MESSAGE``, ``TRANSIENT_MESSAGE``), the same for every row; what
went wrong for one number (status, time-out, attempts) is ``CarrierResult.detail``, which
errors.csv shows as the row's ``error_detail``, and goes to the log.

Offline (``carrier_mode = "offline"``, the default)
    phonenumbers' number type: ``MOBILE`` and ``FIXED_LINE_OR_MOBILE`` (US and other NANP
    numbers never say which) are accepted, with ``phonenumbers.carrier.name_for_number`` as
    the carrier (``None`` when the metadata has no name); any other type is permanent.

HTTP (``carrier_mode = "http"``) -- the contract a lookup service must implement
    Request: ``GET {carrier_url}?mdn=<E.164, URL-encoded>`` (appended with ``&`` when the URL
    already has a query), header ``Accept: application/json``.

    ============================================  ===========================================
    response                                      result
    ============================================  ===========================================
    2xx, JSON object ``{"carrier": "Name"}``      found; ``carrier`` may be ``""`` or ``null``
                                                  (name unknown: ``CarrierResult.carrier`` is
                                                  ``None``)
    404, 422                                      permanent, never retried
    408, 429, 5xx, time-out, refused or reset     transient, retried
    connection, DNS failure, 2xx with a body
    that is not such a JSON object
    any other status (400, 401, 403, ...)         transient, not retried: it is a
                                                  configuration problem that a retry now
                                                  cannot fix, and the row is kept for later
    ============================================  ===========================================

    ``carrier_timeout`` is the time-out of each blocking socket operation of one request
    (connect, each read, each write, and the wait for a pooled connection). Redirects are
    followed; ``HTTP(S)_PROXY`` / ``NO_PROXY`` are honoured. One pooled client (httpx)
    serves every lookup of the instance, so a busy file does not pay a new connection (and
    over https a new TLS handshake) for every number.

Retries (tenacity)
    Exponential backoff with full jitter (``wait_random_exponential``: the n-th wait is
    uniform in ``[0, min(carrier_backoff_max, carrier_backoff_initial * 2**(n-1))]``), so the
    workers that all failed during an outage do not come back in lock-step. A number stops
    after ``carrier_max_attempts`` attempts, or when the next wait would take it past
    ``carrier_max_wait`` seconds since its first attempt (``stop_before_delay``: never sleep
    only to give up afterwards). Each retry logs ``carrier.retry`` (warning) with ``mdn``,
    ``attempt`` (the attempt that just failed, from 1), ``wait`` (seconds) and ``reason``.
    The start of every attempt and of every wait counts as progress of the file being
    applied (``alive``, the file's ``ingestd.progress`` handle): a retry loop longer than
    ``stuck_seconds`` whose single steps are shorter is a slow worker, not a stuck one.

Concurrency and outages -- the choice
    Several companies' workers share one instance. Two bounds work together:

    * a semaphore of ``carrier_concurrency`` slots, shared by every caller, held only while a
      request is on the wire (not while a number sleeps between retries): the service never
      sees more than ``carrier_concurrency`` requests from this process at once;
    * each ``lookup_many`` call runs its numbers on its own small pool of at most
      ``carrier_concurrency`` threads, so retry loops overlap and a chunk with N new numbers
      costs about ``ceil(N / concurrency)`` round trips, not N. A per-call pool (rather than
      one shared FIFO executor) means a file with 5,000 new numbers queues at most
      ``carrier_concurrency`` requests at the semaphore, so another company's chunk takes
      turns with it instead of waiting behind its whole backlog.

    Concurrency alone does not bound an outage: 5,000 numbers that each retry for
    ``max_wait`` would still take ``5000 / concurrency * max_wait``. So the instance has a
    circuit breaker: when a number runs out of retries on transient failures, the breaker
    opens for ``circuit_cooldown`` seconds (default: ``carrier_max_wait``). While it is open,
    numbers not yet sent fail at once as transient (no request), and numbers sleeping between
    retries stop at their next check. A chunk that meets an outage therefore returns after
    about ``max_wait + timeout``, later chunks and other companies' chunks return at once
    during the cool-down, and workers move on (rows go to the retry file) instead of
    stalling every company's queue. After the cool-down the next lookups probe the service
    again. Only retryable failures that ran out trip the breaker, never a 404/422 or an
    unexpected status.

Observability hook
    Both adapters accept ``on_event: Callable[[str, str], None]``, called as
    ``on_event(event, outcome)`` from lookup threads; metrics code adapts it to counters
    without this module importing prometheus. Events and outcomes (low cardinality, fit for
    labels):

    * ``("lookup", outcome)`` once per distinct number: ``found``, ``permanent``,
      ``transient`` (sent, but no answer: out of retries, stopped by the breaker, or an
      unexpected status), ``circuit_open`` (never sent: the breaker was open);
    * ``("retry", reason)`` once per retry: ``timeout``, ``connection``, ``http_408``,
      ``http_429``, ``http_5xx``, ``bad_response``;
    * ``("circuit", "open")`` when the breaker opens.

    A hook that raises is logged (``carrier.event_hook_failed``) and otherwise ignored: metrics
    must not fail a lookup.
"""

from __future__ import annotations

import contextvars
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import httpx
import phonenumbers
import structlog
from phonenumbers import carrier as pn_carrier
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from ingestd.errors import (
    PERMANENT_LOOKUP_FAILURE,
    TRANSIENT_LOOKUP_FAILURE,
    IngestdError,
    RowError,
)
from ingestd.persons.phones import number_type_is_mobile

if TYPE_CHECKING:
    from ingestd.settings import Settings

# The contract's descriptions of the two classes (docs/formats.md), without markup.
PERMANENT_MESSAGE = "The mdn supplied is not a valid mobile phone active on a valid carrier."
TRANSIENT_MESSAGE = (
    "A temporary issue with the carrier lookup service prevented the row from being "
    "processed. Please try again later."
)

PERMANENT = RowError(PERMANENT_LOOKUP_FAILURE, PERMANENT_MESSAGE)
TRANSIENT = RowError(TRANSIENT_LOOKUP_FAILURE, TRANSIENT_MESSAGE)

EventHook = Callable[[str, str], None]

# A carrier name is a few words; a bigger body is not the contract's answer.
_MAX_BODY = 64 * 1024


@dataclass(frozen=True, slots=True)
class CarrierResult:
    """``error`` is None when the number is an active mobile on a valid carrier.

    ``carrier`` is the carrier's name when known (``None`` when the source has no name).
    ``detail`` says why a lookup failed, for the partner's errors.csv; it is left out of
    equality because it only explains ``error``.
    """

    carrier: str | None
    error: RowError | None
    detail: str = field(default="", compare=False)


Alive = Callable[[], None]  # a bounded wait started or ended: the file is not stuck


def nobody_watching() -> None:
    pass


class CarrierLookup(Protocol):
    def lookup_many(self, numbers: Iterable[str], *,
                    alive: Alive = nobody_watching) -> dict[str, CarrierResult]:
        """Look up E.164 numbers; transient failures are retried inside, and only
        become a TransientLookupFailureError result once retries run out. ``alive`` is
        called as each attempt or wait starts (the file's progress handle)."""
        ...


def _emit(on_event: EventHook | None, event: str, outcome: str) -> None:
    if on_event is None:
        return
    try:
        on_event(event, outcome)
    except Exception:  # the hook is metrics code: it must never fail a lookup
        structlog.get_logger().exception("carrier.event_hook_failed", hook_event=event,
                                         outcome=outcome)


def _found(name: str | None) -> CarrierResult:
    return CarrierResult(carrier=name or None, error=None)


# phonenumbers has no carrier data for NANP (numbers are portable there).
_NANP_MOBILE = _found(None)


class OfflineCarrierLookup:
    """phonenumbers' metadata: no network, so nothing is ever transient."""

    def __init__(self, region: str = "US", *, on_event: EventHook | None = None) -> None:
        # Only used to read a number that lacks the leading "+"; callers pass E.164.
        self.region = region
        self._on_event = on_event

    def lookup_many(self, numbers: Iterable[str], *,
                    alive: Alive = nobody_watching) -> dict[str, CarrierResult]:
        return {mdn: self._lookup(mdn) for mdn in dict.fromkeys(numbers)}

    def nanp_mobiles(self, count: int) -> CarrierResult:
        """What ``lookup_many`` answers for each of ``count`` +1 numbers already known to be
        mobile (the persons kernels check that in bulk), without a call per number."""
        if self._on_event is not None:
            for _ in range(count):
                _emit(self._on_event, "lookup", "found")
        return _NANP_MOBILE

    def _lookup(self, mdn: str) -> CarrierResult:
        # An invalid number is not mobile either, so it falls out as permanent too.
        if not number_type_is_mobile(mdn):
            _emit(self._on_event, "lookup", "permanent")
            return CarrierResult(None, PERMANENT, f"mdn {mdn} is not a mobile number")
        _emit(self._on_event, "lookup", "found")
        if mdn.startswith("+1"):
            return _NANP_MOBILE
        try:
            number = phonenumbers.parse(mdn, self.region)
        except phonenumbers.NumberParseException:
            return _found(None)
        return _found(pn_carrier.name_for_number(number, "en"))


class _Retryable(IngestdError):
    """A transient failure worth another attempt."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind  # the low-cardinality name given to on_event


class _GiveUp(IngestdError):
    """A transient failure that a retry now cannot fix (an unexpected status)."""


class _CircuitOpen(IngestdError):
    """The breaker opened: the number is not sent."""


class _StopIfCircuitOpen(stop_base):
    """Stop retrying once another number has opened the breaker: the service is down."""

    def __init__(self, owner: HttpCarrierLookup) -> None:
        self._owner = owner

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._owner.circuit_open()


class HttpCarrierLookup:
    """The HTTP contract of the module docstring, with tenacity retries and a shared bound."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        concurrency: int = 8,
        max_attempts: int = 5,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
        max_wait: float = 30.0,
        circuit_cooldown: float | None = None,
        on_event: EventHook | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("carrier concurrency must be at least 1")
        if max_attempts < 1:
            raise ValueError("carrier max_attempts must be at least 1")
        self.url = url
        self.timeout = timeout
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_wait = max_wait
        self.circuit_cooldown = max_wait if circuit_cooldown is None else circuit_cooldown
        self._breaker = _Breaker(self.circuit_cooldown, on_event)
        self._on_event = on_event
        # Shared by every caller of this instance: the bound on requests on the wire.
        self._slots = threading.BoundedSemaphore(concurrency)
        # One pool for every caller: at most `concurrency` requests are ever on the wire
        # (the semaphore), so that many kept-alive connections are enough. trust_env:
        # proxies from the environment, as operators expect of an HTTP client.
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout), follow_redirects=True, trust_env=True,
            headers={"Accept": "application/json"},
            limits=httpx.Limits(max_connections=concurrency,
                                max_keepalive_connections=concurrency))

    def close(self) -> None:
        """Close the pooled connections (the lookup is meant to live as long as the process)."""
        self._client.close()

    # -- the port ---------------------------------------------------------------------------

    def lookup_many(self, numbers: Iterable[str], *,
                    alive: Alive = nobody_watching) -> dict[str, CarrierResult]:
        unique = list(dict.fromkeys(numbers))
        if len(unique) <= 1:
            return {mdn: self._lookup_one(mdn, alive) for mdn in unique}
        # Copy the caller's context into each task: the log context bound by the caller
        # (structlog contextvars) must follow the lookups into the pool's threads.
        ctx = contextvars.copy_context()
        workers = min(self.concurrency, len(unique))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="carrier") as pool:
            futures = {mdn: pool.submit(ctx.copy().run, self._lookup_one, mdn, alive)
                       for mdn in unique}
            return {mdn: fut.result() for mdn, fut in futures.items()}

    # -- one number -------------------------------------------------------------------------

    def _lookup_one(self, mdn: str, alive: Alive) -> CarrierResult:
        sent = [0]  # requests put on the wire for this number, to name the outcome
        try:
            result, outcome = self._retrying_lookup(mdn, sent, alive)
        except _CircuitOpen:
            # Stopped by a breaker that opened while this number waited for a slot or slept.
            outcome = "transient" if sent[0] else "circuit_open"
            result = CarrierResult(None, TRANSIENT, _transient_detail(
                mdn, "the service is failing, lookups paused", sent[0]))
        except _Retryable as exc:
            # Out of attempts or of time (or stopped by a breaker another number opened).
            structlog.get_logger().warning("carrier.lookup_failed", mdn=mdn, reason=exc.reason,
                                           attempts=sent[0])
            self._breaker.trip(exc.reason)
            result = CarrierResult(None, TRANSIENT, _transient_detail(mdn, exc.reason, sent[0]))
            outcome = "transient"
        except _GiveUp as exc:
            structlog.get_logger().warning("carrier.lookup_failed", mdn=mdn, reason=str(exc),
                                           attempts=sent[0])
            result = CarrierResult(None, TRANSIENT, _transient_detail(mdn, str(exc), sent[0]))
            outcome = "transient"
        except Exception:
            # A bug of ours must cost the row a retry, not the worker its file.
            structlog.get_logger().exception("carrier.lookup_error", mdn=mdn)
            result = CarrierResult(None, TRANSIENT, _transient_detail(
                mdn, "internal error", sent[0]))
            outcome = "transient"
        _emit(self._on_event, "lookup", outcome)
        return result

    def _retrying_lookup(self, mdn: str, sent: list[int],
                         alive: Alive) -> tuple[CarrierResult, str]:
        retrying = Retrying(
            retry=retry_if_exception_type(_Retryable),
            wait=wait_random_exponential(multiplier=self.backoff_initial, max=self.backoff_max),
            stop=(stop_after_attempt(self.max_attempts)
                  | stop_before_delay(self.max_wait)
                  | _StopIfCircuitOpen(self)),
            # Each attempt and each back-off is bounded (timeout, backoff_max): marking their
            # starts as progress keeps a long retry loop from looking like a stuck worker.
            before=lambda _: alive(),
            before_sleep=self._log_retry(mdn, alive),
            reraise=True,
        )
        return retrying(self._attempt, mdn, sent)

    def _log_retry(self, mdn: str, alive: Alive) -> Callable[[RetryCallState], None]:
        def log(retry_state: RetryCallState) -> None:
            exc = retry_state.outcome.exception() if retry_state.outcome else None
            reason = exc.reason if isinstance(exc, _Retryable) else repr(exc)
            structlog.get_logger().warning(
                "carrier.retry", mdn=mdn, attempt=retry_state.attempt_number,
                wait=round(retry_state.upcoming_sleep, 3), reason=reason,
            )
            _emit(self._on_event, "retry",
                  exc.kind if isinstance(exc, _Retryable) else "unknown")
            alive()
        return log

    def _attempt(self, mdn: str, sent: list[int]) -> tuple[CarrierResult, str]:
        if self._breaker.is_open():
            raise _CircuitOpen
        with self._slots:
            # The breaker may have opened while this thread waited for a slot.
            if self._breaker.is_open():
                raise _CircuitOpen
            sent[0] += 1
            return self._request(mdn)

    def _request(self, mdn: str) -> tuple[CarrierResult, str]:
        try:
            with self._client.stream("GET", self._url_for(mdn)) as response:
                if not 200 <= response.status_code < 300:
                    return self._classify_status(response.status_code, mdn)
                body = b""
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > _MAX_BODY:
                        break  # enough to know it is too large
        except httpx.ConnectTimeout as exc:
            raise _Retryable(f"timed out connecting: {exc}", "timeout") from exc
        except httpx.TimeoutException as exc:  # a read (or write) after the connect
            raise _Retryable(f"timed out: {exc}", "timeout") from exc
        except httpx.ConnectError as exc:  # refused, DNS, unreachable
            raise _Retryable(f"connection failed: {exc}", "connection") from exc
        except httpx.TransportError as exc:  # reset, bad status line, too many redirects...
            raise _Retryable(f"connection failed: {exc!r}", "connection") from exc
        except httpx.TooManyRedirects as exc:  # a misconfigured service: a retry cannot help
            raise _GiveUp(f"too many redirects: {exc}") from exc
        except httpx.HTTPError as exc:  # a response that cannot be decoded, say
            raise _Retryable(f"connection failed: {exc!r}", "connection") from exc
        return self._parse_found(body), "found"

    def _classify_status(self, status: int, mdn: str) -> tuple[CarrierResult, str]:
        if status in (404, 422):
            detail = f"the carrier lookup service answered HTTP {status} for {mdn}"
            return CarrierResult(None, PERMANENT, detail), "permanent"
        if status in (408, 429):
            raise _Retryable(f"HTTP {status}", f"http_{status}")
        if 500 <= status <= 599:
            raise _Retryable(f"HTTP {status}", "http_5xx")
        raise _GiveUp(f"unexpected HTTP {status}")

    @staticmethod
    def _parse_found(body: bytes) -> CarrierResult:
        if len(body) > _MAX_BODY:
            raise _Retryable("bad response: body too large", "bad_response")
        try:
            data = json.loads(body)
        except ValueError as exc:  # also UnicodeDecodeError
            raise _Retryable(f"bad response: not JSON: {exc}", "bad_response") from exc
        name = data.get("carrier") if isinstance(data, dict) else None
        if not isinstance(data, dict) or "carrier" not in data or not (
                name is None or isinstance(name, str)):
            raise _Retryable('bad response: expected {"carrier": "..."}', "bad_response")
        return _found(name)

    def _url_for(self, mdn: str) -> str:
        parts = urllib.parse.urlsplit(self.url)
        query = urllib.parse.urlencode({"mdn": mdn})
        query = f"{parts.query}&{query}" if parts.query else query
        return urllib.parse.urlunsplit(parts._replace(query=query))

    def circuit_open(self) -> bool:
        """True while the breaker is open (for the ``ingestd_carrier_circuit_open`` gauge)."""
        return self._breaker.is_open()


class _Breaker:
    """Open for ``cooldown`` seconds once a number ran out of retries: the service is down."""

    def __init__(self, cooldown: float, on_event: EventHook | None) -> None:
        self.cooldown = cooldown
        self._on_event = on_event
        self._lock = threading.Lock()
        self._open_until = 0.0  # time.monotonic() until which the breaker is open

    def is_open(self) -> bool:
        # Read without the lock: one float read is atomic, and a stale answer only means
        # one more (or one fewer) request at the edge of the cool-down.
        return time.monotonic() < self._open_until

    def trip(self, reason: str) -> None:
        if self.cooldown <= 0:
            return
        with self._lock:
            now = time.monotonic()
            if now < self._open_until:
                return  # already open: numbers it stopped must not extend it
            self._open_until = now + self.cooldown
        structlog.get_logger().warning("carrier.circuit_open", cooldown=self.cooldown,
                                       reason=reason)
        _emit(self._on_event, "circuit", "open")


def _transient_detail(mdn: str, reason: str, attempts: int) -> str:
    tries = f" after {attempts} attempt{'s' if attempts != 1 else ''}" if attempts else ""
    return f"carrier lookup of {mdn} failed{tries}: {reason}"
def make_carrier(settings: Settings, *, on_event: EventHook | None = None) -> CarrierLookup:
    """The lookup ``settings.carrier_mode`` names; one instance is meant to serve every worker."""
    if settings.carrier_mode == "offline":
        return OfflineCarrierLookup(settings.default_region, on_event=on_event)
    if not settings.carrier_url:
        raise ValueError(
            "carrier_mode is 'http' but carrier_url is not set "
            "(set INGESTD_CARRIER_URL or carrier_url in the config file)")
    return HttpCarrierLookup(
        settings.carrier_url,
        timeout=settings.carrier_timeout,
        concurrency=settings.carrier_concurrency,
        max_attempts=settings.carrier_max_attempts,
        backoff_initial=settings.carrier_backoff_initial,
        backoff_max=settings.carrier_backoff_max,
        max_wait=settings.carrier_max_wait,
        on_event=on_event,
    )
