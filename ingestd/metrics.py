"""Prometheus metrics and the ``/metrics``, ``/healthz``, ``/readyz`` HTTP server.

Metrics live in a ``CollectorRegistry`` of their own, never in prometheus-client's
global default: registering the same name twice in one registry raises, so a
global registry would make a second daemon in one process (tests start several)
fail, and would mix ingestd's series with whatever else the process registers.

There is no process-wide instance: the daemon builds one ``Metrics`` and hands it to
the parts that record (``wiring``, ``supervisor``) and to ``start_server``; a test
builds its own, so its counters start at zero.

All recording functions are cheap, thread-safe (prometheus-client locks per
series) and never raise on odd label values: metrics must not break ingestion.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder

from ingestd import __version__

log = structlog.get_logger(__name__)

Outcome = Literal["done", "failed", "duplicate"]
OUTCOMES: tuple[Outcome, ...] = ("done", "failed", "duplicate")
# "unknown": a file that failed before its format was known (an unsupported extension).
FORMATS = ("persons", "contacts", "unknown")

# Apply time of one file: from a few rows (tens of ms) to a large import (minutes).
_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class Metrics:
    """One set of ingestd's metric objects in a dedicated registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # Process CPU, RSS, open fds and the Python version: "constant memory" and
        # fd leaks are invariants an operator wants to see without another exporter.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

        self.info = Gauge("ingestd_build_info", "Always 1; the running version as a label.",
                          ["version"], registry=r)
        self.info.labels(version=__version__).set(1)
        self.files = Counter(
            "ingestd_files", "Files finished, by company, format and outcome "
            "(done: applied; failed: nothing applied; duplicate: content already applied).",
            ["company", "format", "outcome"], registry=r)
        self.rows_accepted = Counter(
            "ingestd_rows_accepted", "Rows applied, by company.", ["company"], registry=r)
        self.rows_rejected = Counter(
            "ingestd_rows_rejected", "Rows rejected, by company and error class.",
            ["company", "error_class"], registry=r)
        self.carrier_lookups = Counter(
            "ingestd_carrier_lookups", "Carrier lookups, by outcome.", ["outcome"], registry=r)
        self.carrier_retries = Counter(
            "ingestd_carrier_retries", "Carrier lookup attempts that were retries.", registry=r)
        self._queue_and_health_gauges(r)
        self.http_requests = Counter(
            "ingestd_http_requests", "HTTP requests answered, by route and status.",
            ["route", "status"], registry=r)
        self.http_duration = Histogram(
            "ingestd_http_request_duration_seconds",
            "Time from a request's headers to the end of its answer, by route.",
            ["route"], buckets=_DURATION_BUCKETS, registry=r)
        self._companies: set[str] = set()
        self._companies_lock = threading.Lock()

    def _queue_and_health_gauges(self, r: CollectorRegistry) -> None:
        self.backlog = Gauge(
            "ingestd_backlog_files", "Ready files waiting to be applied, by company.",
            ["company"], registry=r)
        self.oldest_ready_age = Gauge(
            "ingestd_oldest_ready_age_seconds",
            "Age of the oldest ready file not yet applied (0 when none waits).", registry=r)
        self.workers_stuck = Gauge(
            "ingestd_workers_stuck",
            "Busy workers that have shown no progress for stuck_seconds.", registry=r)
        self.apply_duration = Histogram(
            "ingestd_apply_duration_seconds", "Time to apply one file, by company and format.",
            ["company", "format"], buckets=_DURATION_BUCKETS, registry=r)
        self.backlog_oldest_age = Gauge(
            "ingestd_backlog_oldest_age_seconds",
            "Age of the company's oldest ready file not yet applied (0 when none waits).",
            ["company"], registry=r)
        self.database_up = Gauge(
            "ingestd_database_up", "1 while the database answers the daemon's checks, else 0.",
            registry=r)
        self.database_up.set(1)  # the daemon starts serving only after migrating
        self.carrier_circuit_open = Gauge(
            "ingestd_carrier_circuit_open",
            "1 while the carrier lookup's circuit breaker is open (lookups fail at once).",
            registry=r)
        self.cache_entries = Gauge(
            "ingestd_cache_entries",
            "Entries in an in-memory cache the daemon keeps (each bounded by a setting).",
            ["cache"], registry=r)
        self.files_maybe_partial = Gauge(
            "ingestd_files_maybe_partial",
            "Files held as likely partial uploads (written in place, no final line break), "
            "waiting partial_grace_seconds for a newer upload.", registry=r)
        self.misplaced_files = Gauge(
            "ingestd_misplaced_files",
            "Files under the landing root that no company's inbox/ holds, so that nothing "
            "will ever apply them (each is logged once as file.misplaced).", registry=r)

    def init_company(self, company: str) -> None:
        """Create the company's series at zero, so that the first file's ``increase()``
        counts and dashboards show the company before it sends anything. Idempotent."""
        with self._companies_lock:
            if company in self._companies:
                return
            self._companies.add(company)
        for fmt in FORMATS:
            for outcome in OUTCOMES:
                self.files.labels(company=company, format=fmt, outcome=outcome)
        self.rows_accepted.labels(company=company)
        self.backlog.labels(company=company).set(0)
        self.backlog_oldest_age.labels(company=company).set(0)

    def is_company(self, company: str) -> bool:
        """True once ``init_company`` was called for it: a set-up company, not a stray folder."""
        with self._companies_lock:
            return company in self._companies

    def record_file(
        self,
        company: str,
        fmt: str,
        outcome: Outcome,
        accepted: int = 0,
        rejected_by_class: Mapping[str, int] | None = None,
        duration_s: float | None = None,
    ) -> None:
        """Count one finished file: its outcome, its rows, and its apply time.

        ``fmt`` is the format name (``persons``, ``contacts``); pass ``unknown`` for a
        file rejected before its format was known. ``duration_s`` is the apply
        duration; pass None for files that never reached apply (unknown company,
        duplicate) so they do not drag the histogram towards zero.
        """
        fmt = fmt or "unknown"
        self.files.labels(company=company, format=fmt, outcome=outcome).inc()
        if accepted:
            self.rows_accepted.labels(company=company).inc(accepted)
        for error_class, n in (rejected_by_class or {}).items():
            if n:
                self.rows_rejected.labels(company=company, error_class=error_class).inc(n)
        if duration_s is not None:
            self.apply_duration.labels(company=company, format=fmt).observe(duration_s)

    def set_backlog(self, company: str, n: int) -> None:
        """Ready files queued for ``company`` (set 0 when it drains; the series stays)."""
        self.backlog.labels(company=company).set(n)

    def set_oldest_ready_age(self, seconds: float | None) -> None:
        """Age of the oldest ready, unapplied file over all companies; None or 0 when none."""
        self.oldest_ready_age.set(seconds or 0.0)

    def set_backlog_oldest_age(self, company: str, seconds: float | None) -> None:
        """Age of ``company``'s oldest ready, unapplied file; None or 0 when none waits."""
        self.backlog_oldest_age.labels(company=company).set(seconds or 0.0)

    def set_database_up(self, up: bool) -> None:
        self.database_up.set(1 if up else 0)

    def watch_carrier_circuit(self, is_open: Callable[[], bool]) -> None:
        """Read the breaker's state at every scrape (it closes by itself, with no event)."""
        self.carrier_circuit_open.set_function(lambda: 1.0 if is_open() else 0.0)

    def set_workers_stuck(self, n: int) -> None:
        self.workers_stuck.set(n)

    def watch_cache(self, cache: str, entries: Callable[[], int]) -> None:
        """Read the cache's size at every scrape."""
        self.cache_entries.labels(cache=cache).set_function(lambda: float(entries()))

    def watch_maybe_partial(self, held: Callable[[], int]) -> None:
        self.files_maybe_partial.set_function(lambda: float(held()))
    def set_misplaced_files(self, n: int) -> None:
        self.misplaced_files.set(n)

    def record_carrier(self, outcome: str) -> None:
        """One carrier lookup finished (e.g. ``ok``, ``cached``, ``not_found``, ``error``)."""
        self.carrier_lookups.labels(outcome=outcome).inc()

    def record_http(self, route: str, status: int, seconds: float) -> None:
        """One HTTP request answered (``route``: the path template, not the path)."""
        self.http_requests.labels(route=route, status=str(status)).inc()
        self.http_duration.labels(route=route).observe(seconds)

    def record_carrier_retry(self) -> None:
        """One carrier lookup attempt was a retry (tenacity's ``before_sleep`` hook)."""
        self.carrier_retries.inc()


# -- HTTP server --------------------------------------------------------------------


def parse_address(address: str) -> tuple[str, int]:
    """``host:port``, ``:port`` (all IPv4 interfaces) or ``[v6]:port`` into (host, port).

    Raises ValueError with a message naming the bad part.
    """
    host, sep, port_s = address.rpartition(":")
    if not sep:
        raise ValueError(f"metrics address {address!r}: expected host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"metrics address {address!r}: port is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"metrics address {address!r}: port out of range")
    return host or "0.0.0.0", port


class _Server(ThreadingHTTPServer):
    # Request threads must not keep the process alive after the daemon decides to exit.
    daemon_threads = True
    # A restart right after a stop must be able to bind again (TIME_WAIT).
    allow_reuse_address = True

    metrics: Metrics
    health: Callable[[], Mapping[str, bool]]
    ready: Callable[[], bool]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "ingestd"
    # A slow or stuck client must not hold a thread for ever.
    timeout = 10

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def _dispatch(self, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(200, encoder(self.server.metrics.registry), content_type, head)
            elif path == "/healthz":
                checks = self._checks()
                ok = all(checks.values())  # no checks: answering at all proves liveness
                body = {"status": "ok" if ok else "unhealthy", "checks": checks}
                self._send_json(200 if ok else 503, body, head)
            elif path == "/readyz":
                ok = self._call_ready()
                self._send_json(200 if ok else 503, {"ready": ok}, head)
            elif path == "/":
                text = b"ingestd: /metrics /healthz /readyz\n"
                self._send(200, text, "text/plain; charset=utf-8", head)
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8", head)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the scraper went away; nothing to tell it

    def _checks(self) -> dict[str, bool]:
        # A check that raises is a failed check, not a 500: the prober wants a verdict.
        try:
            return {str(k): bool(v) for k, v in self.server.health().items()}
        except Exception as exc:
            log.warning("health.check_error", error=repr(exc))
            return {"health_callback": False}

    def _call_ready(self) -> bool:
        # Likewise: a readiness check that raises means "not ready", never a 500.
        try:
            return bool(self.server.ready())
        except Exception as exc:
            log.warning("health.ready_error", error=repr(exc))
            return False

    def _send_json(self, code: int, body: Any, head: bool) -> None:
        data = (json.dumps(body, sort_keys=True) + "\n").encode()
        self._send(code, data, "application/json", head)

    def _send(self, code: int, data: bytes, content_type: str, head: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        # The stdlib writes an unstructured line to stderr per request; a scrape every
        # 15 s would bury the JSON logs in the journal. Errors still show as 5xx codes.
        pass


@dataclass
class ServerHandle:
    """A running metrics/health server; ``stop()`` it on shutdown."""

    host: str
    port: int
    _server: _Server
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout)
        self._server.server_close()


def start_server(
    address: str,
    health: Callable[[], Mapping[str, bool]],
    ready: Callable[[], bool],
    *,
    metrics: Metrics,
) -> ServerHandle:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``address`` in a daemon thread.

    ``address`` is ``host:port`` (the ``metrics_address`` setting); port 0 picks a
    free port, readable as ``handle.port``. ``health`` returns named checks, e.g.
    ``{"alive": True, "database": False, "observer": True}``: ``/healthz`` answers
    200 when all are true, else 503, with the checks as JSON. ``ready`` decides
    ``/readyz``. Both are called on every probe from a request thread, so they must
    be quick and thread-safe (report state the daemon already keeps; do not open a
    database connection per probe). Raises ValueError for a malformed address and
    OSError when the address cannot be bound.
    """
    host, port = parse_address(address)
    server_cls: type[_Server] = _Server
    if _is_ipv6(host):
        server_cls = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
    server = server_cls((host, port), _Handler)
    server.metrics = metrics
    server.health = health
    server.ready = ready
    bound_port = int(server.server_address[1])
    # stop() waits up to one poll interval for serve_forever to notice the shutdown.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="ingestd-metrics", daemon=True)
    thread.start()
    log.info("metrics.listening", address=f"{host}:{bound_port}")
    return ServerHandle(host=host, port=bound_port, _server=server, _thread=thread)


def _is_ipv6(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        return False  # a host name: resolved as IPv4, like most exporters default to
