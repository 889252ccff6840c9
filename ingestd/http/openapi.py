"""The OpenAPI document of the HTTP intake: served at /openapi.json and kept, equal,
in docs/openapi.json (a test compares them). Written by hand because the routes
stream raw bodies, which no schema generator can see."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from ingestd import __version__

_ERROR = {"$ref": "#/components/schemas/Error"}
_ERROR_CONTENT = {"application/vnd.sas.error+json": {"schema": _ERROR},
                  "application/json": {"schema": _ERROR}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _ERROR_CONTENT}


_COMPANY = {"name": "company", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"}}
_DRY_RUN = {"name": "dryRun", "in": "query", "required": False,
            "schema": {"type": "boolean", "default": False},
            "description": "Check only (`ingestd check`): the answer the apply would give, "
                           "as JSON, with nothing written."}
_IDEMPOTENCY_KEY = {"name": "Idempotency-Key", "in": "header", "required": False,
                    "schema": {"type": "string", "maxLength": 200},
                    "description": "A retry with the same key gets the first answer; the "
                                   "body is applied once."}
_ACCEPT = {"name": "Accept", "in": "header", "required": False,
           "schema": {"type": "string"},
           "description": "Must allow multipart/mixed; add application/vnd.sas.error+json "
                          "to get errors as JSON objects instead of 406."}
_COMMON = {
    "401": _error("No bearer token, or not a valid one."),
    "403": _error("The token lacks the scope this route needs."),
    "404": _error("Unknown path, or a company that is not the token's."),
}
_HEADERS = {"Ingestd-Request-Id": {"schema": {"type": "string"},
                                   "description": "GET /companies/{company}/requests/{id}"}}
_MULTIPART = {"multipart/mixed": {"schema": {"type": "string", "format": "binary"}}}


_BODY_STALLED = _error("The body stopped arriving (http_body_timeout).")
_KEY_IN_HAND = _error("A request with this Idempotency-Key is in hand.")
_TOO_LARGE = _error("The body is over http_body_limit.")
_ANY_RESULT = {**_MULTIPART, "application/json": {"schema": {"type": "object"}}}
_ERROR_SCHEMA = {
    "type": "object",
    "required": ["errorCode", "message", "details", "httpStatusCode", "version"],
    "properties": {
        "errorCode": {"type": "integer"},
        "message": {"type": "string"},
        "details": {"type": "array", "items": {"type": "string"}},
        "httpStatusCode": {"type": "integer"},
        "version": {"type": "integer"},
    },
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "ingestd HTTP intake", "version": __version__,
                 "description": "The same exactly-once pipeline as an SFTP drop "
                                "(docs/http.md)."},
        "security": [{"bearer": []}],
        "paths": {
            "/companies/{company}/contacts": {"post": _post_contacts(),
                                              "get": _get_contacts()},
            "/companies/{company}/persons": {"post": _post_persons()},
            "/companies/{company}/requests/{request_id}": {"get": _get_request()},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": _ERROR_SCHEMA},
        },
    }


def _post_contacts() -> dict[str, Any]:
    return {
        "operationId": "postContacts",
        "summary": "Create or update contacts from CSV (the SAS contacts API).",
        "parameters": [_COMPANY, _DRY_RUN, _IDEMPOTENCY_KEY, _ACCEPT,
                       {"name": "If-Unmodified-Since", "in": "header",
                        "required": False, "schema": {"type": "string"},
                        "description": "Needed to update contacts that "
                                       "existed before the request."}],
        "requestBody": {"required": True, "content": {
            "text/csv": {"schema": {"type": "string"}}}},
        "responses": {
            "200": {"description": "Parts Accepted-CSV, Rejected-CSV, "
                                   "Global-Issue (text/csv each).",
                    "headers": _HEADERS, "content": _MULTIPART},
            "400": _error("The body is not CSV with a header row."),
            **_COMMON,
            "406": _error("An error the client cannot accept as multipart/mixed."),
            "408": _BODY_STALLED,
            "409": _KEY_IN_HAND,
            "412": _error("A contact to update was modified after "
                          "If-Unmodified-Since."),
            "413": _TOO_LARGE,
            "428": _error("The body updates existing contacts: "
                          "If-Unmodified-Since is required."),
        },
    }


def _get_contacts() -> dict[str, Any]:
    return {
        "operationId": "getContacts",
        "summary": "The company's contacts as CSV with an id column.",
        "parameters": [_COMPANY, {
            "name": "modifiedSince", "in": "query", "required": False,
            "schema": {"type": "string"},
            "description": "ISO-8601 or HTTP date: only contacts created or "
                           "updated after it."}],
        "responses": {
            "200": {"description": "CSV, one line per treatment.",
                    "content": {"text/csv": {"schema": {"type": "string"}}}},
            "400": _error("modifiedSince is not a timestamp."),
            **_COMMON,
        },
    }


def _post_persons() -> dict[str, Any]:
    return {
        "operationId": "postPersons",
        "summary": "Apply a Person Import file (header block and all).",
        "parameters": [_COMPANY, _DRY_RUN, _IDEMPOTENCY_KEY],
        "requestBody": {"required": True, "content": {
            "text/plain": {"schema": {"type": "string"}}}},
        "responses": {
            "200": {"description": "Applied: multipart/mixed with parts "
                                   "result.json, errors.csv, retry.persons, or "
                                   "the result.json object.",
                    "headers": _HEADERS, "content": _ANY_RESULT},
            "400": {"description": "The file failed as a whole; nothing applied.",
                    "content": _ANY_RESULT},
            **_COMMON,
            "406": _error("The client accepts neither answer type."),
            "408": _BODY_STALLED,
            "409": _KEY_IN_HAND,
            "413": _TOO_LARGE,
        },
    }


def _get_request() -> dict[str, Any]:
    return {
        "operationId": "getRequest",
        "summary": "The stored answer of an earlier request.",
        "parameters": [_COMPANY, {"name": "request_id", "in": "path",
                                  "required": True, "schema": {"type": "string"}}],
        "responses": {
            "200": {"description": "The answer the request got.", "content": _ANY_RESULT},
            "400": _error("The request's stored answer was 400."),
            **_COMMON,
            "406": _error("The stored answer is an error the client cannot "
                          "accept."),
            "409": _error("The request is still in hand."),
            "412": _error("The request's stored answer was 412."),
            "413": _error("The request's stored answer was 413."),
            "428": _error("The request's stored answer was 428."),
        },
    }


@cache
def document_bytes() -> bytes:
    """What /openapi.json serves and docs/openapi.json holds."""
    return (json.dumps(document(), indent=2, ensure_ascii=False) + "\n").encode()
