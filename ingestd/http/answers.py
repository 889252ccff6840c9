"""What the HTTP intake answers: media types a client accepts, the SAS error object
(``Problem`` raised, ``error_response`` sent), and the ``multipart/mixed`` body,
written part by part as its text arrives."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.responses import Response

MULTIPART = "multipart/mixed"
ERROR_JSON = "application/vnd.sas.error+json"
JSON = "application/json"
CSV = 'text/csv; charset="utf-8"'
PERSONS = 'text/plain; charset="utf-8"'

_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            406: "Not Acceptable", 408: "Request Timeout", 409: "Conflict",
            412: "Precondition Failed", 413: "Content Too Large",
            428: "Precondition Required", 500: "Internal Server Error",
            503: "Service Unavailable"}


@dataclass(frozen=True, slots=True)
class Accepts:
    """Which of our answers' media types the client's ``Accept`` allows."""

    ranges: tuple[tuple[str, str], ...]  # (type, subtype) with q > 0; "*" wildcards

    @classmethod
    def parse(cls, header: str | None) -> Accepts:
        if header is None or not header.strip():
            return cls((("*", "*"),))  # no Accept: anything (RFC 9110 12.5.1)
        ranges = []
        for item in header.split(","):
            media, *params = (p.strip() for p in item.split(";"))
            kind, _, sub = media.lower().partition("/")
            q = 1.0
            for param in params:
                name, _, value = param.partition("=")
                if name.strip().lower() == "q":
                    try:
                        q = float(value)
                    except ValueError:
                        q = 0.0
            if kind and sub and q > 0:
                ranges.append((kind, sub))
        return cls(tuple(ranges))

    def allows(self, media_type: str) -> bool:
        kind, _, sub = media_type.partition(";")[0].strip().lower().partition("/")
        return any((k == "*" or k == kind) and (s == "*" or s == sub) for k, s in self.ranges)

    @property
    def error_type(self) -> str | None:
        """The media type an error object may be sent as, or None (then 406)."""
        for candidate in (ERROR_JSON, JSON):
            if self.allows(candidate):
                return candidate
        return None


def error_object(status: int, message: str, details: Iterable[str] = ()) -> bytes:
    """The SAS REST error object (``application/vnd.sas.error+json``, version 2)."""
    return orjson.dumps({
        "errorCode": status,
        "message": message,
        "details": list(details),
        "httpStatusCode": status,
        "version": 2,
    })


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
    media = ERROR_JSON
    if accepts is not None:
        chosen = accepts.error_type
        if chosen is None and status != 401:  # 401 stays: its WWW-Authenticate matters
            details = [f"{status} {_REASONS.get(status, '')}: {message}", *details]
            status, message = 406, ("The error cannot be sent as multipart/mixed: accept "
                                    f"{ERROR_JSON} as well.")
        media = chosen or ERROR_JSON
    return Response(error_object(status, message, details), status_code=status,
                    media_type=media, headers=headers)


def new_boundary() -> str:
    # Random, so no CSV line can hold it (RFC 2046 5.1.1).
    return f"ingestd-{uuid.uuid4().hex}"


def multipart(boundary: str, parts: Iterable[tuple[str, str, Iterable[str] | Iterable[bytes]]]
              ) -> Iterator[bytes]:
    """A ``multipart/mixed`` body: (Content-ID, Content-Type, chunks) per part, streamed.

    A part's text is exactly its chunks: the CRLF before each boundary belongs to the
    boundary (RFC 2046), so an empty part is an empty body and a CSV keeps its last CRLF.
    """
    for content_id, content_type, chunks in parts:
        yield (f"--{boundary}\r\nContent-Type: {content_type}\r\n"
               f"Content-ID: {content_id}\r\n\r\n").encode()
        for chunk in chunks:
            yield chunk.encode("utf-8") if isinstance(chunk, str) else chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def json_bytes(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n"
