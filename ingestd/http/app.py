"""The HTTP routes (docs/http.md): authenticate, then hand over to ``posting.py``
(spool the body, hand it to the intake) or answer from the committed results
(``ledger_answers.py``). Starlette: a small, well-kept ASGI toolkit whose request body
is an async stream and whose responses may be generators, which is what "never held in
memory" needs in both directions; uvicorn serves it (``server.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from anyio import to_thread
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ingestd.contacts import export
from ingestd.http.answers import CSV, JSON, Accepts, Problem, error_response
from ingestd.http.intake import Intake, modified_since
from ingestd.http.ledger_answers import LedgerAnswers
from ingestd.http.openapi import document_bytes
from ingestd.http.posting import Posting
from ingestd.http.tokens import Token

NOT_FOUND = "No resource exists at the requested path."
REQUEST_ID = re.compile(r"[0-9a-f]{32}")  # intake.new_request_id's


class Api:
    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self.ledger = LedgerAnswers(intake)
        self.posting = Posting(intake, self.ledger)

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
        return await self._post(request, "contacts")

    async def post_persons(self, request: Request) -> Response:
        return await self._post(request, "persons")

    async def _post(self, request: Request, route: str) -> Response:
        accepts = Accepts.parse(request.headers.get("accept"))
        try:
            await self.caller(request, (route,))
            return await self.posting.post(request, route, accepts)
        except Problem as problem:
            return error_response(problem, accepts if route == "contacts" else None,
                                  getattr(request.state, "request_id", None))

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
            stored = await self.ledger.stored(row, accepts)
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

