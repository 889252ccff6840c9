"""`ingestd status`: what an on-call engineer asks first, per company."""

from __future__ import annotations

import os
from typing import Any

import psycopg

from ingestd import landing
from ingestd.db import ledger
from ingestd.db.companies import list_companies
from ingestd.settings import Settings


def _backlog(inbox: os.PathLike[str] | str, marker_mode: bool) -> int:
    try:
        return sum(1 for e in os.scandir(inbox) if not landing.is_in_flight(e.name)
                   and not landing.is_companion(e.name, marker_mode))
    except OSError:
        return 0


def collect(conn: psycopg.Connection[Any], settings: Settings) -> dict[str, Any]:
    companies = []
    for company in list_companies(conn):
        dirs = landing.CompanyDirs(settings.landing_root / company.id)
        recent = ledger.recent(conn, company.id, 5)
        last_error = next((r for r in recent if r["status"] == "failed" or r["rejected"]), None)
        companies.append({
            "company": company.id,
            "backlog": _backlog(dirs.inbox, settings.marker_mode),
            "processing": len(list(dirs.processing.iterdir())) if dirs.processing.is_dir() else 0,
            "last_hour": ledger.counts_since(conn, company.id, 3600),
            "last_error": None if last_error is None else {
                "file": last_error["name"],
                "error_class": last_error["error_class"],
                "error_message": last_error["error_message"],
                "rejected": last_error["rejected"],
            },
            "recent": recent,
        })
    return {"landing_root": str(settings.landing_root.absolute()), "companies": companies}


def render(report: dict[str, Any]) -> str:
    lines = [f"landing root: {report['landing_root']}", ""]
    head = (f"{'company':<16} {'backlog':>7} {'in work':>7} {'done/1h':>8} {'failed/1h':>9}"
            "  last error")
    lines.append(head)
    lines.append("-" * len(head))
    for c in report["companies"]:
        err = c["last_error"]
        err_text = "-"
        if err:
            err_text = (f"{err['file']}: {err['error_class']}" if err["error_class"]
                        else f"{err['file']}: {err['rejected']} row(s) rejected")
        lines.append(f"{c['company']:<16} {c['backlog']:>7} {c['processing']:>7} "
                     f"{c['last_hour'].get('done', 0):>8} {c['last_hour'].get('failed', 0):>9}"
                     f"  {err_text}")
    for c in report["companies"]:
        if not c["recent"]:
            continue
        lines += ["", f"{c['company']}: last files"]
        for r in c["recent"]:
            outcome = "duplicate" if r["duplicate"] else r["status"]
            where = "" if r["finished_at"] else "  (finishing)"
            lines.append(f"  {r['committed_at']:%Y-%m-%d %H:%M:%S}  {outcome:<9} "
                         f"{r['name']}  rows={r['rows']} accepted={r['accepted']} "
                         f"rejected={r['rejected']}{where}")
    if not report["companies"]:
        lines.append("(no companies: add one with `ingestd company add ID`)")
    return "\n".join(lines)
