"""What became of one file: the typed form of its ``NAME.result.json``.

Its own module because everyone reads it: the lifecycle builds it, the ledger
stores it, each format's sidecar writers, the daemon's metrics and the CLI read it.
The key order of ``to_json`` is the partner contract (docs/formats.md "Sidecars").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ingestd.errors import FileError, RowError

# What result.json's counts count (``count_unit``): data rows, never contacts sections.
COUNT_UNIT = "rows"


@dataclass
class FileResult:
    status: str  # "done" | "failed", as the ledger stores it
    format: str | None
    company: str
    file: str
    sha256: str
    rows: int = 0
    accepted: int = 0
    rejected: int = 0
    rejected_by_class: dict[str, int] = field(default_factory=dict)
    # rows, accepted, rejected and rejected_by_class count data rows (records), whatever
    # the format; a contacts file also says how many sections its rejected rows were in.
    rejected_sections: int | None = None
    started_at: str = ""
    finished_at: str = ""
    duration_s: float = 0.0
    warnings: list[str] = field(default_factory=list)
    error: FileError | None = None
    duplicate_of: str | None = None  # the earlier file with the same content
    stored_as: str | None = None  # the name in done/ or failed/, when it is not ``file``
    request_id: str | None = None  # the HTTP request whose body this was (source "http")
    # Not in result.json: the first rejected rows, for `ingestd check` to print.
    sample_errors: list[tuple[int, RowError]] = field(default_factory=list)

    @property
    def applied(self) -> bool:
        """Rows went in: done, and not a duplicate of an earlier file."""
        return self.status == "done" and self.duplicate_of is None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status,
            "format": self.format,
            "company": self.company,
            "file": self.file,
            "sha256": self.sha256,
            "rows": self.rows,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "rejected_by_class": dict(self.rejected_by_class),
            "count_unit": COUNT_UNIT,
        }
        if self.rejected_sections is not None:
            out["rejected_sections"] = self.rejected_sections
        out |= {
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_s": self.duration_s,
            "warnings": list(self.warnings),
        }
        if self.error is not None:
            out["error"] = {"class": self.error.error_class, "message": self.error.message}
            if self.error.detail:
                out["error"]["detail"] = self.error.detail
        if self.duplicate_of is not None:
            out["duplicate_of"] = self.duplicate_of
        if self.stored_as is not None:
            out["stored_as"] = self.stored_as
        if self.request_id is not None:
            out["source"] = "http"
            out["request_id"] = self.request_id
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileResult:
        """Also reads what older versions stored: a missing key takes its default."""
        error = data.get("error")
        return cls(
            status=str(data.get("status", "failed")),
            format=data.get("format"),
            company=str(data.get("company", "")),
            file=str(data.get("file", "")),
            sha256=str(data.get("sha256", "")),
            rows=int(data.get("rows") or 0),
            accepted=int(data.get("accepted") or 0),
            rejected=int(data.get("rejected") or 0),
            rejected_by_class=dict(data.get("rejected_by_class") or {}),
            rejected_sections=data.get("rejected_sections"),
            started_at=str(data.get("started_at", "")),
            finished_at=str(data.get("finished_at", "")),
            duration_s=float(data.get("duration_s") or 0.0),
            warnings=list(data.get("warnings") or []),
            error=(FileError(error["class"], error["message"], error.get("detail", ""))
                   if error else None),
            duplicate_of=data.get("duplicate_of"),
            stored_as=data.get("stored_as"),
            request_id=data.get("request_id"),
        )
