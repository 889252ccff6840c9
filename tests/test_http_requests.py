"""Exactly once over HTTP: Idempotency-Key (409 while in hand, the stored answer after),
a daemon SIGKILLed mid-request and the request retried, stored answers by request id,
dry runs, and a duplicate body."""

from __future__ import annotations

import http.client
import socket
from pathlib import Path

import pytest
from daemon_helpers import StartDaemon, query, wait_for
from http_helpers import ACCEPT_BOTH, SAS_EXAMPLE, Answer, Api, start_api

BODY = SAS_EXAMPLE.read_bytes()


@pytest.fixture
def api(start_daemon: StartDaemon, db_url: str, landing: Path, env: dict[str, str]) -> Api:
    return start_api(start_daemon, db_url, landing, env)


def start_partial(api: Api, key: str, sent: int = 100) -> socket.socket:
    """A POST whose headers and first ``sent`` bytes are sent, the rest held back; it
    returns once the daemon has taken the request (its body is being spooled)."""
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=60)
    head = (f"POST /companies/{api.dirs.company}/contacts HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nAuthorization: Bearer {api.token}\r\n"
            f"Accept: {ACCEPT_BOTH}\r\nIdempotency-Key: {key}\r\n"
            f"Content-Type: text/csv\r\nContent-Length: {len(BODY)}\r\n\r\n").encode()
    sock.sendall(head + BODY[:sent])
    wait_for(lambda: any(p.name.startswith(".spool-") for p in api.dirs.processing.iterdir()),
             what="the body being spooled", context=api.daemon.tail)
    return sock


def finish_partial(sock: socket.socket, sent: int = 100) -> Answer:
    sock.sendall(BODY[sent:])
    response = http.client.HTTPResponse(sock)
    response.begin()
    answer = Answer(response.status, {k.lower(): v for k, v in response.getheaders()},
                    response.read())
    sock.close()
    return answer


def applied_once(db_url: str) -> None:
    assert query(db_url, "SELECT count(*) FROM ingestd.files") == [(1,)]
    assert query(db_url, "SELECT count(*) FROM acme.contacts") == [(1,)]


def test_a_key_in_hand_is_409_and_a_retry_gets_the_stored_answer(
        api: Api, db_url: str) -> None:
    first = start_partial(api, "order-1")
    second = api.post_contacts(BODY, headers={"Idempotency-Key": "order-1"})
    assert second.status == 409, second.body
    assert second.json()["httpStatusCode"] == 409
    answer = finish_partial(first)
    assert answer.status == 200, answer.body
    again = api.post_contacts(BODY, headers={"Idempotency-Key": "order-1"})
    assert again.status == 200
    assert again.headers["ingestd-request-id"] == answer.headers["ingestd-request-id"]
    assert [p[2] for p in again.parts()] == [p[2] for p in answer.parts()]
    applied_once(db_url)
    # Another key with the same body: a duplicate, not applied again.
    other = api.post_contacts(BODY, headers={"Idempotency-Key": "order-2"})
    assert other.status == 200
    assert other.headers["ingestd-duplicate-of"] == \
        f"http-{answer.headers['ingestd-request-id']}.csv"
    assert [p[2] for p in other.parts()] == [b"", b"", b""]
    assert query(db_url, "SELECT count(*) FROM acme.contacts") == [(1,)]


def test_the_stored_answer_by_request_id(api: Api) -> None:
    answer = api.post_contacts(BODY)
    assert answer.status == 200
    location = answer.headers["location"]
    assert location == f"/companies/acme/requests/{answer.headers['ingestd-request-id']}"
    stored = api.request("GET", location)
    assert stored.status == 200
    assert [p[2] for p in stored.parts()] == [p[2] for p in answer.parts()]
    assert api.request("GET", "/companies/acme/requests/nosuch").status == 404
    assert api.request("GET", "/companies/acme/requests/%00%F3%AE").status == 404
    # A 400's answer is stored too.
    bad = api.post_contacts(b"not csv\n")
    assert bad.status == 400
    again = api.request("GET", f"/companies/acme/requests/{bad.headers['ingestd-request-id']}")
    assert again.status == 400 and again.json()["message"] == bad.json()["message"]


def test_killed_while_the_body_arrives_then_retried_applies_once(
        api: Api, db_url: str, start_daemon: StartDaemon, landing: Path,
        env: dict[str, str]) -> None:
    start_partial(api, "order-9")
    api.daemon.kill()  # SIGKILL, half a body on disk
    daemon = start_daemon(INGESTD_HTTP_ADDRESS="127.0.0.1:0")
    api.port = int(daemon.wait_event("http.started")[0]["port"])
    api.daemon = daemon
    retried = api.post_contacts(BODY, headers={"Idempotency-Key": "order-9"})
    assert retried.status == 200, retried.body
    applied_once(db_url)
    assert [p.name for p in api.dirs.processing.iterdir()] == []
    [[request_id]] = query(db_url, "SELECT id FROM ingestd.http_requests")
    assert retried.headers["ingestd-request-id"] == request_id  # the first attempt's


@pytest.mark.parametrize("failpoint", ["before_commit", "after_commit"])
def test_killed_in_the_apply_then_retried_applies_once(
        start_daemon: StartDaemon, db_url: str, landing: Path, env: dict[str, str],
        failpoint: str) -> None:
    api = start_api(start_daemon, db_url, landing, env, INGESTD_FAILPOINT=failpoint)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        api.post_contacts(BODY, headers={"Idempotency-Key": "order-7"})
    assert api.daemon.wait_exit() == -9  # it SIGKILLed itself at the failpoint
    daemon = start_daemon(INGESTD_HTTP_ADDRESS="127.0.0.1:0")
    api.port = int(daemon.wait_event("http.started")[0]["port"])
    api.daemon = daemon
    retried = api.post_contacts(BODY, headers={"Idempotency-Key": "order-7"})
    assert retried.status == 200, retried.body
    accepted = retried.parts()[0][2]
    assert accepted.startswith(b"4,")
    applied_once(db_url)
    name = f"http-{retried.headers['ingestd-request-id']}.csv"
    wait_for(lambda: (api.dirs.done / name).exists(), what="the body in done/",
             context=daemon.tail)
    assert (api.dirs.done / f"{name}.accepted.csv").read_bytes() == accepted


def test_dry_run_answers_and_writes_nothing(api: Api, db_url: str) -> None:
    answer = api.request("POST", "/companies/acme/contacts?dryRun=true", BODY)
    assert answer.status == 200, answer.body
    result = answer.json()
    assert result["dry_run"] is True and result["accepted"] == 1 and result["rejected"] == 3
    assert result["errors"][0]["record"] == 1
    assert query(db_url, "SELECT count(*) FROM ingestd.files") == [(0,)]
    assert query(db_url, "SELECT count(*) FROM ingestd.http_requests") == [(0,)]
    assert query(db_url, "SELECT count(*) FROM acme.contacts") == [(0,)]
    assert list(api.dirs.processing.iterdir()) == []
    assert list(api.dirs.done.iterdir()) == []
