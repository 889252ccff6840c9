"""`ingestd status`: what an on-call engineer asks first, per company.

Everything comes from the database and the landing folders, so it answers the same
from any shell, host or instance: the files in hand are the ``ingestd.in_hand`` rows
every instance keeps up to date (``ingestd.progress``).
"""

from __future__ import annotations

import os
from typing import Any

import psycopg

from ingestd import held, landing
from ingestd.db import in_hand, leases, ledger
from ingestd.db.companies import list_companies
from ingestd.settings import Settings


def _backlog(inbox: os.PathLike[str] | str, marker_mode: bool) -> int:
    try:
        return sum(1 for e in os.scandir(inbox) if not landing.is_in_flight(e.name)
                   and not landing.is_companion(e.name, marker_mode))
    except OSError:
        return 0


def _in_hand(conn: psycopg.Connection[Any], company: str,
             settings: Settings) -> list[dict[str, Any]]:
    # A live instance refreshes its rows every progress_seconds; a row left much longer
    # belongs to an instance that is gone or wedged (its claim is recovered later).
    stale_after = max(30.0, 3 * settings.progress_seconds)
    rows = []
    for r in in_hand.for_company(conn, company):
        age = r.pop("age_s")
        rows.append({**r, "stale": age > stale_after})
    return rows


def _instances(conn: psycopg.Connection[Any],
               files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every registered instance, each with the files in hand of its process."""
    out = []
    for i in leases.instances(conn):
        mine = [{"company": f["company"], "file": f["file"], "claim_id": f["claim_id"]}
                for f in files if f["host"] == i["host"] and f["pid"] == i["pid"]]
        out.append({**i, "heartbeat_age_s": round(i["heartbeat_age_s"], 1),
                    "in_hand": [] if i["expired_at"] else mine})
    return out


def collect(conn: psycopg.Connection[Any], settings: Settings,
            database: str | None = None) -> dict[str, Any]:
    """The report; ``database``: where it came from, as shown to the operator."""
    companies: list[dict[str, Any]] = []
    holders = leases.holders(conn)
    set_up = list_companies(conn)
    for company in set_up:
        dirs = landing.CompanyDirs(settings.landing_root / company.id)
        recent = ledger.recent(conn, company.id, 5)
        failed = ledger.last_failed(conn, company.id)
        companies.append({
            "company": company.id,
            "backlog": _backlog(dirs.inbox, settings.marker_mode),
            "processing": (sum(1 for p in dirs.processing.iterdir() if held.is_claim_dir(p))
                           if dirs.processing.is_dir() else 0),
            # Likely partial uploads waiting for a newer version (partial_grace_seconds).
            "maybe_partial": held.read(dirs),
            "in_hand": _in_hand(conn, company.id, settings),
            "held_by": holders.get(company.id),
            "last_hour": ledger.counts_since(conn, company.id, 3600),
            # The last file that failed (nothing applied); rejected rows are not an error
            # of the file and show in `recent`.
            "last_error": None if failed is None else {
                "file": failed["name"],
                "error_class": failed["error_class"],
                "error_message": failed["error_message"],
                "at": failed["committed_at"],
            },
            "recent": recent,
        })
    files = [{**f, "company": c["company"]} for c in companies for f in c["in_hand"]]
    misplaced = landing.find_misplaced(settings.landing_root, {c.id for c in set_up})
    return {"landing_root": str(settings.landing_root.absolute()),
            "state_dir": str(settings.state_dir.absolute()),
            "database": database,
            "misplaced": [{"path": str(m.path), "should_be": m.should_be} for m in misplaced],
            "instances": _instances(conn, files), "companies": companies}


def _size(n: int) -> str:
    value, unit = float(n), "B"
    for bigger in ("kB", "MB", "GB", "TB"):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"


def _in_hand_line(f: dict[str, Any]) -> str:
    total = f["bytes_total"]
    pct = f" ({100 * f['bytes_done'] / total:.0f}%)" if total else ""
    flags = ("  STUCK" if f["stuck"] else "") + ("  (stale: not updated)" if f["stale"] else "")
    return (f"  {f['started_at']:%Y-%m-%d %H:%M:%S}  in hand   {f['file']}  "
            f"rows={f['rows_done']} bytes={_size(f['bytes_done'])}/{_size(total)}{pct}{flags}")


def _instance_line(i: dict[str, Any]) -> str:
    held = ",".join(i["companies"]) or "-"
    state = (f"EXPIRED at {i['expired_at']:%Y-%m-%d %H:%M:%S} by {i['expired_by']}"
             if i["expired_at"] else f"heartbeat {i['heartbeat_age_s']:.0f} s ago")
    hand = "".join(f"  in hand {f['company']}/{f['file']}" for f in i["in_hand"])
    return (f"  {i['id']}  {i['host']} pid {i['pid']}  v{i['version']}  started "
            f"{i['started_at']:%Y-%m-%d %H:%M:%S}  {state}  holds {held}{hand}")


def render(report: dict[str, Any]) -> str:
    lines = [f"landing root: {report['landing_root']}",
             f"state dir:    {report['state_dir']}"]
    if report.get("database"):
        lines.append(f"database:     {report['database']}")
    lines.append("")
    head = (f"{'company':<16} {'backlog':>7} {'in work':>7} {'done/1h':>8} {'failed/1h':>9}"
            "  last error")
    lines.append(head)
    lines.append("-" * len(head))
    for c in report["companies"]:
        err = c["last_error"]
        err_text = f"{err['file']}: {err['error_class']}" if err else "-"
        lines.append(f"{c['company']:<16} {c['backlog']:>7} {c['processing']:>7} "
                     f"{c['last_hour'].get('done', 0):>8} {c['last_hour'].get('failed', 0):>9}"
                     f"  {err_text}")
    for c in report["companies"]:
        if c["maybe_partial"]:
            lines += ["", f"{c['company']}: held as likely partial uploads (written in place, "
                          "no line break at the end)"]
            lines += [f"  since {f['since']}  until {f['until']}  {f['file']}  "
                      f"{_size(f['size'])}" for f in c["maybe_partial"]]
        if c["in_hand"]:
            lines += ["", f"{c['company']}: files in hand"]
            lines += [_in_hand_line(f) for f in c["in_hand"]]
        if not c["recent"]:
            continue
        lines += ["", f"{c['company']}: last files"]
        for r in c["recent"]:
            outcome = "duplicate" if r["duplicate"] else r["status"]
            where = "" if r["finished_at"] else "  (finishing)"
            error = f"  {r['error_class']}" if r["status"] == "failed" else ""
            lines.append(f"  {r['committed_at']:%Y-%m-%d %H:%M:%S}  {outcome:<9} "
                         f"{r['name']}  rows={r['rows']} accepted={r['accepted']} "
                         f"rejected={r['rejected']}{error}{where}")
    if not report["companies"]:
        lines.append("(no companies: add one with `ingestd company add ID`)")
    if report["misplaced"]:
        lines += ["", f"misplaced files ({len(report['misplaced'])}): never picked up "
                      "where they are; move each where it belongs"]
        lines += [f"  {m['path']}  ->  {m['should_be']}" for m in report["misplaced"]]
    if report["instances"]:
        lines += ["", "instances"]
        lines += [_instance_line(i) for i in report["instances"]]
    return "\n".join(lines)
