"""A TCP front for the suite's PostgreSQL (its unix socket, or the server given by
``INGESTD_TEST_DATABASE_URL``, on TCP).

Tests start it to make "the database" appear on a port, and stop it to make it
vanish: stopping closes the listener and every connection through it, as a server
that goes away would.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

Address = Path | tuple[str, int]


def address_of(pg_server_url: str) -> Address:
    """Where the server at ``pg_server_url`` listens: its socket file (host = a socket
    directory) or its host and port."""
    params = conninfo_to_dict(pg_server_url)
    host, port = str(params.get("host") or "/var/run/postgresql"), int(params.get("port") or 5432)
    return Path(host) / f".s.PGSQL.{port}" if host.startswith("/") else (host, port)


def free_port() -> int:
    """A port nobody listens on right now (bound to 0 by us, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class Proxy:
    """Forwards 127.0.0.1:``port`` to the server at ``target``; start/stop at will."""

    def __init__(self, port: int, target: Address) -> None:
        self.port = port
        self.target = target
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> Proxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._spawn(self._accept, listener)
        return self

    def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, []
        for s in [listener, *sockets] if listener else sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        with self._lock:
            threads, self._threads = self._threads, []
        for t in threads:
            t.join(5)

    def _spawn(self, target: Callable[..., None], *args: socket.socket) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(t)
        t.start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            unix = isinstance(self.target, Path)
            server = socket.socket(socket.AF_UNIX if unix else socket.AF_INET,
                                   socket.SOCK_STREAM)
            try:
                server.connect(str(self.target) if unix else self.target)
            except OSError:
                client.close()
                server.close()
                continue
            with self._lock:
                if self._listener is not listener:  # stopped meanwhile
                    client.close()
                    server.close()
                    return
                self._sockets += [client, server]
            self._spawn(self._pump, client, server)
            self._spawn(self._pump, server, client)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
