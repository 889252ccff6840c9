"""A scripted carrier lookup service speaking the HTTP contract of ingestd/persons/carrier.py,
shared by every test that needs one.

``script[mdn]`` is a list of steps, one per call, the last repeating: an HTTP status (200
answers ``{"carrier": "TestTel"}``), raw bytes (200 with that body), or ``HANG`` (answer
found once the test sets ``release``, or at its end). A number without a script gets
``default`` (found). Every answer waits ``delay`` seconds first; ``arrived`` is set by the
first request and ``times(mdn)`` are the requests' arrivals. With ``strict``, a request
off the contract (path, query, Accept header) is answered 400 and recorded in
``bad_requests``. With ``keep_alive``, it speaks HTTP/1.1 and keeps connections open;
``peers`` are the client addresses of the requests, in order.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

HANG = "hang"
HOLD_SECONDS = 120.0  # a HANG answers by then even if nobody releases it
Step = int | bytes | str
CARRIER = "TestTel"


class CarrierServer:
    CARRIER = CARRIER

    def __init__(self, *, strict: bool = False, default: list[Step] | None = None,
                 keep_alive: bool = False) -> None:
        self.strict = strict
        self.keep_alive = keep_alive
        self.peers: list[tuple[str, int]] = []
        self.default: list[Step] = default or [200]
        self.script: dict[str, list[Step]] = {}
        self.calls: Counter[str] = Counter()
        self.queries: list[dict[str, list[str]]] = []
        self.bad_requests: list[str] = []
        self.arrivals: list[tuple[float, str]] = []  # (monotonic at arrival, mdn)
        self.arrived = threading.Event()
        self.delay = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.barrier: threading.Barrier | None = None
        self.release = threading.Event()  # set at teardown: lets HANG handlers finish
        self.cond = threading.Condition()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/lookup"

    def wait_for_calls(self, mdn: str, n: int) -> int:
        """The server records a call when the request arrives, which can trail the client's
        time-out: wait (bounded) until n calls were seen, then report the count."""
        with self.cond:
            self.cond.wait_for(lambda: self.calls[mdn] >= n, timeout=10)
            return self.calls[mdn]

    def times(self, mdn: str) -> list[float]:
        with self.cond:
            return [t for t, m in self.arrivals if m == mdn]

    def _step(self, mdn: str) -> Step:
        with self.cond:
            self.arrivals.append((time.monotonic(), mdn))
            self.arrived.set()
            index = self.calls[mdn]
            self.calls[mdn] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.cond.notify_all()
        steps = self.script.get(mdn, self.default)
        return steps[min(index, len(steps) - 1)]

    def _off_contract(self, path: str, accept: str | None) -> bool:
        parts = urllib.parse.urlsplit(path)
        query = urllib.parse.parse_qs(parts.query)
        return parts.path != "/lookup" or list(query) != ["mdn"] or accept != "application/json"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if server.keep_alive else "HTTP/1.0"

            def do_GET(self) -> None:
                with server.cond:
                    server.peers.append(self.client_address)
                if server.strict and server._off_contract(self.path, self.headers.get("Accept")):
                    with server.cond:
                        server.bad_requests.append(self.path)
                    self._send(400, b"")
                    return
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                with server.cond:
                    server.queries.append(query)
                step = server._step(query.get("mdn", [""])[0])
                if server.barrier is not None:
                    server.barrier.wait(timeout=10)
                if step == HANG:
                    server.release.wait(timeout=HOLD_SECONDS)
                time.sleep(server.delay)
                # Leave in-flight before answering: the client frees its slot only after it
                # has read the answer, so the server's count never exceeds the client's.
                with server.cond:
                    server.in_flight -= 1
                status, body = (200, step) if isinstance(step, bytes) else (
                    (200, b'{"carrier": "%s"}' % CARRIER.encode()) if step in (200, HANG)
                    else (int(step), b'{"error": "scripted"}'))
                self._send(status, body)

            def _send(self, status: int, body: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (time-out test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@contextmanager
def serving(monkeypatch: pytest.MonkeyPatch, **options: Any) -> Iterator[CarrierServer]:
    """A running ``CarrierServer`` (proxies from the environment off), stopped at the end."""
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    srv = CarrierServer(**options)
    # A short poll interval only makes shutdown() at the end quick.
    thread = threading.Thread(target=srv.httpd.serve_forever, kwargs={"poll_interval": 0.01},
                              daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.httpd.shutdown()
        srv.httpd.server_close()
        thread.join()
