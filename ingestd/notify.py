"""The systemd notification protocol (``sd_notify``), spoken by hand.

The protocol is small enough that a dependency on libsystemd (or a wrapper
package) would cost more than it saves: one ``AF_UNIX``/``SOCK_DGRAM`` datagram
per message, sent to the path in ``$NOTIFY_SOCKET``, holding newline-separated
``KEY=VALUE`` assignments. A leading ``@`` names a socket in the abstract
namespace (its first byte on the wire is NUL). See sd_notify(3).

Kept hand-written on purpose: no maintained Python library reads ``$WATCHDOG_PID``
(whether the watchdog pings are meant for this very process, not a parent's or a
child's), and the daemon relies on that to stay quiet when it is not the service.

Everything here is a no-op when the daemon is not started by systemd with
``Type=notify`` (no ``$NOTIFY_SOCKET``), so the daemon can call it
unconditionally. A failed send never raises: losing a status line must not stop
ingestion; it is logged once per ``Notifier`` so a misconfiguration is visible
without flooding the journal with one line per watchdog ping.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping, MutableMapping

import structlog

log = structlog.get_logger(__name__)

# The variables systemd hands a Type=notify service (see sd_notify(3), sd_watchdog_enabled(3)).
_ENV_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

# A send can block only when systemd's receive queue is full; bound it so a wedged
# manager cannot wedge the daemon's main loop (the watchdog would then kill us anyway).
_SEND_TIMEOUT = 2.0


class Notifier:
    """Sends sd_notify messages to systemd; silently does nothing outside systemd.

    ``environ`` defaults to ``os.environ`` and is read once, at construction.
    With ``unset_environment=True`` the three variables are removed from it
    afterwards (like ``sd_notify(unset_environment=1, …)``) so that child
    processes, such as an embedded PostgreSQL built with systemd support, do not
    also talk to the socket: with ``NotifyAccess=main`` systemd would log every
    such message as refused.

    Thread-safe: the main loop and workers may call it concurrently.
    """

    def __init__(
        self,
        environ: MutableMapping[str, str] | None = None,
        *,
        unset_environment: bool = False,
    ) -> None:
        env = os.environ if environ is None else environ
        self._address = _parse_address(env.get("NOTIFY_SOCKET"))
        self._watchdog_interval = _watchdog_interval(env)
        if unset_environment:
            for name in _ENV_VARS:
                env.pop(name, None)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._warned = False

    # -- state -------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """True when there is a socket to talk to (started by systemd as Type=notify)."""
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings, or None when systemd expects none.

        Half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled(3) recommends, and only
        when ``$WATCHDOG_PID`` is unset or names this process (the variables may
        have been inherited from a parent that is the real watched service).
        """
        return self._watchdog_interval

    # -- messages ----------------------------------------------------------------

    def ready(self) -> bool:
        """``READY=1``: start-up finished (database reachable, migrations applied, watching)."""
        return self.notify(READY=1)

    def status(self, text: str) -> bool:
        """``STATUS=…``: a one-line summary shown by ``systemctl status``."""
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: keep-alive; send only while the daemon is really healthy."""
        return self.notify(WATCHDOG=1)

    def stopping(self) -> bool:
        """``STOPPING=1``: graceful shutdown has begun."""
        return self.notify(STOPPING=1)

    def reloading(self) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC``: a SIGHUP reload began; send ``ready()`` after.

        ``MONOTONIC_USEC`` is required by ``Type=notify-reload`` (systemd ≥ 253) and
        harmless before it.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(RELOADING=1, MONOTONIC_USEC=usec)

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC=…``: ask for more time to start or stop (e.g. a first initdb)."""
        return self.notify(EXTEND_TIMEOUT_USEC=max(0, round(seconds * 1_000_000)))

    def notify(self, **fields: object) -> bool:
        """Send one datagram with ``KEY=VALUE`` lines, in argument order.

        Values are converted with ``str()`` (``True``/``False`` become ``1``/``0``);
        newlines inside a value are replaced by spaces because the protocol is
        line-based. Returns True when the datagram was sent, False when there is no
        socket or the send failed (never raises).
        """
        if self._address is None or not fields:
            return False
        payload = "\n".join(f"{key}={_format(value)}" for key, value in fields.items())
        data = payload.encode("utf-8")
        with self._lock:
            try:
                if self._sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    sock.settimeout(_SEND_TIMEOUT)
                    self._sock = sock
                self._sock.sendto(data, self._address)
            except OSError as exc:
                self._close_locked()  # next call starts afresh (e.g. systemd re-executed)
                if not self._warned:
                    self._warned = True
                    log.warning("notify.failed", socket=_printable(self._address),
                                error=str(exc), note="further failures are not logged")
                return False
        return True

    def close(self) -> None:
        """Close the socket (a later message reopens it)."""
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _format(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value).replace("\r", " ").replace("\n", " ")


def _parse_address(value: str | None) -> str | bytes | None:
    """``/path`` or ``@abstract`` as a socket address; anything else disables notification.

    The abstract form is returned as bytes with a leading NUL: Python passes a str
    through as a path, and only the bytes form keeps an abstract name exact.
    (systemd ≥ 254 also accepts ``vsock:`` addresses, for VMs; ingestd is not run
    that way, so they are treated as absent.)
    """
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode("utf-8")
    if value.startswith("/"):
        return value
    log.warning("notify.unsupported_socket", socket=value)
    return None


def _printable(address: str | bytes) -> str:
    if isinstance(address, bytes):
        return "@" + address[1:].decode("utf-8", "replace")
    return address


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 2_000_000
