"""Finishing an applied file: its sidecars, then the move into done/ or failed/.

Everything here is rebuilt from the ledger row the apply committed, so a finish
redone after a crash writes the same files under the same name.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import structlog

from ingestd import failpoints, formats, landing, sidecars
from ingestd.db import ledger
from ingestd.errors import NoLedgerRow
from ingestd.lifecycle.context import FileContext, Outcome
from ingestd.progress import NO_PROGRESS, InHandRows
from ingestd.results import FileResult

log = structlog.get_logger("ingestd.lifecycle")


def finish(ctx: FileContext, formula_guard: bool, rows: InHandRows | None,
           entry: ledger.LedgerEntry | None = None) -> Outcome:
    """Sidecars, then the move. ``entry``: the ledger row as the apply committed it
    (None: read it, as recovery does); ``rows``: the in-hand rows, if kept."""
    conn, claim = ctx.conn, ctx.claim
    failpoints.hit(failpoints.AFTER_COMMIT)
    if entry is None:
        entry = ledger.by_claim(conn, claim.claim_id)
        conn.commit()
    ctx.guard()  # before anything of it is written or moved
    if entry is None:
        raise NoLedgerRow(f"no ledger row for claim {claim.claim_id}")
    final = _final_path(conn, ctx, entry)
    result = FileResult.from_json(entry.result)
    write_sidecars(conn, entry, result, final, formula_guard)
    failpoints.hit(failpoints.AFTER_SIDECARS)
    for p in sorted(claim.dir.iterdir(), key=lambda p: p.name == claim.name):
        # companions first, the file itself last: its arrival means "finished"
        suffix = p.name[len(claim.name):] if p.name.startswith(claim.name) else p.name
        ctx.guard()
        os.rename(p, final.parent / (final.name + suffix))
    handle = ctx.progress
    if rows is not None and handle is not NO_PROGRESS and rows.close(handle):
        # Its in-hand row (a file in hand at a progress tick) goes in the same commit:
        # one round trip fewer.
        ledger.set_finished(conn, entry.id, also=lambda c: rows.delete_with(c, handle))
        rows.deleted(handle)
    else:
        ledger.set_finished(conn, entry.id)
    try:
        claim.dir.rmdir()
    except OSError:
        pass
    _log_finished(ctx, result, final)
    return Outcome("done" if result.status == "done" else "failed", final, result)


def _final_path(conn: psycopg.Connection[Any], ctx: FileContext,
                entry: ledger.LedgerEntry) -> Path:
    if entry.final_path:
        return Path(entry.final_path)
    # Committed by an older version, which chose the name here. Recorded before
    # anything is written, so a crash here re-finishes under the same name instead of
    # leaving orphan sidecars behind.
    dirs = ctx.claim.dirs
    dest = dirs.done if entry.status == "done" else dirs.failed
    final = dest / landing.unique_name(dest, ctx.claim.name)
    ledger.set_final_path(conn, entry.id, str(final))
    conn.commit()
    return final


def write_sidecars(conn: psycopg.Connection[Any], entry: ledger.LedgerEntry,
                   result: FileResult, final: Path, formula_guard: bool) -> None:
    """The format's sidecars, then result.json: rebuilt from the ledger alone, so a
    finish redone after a crash writes the same files."""
    result = replace(result, file=entry.name,
                     stored_as=final.name if final.name != entry.name else None)
    fmt = formats.named(entry.format)
    if fmt is not None:
        fmt.write_sidecars(sidecars.Finished(
            conn=conn, file_id=entry.id, directory=final.parent, name=final.name,
            result=result, meta=entry.meta, guard=formula_guard))
    conn.commit()
    sidecars.result_json(final.parent, final.name, result.to_json())


def _log_finished(ctx: FileContext, result: FileResult, final: Path) -> None:
    event = "file.done" if result.status == "done" else "file.failed"
    fields: dict[str, Any] = {
        "company": ctx.claim.company, "file": ctx.claim.name, "path": str(final),
        "format": result.format, "rows": result.rows, "accepted": result.accepted,
        "rejected": result.rejected, "rejected_by_class": result.rejected_by_class,
        "duration_s": result.duration_s,
    }
    if result.error is not None:
        fields["error_class"] = result.error.error_class
        fields["error_message"] = result.error.message
        if result.error.detail:
            fields["error_detail"] = result.error.detail
    if result.duplicate_of is not None:
        fields["duplicate_of"] = result.duplicate_of
    (log.info if result.status == "done" else log.warning)(event, **fields)
