"""A full landing file system (issue 9): nothing lost, nothing half-moved, done once
when space returns.

The landing root is a small tmpfs mounted for the test (root only; otherwise the
tests skip and say why). tmpfs accounts space in whole pages and inodes exactly, so
"full" can be made precise: a ballast file takes every page but ``leave`` of them, or
empty files take every inode. Within one file system a rename needs no space, so what
can fail is what creates something: a sidecar (``errors.csv``), the ``result.json``
written last before the move, and the claim's folder under ``.processing/``.

Throughout, the file must be in exactly one place, no half-written sidecar may be
visible under a final name (temporary dotfiles cleaned up), the daemon keeps running
and logs the error, and once the ballast is gone the file is finished exactly once.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import (
    NOTE_FIELD,
    Daemon,
    base_env,
    entries,
    ledger,
    listing,
    scalar,
    setup_company,
    wait_for,
)

from ingestd.landing import CompanyDirs

TIMEOUT = 90.0
NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs with 256 inodes, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill up needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=256,mode=0755",
                          "tmpfs", str(mnt)], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {res.stderr.strip() or res.returncode}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def free_pages(fs: Path) -> int:
    st = os.statvfs(fs)
    return st.f_bavail


def fill_pages(fs: Path, leave: int) -> Path:
    """Take every page of ``fs`` but ``leave`` with one ballast file."""
    ballast = fs / "ballast"
    page = os.statvfs(fs).f_frsize
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * page)  # unbuffered: what was written is on the disk
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    os.truncate(ballast, os.path.getsize(ballast) // page * page - leave * page)
    assert free_pages(fs) == leave
    return ballast


def fill_inodes(fs: Path) -> Path:
    """Take every free inode of ``fs`` with empty files in one folder."""
    folder = fs / "inode-ballast"
    folder.mkdir()
    n = 0
    try:
        while True:
            (folder / str(n)).touch()
            n += 1
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    assert os.statvfs(fs).f_favail == 0
    return folder


def start(fs: Path, db_url: str, tmp_path: Path) -> Daemon:
    # The state directory is elsewhere: only the landing root is full.
    return Daemon(base_env(db_url, fs, tmp_path / "state")).start(timeout=TIMEOUT)


def stage(fs: Path, name: str, content: str) -> Path:
    """Write a drop on the small file system (before it is filled), outside any inbox:
    renaming it into the inbox later needs no space."""
    staging = fs / "staging"
    staging.mkdir(exist_ok=True)
    path = staging / name
    path.write_text(content)
    return path


def no_temp_files(dirs: CompanyDirs) -> bool:
    return not [p for p in entries(dirs.root) if p.name.startswith(".ingestd-")]


def errors_about(d: Daemon, text: str) -> list[dict[str, object]]:
    return [e for e in d.find("file.error") if text in str(e.get("exception", ""))]


def assert_finished_once(d: Daemon, db_url: str, acme: CompanyDirs, name: str,
                         content: str, rows: int, accepted: int) -> None:
    d.wait_event("file.done", timeout=TIMEOUT, file=name)
    assert d.alive(), d.tail()
    assert d.stop(signal.SIGTERM, timeout=TIMEOUT) == 0, d.tail()
    assert len(d.find("file.done", file=name)) == 1
    assert len(d.find("file.applied", file=name)) == 1  # applied once, finished later
    [entry] = ledger(db_url)
    assert entry["name"] == name and entry["status"] == "done"
    assert (entry["rows"], entry["accepted"]) == (rows, accepted)
    assert entry["finished_at"] is not None
    assert scalar(db_url, "SELECT count(*) FROM acme.persons") == accepted
    # errors.csv only where rows were rejected: a sidecar says something or is not written
    assert listing(acme.done) == ([name, f"{name}.errors.csv", f"{name}.result.json"]
                                  if accepted < rows else [name, f"{name}.result.json"])
    assert (acme.done / name).read_text() == content
    assert listing(acme.inbox) == [] and listing(acme.failed) == []
    assert list(entries(acme.processing)) == []
    assert no_temp_files(acme)


# -- sidecars: errors.csv bigger than the space left ---------------------------------------

ACCEPTED = 300
REJECTED = 3000  # PersonNotFound, each echoed in errors.csv: ~250 KB, far over 2 pages
MANY_BAD = ("person_id,external_person_id,note\n"
            + "".join(f",new{i},hello\n" for i in range(ACCEPTED))
            + "".join(f"{900000 + i},,x\n" for i in range(REJECTED)))


def test_errors_csv_that_does_not_fit_waits_for_space_and_is_finished_once(
        small_fs: Path, db_url: str, tmp_path: Path) -> None:
    acme = setup_company(db_url, small_fs, "acme", NOTE_FIELD)
    staged = stage(small_fs, "many-bad.persons", MANY_BAD)
    ballast = fill_pages(small_fs, leave=2)
    d = start(small_fs, db_url, tmp_path)
    try:
        os.rename(staged, acme.inbox / "many-bad.persons")
        # Committed once, then the sidecar cannot be written: tried again and again.
        d.wait_event("file.applied", timeout=TIMEOUT, file="many-bad.persons")
        wait_for(lambda: len(errors_about(d, NO_SPACE)) >= 2, TIMEOUT,
                 what="two failed attempts to write the sidecars", context=d.tail)
        assert d.alive(), d.tail()
        # Nothing lost or half-moved: the file is in its claim only, no sidecar is
        # visible under its final name, no temporary file is left.
        [claim] = listing(acme.processing)
        assert listing(acme.processing / claim) == ["many-bad.persons"]
        assert listing(acme.done) == [] and listing(acme.inbox) == []
        assert listing(acme.failed) == []
        assert no_temp_files(acme)
        [entry] = ledger(db_url)
        assert entry["status"] == "done" and entry["finished_at"] is None
        assert scalar(db_url, "SELECT count(*) FROM acme.persons") == ACCEPTED

        ballast.unlink()
        assert_finished_once(d, db_url, acme, "many-bad.persons", MANY_BAD,
                             ACCEPTED + REJECTED, ACCEPTED)
    finally:
        d.kill()
    lines = (acme.done / "many-bad.persons.errors.csv").read_text().splitlines()
    assert len(lines) == 1 + REJECTED
    assert lines[1].startswith(f"{ACCEPTED + 1},PersonErrors::PersonNotFound,")


# -- the move: result.json, the last thing written before the file moves, does not fit --

ALL_GOOD = "external_person_id,note\n" + "".join(f"g{i},fine\n" for i in range(50))
# One rejected row (no identifying value), so that errors.csv is written: a small file.
ONE_BAD = ALL_GOOD + ",orphan\n"
ONE_BAD_ERRORS_CSV = (
    b"record,error_class,error_message,error_field,error_detail,external_person_id,note\r\n"
    b"51,PersonErrors::PersonCreateRequiresDeviceOrExternalPersonId,Creating a Person requires"
    b' a device or an external person id,,"no mdn, vibes_device_id or external_person_id to'
    b' create a person with",,orphan\r\n')


def test_result_json_that_does_not_fit_leaves_the_file_in_its_claim_until_space_returns(
        small_fs: Path, db_url: str, tmp_path: Path) -> None:
    """One page left: the (one-line) errors.csv takes it, the result.json that must
    precede the move finds none."""
    acme = setup_company(db_url, small_fs, "acme", NOTE_FIELD)
    staged = stage(small_fs, "good.persons", ONE_BAD)
    ballast = fill_pages(small_fs, leave=1)
    d = start(small_fs, db_url, tmp_path)
    try:
        os.rename(staged, acme.inbox / "good.persons")
        d.wait_event("file.applied", timeout=TIMEOUT, file="good.persons")
        wait_for(lambda: len(errors_about(d, NO_SPACE)) >= 2, TIMEOUT,
                 what="two failed attempts to finish the file", context=d.tail)
        assert d.alive(), d.tail()
        [claim] = listing(acme.processing)
        assert listing(acme.processing / claim) == ["good.persons"]
        assert listing(acme.inbox) == [] and listing(acme.failed) == []
        # No result.json and no file in done/; a sidecar there is complete, never partial.
        assert set(listing(acme.done)) <= {"good.persons.errors.csv"}
        for name in listing(acme.done):
            assert (acme.done / name).read_bytes() == ONE_BAD_ERRORS_CSV
        assert no_temp_files(acme)
        [entry] = ledger(db_url)
        assert entry["status"] == "done" and entry["finished_at"] is None

        ballast.unlink()
        assert_finished_once(d, db_url, acme, "good.persons", ONE_BAD, 51, 50)
    finally:
        d.kill()


# -- the claim: no inode left for the claim's folder ---------------------------------------


def test_no_inode_for_the_claim_leaves_the_file_in_the_inbox_until_space_returns(
        small_fs: Path, db_url: str, tmp_path: Path) -> None:
    acme = setup_company(db_url, small_fs, "acme", NOTE_FIELD)
    staged = stage(small_fs, "good.persons", ALL_GOOD)
    ballast = fill_inodes(small_fs)
    d = start(small_fs, db_url, tmp_path)
    try:
        os.rename(staged, acme.inbox / "good.persons")
        wait_for(lambda: len(errors_about(d, NO_SPACE)) >= 2, TIMEOUT,
                 what="two failed attempts to claim the file", context=d.tail)
        assert d.alive(), d.tail()
        assert listing(acme.inbox) == ["good.persons"]
        assert listing(acme.processing) == [] and listing(acme.done) == []
        assert listing(acme.failed) == []
        assert ledger(db_url) == [] and not d.find("file.claimed")

        for p in ballast.iterdir():
            p.unlink()
        assert_finished_once(d, db_url, acme, "good.persons", ALL_GOOD, 50, 50)
    finally:
        d.kill()
