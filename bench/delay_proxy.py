"""A TCP front for a PostgreSQL server that delays every byte by a fixed time each way:
"the database is 1 ms away" on one machine (``bench/small_files.py --db-delay-ms``).

Threads and ``time.sleep`` rather than asyncio: the event loop's timers wait in whole
milliseconds (epoll), too coarse for half a millisecond. Each direction of a connection
has a reader, which stamps what it receives with when it may go on, and a sender, which
holds it until then: bytes keep their order, and a stream of them is delayed, not slowed.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from pathlib import Path

Address = Path | tuple[str, int]


class DelayProxy:
    """Listens on 127.0.0.1 (``port``); forwards each connection to ``target`` (a unix
    socket path or host and port), ``one_way`` seconds later in each direction."""

    def __init__(self, target: Address, one_way: float) -> None:
        self.target = target
        self.one_way = one_way
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self.sends = 0  # what clients sent, in pieces: about one per round trip
        threading.Thread(target=self._accept, daemon=True, name="delay-proxy").start()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()

    def _connect(self) -> socket.socket:
        if isinstance(self.target, Path):
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(str(self.target))
            return upstream
        return socket.create_connection(self.target)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            upstream = self._connect()
            self._pipe(client, upstream, count=True)
            self._pipe(upstream, client, count=False)

    def _pipe(self, source: socket.socket, sink: socket.socket, *, count: bool) -> None:
        held: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

        def read() -> None:
            while True:
                try:
                    data = source.recv(1 << 16)
                except OSError:
                    data = b""
                held.put((time.monotonic() + self.one_way, data))
                if count and data:
                    self.sends += 1  # threads may race here: a figure, not a count to trust exactly
                if not data:
                    return

        def send() -> None:
            while True:
                due, data = held.get()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if not data:
                    try:
                        sink.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                try:
                    sink.sendall(data)
                except OSError:
                    return

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=send, daemon=True).start()
