"""The watcher in this process, on real folders and real inotify (issue 17, small files).

It hears of what happens where a drop can appear, and nothing of the daemon's own
work: claims in .processing/, moves into done/ and failed/, the sidecars written
there. Every wait is a deadline-bounded poll; the rescan is an hour away, so whatever
is found here was found by an event (or by the scan of a folder just watched).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import wait_for

from ingestd.landing import CompanyDirs
from ingestd.partial_holds import PartialHolds
from ingestd.settings import load_settings
from ingestd.settling import CLOSED, MOVED_IN, Settling
from ingestd.watcher import Watcher
from ingestd.work import Drop

TIMEOUT = 60.0


class Seen:
    """What the watcher was told (every poke) and handed over (every ready drop)."""

    def __init__(self) -> None:
        self.pokes: list[Path] = []
        self.ready: list[Drop] = []

    def ready_names(self) -> list[str]:
        return [d.path.name for d in self.ready]

    def on_ready(self, drop: Drop) -> bool:
        self.ready.append(drop)
        return True


@pytest.fixture
def seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Seen]:
    seen = Seen()
    poke = Watcher.poke

    def recorded(self: Watcher, path: Path, *args: object, **kwargs: object) -> None:
        seen.pokes.append(path)
        poke(self, path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Watcher, "poke", recorded)
    yield seen


@pytest.fixture
def watcher(tmp_path: Path, seen: Seen) -> Iterator[Watcher]:
    settings = load_settings(landing_root=tmp_path / "landing", state_dir=tmp_path / "state",
                             settle_seconds=0, rescan_seconds=3600,
                             partial_grace_seconds=0)
    (tmp_path / "landing").mkdir()
    w = Watcher(settings, seen.on_ready)
    yield w
    w.stop()


def company(tmp_path: Path, name: str) -> CompanyDirs:
    dirs = CompanyDirs(tmp_path / "landing" / name)
    dirs.create()
    return dirs


def test_the_daemons_own_moves_and_sidecars_feed_the_watcher_nothing(
        tmp_path: Path, watcher: Watcher, seen: Seen) -> None:
    acme = company(tmp_path, "acme")
    watcher.start()
    # What the lifecycle does with a file, without a daemon: claim, sidecars, move.
    (acme.inbox / "a.persons").write_text("external_person_id\ne1\n")
    wait_for(lambda: "a.persons" in seen.ready_names(), TIMEOUT, what="a.persons ready")
    claim = acme.processing / "0001-claim"
    claim.mkdir()
    os.rename(acme.inbox / "a.persons", claim / "a.persons")
    (claim / "a.persons").read_bytes()
    tmp = acme.done / ".a.persons.result.json.tmp"
    tmp.write_text("{}")
    os.rename(tmp, acme.done / "a.persons.result.json")
    (acme.failed / "b.persons.errors.csv").write_text("record,error\n")
    os.rename(claim / "a.persons", acme.done / "a.persons")
    claim.rmdir()
    # Then an upload: once it is heard of, anything heard of before it has been.
    (acme.inbox / "b.persons").write_text("external_person_id\ne2\n")
    wait_for(lambda: "b.persons" in seen.ready_names(), TIMEOUT, what="b.persons ready")
    ours = {acme.processing, acme.done, acme.failed}
    assert [p for p in seen.pokes if ours & set(p.parents)] == []


def test_a_company_made_after_start_is_watched_at_once(
        tmp_path: Path, watcher: Watcher, seen: Seen) -> None:
    watcher.start()
    beta = company(tmp_path, "beta")
    (beta.inbox / "first.persons").write_text("external_person_id\ne1\n")
    wait_for(lambda: "first.persons" in seen.ready_names(), TIMEOUT, what="first.persons")
    # A folder made first and its inbox later, by hand.
    gamma = tmp_path / "landing" / "gamma"
    gamma.mkdir()
    (gamma / "inbox").mkdir()
    (gamma / "inbox" / "g.persons").write_text("external_person_id\ne1\n")
    wait_for(lambda: "g.persons" in seen.ready_names(), TIMEOUT, what="g.persons")
    (beta.inbox / "second.persons").write_text("external_person_id\ne2\n")
    wait_for(lambda: "second.persons" in seen.ready_names(), TIMEOUT, what="second.persons")


def test_an_inbox_replaced_is_watched_again(tmp_path: Path, watcher: Watcher,
                                            seen: Seen) -> None:
    acme = company(tmp_path, "acme")
    watcher.start()
    shutil.rmtree(acme.inbox)
    acme.inbox.mkdir()
    (acme.inbox / "again.persons").write_text("external_person_id\ne1\n")
    wait_for(lambda: "again.persons" in seen.ready_names(), TIMEOUT, what="again.persons")
    # A company folder moved in from elsewhere, its inbox already full.
    outside = tmp_path / "outside"
    CompanyDirs(outside).create()
    (outside / "inbox" / "moved.persons").write_text("external_person_id\ne1\n")
    os.rename(outside, tmp_path / "landing" / "delta")
    wait_for(lambda: "moved.persons" in seen.ready_names(), TIMEOUT, what="moved.persons")


def test_a_file_found_by_a_scan_goes_before_a_newer_one_an_event_made_ready_first(
        tmp_path: Path) -> None:
    """Drop order across the two ways a file is seen: an older file found by a scan waits
    out settle_seconds from when it was seen; a newer one renamed in while it waits may be
    ready first by its own clock. It waits for the older one, and both go oldest first."""
    settings = load_settings(landing_root=tmp_path / "landing", state_dir=tmp_path / "state",
                             settle_seconds=0.5, partial_grace_seconds=0)
    inbox = tmp_path / "landing" / "acme" / "inbox"
    inbox.mkdir(parents=True)
    older, newer = inbox / "a-older.persons", inbox / "b-newer.persons"
    older.write_text("external_person_id\ne1\n")
    os.utime(older, ns=(1_000_000_000, 1_000_000_000))
    staged = tmp_path / "b.persons"
    staged.write_text("external_person_id\ne2\n")
    os.rename(staged, newer)
    settling = Settling(settings, PartialHolds(settings, tmp_path / "landing"))
    start = time.monotonic()
    # The event's file was seen first; the scan found the older one a moment later.
    settling.observe(newer, start, CLOSED, True, MOVED_IN)
    settling.observe(older, start + 0.3)
    handed: list[str] = []

    def both_ready() -> bool:
        ready, _ = settling.check()
        handed.extend(p.name for p, _ in ready)
        return len(handed) == 2

    wait_for(both_ready, TIMEOUT, what="both files ready", interval=0.01)
    assert handed == ["a-older.persons", "b-newer.persons"]
