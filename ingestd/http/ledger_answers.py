"""A request's answer from the ledger: the committed result of its body, as multipart
parts read back from the stored row results, or as JSON; or the answer stored for it
before its body became a claim."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from anyio import to_thread
from starlette.responses import Response, StreamingResponse

from ingestd import errors
from ingestd.contacts import sidecars as contacts_sidecars
from ingestd.db.ledger import LedgerEntry
from ingestd.http.answers import (
    CSV,
    JSON,
    MULTIPART,
    PERSONS,
    Accepts,
    Problem,
    multipart,
    new_boundary,
)
from ingestd.http.intake import Intake, RequestRow
from ingestd.persons import sidecars as persons_sidecars
from ingestd.results import FileResult

# The contacts answer's status for a body that failed as a whole, by error class; any
# other such failure is a 200 whose Global-Issue part says why (nothing was applied).
_CONTACTS_STATUS = {
    errors.CONTACTS_PRECONDITION_REQUIRED: 428,
    errors.CONTACTS_PRECONDITION_FAILED: 412,
    errors.INTERNAL_ERROR: 500,
    errors.INVALID_SCHEMA_NAME: 404,
}


def status_of(route: str, result: FileResult) -> int:
    """The answer's status for a body's result."""
    if result.error is None:
        return 200
    if route == "contacts":
        return _CONTACTS_STATUS.get(result.error.error_class, 200)
    return 500 if result.error.error_class == errors.INTERNAL_ERROR else 400


class LedgerAnswers:
    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self.settings = intake.settings

    async def stored(self, row: RequestRow, accepts: Accepts) -> Response | None:
        """An earlier attempt's answer, or None when it never got so far (its body is
        then taken from this request)."""
        if row.status is not None:
            answer = row.answer or {}
            raise Problem(row.status, str(answer.get("message", "")),
                          *answer.get("details", []))
        entry = await to_thread.run_sync(self.intake.entry, row)
        return self.answer(row, entry, accepts) if entry is not None else None

    def answer(self, row: RequestRow, entry: LedgerEntry, accepts: Accepts) -> Response:
        result = FileResult.from_json(entry.result)
        status = status_of(row.route, result)
        headers = {"Ingestd-Request-Id": row.id,
                   "Location": f"/companies/{row.company}/requests/{row.id}"}
        if result.duplicate_of is not None:
            headers["Ingestd-Duplicate-Of"] = result.duplicate_of
        if row.route == "contacts":
            if status != 200:
                assert result.error is not None
                raise Problem(status, result.error.message, headers=headers)
            return self._multipart(headers, lambda conn: zip(
                ("Accepted-CSV", "Rejected-CSV", "Global-Issue"), (CSV, CSV, CSV),
                contacts_sidecars.parts(conn, entry.id, result, entry.meta,
                                        self.settings.sidecar_formula_guard), strict=True))
        stored = entry.result
        if entry.final_path and Path(entry.final_path).name != entry.name:
            stored = {**stored, "stored_as": Path(entry.final_path).name}
        result_json = json.dumps(stored, indent=2, ensure_ascii=False, default=str) + "\n"
        if accepts.allows(MULTIPART):
            def persons_parts(conn: Any) -> Iterator[tuple[str, str, Any]]:
                errors_csv, retry = persons_sidecars.parts(
                    conn, entry.id, result, entry.meta, self.settings.sidecar_formula_guard)
                yield "result.json", JSON, [result_json]
                yield "errors.csv", CSV, errors_csv
                yield "retry.persons", PERSONS, retry
            return self._multipart(headers, persons_parts, status)
        if accepts.allows(JSON):
            return Response(result_json.encode(), status_code=status, media_type=JSON,
                            headers=headers)
        raise Problem(406, "The answer is multipart/mixed or application/json: accept one.")

    def _multipart(self, headers: dict[str, str],
                   parts: Callable[[Any], Any], status: int = 200) -> Response:
        boundary = new_boundary()
        pool = self.intake.db.pool

        def body() -> Iterator[bytes]:
            # Read back in chunks from the committed row results, on a connection of
            # its own for as long as the answer streams.
            with pool.connection() as conn, conn.transaction():  # server-side cursors
                yield from multipart(boundary, parts(conn))
        return StreamingResponse(body(), status_code=status, headers=headers,
                                 media_type=f'{MULTIPART}; boundary="{boundary}"')
