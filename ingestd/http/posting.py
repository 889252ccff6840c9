"""POST a body: its checks before anything is claimed, its Idempotency-Key, the body
spooled to disk as it arrives, then the apply (answered from the ledger) or the dry
run (answered from the check)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import Response

from ingestd.contacts.reader import open_contacts, parse_headers_file
from ingestd.errors import FileError
from ingestd.http.answers import JSON, MULTIPART, Accepts, Problem, json_bytes
from ingestd.http.intake import Begun, Intake, KeyInHand, RequestRow
from ingestd.http.ledger_answers import LedgerAnswers, status_of
from ingestd.results import FileResult


class Posting:
    def __init__(self, intake: Intake, ledger: LedgerAnswers) -> None:
        self.intake = intake
        self.settings = intake.settings
        self.ledger = ledger

    async def post(self, request: Request, route: str, accepts: Accepts) -> Response:
        """The answer to an authenticated POST, or the ``Problem`` to answer with."""
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
        try:
            return await self._keyed(request, begun, accepts, precondition)
        finally:
            await to_thread.run_sync(self.intake.end, begun)

    async def _keyed(self, request: Request, begun: Begun, accepts: Accepts,
                     precondition: str | None) -> Response:
        """A recorded request's answer: an earlier attempt's, or this body's. A 400 or
        413 is stored, so a retry with the same key gets it again."""
        row = begun.row
        request.state.request_id = row.id
        try:
            if not begun.new:
                stored = await self.ledger.stored(row, accepts)
                if stored is not None:
                    return stored
            return await self._receive(request, row, accepts, precondition, False)
        except Problem as problem:
            if problem.status in (400, 413):
                await to_thread.run_sync(self.intake.store_answer, row, problem.status,
                                         {"message": problem.message,
                                          "details": problem.details})
            raise

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
        return self.ledger.answer(row, entry, accepts)

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
        status = status_of(row.route, result)
        return Response(json_bytes(body), status_code=status, media_type=JSON,
                        headers={"Ingestd-Request-Id": row.id})
