"""The HTTP routes (docs/http.md): authenticate, spool the body, hand it to the intake,
answer from the committed results. Starlette: a small, well-kept ASGI toolkit whose
request body is an async stream and whose responses may be generators, which is what
"never held in memory" needs in both directions; uvicorn serves it (``server.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import structlog
from anyio import to_thread
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ingestd import errors
from ingestd.contacts import export
from ingestd.contacts import sidecars as contacts_sidecars
from ingestd.contacts.reader import open_contacts, parse_headers_file
from ingestd.db.ledger import LedgerEntry
from ingestd.errors import FileError
from ingestd.http.answers import (
    CSV,
    JSON,
    MULTIPART,
    PERSONS,
    Accepts,
    error_object,
    json_bytes,
    multipart,
    new_boundary,
)
from ingestd.http.intake import Begun, Intake, KeyInHand, RequestRow, modified_since
from ingestd.http.openapi import document_bytes
from ingestd.http.tokens import Token
from ingestd.persons import sidecars as persons_sidecars
from ingestd.results import FileResult

log = structlog.get_logger("ingestd.http")

NOT_FOUND = "No resource exists at the requested path."
REQUEST_ID = re.compile(r"[0-9a-f]{32}")  # intake.new_request_id's

# The contacts answer's status for a body that failed as a whole, by error class; any
# other such failure is a 200 whose Global-Issue part says why (nothing was applied).
_CONTACTS_STATUS = {
    errors.CONTACTS_PRECONDITION_REQUIRED: 428,
    errors.CONTACTS_PRECONDITION_FAILED: 412,
    errors.INTERNAL_ERROR: 500,
    errors.INVALID_SCHEMA_NAME: 404,
}
_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            406: "Not Acceptable", 408: "Request Timeout", 409: "Conflict",
            412: "Precondition Failed", 413: "Content Too Large",
            428: "Precondition Required", 500: "Internal Server Error",
            503: "Service Unavailable"}


class Problem(Exception):
    """An error answer: status, message, details."""

    def __init__(self, status: int, message: str, *details: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = list(details)
        self.headers = headers or {}


def error_response(problem: Problem, accepts: Accepts | None,
                   request_id: str | None = None) -> Response:
    """The error object; ``accepts`` given (the contacts API) and allowing no error
    type: 406 instead, as the SAS API does (its body still says what went wrong)."""
    headers = dict(problem.headers)
    if request_id:
        headers["Ingestd-Request-Id"] = request_id
    status, message, details = problem.status, problem.message, problem.details
    media = ERROR_TYPE
    if accepts is not None:
        chosen = accepts.error_type
        if chosen is None and status != 401:  # 401 stays: its WWW-Authenticate matters
            details = [f"{status} {_REASONS.get(status, '')}: {message}", *details]
            status, message = 406, ("The error cannot be sent as multipart/mixed: accept "
                                    f"{ERROR_TYPE} as well.")
        media = chosen or ERROR_TYPE
    return Response(error_object(status, message, details), status_code=status,
                    media_type=media, headers=headers)


ERROR_TYPE = "application/vnd.sas.error+json"


class Api:
    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self.settings = intake.settings

    # -- who is calling ---------------------------------------------------------------

    async def caller(self, request: Request, scopes: tuple[str, ...]) -> Token:
        """The token's company must be the path's: another's, or one that does not
        exist, is 404 alike, so nobody learns which companies exist."""
        auth = request.headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="ingestd"'}
        if scheme.lower() != "bearer" or not value.strip():
            raise Problem(401, "A bearer token is required.", headers=challenge)
        token = await to_thread.run_sync(self.intake.authenticate, value.strip())
        if token is None:
            raise Problem(401, "The bearer token is not valid.", headers=challenge)
        request.state.company = request.path_params.get("company")
        if token.company != request.path_params.get("company"):
            raise Problem(404, NOT_FOUND)
        if not any(s in token.scopes for s in scopes):
            raise Problem(403, f"The token lacks the {' or '.join(scopes)} scope for this "
                               "request.")
        return token

    # -- POST a body ------------------------------------------------------------------

    async def post_contacts(self, request: Request) -> Response:
        accepts = Accepts.parse(request.headers.get("accept"))
        return await self._post(request, "contacts", accepts)

    async def post_persons(self, request: Request) -> Response:
        accepts = Accepts.parse(request.headers.get("accept"))
        return await self._post(request, "persons", accepts)

    async def _post(self, request: Request, route: str, accepts: Accepts) -> Response:
        errors_as = accepts if route == "contacts" else None
        begun: Begun | None = None
        try:
            await self.caller(request, (route,))
            company = request.path_params["company"]
            dry_run = request.query_params.get("dryRun", "false").lower() == "true"
            if route == "contacts" and not accepts.allows(MULTIPART) and not dry_run:
                raise Problem(406, "The answer is multipart/mixed: accept it.")
            if dry_run and accepts.error_type is None:
                raise Problem(406, "A dry run answers application/json: accept it.")
            precondition = self._precondition(request, route)
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and \
                    int(length) > self.settings.http_body_limit:
                raise self._too_large()
            if dry_run:  # nothing is written: no request row, no key
                row = self.intake.unrecorded(company, route)
                request.state.request_id = row.id
                return await self._receive(request, row, accepts, precondition, True)
            key = request.headers.get("idempotency-key")
            if key is not None and not 0 < len(key) <= 200:
                raise Problem(400, "An Idempotency-Key is 1 to 200 characters long.")
            try:
                begun = await to_thread.run_sync(self.intake.begin, company, route, key)
            except KeyInHand:
                raise Problem(409, "A request with this Idempotency-Key is still in hand; "
                                   "ask again once it is answered.") from None
            row = begun.row
            request.state.request_id = row.id
            if not begun.new:
                stored = await self._stored(row, accepts)
                if stored is not None:
                    return stored
            return await self._receive(request, row, accepts, precondition, False)
        except Problem as problem:
            rid = getattr(request.state, "request_id", None)
            if begun is not None and problem.status in (400, 413):
                await to_thread.run_sync(self.intake.store_answer, begun.row, problem.status,
                                         {"message": problem.message,
                                          "details": problem.details})
            return error_response(problem, errors_as, rid)
        finally:
            if begun is not None:
                await to_thread.run_sync(self.intake.end, begun)

    def _precondition(self, request: Request, route: str) -> str | None:
        value = request.headers.get("if-unmodified-since")
        if value is None or route != "contacts":
            return None
        try:
            parse_headers_file(f"If-Unmodified-Since: {value}")
        except FileError as exc:
            raise Problem(400, exc.message) from None
        return value

    def _too_large(self) -> Problem:
        return Problem(413, f"The body is larger than the limit of "
                            f"{self.settings.http_body_limit} bytes (http_body_limit).")

    async def _receive(self, request: Request, row: RequestRow, accepts: Accepts,
                       precondition: str | None, dry_run: bool) -> Response:
        spool = await to_thread.run_sync(self.intake.spool, row)
        try:
            await self._spool(request, spool)
            if precondition is not None:
                companion = spool.with_name(spool.name + ".headers")
                companion.write_text(f"If-Unmodified-Since: {precondition}\n", encoding="utf-8")
            if row.route == "contacts":
                await to_thread.run_sync(self._check_header, spool)
            if dry_run:
                result = await to_thread.run_sync(self.intake.check, row, spool)
                await to_thread.run_sync(self.intake.discard, spool)
                return self._dry_run_answer(row, result)
        except BaseException:
            await to_thread.run_sync(self.intake.discard, spool)
            raise
        outcome = await to_thread.run_sync(self.intake.apply, row, spool)
        if outcome.status == "fenced":
            raise Problem(503, "This instance lost its hold on the company; retry with the "
                               "same Idempotency-Key.")
        entry = await to_thread.run_sync(self.intake.entry, row)
        if entry is None:
            raise Problem(503, "The body was not applied (the server is stopping); retry "
                               "with the same Idempotency-Key.")
        return self._answer(row, entry, accepts)

    async def _spool(self, request: Request, spool: Path) -> None:
        """The body to disk as it arrives: never more than a chunk of it in memory."""
        limit, timeout = self.settings.http_body_limit, self.settings.http_body_timeout
        size = 0
        chunks = request.stream().__aiter__()
        with open(spool, "wb") as fh:
            while True:
                try:
                    chunk = await asyncio.wait_for(chunks.__anext__(), timeout)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise Problem(408, f"No body bytes came for {timeout} s "
                                       "(http_body_timeout).") from None
                size += len(chunk)
                if size > limit:
                    raise self._too_large()
                fh.write(chunk)
            fh.flush()
            await to_thread.run_sync(os.fsync, fh.fileno())

    def _check_header(self, spool: Path) -> None:
        """400 before anything is claimed: the body must be CSV with a header row."""
        try:
            with open_contacts(spool, self.settings.max_line_bytes):
                pass
        except FileError as exc:
            raise Problem(400, exc.message, "The body must be CSV text with a header row.") \
                from None

    def _dry_run_answer(self, row: RequestRow, result: FileResult) -> Response:
        body = result.to_json()
        body["dry_run"] = True
        body["errors"] = [{"record": rec, "error_class": e.error_class, "message": e.message,
                           "field": e.field, "detail": e.detail}
                          for rec, e in result.sample_errors]
        status = self._status(row.route, result)
        return Response(json_bytes(body), status_code=status, media_type=JSON,
                        headers={"Ingestd-Request-Id": row.id})

    # -- answers from the ledger ------------------------------------------------------

    async def _stored(self, row: RequestRow, accepts: Accepts) -> Response | None:
        """An earlier attempt's answer, or None when it never got so far (its body is
        then taken from this request)."""
        if row.status is not None:
            answer = row.answer or {}
            raise Problem(row.status, str(answer.get("message", "")),
                          *answer.get("details", []))
        entry = await to_thread.run_sync(self.intake.entry, row)
        return self._answer(row, entry, accepts) if entry is not None else None

    @staticmethod
    def _status(route: str, result: FileResult) -> int:
        if result.error is None:
            return 200
        if route == "contacts":
            return _CONTACTS_STATUS.get(result.error.error_class, 200)
        return 500 if result.error.error_class == errors.INTERNAL_ERROR else 400

    def _answer(self, row: RequestRow, entry: LedgerEntry, accepts: Accepts) -> Response:
        result = FileResult.from_json(entry.result)
        status = self._status(row.route, result)
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

    # -- GET --------------------------------------------------------------------------

    async def get_request(self, request: Request) -> Response:
        accepts = Accepts.parse(request.headers.get("accept"))
        errors_as: Accepts | None = None
        try:
            token = await self.caller(request, ("read", "contacts", "persons"))
            request_id = request.path_params["request_id"]
            if not REQUEST_ID.fullmatch(request_id):
                raise Problem(404, NOT_FOUND)
            request.state.request_id = request_id
            row = await to_thread.run_sync(self.intake.find, token.company, request_id)
            if row is None:
                raise Problem(404, NOT_FOUND)
            errors_as = accepts if row.route == "contacts" else None
            stored = await self._stored(row, accepts)
            if stored is not None:
                return stored
            if await to_thread.run_sync(self.intake.in_hand, row):
                raise Problem(409, "The request is still in hand; ask again shortly.")
            raise Problem(404, "The request's body was never received in full: nothing of it "
                               "was applied. Send it again.")
        except Problem as problem:
            return error_response(problem, errors_as,
                                  getattr(request.state, "request_id", None))

    async def get_contacts(self, request: Request) -> Response:
        try:
            await self.caller(request, ("read",))
            company = await to_thread.run_sync(self.intake.company,
                                               request.path_params["company"])
            if company is None:
                raise Problem(404, NOT_FOUND)
            since = None
            given = request.query_params.get("modifiedSince")
            if given is not None:
                since = modified_since(given)
                if since is None:
                    raise Problem(400, f"modifiedSince {given!r} is neither an ISO-8601 "
                                       "timestamp nor an HTTP date.")
        except Problem as problem:
            return error_response(problem, None)
        pool = self.intake.db.pool
        schema = company.schema

        def body() -> Iterator[bytes]:
            with pool.connection() as conn:
                for chunk in export.export(conn, schema, since):
                    yield chunk.encode("utf-8")
        return StreamingResponse(body(), media_type=CSV)

    async def get_openapi(self, request: Request) -> Response:
        return Response(document_bytes(), media_type=JSON)


def build_app(intake: Intake) -> Starlette:
    api = Api(intake)
    routes = [
        Route("/openapi.json", api.get_openapi, methods=["GET"]),
        Route("/companies/{company}/contacts", api.post_contacts, methods=["POST"]),
        Route("/companies/{company}/contacts", api.get_contacts, methods=["GET"]),
        Route("/companies/{company}/persons", api.post_persons, methods=["POST"]),
        Route("/companies/{company}/requests/{request_id}", api.get_request, methods=["GET"]),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(Problem(404, NOT_FOUND), None)

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return error_response(Problem(405, "The method is not allowed here."), None)

    async def disconnected(request: Request, exc: Exception) -> Response:
        return Response(status_code=499)  # nobody reads it: the client left

    return Starlette(routes=routes, exception_handlers={
        404: not_found, 405: not_allowed, ClientDisconnect: disconnected})

