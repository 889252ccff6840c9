"""The one value that travels watcher → scheduler → lifecycle: what a worker is to do.

``Drop``: a ready file in a company's inbox. ``Recover``: finish the company's claims
left in .processing/ before its next file. Both are built only by ``landing``, the one
place that knows the folder layout; everyone else reads their fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ingestd.readiness import Settled


@dataclass(frozen=True, slots=True)
class Drop:
    company: str
    path: Path  # LANDING_ROOT/<company>/inbox/NAME
    mtime_ns: int  # when it was last written, as the watcher saw it: the queue's order
    # The file as the watcher judged it ready (size, mtime, ctime, inode, how it arrived):
    # the claim checks it still is. None: not judged by a watcher (the CLI, a put-back).
    settled: Settled | None = None

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True, slots=True)
class Recover:
    company: str


Work = Drop | Recover
