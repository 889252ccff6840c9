"""When the daemon takes a file: exact readiness (the watcher's wake-up at the settle moment).

A file is ready once ``settle_seconds`` have passed since its last change (its
mtime/ctime, when inotify saw it change; otherwise since the watcher first saw it
unchanged), and only once closed. These tests run the real daemon and assert the
order of events against moments computed from the file's own timestamps: the
``file.claimed`` log line (UTC, microseconds) never comes before the settle moment.
No durations are asserted; the speed is the benchmark's business
(bench/small_files.py).
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

import pytest
from daemon_helpers import (
    Daemon,
    StartDaemon,
    base_env,
    is_finished,
    result_json,
    setup_company,
    wait_for,
)

from ingestd.landing import CompanyDirs

SETTLE = 1.0
TIMEOUT = 90.0


def rows(first: int, n: int) -> str:
    return "".join(f"+1229{5550000 + i:07d},ext-{i}\n" for i in range(first, first + n))


HEADER = "mdn,external_person_id\n"


@pytest.fixture
def env(db_url: str, landing: Path, tmp_path: Path) -> dict[str, str]:
    # No rescan while a test runs: a file is taken by the watcher's own wake-up.
    return base_env(db_url, landing, tmp_path / "state",
                    INGESTD_SETTLE_SECONDS=str(SETTLE), INGESTD_RESCAN_SECONDS="3600")


@pytest.fixture
def start_timeout() -> float:
    return TIMEOUT


@pytest.fixture
def acme(db_url: str, landing: Path) -> CompanyDirs:
    return setup_company(db_url, landing, "acme")


def logged_at(d: Daemon, event: str, file: str | None) -> float:
    found = d.wait_event(event, timeout=TIMEOUT, **({} if file is None else {"file": file}))
    return datetime.fromisoformat(found[0]["timestamp"]).timestamp()


def last_change(path: Path) -> float:
    st = os.stat(path)
    return max(st.st_mtime, st.st_ctime)


def wait_done(d: Daemon, dirs: CompanyDirs, name: str) -> None:
    wait_for(lambda: is_finished(dirs, name), TIMEOUT, what=f"{name} in done/",
             context=d.tail)


def test_not_taken_before_settle_after_the_last_write(
        start_daemon: StartDaemon, acme: CompanyDirs) -> None:
    """Written, closed, and written again within the settle period: the settle period
    counts from the second write, and the file is taken whole."""
    d = start_daemon()
    path = acme.inbox / "twice.persons"
    path.write_text(HEADER + rows(0, 5))
    time.sleep(SETTLE / 2)  # the writer's pause, shorter than the settle period
    with open(path, "a") as fh:
        fh.write(rows(5, 5))
    wait_done(d, acme, "twice.persons")
    claimed = logged_at(d, "file.claimed", "twice.persons")
    # A rename keeps the mtime: in done/ it is still the second write's.
    assert claimed >= os.stat(acme.done / "twice.persons").st_mtime + SETTLE
    assert result_json(acme.done, "twice.persons")["accepted"] == 10


def test_not_taken_while_open_for_writing(start_daemon: StartDaemon, acme: CompanyDirs,
                                          db_url: str, landing: Path) -> None:
    """A writer that pauses with the file open, longer than the settle period, keeps it:
    a later file that settled after the pause began is done while this one waits."""
    d = start_daemon()
    other = setup_company(db_url, landing, "other")
    path = acme.inbox / "open.persons"
    with open(path, "w") as fh:
        fh.write(HEADER + rows(0, 5))
        fh.flush()
        paused_at = os.stat(path).st_mtime
        # Dropped after the open file's last write, so it settles later: once it is done,
        # the watcher has passed the open file's settle moment.
        wait_for(lambda: time.time() > paused_at + 0.05, what="a moment after the write")
        (other.inbox / "later.persons").write_text(HEADER + rows(100, 1))
        wait_done(d, other, "later.persons")
        assert last_change(other.done / "later.persons") > paused_at
        assert not d.find("file.claimed", file="open.persons")
        assert (acme.inbox / "open.persons").exists()
        fh.write(rows(5, 5))
    closed_at = time.time()
    wait_done(d, acme, "open.persons")
    claimed = logged_at(d, "file.claimed", "open.persons")
    assert claimed >= closed_at
    assert claimed >= os.stat(acme.done / "open.persons").st_mtime + SETTLE
    assert result_json(acme.done, "open.persons")["accepted"] == 10


def test_taken_at_its_settle_moment_in_drop_order(start_daemon: StartDaemon,
                                                  acme: CompanyDirs) -> None:
    """Files dropped one after another are each taken once settled, in drop order,
    without waiting for a rescan."""
    d = start_daemon()
    names = [f"seq-{i}.persons" for i in range(3)]
    for i, name in enumerate(names):
        (acme.inbox / name).write_text(HEADER + rows(i * 10, 2))
    for name in names:
        wait_done(d, acme, name)
    claimed = [logged_at(d, "file.claimed", n) for n in names]
    assert claimed == sorted(claimed)
    for name, at in zip(names, claimed, strict=True):
        assert at >= os.stat(acme.done / name).st_mtime + SETTLE
    assert not d.find("watcher.error")


def test_future_mtime_waits_until_it_is_settled(start_daemon: StartDaemon,
                                                acme: CompanyDirs) -> None:
    """Clock skew: a file whose mtime is ahead of our clock is not taken before that
    mtime plus the settle period."""
    d = start_daemon()
    path = acme.inbox / "ahead.persons"
    path.write_text(HEADER + rows(0, 2))
    ahead = time.time() + 2 * SETTLE
    os.utime(path, (ahead, ahead))
    wait_done(d, acme, "ahead.persons")
    assert logged_at(d, "file.claimed", "ahead.persons") >= ahead + SETTLE


def test_found_by_the_start_up_scan_waits_a_settle_period_of_its_own(
        env: dict[str, str], acme: CompanyDirs) -> None:
    """A file no event told us about (written before the start) may have another
    machine's timestamps: the watcher must see it unchanged for the settle period
    itself, however old its timestamps look."""
    path = acme.inbox / "before.persons"
    path.write_text(HEADER + rows(0, 2))
    written = last_change(path)
    wait_for(lambda: time.time() > written + 2 * SETTLE, what="the file to look settled")
    d = Daemon(env).start(timeout=TIMEOUT)
    try:
        wait_done(d, acme, "before.persons")
        started = logged_at(d, "watcher.started", None)
        assert logged_at(d, "file.claimed", "before.persons") >= started + SETTLE
    finally:
        d.kill()
