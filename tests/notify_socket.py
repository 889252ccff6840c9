"""systemd's notify socket for the tests: a bound AF_UNIX/SOCK_DGRAM socket that keeps
every line the daemon sends (``NOTIFY_SOCKET``), with the moment it arrived."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.received: list[tuple[float, str]] = []  # (monotonic at arrival, line)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._recv, daemon=True, name="notify-recv")
        self._thread.start()

    def _recv(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            with self._lock:
                self.received += [(now, line) for line in data.decode().split("\n")]

    def lines(self) -> list[str]:
        with self._lock:
            return [seen for _, seen in self.received]

    def count(self, line: str) -> int:
        return self.lines().count(line)

    def times(self, line: str) -> list[float]:
        with self._lock:
            return [t for t, seen in self.received if seen == line]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
