"""What the one-file commands print about a file: ``ingest`` what happened, ``check``
what would happen. Both list the rejected records the same way, up to a limit, with a
count of the rest: the sidecars hold them all."""

from __future__ import annotations

from pathlib import Path

from ingestd.landing import ERRORS_CSV
from ingestd.results import FileResult

# Rejected records printed before "... and N more": enough to see the pattern of a bad
# file without scrolling a million lines past.
SHOWN_REJECTS = 20


def describe(result: FileResult, final: Path | None, *, dry_run: bool = False,
             limit: int = SHOWN_REJECTS) -> list[str]:
    """``ingest``: what happened; ``check`` (``dry_run``): what would happen, never "done:"."""
    name, error = result.file, result.error
    warnings = list(result.warnings)
    out: list[str] = []
    if not dry_run:
        line = (f"{result.status}: {name} ({result.format}) rows={result.rows} "
                f"accepted={result.accepted} rejected={result.rejected}")
        if result.rejected_sections is not None:
            line += f" rejected_sections={result.rejected_sections}"
        if final:
            line += f" -> {final}"
        out.append(line)
        if error:
            out.append(f"  {error.error_class}: {error.message}")
    elif error:
        out.append(f"{name}: would fail: {error.error_class}: {error.message}")
    elif result.duplicate_of is not None:
        warnings = warnings[:-1]  # the pipeline's own duplicate warning, in the past tense
        out.append(f"{name}: would be a duplicate of {result.duplicate_of} (same content, "
                   "already applied): nothing would be applied")
    else:
        line = (f"{name} ({result.format}): would be done: {result.rows} rows, "
                f"{result.accepted} accepted, {result.rejected} rejected")
        if result.rejected_sections is not None:
            line += f" (rows of {result.rejected_sections} rejected section(s))"
        out.append(line)
    if error and error.detail:
        out.append(f"  {error.detail}")
    out.extend(_rejects(result, final, dry_run=dry_run, limit=limit))
    out.extend(f"  warning: {w}" for w in warnings)
    return out


def _rejects(result: FileResult, final: Path | None, *, dry_run: bool,
             limit: int) -> list[str]:
    shown = result.sample_errors[:limit]
    out = []
    for rec, err in shown:
        where = f"{err.field}: " if err.field else ""
        detail = f" ({where}{err.detail})" if err.detail else ""
        out.append(f"  record {rec}: {err.error_class}: {err.message}{detail}")
    rest = result.rejected - len(shown)
    if rest > 0:
        more = f"  ... and {rest} more rejected record(s)"
        if not dry_run and final is not None:
            more += f": see {final.name}{ERRORS_CSV}"
        out.append(more)
    return out
