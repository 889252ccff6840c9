"""The HTTP intake's server: uvicorn on a thread of the daemon, started when
``http_address`` is set, drained on stop; and the ``http.request`` log line and
metrics of every request.

uvicorn: the reference ASGI server, maintained with Starlette; its h11 protocol
streams request and response bodies, it limits concurrency (503 beyond) and drains
requests in hand on shutdown. It has no timeout for a request's headers, hence the
small protocol subclass here (a slow client must not hold a connection for ever).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any

import structlog
import uvicorn
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from ingestd.errors import HttpStartError
from ingestd.http.app import build_app
from ingestd.http.intake import Intake
from ingestd.metrics import Metrics
from ingestd.settings import parse_host_port

log = structlog.get_logger("ingestd.http")


class Observed:
    """ASGI middleware: one ``http.request`` line and the metrics per request. It logs
    no header at all, so a bearer token never reaches a log line."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.monotonic()
        status = 500
        sent = 0
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            seconds = time.monotonic() - t0
            route = _route_of(self.app, scope)
            state = scope.get("state", {})
            self.metrics.record_http(route, status, seconds)
            log.info("http.request", method=scope["method"], route=route,
                     path=scope["path"], company=state.get("company"),
                     request_id=state.get("request_id"), status=status,
                     bytes_in=received, bytes_out=sent, duration_s=round(seconds, 3))


def _route_of(app: Any, scope: Scope) -> str:
    """The matched path template (bounded label values), or "other"."""
    for route in getattr(app, "routes", ()):
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            return str(route.path)
    return "other"


def _protocol(header_timeout: float) -> type[H11Protocol]:
    class HeaderTimeoutProtocol(H11Protocol):
        """Closes a connection whose request headers do not all come within
        ``header_timeout`` seconds of the connection (or of the previous answer)."""

        _timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._timer is not None:
                self._timer.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_later(header_timeout, self._expire)

        def _expire(self) -> None:
            waiting = self.cycle is None or self.cycle.response_complete
            if waiting and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol


class HttpServer:
    def __init__(self, intake: Intake, metrics: Metrics, app: ASGIApp | None = None) -> None:
        settings = intake.settings
        self.intake = intake
        host, port = parse_host_port(settings.http_address or "")
        config = uvicorn.Config(
            Observed(app if app is not None else build_app(intake), metrics),
            host=host, port=port, lifespan="off", log_config=None, access_log=False,
            http=_protocol(settings.http_header_timeout),
            timeout_keep_alive=max(1, math.ceil(settings.http_header_timeout)),
            limit_concurrency=settings.http_max_concurrency,
            timeout_graceful_shutdown=max(1, math.ceil(settings.stop_timeout)),
        )
        self.server = uvicorn.Server(config)
        self.address = settings.http_address
        self._thread = threading.Thread(target=self.server.run, name="ingestd-http",
                                        daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise HttpStartError(f"the HTTP server did not start on {self.address}")
            time.sleep(0.02)
        # The bound port: with port 0 (tests) the kernel chose it.
        self.port = int(self.server.servers[0].sockets[0].getsockname()[1])
        log.info("http.started", address=self.address, port=self.port)

    def stop(self, timeout: float) -> bool:
        """Stop taking requests; wait up to ``timeout`` for those in hand. True if all
        were answered."""
        self.server.should_exit = True
        self._thread.join(timeout)
        self.intake.stopping.set()  # requests still waiting for their company give up
        finished = not self._thread.is_alive()
        if not finished:
            self.server.force_exit = True
            self._thread.join(1.0)
        log.info("http.stopped", drained=finished)
        return finished
