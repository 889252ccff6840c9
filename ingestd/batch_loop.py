"""One batch loop for both formats: read, check, look up, resolve, write.

A format gives its steps (``BatchSteps``); the loop runs them so that PostgreSQL and Python
work at the same time. The format's database thread (``db.worker.DatabaseThread``) runs
look-up N, write N, look-up N+1, write N+1, … in that order, so each look-up sees every
earlier write (a later row finds what an earlier one did); while it works, this thread
reads and checks the next batch (no database needed) or resolves the current one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

from ingestd.apply_context import ApplyContext

Batch = TypeVar("Batch")
Found = TypeVar("Found")


class BatchSteps(Protocol[Batch, Found]):
    def check(self, items: list[Any]) -> Batch:
        """The checks that need no database (a format's kernels and per-row checks)."""
        ...

    def look_up(self, batch: Batch) -> Future[Found]:
        """Queue the read of what the batch names on the database thread."""
        ...

    def resolve(self, batch: Batch, found: Found) -> None:
        """Decide the batch's rows in file order and queue its write (the format may look
        up and write more than once for one batch); record every row's outcome."""
        ...


def run_batches(ctx: ApplyContext, steps: BatchSteps[Batch, Found],
                reads: Iterator[list[Any]], position: Callable[[], int]) -> None:
    """Every batch ``reads`` gives, through ``steps``; ``position`` is how far the file has
    been read (progress counts the bytes of the rows done, not of those read ahead).

    A read that fails (the file stops being readable) fails the file after the batches
    before it have been resolved, so their row errors are known.
    """
    items = next(reads, [])
    if not items:
        return
    batch = steps.check(items)
    read_to = position()
    found: Future[Found] | None = steps.look_up(batch)
    while found is not None:
        following: Batch | None = None
        unreadable: Exception | None = None
        try:
            items = next(reads, [])
            following = steps.check(items) if items else None
        except Exception as e:  # the file fails there, after the rows before it
            unreadable = e
        following_read_to = position()
        steps.resolve(batch, found.result())
        if unreadable is not None:
            raise unreadable
        found = steps.look_up(following) if following is not None else None
        ctx.results.flush()  # row results go after the look-up the next batch waits for
        ctx.progress.advance(ctx.results.rows, read_to)
        if following is None:
            break
        batch, read_to = following, following_read_to
