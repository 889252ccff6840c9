"""Hostile entries in an inbox: symlinks, FIFOs, devices, directories, hard links.

The daemon runs outside the partner's chroot, so a path the partner controls must
never lead it anywhere else: the drop, its ``NAME.csv.headers`` and its ``NAME.done``
marker are read only when they are regular files with one name. Everything else
fails the file with ``ingestd::NotARegularFile`` naming the entry, goes to
``failed/`` unread, and never wedges the company.

The real daemon runs as a subprocess (tests/daemon_helpers.py) against the suite's
PostgreSQL; the race between ``lstat`` and ``open`` is tested on the opener itself,
with a hook at the one point where a swap can happen.
"""

from __future__ import annotations

import csv
import io
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import (
    NOTE_FIELD,
    Daemon,
    StartDaemon,
    drop,
    entries,
    ledger,
    listing,
    result_json,
    scalar,
    setup_company,
)

from ingestd import errors, partner_files
from ingestd.contacts.reader import COLUMNS
from ingestd.partner_files import NotARegularFile, open_partner_file

SECRET = "s3cr3t-db-password-0xC0FFEE"
GOOD_PERSONS = "external_person_id,note\ng1,fine\n"


def contacts_csv(code: str) -> str:
    values = {c.name: "" for c in COLUMNS}
    values.update(
        creationTimeStamp="2018-05-13T15:02:40.719Z", responseTrackingCode=code,
        subjectId=f"subject-{code}", excludeFromContactRule="false",
        objectVariables="ov1~~~A~~~string", ruleFired="0101", treatmentId="t1",
        treatmentRevisionId="rev-t1", presented="false")
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(
        [[c.name for c in COLUMNS], [values[c.name] for c in COLUMNS]])
    return out.getvalue()


def contact_codes(db_url: str) -> list[str]:
    with_codes = scalar(db_url, "SELECT coalesce(array_agg(response_tracking_code "
                                "ORDER BY response_tracking_code), '{}') FROM acme.contacts")
    return list(with_codes)


def person_count(db_url: str) -> int:
    n: int = scalar(db_url, "SELECT count(*) FROM acme.persons")
    return n


def stop_cleanly(d: Daemon) -> None:
    assert d.stop() == 0, d.tail()
    assert d.errors() == [], d.errors()


def assert_not_a_regular_file(failed: Path, name: str, culprit: str) -> str:
    """The drop is in failed/ with NotARegularFile naming ``culprit``; the message."""
    result = result_json(failed, name)
    assert result["status"] == "failed", result
    assert result["error"]["class"] == errors.NOT_A_REGULAR_FILE, result
    message: str = result["error"]["message"]
    assert message.startswith(f"{culprit} is "), message
    assert result["accepted"] == 0
    return message


def regular_files_under(directory: Path) -> Iterator[Path]:
    """Every regular file below ``directory``, never through a link or into a FIFO."""
    for p in entries(directory):
        if stat.S_ISREG(os.lstat(p).st_mode):
            yield p


# -- companions ---------------------------------------------------------------------------

def test_headers_symlink_to_a_secret_is_failed_and_never_read(
        start_daemon: StartDaemon, db_url: str, landing: Path, tmp_path: Path) -> None:
    """The issue's leak: the secret came back through the If-Unmodified-Since parse
    error in result.json. Now the link is not followed at all."""
    acme = setup_company(db_url, landing, "acme")
    secret = tmp_path / "ingestd.env"
    secret.write_text(f"If-Unmodified-Since: {SECRET}\n")
    d = start_daemon()
    drop(acme, "leak.csv", contacts_csv("a"))
    (acme.inbox / "leak.csv.headers").symlink_to(secret)
    d.wait_event("file.failed", company="acme", file="leak.csv")
    stop_cleanly(d)

    message = assert_not_a_regular_file(acme.failed, "leak.csv", "leak.csv.headers")
    assert "symbolic link" in message
    # the companion travelled with its CSV, still a link; its target untouched
    assert os.path.islink(acme.failed / "leak.csv.headers")
    assert secret.read_text() == f"If-Unmodified-Since: {SECRET}\n"
    assert contact_codes(db_url) == []
    for p in [*regular_files_under(acme.done), *regular_files_under(acme.failed)]:
        assert SECRET.encode() not in p.read_bytes(), p
    assert all(SECRET not in line for line in d.lines), d.tail()
    assert d.stderr_path is not None
    assert SECRET not in d.stderr_path.read_text(errors="replace")
    assert listing(acme.inbox) == [] and list(entries(acme.processing)) == []


def make_dev_zero(path: Path) -> None:
    """A character device node like /dev/zero (needs CAP_MKNOD: root, in most places)."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")


@pytest.mark.parametrize("kind", ["fifo", "symlink-to-dev-zero", "char-device"])
def test_headers_that_would_hang_fail_and_the_next_file_is_applied(
        start_daemon: StartDaemon, db_url: str, landing: Path, kind: str) -> None:
    """A FIFO blocked open() forever and /dev/zero never ended the content hash; both
    wedged the company. Now they fail unopened, and the next CSV still goes in."""
    acme = setup_company(db_url, landing, "acme")
    now = time.time()
    drop(acme, "stuck.csv", contacts_csv("a"), mtime=now - 20)
    companion = acme.inbox / "stuck.csv.headers"
    if kind == "fifo":
        os.mkfifo(companion)
    elif kind == "char-device":
        make_dev_zero(companion)
    else:
        companion.symlink_to("/dev/zero")
    drop(acme, "next.csv", contacts_csv("b"), mtime=now - 10)
    d = start_daemon()
    d.wait_event("file.done", company="acme", file="next.csv", timeout=60)
    stop_cleanly(d)

    message = assert_not_a_regular_file(acme.failed, "stuck.csv", "stuck.csv.headers")
    what, is_kind = {"fifo": ("a FIFO", stat.S_ISFIFO),
                     "char-device": ("a device", stat.S_ISCHR),
                     "symlink-to-dev-zero": ("a symbolic link", stat.S_ISLNK)}[kind]
    assert what in message
    assert is_kind(os.lstat(acme.failed / "stuck.csv.headers").st_mode)
    assert contact_codes(db_url) == ["b"]
    assert [(r["name"], r["status"]) for r in ledger(db_url, "acme")] == [
        ("stuck.csv", "failed"), ("next.csv", "done")]


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_marker_that_is_not_a_regular_file_fails_its_drop(
        start_daemon: StartDaemon, db_url: str, landing: Path, tmp_path: Path,
        kind: str) -> None:
    acme = setup_company(db_url, landing, "acme", NOTE_FIELD)
    now = time.time()
    drop(acme, "odd.persons", GOOD_PERSONS, mtime=now - 20)
    marker = acme.inbox / "odd.persons.done"
    if kind == "symlink":
        elsewhere = tmp_path / "some-marker"
        elsewhere.write_text("")
        marker.symlink_to(elsewhere)
    else:
        os.mkfifo(marker)
    drop(acme, "fine.persons", "external_person_id,note\nf1,ok\n", mtime=now - 10)
    drop(acme, "fine.persons.done", "")
    d = start_daemon(INGESTD_MARKER_MODE="true")
    d.wait_event("file.done", company="acme", file="fine.persons", timeout=60)
    stop_cleanly(d)

    message = assert_not_a_regular_file(acme.failed, "odd.persons", "odd.persons.done")
    assert ("a symbolic link" if kind == "symlink" else "a FIFO") in message
    assert os.path.lexists(acme.failed / "odd.persons.done")
    assert person_count(db_url) == 1  # only fine.persons' row
    assert listing(acme.inbox) == []


# -- odd entries as drops -----------------------------------------------------------------

def test_a_directory_named_like_a_drop_is_moved_to_failed(
        start_daemon: StartDaemon, db_url: str, landing: Path) -> None:
    acme = setup_company(db_url, landing, "acme", NOTE_FIELD)
    d = start_daemon()
    folder = acme.inbox / "x.persons"
    folder.mkdir()
    (folder / "inside.persons").write_text(GOOD_PERSONS)
    d.wait_event("file.failed", company="acme", file="x.persons", timeout=60)
    drop(acme, "after.persons", GOOD_PERSONS)
    d.wait_event("file.done", company="acme", file="after.persons", timeout=60)
    stop_cleanly(d)

    message = assert_not_a_regular_file(acme.failed, "x.persons", "x.persons")
    assert "a directory" in message
    assert (acme.failed / "x.persons").is_dir()
    assert (acme.failed / "x.persons" / "inside.persons").read_text() == GOOD_PERSONS
    assert person_count(db_url) == 1  # after.persons only
    assert listing(acme.inbox) == [] and list(entries(acme.processing)) == []


def test_a_hard_link_to_a_file_elsewhere_is_failed_not_applied(
        start_daemon: StartDaemon, db_url: str, landing: Path, tmp_path: Path) -> None:
    acme = setup_company(db_url, landing, "acme", NOTE_FIELD)
    other = tmp_path / "someone-elses.persons"
    other.write_text("external_person_id,note\nstolen,1\n")
    d = start_daemon()
    os.link(other, acme.inbox / "linked.persons")
    d.wait_event("file.failed", company="acme", file="linked.persons", timeout=60)
    stop_cleanly(d)

    message = assert_not_a_regular_file(acme.failed, "linked.persons", "linked.persons")
    assert "hard link" in message and "2 names" in message
    assert "stolen" not in (acme.failed / "linked.persons.result.json").read_text()
    assert person_count(db_url) == 0
    assert other.read_text() == "external_person_id,note\nstolen,1\n"


def test_a_hidden_folder_under_the_landing_root_is_left_alone(
        start_daemon: StartDaemon, db_url: str, landing: Path) -> None:
    # A dotfolder is never a company (ids start with a letter): neither the scans nor
    # the events may take its files, whether they were there at start or came later.
    acme = setup_company(db_url, landing, "acme", NOTE_FIELD)
    hidden = landing / ".trash" / "inbox"
    hidden.mkdir(parents=True)
    (hidden / "before.persons").write_text(GOOD_PERSONS)
    d = start_daemon(INGESTD_RESCAN_SECONDS="0.5")
    (hidden / "during.persons").write_text(GOOD_PERSONS)
    drop(acme, "after.persons", GOOD_PERSONS)
    d.wait_event("file.done", company="acme", file="after.persons", timeout=60)
    # A settle period and several rescans later, the hidden files would have been taken.
    drop(acme, "later.persons", "external_person_id,note\ng2,fine\n")
    d.wait_event("file.done", company="acme", file="later.persons", timeout=60)
    stop_cleanly(d)
    assert sorted(p.name for p in hidden.iterdir()) == ["before.persons", "during.persons"]
    assert sorted(p.name for p in (landing / ".trash").iterdir()) == ["inbox"]
    assert [e for e in d.snapshot() if e.get("company") == ".trash"] == []


# -- the opener itself --------------------------------------------------------------------

def test_opener_reads_a_plain_file_with_blocking_reads(tmp_path: Path) -> None:
    path = tmp_path / "plain.persons"
    path.write_bytes(b"external_person_id\ne1\n")
    with open_partner_file(path) as fh:
        assert os.get_blocking(fh.fileno())
        assert fh.read() == b"external_person_id\ne1\n"


@pytest.mark.parametrize("kind, what", [
    ("symlink", "a symbolic link"),
    ("fifo", "a FIFO"),
    ("directory", "a directory"),
    ("device", "a device"),
    ("hardlink", "a hard link (the file has 2 names)"),
])
def test_opener_refuses_what_is_not_a_plain_file(tmp_path: Path, kind: str,
                                                 what: str) -> None:
    target = tmp_path / "target"
    target.write_text("not for partners")
    path = tmp_path / "entry.csv.headers"
    if kind == "symlink":
        path.symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "device":
        path = Path("/dev/zero")
    else:
        os.link(target, path)
    with pytest.raises(NotARegularFile) as caught:
        open_partner_file(path)
    assert caught.value.error_class == errors.NOT_A_REGULAR_FILE
    assert caught.value.message.startswith(f"{path.name} is {what};")
    assert "not for partners" not in caught.value.message


@pytest.mark.parametrize("swap, what", [
    ("symlink", "a symbolic link"),
    ("fifo", "a FIFO"),
    ("other-file", "replaced by another file while it was being opened"),
])
def test_drop_swapped_between_lstat_and_open_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap: str, what: str) -> None:
    """The lstat saw a regular file; by the open it is something else. O_NOFOLLOW
    refuses the link, O_NONBLOCK keeps a FIFO from blocking, fstat catches the rest."""
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    drop_path = tmp_path / "drop.persons"
    drop_path.write_text(GOOD_PERSONS)
    real_check = partner_files.check

    def check_then_swap(path: Path) -> os.stat_result:
        st = real_check(path)
        replacement = tmp_path / "replacement"
        if swap == "symlink":
            replacement.symlink_to(secret)
        elif swap == "fifo":
            os.mkfifo(replacement)
        else:
            replacement.write_text(SECRET)
        os.replace(replacement, path)
        return st

    monkeypatch.setattr(partner_files, "check", check_then_swap)
    with pytest.raises(NotARegularFile) as caught:
        open_partner_file(drop_path)
    assert caught.value.message.startswith(f"drop.persons is {what};")
    assert SECRET not in caught.value.message
