"""A file's connection driven by one thread of its own, so PostgreSQL works on one batch
while Python reads and checks the next (psycopg releases the GIL while it waits)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class DatabaseThread:
    """Runs what it is given on one thread, in the order given.

    After a failure nothing more runs (the transaction is lost anyway) and every later
    result raises that first error; leaving the ``with`` block waits for the queue to
    drain (the caller commits or rolls back next) and raises it if nothing else did.
    """

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._error: BaseException | None = None

    def __enter__(self) -> DatabaseThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True)
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
        return self._pool.submit(task)

    def send(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in turn; its failure shows in the next result waited for."""
        self.run(fn)
