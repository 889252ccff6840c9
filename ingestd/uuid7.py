"""Time-ordered (version 7) UUIDs for the keys ingestd makes: ids made one after another
sort one after another, so their inserts land at the right edge of a b-tree index
instead of scattering over all of it (random version 4 keys do).

Kept hand-written until Python 3.14's ``uuid.uuid7`` can be required: a few lines of
RFC 9562, not worth a dependency."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

_LOW = (1 << 48) - 1  # the bits of the last group


def uuid7_block(n: int) -> list[str]:
    """``n`` consecutive keys of ``uuid7s``, made as fast as a list can be: keys whose
    counter stays within the last group's 48 bits share the text before it."""
    keys = uuid7s()
    first = next(keys) if n else ""
    low = int(first[24:], 16)
    if low + n > _LOW:
        return [first, *(next(keys) for _ in range(n - 1))]
    prefix = first[:24]
    return [f"{prefix}{x:012x}" for x in range(low, low + n)]


def uuid7s() -> Iterator[str]:
    """Distinct version 7 UUIDs (RFC 9562), as text: the time in ms, then a counter.

    The 74 bits after the time start at a random value with room to count (method 1 of
    RFC 9562 section 6.2), so the keys of one run are consecutive and later runs sort
    after earlier ones.
    """
    ms = time.time_ns() // 1_000_000
    counter = int.from_bytes(os.urandom(8))  # 64 random bits under a 74-bit counter
    head = (ms << 80) | (7 << 76) | (2 << 62)
    while True:
        h = f"{head | ((counter >> 62) << 64) | (counter & ((1 << 62) - 1)):032x}"
        yield f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        counter += 1
