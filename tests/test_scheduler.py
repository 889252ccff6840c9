"""The scheduler hands a worker that holds a company the company's next ready files.

A fake pipeline stands in for ``Pipeline.process``: it records, per call (one taking of
the company's lock and lease), the files it was given, in order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_helpers import wait_for

from ingestd import landing
from ingestd import scheduler as scheduler_module
from ingestd.lifecycle import Outcome
from ingestd.readiness import Settled
from ingestd.scheduler import Scheduler
from ingestd.work import Drop, Recover

TIMEOUT = 30.0


class FakePipeline:
    def __init__(self, expected: int) -> None:
        self.holds: list[list[str]] = []  # one list per company lock taken
        self.drops: list[Drop] = []  # every drop handed over, as handed
        self.expected = expected
        self.finished = threading.Event()
        self.gate = threading.Event()  # set: files go through
        self.gate.set()
        self._lock = threading.Lock()
        self._count = 0

    def process(self, drop: Drop, *, then: Callable[[Drop, Outcome], Drop | None]) -> Outcome:
        files: list[str] = []
        with self._lock:
            self.holds.append(files)
        while True:
            self.gate.wait(TIMEOUT)
            files.append(drop.name)
            self.drops.append(drop)
            outcome = Outcome("done")
            with self._lock:
                self._count += 1
                if self._count == self.expected:
                    self.finished.set()
            following = then(drop, outcome)
            if following is None:
                return outcome
            drop = following

    def recover(self, work: Recover) -> None:
        pass


def inbox_file(root: Path, company: str, name: str, mtime_ns: int) -> Drop:
    return landing.drop(root / company / "inbox" / name, mtime_ns)


def started(fake: FakePipeline, root: Path, first: str) -> Scheduler:
    """A one-worker scheduler whose worker holds acme with ``first``, waiting at the gate."""
    fake.gate.clear()
    sched = Scheduler(fake.process, fake.recover, workers=1)
    sched.start()
    sched.submit(inbox_file(root, "acme", first, 100))
    wait_for(lambda: fake.holds, TIMEOUT, what="the first file in hand")
    return sched


def test_a_held_company_gets_its_next_files_in_drop_order_under_one_lock(
        tmp_path: Path) -> None:
    names = [f"f{i}.persons" for i in range(6)]
    fake = FakePipeline(expected=6)
    sched = started(fake, tmp_path, names[0])
    # Queued newest first: the order comes from (mtime, name), not from submission.
    for i in reversed(range(1, 6)):
        sched.submit(inbox_file(tmp_path, "acme", names[i], 100 + i))
    fake.gate.set()
    assert fake.finished.wait(TIMEOUT)
    assert sched.stop(TIMEOUT)
    assert fake.holds == [names], fake.holds
    assert sched.processed == 6


def test_a_recovery_queued_meanwhile_comes_first(tmp_path: Path) -> None:
    fake = FakePipeline(expected=2)
    sched = started(fake, tmp_path, "a.persons")
    sched.submit(landing.recover("acme"))  # sorts before any file
    sched.submit(inbox_file(tmp_path, "acme", "b.persons", 101))
    fake.gate.set()
    assert fake.finished.wait(TIMEOUT)
    assert sched.stop(TIMEOUT)
    assert fake.holds == [["a.persons"], ["b.persons"]], fake.holds


def test_a_company_is_let_go_after_hold_seconds(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_module, "HOLD_SECONDS", -1.0)  # always past
    fake = FakePipeline(expected=3)
    sched = started(fake, tmp_path, "a.persons")
    for i, name in enumerate(["b.persons", "c.persons"], 1):
        sched.submit(inbox_file(tmp_path, "acme", name, 100 + i))
    fake.gate.set()
    assert fake.finished.wait(TIMEOUT)
    assert sched.stop(TIMEOUT)
    assert fake.holds == [["a.persons"], ["b.persons"], ["c.persons"]], fake.holds


def test_a_file_judged_ready_again_while_queued_is_handed_over_as_judged_last(
        tmp_path: Path) -> None:
    """A partner re-uploads a queued file; the watcher judges the new version ready and
    submits it again: the queue keeps one entry, with the newer facts (and place), which
    the claim then checks the file against."""
    fake = FakePipeline(expected=2)
    sched = started(fake, tmp_path, "first.persons")
    path = tmp_path / "acme" / "inbox" / "q.persons"
    old = Settled(size=10, mtime_ns=200, ctime_ns=200, ino=7, arrival="written")
    new = Settled(size=99, mtime_ns=300, ctime_ns=300, ino=7, arrival="written")
    assert sched.submit(landing.drop(path, old.mtime_ns, old)) is True
    assert sched.submit(landing.drop(path, new.mtime_ns, new)) is False  # already queued
    assert sched.waiting() == {"acme": [new.mtime_ns]}  # one entry, the newer version
    fake.gate.set()
    assert fake.finished.wait(TIMEOUT)
    assert sched.stop(TIMEOUT)
    [handed] = [d for d in fake.drops if d.name == "q.persons"]
    assert (handed.settled, handed.mtime_ns) == (new, 300)
