"""A file's connection driven by one thread of its own, so PostgreSQL works on one batch
while Python reads and checks the next (psycopg releases the GIL while it waits)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Self, TypeVar

T = TypeVar("T")

_kept = threading.local()


def _executor(name: str) -> ThreadPoolExecutor:
    """The calling worker's database thread of that name, started with its first file and
    kept for the next ones: a small file should not pay for starting and joining a thread."""
    pools: dict[str, ThreadPoolExecutor] = _kept.__dict__.setdefault("pools", {})
    if name not in pools:
        pools[name] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
    return pools[name]


class DatabaseThread:
    """Runs what it is given on one thread, in the order given.

    After a failure nothing more runs (the transaction is lost anyway) and every later
    result raises that first error; leaving the ``with`` block waits for the queue to
    drain (the caller commits or rolls back next) and raises it if nothing else did.
    """

    def __init__(self, name: str) -> None:
        self._pool = _executor(name)
        self._last: Future[Any] | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        # One thread runs the tasks in order, so the last one done means all of them are.
        if self._last is not None:
            wait([self._last])
        if exc[0] is None and self._error is not None:
            raise self._error

    def run(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        def task() -> T:
            if self._error is not None:
                raise self._error
            try:
                return fn(*args)
            except BaseException as e:
                self._error = e
                raise
        self._last = self._pool.submit(task)
        return self._last

    def send(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in turn; its failure shows in the next result waited for."""
        self.run(fn)
