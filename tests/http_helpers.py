"""Helpers for the HTTP intake tests: the real daemon with ``http_address`` set, a
token made by the real CLI, and a real HTTP client (http.client over TCP; curl where
a test says so). Answers are parsed with Python's ``email`` package."""

from __future__ import annotations

import email.parser
import email.policy
import http.client
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon_helpers import Daemon, StartDaemon, run_cli, setup_company

from ingestd.landing import CompanyDirs

DATA = Path(__file__).parent / "data"
SAS_EXAMPLE = DATA / "sas-example-fixed.csv"  # docs/formats.md's fix of the public example
ACCEPT_BOTH = "multipart/mixed, application/vnd.sas.error+json"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def parts(self) -> list[tuple[str, str, bytes]]:
        """(Content-ID, Content-Type, payload bytes) of a multipart answer, in order."""
        return parse_multipart(self.headers["content-type"], self.body)


def parse_multipart(content_type: str, body: bytes) -> list[tuple[str, str, bytes]]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    assert message.is_multipart(), content_type
    out = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        out.append((str(part["Content-ID"]), str(part["Content-Type"]), payload))
    return out


@dataclass
class Api:
    daemon: Daemon
    port: int
    token: str
    dirs: CompanyDirs
    env: dict[str, str]

    def request(self, method: str, path: str, body: bytes | None = None, *,
                token: str | None = "", accept: str | None = ACCEPT_BOTH,
                headers: dict[str, str] | None = None, timeout: float = 120.0) -> Answer:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            sent = dict(headers or {})
            if token is not None:
                sent["Authorization"] = f"Bearer {token or self.token}"
            if accept is not None:
                sent["Accept"] = accept
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            return Answer(response.status,
                          {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            conn.close()

    def post_contacts(self, body: bytes, **kw: Any) -> Answer:
        return self.request("POST", f"/companies/{self.dirs.company}/contacts", body, **kw)

    def add_token(self, company: str, *extra: str) -> str:
        made = run_cli(["token", "add", company, *extra], self.env)
        assert made.returncode == 0, made.stderr
        return made.stdout.strip()


def start_api(start_daemon: StartDaemon, db_url: str, landing: Path, env: dict[str, str],
              company: str = "acme", **overrides: str) -> Api:
    dirs = setup_company(db_url, landing, company)
    made = run_cli(["token", "add", company, "--name", "tests"], env)
    assert made.returncode == 0, made.stderr
    daemon = start_daemon(INGESTD_HTTP_ADDRESS="127.0.0.1:0", **overrides)
    [started] = daemon.wait_event("http.started")
    return Api(daemon, int(started["port"]), made.stdout.strip(), dirs, env)
