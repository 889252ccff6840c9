"""Per-company bearer tokens: made, listed, revoked, and checked on each request.

A token is shown once, when it is made; the database keeps only its SHA-256.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

SCOPES = ("contacts", "persons", "read")
PREFIX = "igd_"  # recognisable in a secret scanner's rules, and in a leaked log


class TokenError(Exception):
    """A bad argument to ``add``: one line for the operator."""


@dataclass(frozen=True, slots=True)
class Token:
    id: int
    company: str
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def parse_scopes(text: str) -> tuple[str, ...]:
    scopes = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise TokenError(f"--scope {text!r}: scopes are a comma-separated list of "
                         f"{', '.join(SCOPES)}")
    return scopes


def add(conn: psycopg.Connection[Any], company: str, name: str,
        scopes: tuple[str, ...]) -> tuple[int, str]:
    """A new token for ``company``: its id and the token itself (never stored)."""
    token = PREFIX + secrets.token_urlsafe(32)
    row = conn.execute(
        "INSERT INTO ingestd.api_tokens (company, name, token_sha256, scopes)"
        " VALUES (%s, %s, %s, %s) RETURNING id",
        (company, name, digest(token), list(scopes))).fetchone()
    conn.commit()
    assert row is not None
    return int(row[0]), token


def list_tokens(conn: psycopg.Connection[Any], company: str | None = None) -> list[Token]:
    rows = conn.execute(
        "SELECT id, company, name, scopes, created_at, revoked_at FROM ingestd.api_tokens"
        " WHERE %(c)s::text IS NULL OR company = %(c)s ORDER BY id", {"c": company}).fetchall()
    conn.commit()
    return [Token(int(r[0]), r[1], r[2], tuple(r[3]), r[4], r[5]) for r in rows]


def revoke(conn: psycopg.Connection[Any], token_id: int) -> bool:
    """False when no such token is active."""
    cur = conn.execute("UPDATE ingestd.api_tokens SET revoked_at = now()"
                       " WHERE id = %s AND revoked_at IS NULL", (token_id,))
    conn.commit()
    return cur.rowcount == 1


def check(conn: psycopg.Connection[Any], token: str) -> Token | None:
    """The active token this bearer value is, or None."""
    row = conn.execute(
        "SELECT id, company, name, scopes, created_at, revoked_at FROM ingestd.api_tokens"
        " WHERE token_sha256 = %s AND revoked_at IS NULL", (digest(token),)).fetchone()
    conn.commit()
    if row is None:
        return None
    return Token(int(row[0]), row[1], row[2], tuple(row[3]), row[4], row[5])
