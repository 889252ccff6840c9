"""Several instances on one landing root and one PostgreSQL: leases, takeover, fencing.

Real daemons as subprocesses. A paused instance is a real SIGSTOP of the whole
process (the ``before_commit:stop`` failpoint stops it there, with its file's rows
written and not committed, holding its sessions and locks); a killed one is a real
SIGKILL. Every wait is a deadline-bounded poll.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import (
    NOTE_FIELD,
    Daemon,
    StartDaemon,
    base_env,
    drop,
    entries,
    ledger,
    listing,
    run_cli,
    scalar,
    setup_company,
    wait_for,
)

from ingestd.landing import CompanyDirs

LEASE = "2"  # seconds: small, so a pause of three leases is short
TIMEOUT = 240.0  # the machine is shared and loaded: generous deadlines


@pytest.fixture
def env(db_url: str, landing: Path, tmp_path: Path) -> dict[str, str]:
    return base_env(db_url, landing, tmp_path / "state", INGESTD_LEASE_SECONDS=LEASE,
                    INGESTD_WORKERS="3")


@pytest.fixture
def start_timeout() -> float:
    return 120.0


def stopped(d: Daemon) -> bool:
    """The process is in state T (stopped by a signal)."""
    assert d.proc is not None
    try:
        stat = Path(f"/proc/{d.proc.pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def instance_id(d: Daemon) -> str:
    [e] = d.wait_event("instance.registered", timeout=60)[:1]
    return str(e["instance"])


def tails(daemons: list[Daemon]) -> Callable[[], str]:
    return lambda: "\n".join(d.tail(25) for d in daemons)


def drops_in(directory: Path) -> list[str]:
    return [n for n in listing(directory) if n.endswith(".persons")]


def stage(tmp_path: Path, dirs: dict[str, CompanyDirs], per_company: int,
          shared: int = 5) -> list[tuple[float, str, str]]:
    """``per_company`` small files per company, mtimes an hour ago in drop order, names
    in reverse order (only the mtime can order them). Every file sets person e1 and one
    of ``shared`` people per company: a later file's value must win."""
    staging = tmp_path / "staging"
    staging.mkdir()
    base = time.time() - 3600
    plan = []
    for company in dirs:
        for k in range(per_company):
            name = f"f-{per_company - k:04d}.persons"
            content = (f"external_person_id,note\ne1,{company}-{k}\n"
                       f"s{k % shared},{company}-{k}\n")
            mtime = base + k + random.random() / 10
            path = staging / f"{company}-{name}"
            path.write_text(content)
            os.utime(path, (mtime, mtime))
            plan.append((mtime, company, name))
    plan.sort()
    return plan


def drop_all(tmp_path: Path, dirs: dict[str, CompanyDirs],
             plan: list[tuple[float, str, str]]) -> None:
    for _, company, name in plan:
        os.rename(tmp_path / "staging" / f"{company}-{name}", dirs[company].inbox / name)


def note(db_url: str, company: str, person: str) -> str:
    value: str = scalar(db_url, f'SELECT custom->>\'note\' FROM "{company}".persons'
                                " WHERE external_person_id = %s", (person,))
    return value


def assert_applied_once_in_order(db_url: str, dirs: dict[str, CompanyDirs],
                                 expected: dict[str, list[str]], shared: int = 5) -> None:
    rows = ledger(db_url)
    assert all(r["status"] == "done" and r["finished_at"] is not None for r in rows), rows
    for company, names in expected.items():
        mine = [r["name"] for r in rows if r["company"] == company]
        # each once, in drop order (ledger ids are commit order)
        assert mine == names, (company, mine, names)
        cdirs = dirs[company]
        assert sorted(drops_in(cdirs.done)) == sorted(names)
        assert not any("~" in n for n in listing(cdirs.done))  # nothing finished twice
        assert drops_in(cdirs.inbox) == [] and list(entries(cdirs.processing)) == []
        last = len([n for n in names if n.startswith("f-")]) - 1
        assert note(db_url, company, "e1") == expected_e1(company, names, last)
        for s in range(min(shared, last + 1)):
            k = max(k for k in range(last + 1) if k % shared == s)
            assert note(db_url, company, f"s{s}") == f"{company}-{k}"


def expected_e1(company: str, names: list[str], last: int) -> str:
    return f"{company}-pause" if names[-1] == "pause.persons" else f"{company}-{last}"


def run_fleet(start_daemon: StartDaemon, db_url: str, landing: Path, tmp_path: Path,
              companies: int, per_company: int) -> None:
    """Three instances; one SIGKILLed mid-file and restarted; one SIGSTOPped mid-file
    for three leases and resumed.

    Each fault is made certain by who runs when: B (dies at its first commit) runs
    alone until it dies; C (stops at its first commit) then runs alone until it stops,
    with B's claim to recover; only then do A and B's restart join, and take over."""
    dirs = {f"c{i}": setup_company(db_url, landing, f"c{i}", NOTE_FIELD)
            for i in range(companies)}
    plan = stage(tmp_path, dirs, per_company)
    b = start_daemon(INGESTD_FAILPOINT="before_commit")
    everyone = [b]
    drop_all(tmp_path, dirs, plan)
    assert b.wait_exit(TIMEOUT) == -signal.SIGKILL, b.tail()
    [killed_in_hand] = [(e["company"], e["file"]) for e in b.find("file.claimed")][:1]

    c = start_daemon(INGESTD_FAILPOINT="before_commit:stop")
    c_id = instance_id(c)
    everyone.append(c)
    wait_for(lambda: stopped(c), TIMEOUT, what="instance C paused mid-file",
             context=tails(everyone))
    paused_at = time.monotonic()
    a = start_daemon()
    b2 = start_daemon()
    everyone += [a, b2]
    # A live peer takes C's companies: it expires C (ending its sessions) ...
    [expired] = wait_for(
        lambda: [e for d in (a, b2) for e in d.find("instance.expired", instance=c_id)],
        TIMEOUT, what="a peer expiring the paused instance", context=tails(everyone))
    assert expired["companies"], expired  # C was stopped mid-file: it held a company
    done_by_c = {(e["company"], e["file"]) for e in c.find("file.done")}
    # what C had in hand: files it claimed, or the claims B left that it was recovering
    in_hand = {(e["company"], e["file"]) for d in (b, c) for e in d.find("file.claimed")}
    in_hand -= done_by_c
    company = expired["companies"][0]
    # ... and serves them: a file dropped now is done while C is still paused.
    drop(dirs[company], "pause.persons", f"external_person_id,note\ne1,{company}-pause\n")
    wait_for(lambda: "pause.persons" in listing(dirs[company].done), TIMEOUT,
             what="the paused instance's company served by the others",
             context=tails(everyone))
    assert stopped(c)
    wait_for(lambda: time.monotonic() - paused_at >= 3 * float(LEASE), 30,
             what="three leases of pause")

    resumed_at = len(c.snapshot())
    assert c.proc is not None
    c.proc.send_signal(signal.SIGCONT)
    c.wait_event("instance.fenced", timeout=TIMEOUT)
    # C carries on under a new id
    c.wait_event("instance.registered", previous=c_id, timeout=TIMEOUT)

    total = len(plan) + 1
    live = [a, b2, c]
    wait_for(lambda: len([r for r in ledger(db_url) if r["finished_at"]]) >= total,
             TIMEOUT, what=f"{total} files finished", context=tails(live))
    for d in live:
        assert d.stop(signal.SIGTERM, timeout=60) == 0, d.tail()
    # The file B was killed with was recovered by someone, once.
    assert [r for r in ledger(db_url) if (r["company"], r["name"]) == killed_in_hand]
    # Every file C had in hand when paused was fenced, and C wrote nothing for them;
    # a fence is never mistaken for a broken file.
    fenced = {(e["company"], e["file"]) for e in c.find("instance.fenced")}
    assert fenced and fenced <= in_hand and {co for co, _ in fenced} <= set(expired["companies"])
    assert all(isinstance(e["epoch"], int) for e in c.find("instance.fenced"))
    assert not c.find("file.error"), c.find("file.error")
    # A peer that only finished a claim found C's commit already made before the pause;
    # the stop may land between that commit and its file.applied line, logged on resume.
    committed_before = {(e["company"], e["file"]) for d in (a, b2)
                        for e in d.find("file.recovered", action="finish")}
    assert not [e for e in c.snapshot()[resumed_at:]
                if (e.get("company"), e.get("file")) in fenced
                and (e.get("event") == "file.done"
                     or (e.get("event") == "file.applied"
                         and (e.get("company"), e.get("file")) not in committed_before))]
    expected = {co: [n for _, cc, n in plan if cc == co] for co in dirs}
    expected[company].append("pause.persons")
    assert len(ledger(db_url)) == total  # no file applied twice
    assert_applied_once_in_order(db_url, dirs, expected)


def test_three_instances_1000_files_a_kill_and_a_pause_each_file_once_in_order(
        start_daemon: StartDaemon, db_url: str, landing: Path, tmp_path: Path) -> None:
    run_fleet(start_daemon, db_url, landing, tmp_path, companies=10, per_company=100)


def status(env: dict[str, str]) -> dict[str, Any]:
    r = run_cli(["status", "--json"], env, timeout=120)
    assert r.returncode == 0, r.stderr
    report: dict[str, Any] = json.loads(r.stdout)
    return report


def test_status_shows_instances_and_holders_and_a_peer_takes_over_a_paused_one(
        start_daemon: StartDaemon, env: dict[str, str], db_url: str,
        landing: Path, tmp_path: Path) -> None:
    acme = setup_company(db_url, landing, "acme", NOTE_FIELD)
    # Alone and with a long lease, the paused instance keeps acme: nobody expires it.
    # Its worker waits at a gate before the commit, its file's rows written, until a
    # progress tick has found the file in hand (only then does a file get its in-hand
    # row); the whole process is then SIGSTOPped there, and the gate opened for later.
    gate = tmp_path / "gate"
    p = start_daemon(INGESTD_FAILPOINT=f"before_commit:gate:{gate}",
                     INGESTD_LEASE_SECONDS="600", INGESTD_PROGRESS_SECONDS="0.2")
    p_id = instance_id(p)
    drop(acme, "held.persons", "external_person_id,note\ne1,held\n")
    wait_for(lambda: gate.with_name("gate.reached").exists(), TIMEOUT,
             what="the worker at the gate before its commit", context=p.tail)
    wait_for(lambda: [f["file"] for f in status(env)["companies"][0]["in_hand"]]
             == ["held.persons"], TIMEOUT, what="held.persons in hand", context=p.tail)
    assert p.proc is not None
    p.proc.send_signal(signal.SIGSTOP)
    wait_for(lambda: stopped(p), TIMEOUT, what="the instance paused", context=p.tail)
    gate.touch()  # on SIGCONT its worker goes on to the commit, and finds itself fenced

    report = status(env)
    [inst] = [i for i in report["instances"] if i["id"] == p_id]
    assert inst["pid"] == p.proc.pid
    assert inst["companies"] == ["acme"] and inst["expired_at"] is None
    assert {"host", "version", "started_at", "heartbeat_age_s"} <= set(inst)
    assert [(f["company"], f["file"]) for f in inst["in_hand"]] == [("acme", "held.persons")]
    [company] = report["companies"]
    assert company["held_by"] == {"id": p_id, "host": inst["host"], "pid": inst["pid"]}

    q = start_daemon()  # lease 2 s: it expires the silent instance
    q_id = instance_id(q)
    [expired] = q.wait_event("instance.expired", instance=p_id, timeout=TIMEOUT)
    assert expired["companies"] == ["acme"] and expired["pid"] == inst["pid"]
    q.wait_event("file.done", company="acme", file="held.persons", timeout=TIMEOUT)
    assert q.find("file.recovered", file="held.persons", action="apply")

    report = status(env)
    by_id = {i["id"]: i for i in report["instances"]}
    assert by_id[p_id]["expired_at"] is not None and by_id[p_id]["expired_by"] == q_id
    assert by_id[p_id]["companies"] == [] and by_id[p_id]["in_hand"] == []
    assert by_id[q_id]["expired_at"] is None
    # idle once Q has let go of acme after the file: nobody holds it
    wait_for(lambda: status(env)["companies"][0]["held_by"] is None, TIMEOUT,
             what="acme held by nobody", context=q.tail)

    p.proc.send_signal(signal.SIGCONT)
    p.wait_event("instance.fenced", company="acme", file="held.persons", timeout=TIMEOUT)
    p.wait_event("instance.registered", previous=p_id, timeout=TIMEOUT)
    for d in (p, q):
        assert d.stop(signal.SIGTERM, timeout=60) == 0, d.tail()
    [row] = ledger(db_url)
    assert row["name"] == "held.persons" and row["finished_at"] is not None
    assert drops_in(acme.done) == ["held.persons"] and not listing(acme.processing)
    assert note(db_url, "acme", "e1") == "held"
    # both stopped cleanly: their rows are gone, the expired one stays for a day
    assert [i["id"] for i in status(env)["instances"]] == [p_id]


def test_polling_instance_takes_drops_it_gets_no_events_for(
        start_daemon: StartDaemon, db_url: str, landing: Path) -> None:
    """An inotify instance pauses holding acme; a polling instance, whose only way to
    see a drop is its polling observer (no inotify, rescan every hour), takes acme over
    and applies the drops made after its last scan, each once."""
    dirs = {c: setup_company(db_url, landing, c, NOTE_FIELD) for c in ("acme", "beta")}
    native = start_daemon(INGESTD_FAILPOINT="before_commit:stop",
                          INGESTD_RESCAN_SECONDS="3600")
    drop(dirs["acme"], "first.persons", "external_person_id,note\ne1,first\n")
    wait_for(lambda: stopped(native), TIMEOUT, what="the inotify instance paused",
             context=native.tail)
    poller = start_daemon(INGESTD_POLLING_OBSERVER="true", INGESTD_RESCAN_SECONDS="3600")
    poller.wait_event("instance.expired", timeout=TIMEOUT)
    # its rescan after the takeover recovers the paused instance's claim ...
    poller.wait_event("file.done", file="first.persons", timeout=TIMEOUT)
    names = {c: [f"late-{k}.persons" for k in range(3)] for c in dirs}
    base = time.time()
    for company, files in names.items():  # ... and only polling can see these
        for k, name in enumerate(files):
            drop(dirs[company], name, f"external_person_id,note\ne1,{company}-{k}\n",
                 mtime=base + k)
    for company, files in names.items():
        for name in files:
            poller.wait_event("file.done", company=company, file=name, timeout=TIMEOUT)
    assert native.proc is not None
    native.proc.send_signal(signal.SIGCONT)
    native.wait_event("instance.fenced", company="acme", file="first.persons",
                      timeout=TIMEOUT)
    for d in (native, poller):
        assert d.stop(signal.SIGTERM, timeout=60) == 0, d.tail()
    expected = {"acme": ["first.persons", *names["acme"]], "beta": names["beta"]}
    rows = ledger(db_url)
    assert len(rows) == 7
    for company, files in expected.items():
        assert [r["name"] for r in rows if r["company"] == company] == files
        assert sorted(drops_in(dirs[company].done)) == sorted(files)
        assert note(db_url, company, "e1") == f"{company}-2"
