"""What the HTTP intake answers: media types a client accepts, the SAS error object,
and the ``multipart/mixed`` body, written part by part as its text arrives."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

MULTIPART = "multipart/mixed"
ERROR_JSON = "application/vnd.sas.error+json"
JSON = "application/json"
CSV = 'text/csv; charset="utf-8"'
PERSONS = 'text/plain; charset="utf-8"'


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
