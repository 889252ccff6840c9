"""Every connection the daemon opens: how a dead one is noticed, and how its server
session is ended once the daemon is connected again.

A failover, a NAT or firewall that forgets a connection, a pulled cable: the open TCP
connections are black-holed (no RST, no FIN, nothing acknowledged again) while new ones
work at once. Without help libpq notices only when the kernel's keepalive gives up,
after two hours. So every connection gets libpq keepalives and a TCP user timeout
derived from one setting, ``db_dead_after_seconds`` (``connection_params``): a
connection that answers nothing for about that long raises, whatever it was waiting for.

The server may not know that the client is gone (a partition): the daemon's old
session then still holds its company's advisory lock and an open transaction, and the
daemon would wait for its own past. Every connection is therefore named
(``application_name = ingestd/<process tag>/<n>``), and ``Sessions`` knows which of
those names are still live here; any other session under this process's tag is a
dead connection of ours, and ``ingestd.db.leases.end_own_sessions`` ends it (as a
stale peer's sessions are ended), so its transaction rolls back and its locks go.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
import weakref
from typing import Any

import psycopg

# Probes after the first silence: three, so a single lost probe is not a dead connection.
KEEPALIVE_PROBES = 3


def connection_params(dead_after_seconds: float) -> dict[str, Any]:
    """The libpq parameters that make a silent connection fail after about
    ``dead_after_seconds`` (its waits end with an error then):

    - ``keepalives_idle`` (a third of it) of silence before the first probe, then
      ``keepalives_count`` probes ``keepalives_interval`` apart: an idle or waiting
      connection whose peer is gone;
    - ``tcp_user_timeout`` (ms): data sent and not acknowledged for that long, which
      keepalives do not cover (Linux also lets it end the keepalive probing);
    - ``connect_timeout``: a new connection that gets no answer.
    """
    total = max(2, math.ceil(dead_after_seconds))
    idle = max(1, total // 3)
    interval = max(1, (total - idle) // KEEPALIVE_PROBES)
    return {
        "keepalives": 1,
        "keepalives_idle": idle,
        "keepalives_interval": interval,
        "keepalives_count": KEEPALIVE_PROBES,
        "tcp_user_timeout": int(dead_after_seconds * 1000),
        "connect_timeout": total,
    }


class Sessions:
    """Names this process's connections and knows which of them are still live.

    A name is reserved before its connection is attempted, so a session that is still
    being set up is never taken for a dead one.
    """

    def __init__(self, tag: str, connecting_for: float = 120.0) -> None:
        self.tag = tag  # the process's instance id
        self.connecting_for = connecting_for
        self._lock = threading.Lock()
        self._serial = itertools.count(1)
        # name -> the connection, or the monotonic time its connect began
        self._names: dict[str, weakref.ref[psycopg.Connection[Any]] | float] = {}

    @property
    def prefix(self) -> str:
        return f"ingestd/{self.tag}/"

    def reserve(self) -> str:
        """A new connection's ``application_name``."""
        name = f"{self.prefix}{next(self._serial)}"
        with self._lock:
            self._purge()
            self._names[name] = time.monotonic()
        return name

    def opened(self, conn: psycopg.Connection[Any]) -> None:
        """``conn`` is connected: live until it is closed or broken."""
        # As this client asked for it (the server's report may be missing or rewritten).
        name = conn.info.get_parameters().get("application_name")
        if name is None:
            return
        with self._lock:
            self._names[name] = weakref.ref(conn)

    def live(self) -> list[str]:
        """Names whose connection is open and not known broken, or being made."""
        with self._lock:
            self._purge()
            return list(self._names)

    def _purge(self) -> None:
        """Forget closed and broken connections, and connects begun more than
        ``connecting_for`` ago (one that failed leaves no session). Under the lock."""
        now = time.monotonic()
        for name, entry in list(self._names.items()):
            if isinstance(entry, float):
                alive = now - entry < self.connecting_for
            else:
                conn = entry()
                alive = conn is not None and not conn.closed and not conn.broken
            if not alive:
                del self._names[name]


def is_connection_error(exc: BaseException) -> bool:
    """The database, not the file: a connection lost, refused or timed out, a server
    shutting down (``AdminShutdown``), no pooled connection in time (``PoolTimeout``)."""
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
