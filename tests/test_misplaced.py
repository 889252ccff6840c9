"""Nothing hides (issue 16, item 5), against the real daemon and the real CLI.

A file no company's inbox/ holds is never picked up. Each one is logged once
(``file.misplaced``, naming the path and where it belongs), shown by ``ingestd
status`` (text and JSON) and counted by the ``ingestd_misplaced_files`` gauge. A file
failed for an unknown company is counted under its folder's name.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import psycopg
from daemon_helpers import (
    Daemon,
    StartDaemon,
    drop,
    is_finished,
    run_cli,
    setup_company,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families

from ingestd.db.companies import add_company
from ingestd.landing import CompanyDirs

TIMEOUT = 60.0
PERSONS = "mdn,external_person_id\n2295551299,e9\n"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(d: Daemon) -> Samples:
    address = d.wait_event("metrics.listening")[0]["address"]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def gauge(d: Daemon) -> float | None:
    return scrape(d).get(("ingestd_misplaced_files", frozenset()))


def test_misplaced_files_are_logged_once_shown_and_counted(
        start_daemon: StartDaemon, db_url: str, landing: Path, env: dict[str, str]) -> None:
    acme = setup_company(db_url, landing, "acme")
    with psycopg.connect(db_url) as conn:
        add_company(conn, "beta")  # set up, but its folder has no inbox/
        conn.commit()
    (landing / "beta").mkdir()
    misplaced = {
        landing / "in-root.persons": f"{landing}/COMPANY/inbox/in-root.persons",
        acme.root / "beside-inbox.persons": f"{acme.inbox}/beside-inbox.persons",
        acme.root / "Inbox" / "wrong-case.persons": f"{acme.inbox}/wrong-case.persons",
        landing / "beta" / "no-inbox.persons": f"{landing}/beta/inbox/no-inbox.persons",
        landing / "nobody" / "stray.persons": "ingestd company add nobody",
    }
    for path in misplaced:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(PERSONS)
    # Not misplaced: uploads in flight, the database marker, ingestd's own folders.
    (acme.root / "upload.persons.part").write_text(PERSONS)
    drop(acme, "fine.persons", PERSONS)

    d = start_daemon(INGESTD_METRICS_ADDRESS="127.0.0.1:0")
    logged = d.wait_event("file.misplaced", count=len(misplaced), timeout=TIMEOUT)
    by_path = {e["path"]: e for e in logged}
    assert set(by_path) == {str(p) for p in misplaced}, logged
    for path, where in misplaced.items():
        e = by_path[str(path)]
        assert where in e["should_be"], e
        assert e["file"] == path.name and e["level"] == "warning", e
    wait_for(lambda: is_finished(acme, "fine.persons"), TIMEOUT, what="fine.persons done",
             context=d.tail)
    wait_for(lambda: gauge(d) == len(misplaced), TIMEOUT, what="the gauge", context=d.tail)

    # A later rescan sees a new one: logged; the ones already logged are not again.
    late = acme.root / "late.persons"
    late.write_text(PERSONS)
    d.wait_event("file.misplaced", path=str(late), timeout=TIMEOUT)
    assert len(d.find("file.misplaced")) == len(misplaced) + 1, d.find("file.misplaced")
    wait_for(lambda: gauge(d) == len(misplaced) + 1, TIMEOUT, what="the gauge up",
             context=d.tail)

    r = run_cli(["status", "--json"], env)
    assert r.returncode == 0, r.stderr
    shown = {m["path"]: m["should_be"] for m in json.loads(r.stdout)["misplaced"]}
    assert set(shown) == {str(p) for p in [*misplaced, late]}, shown
    r = run_cli(["status"], env)
    assert r.returncode == 0, r.stderr
    assert "misplaced files (6)" in r.stdout, r.stdout
    assert f"{late}  ->  {acme.inbox}/late.persons" in r.stdout, r.stdout

    # Moved where it belongs, it is applied and no longer counted.
    late.rename(acme.inbox / late.name)
    wait_for(lambda: is_finished(acme, "late.persons"), TIMEOUT, what="late.persons done",
             context=d.tail)
    wait_for(lambda: gauge(d) == len(misplaced), TIMEOUT, what="the gauge down",
             context=d.tail)
    assert d.stop() == 0


def test_files_failed_for_an_unknown_company_are_counted_under_its_folder(
        start_daemon: StartDaemon, landing: Path) -> None:
    newco = CompanyDirs(landing / "newco")
    newco.inbox.mkdir(parents=True)
    drop(newco, "x.persons", PERSONS)
    d = start_daemon(INGESTD_METRICS_ADDRESS="127.0.0.1:0")
    d.wait_event("file.failed", company="newco", file="x.persons", timeout=TIMEOUT)
    key = ("ingestd_files_total",
           frozenset({"company": "newco", "format": "persons", "outcome": "failed"}.items()))
    s = wait_for(lambda: (got := scrape(d)).get(key) == 1 and got, TIMEOUT,
                 what="newco's failed file counted", context=d.tail)
    # Only that series: an unknown folder gets no zero series of every format and outcome.
    assert [k for k in s if ("company", "newco") in k[1]
            and not k[0].endswith("_created")] == [key]
    assert d.stop() == 0
