"""POST /companies/{company}/contacts against the real daemon: the SAS contacts API's
answer, made of the same lines as a drop's sidecars, and its error statuses."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from daemon_helpers import StartDaemon, drop, query, wait_for
from http_helpers import ACCEPT_BOTH, SAS_EXAMPLE, Api, parse_multipart, start_api

CSV_PART = 'text/csv; charset="utf-8"'


@pytest.fixture
def api(start_daemon: StartDaemon, db_url: str, landing: Path, env: dict[str, str]) -> Api:
    return start_api(start_daemon, db_url, landing, env)


def curl_post(api: Api, body: Path, tmp_path: Path, *headers: str) -> tuple[int, str, bytes]:
    """Debian's curl posts the file; status, Content-Type and body come back."""
    out, head = tmp_path / "answer.bin", tmp_path / "headers.txt"
    args = ["curl", "--silent", "--show-error", "--request", "POST",
            "--data-binary", f"@{body}", "--header", "Content-Type: text/csv",
            "--header", f"Authorization: Bearer {api.token}",
            "--header", f"Accept: {ACCEPT_BOTH}", "--dump-header", str(head),
            "--output", str(out), "--write-out", "%{http_code}"]
    for h in headers:
        args += ["--header", h]
    done = subprocess.run([*args, f"http://127.0.0.1:{api.port}/companies/"
                           f"{api.dirs.company}/contacts"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"curl: {done.stderr}\n{api.daemon.tail()}"
    content_type = next(line.split(":", 1)[1].strip()
                        for line in head.read_text().splitlines()
                        if line.lower().startswith("content-type:"))
    return int(done.stdout), content_type, out.read_bytes()


def sidecar(directory: Path, name: str, suffix: str) -> bytes:
    path = directory / f"{name}{suffix}"
    return path.read_bytes() if path.exists() else b""  # no file: nothing to say


def test_curl_posts_the_sas_example_and_gets_the_drops_sidecars(
        api: Api, tmp_path: Path, db_url: str) -> None:
    # The same content as a drop, in a second company (a duplicate in one company
    # would not be applied again).
    twin = start_dirs = None
    from daemon_helpers import setup_company
    twin = setup_company(db_url, api.dirs.root.parent, "twin")
    start_dirs = twin
    drop(start_dirs, "sas.csv", SAS_EXAMPLE.read_bytes())
    wait_for(lambda: (twin.done / "sas.csv").exists(), what="the drop in done/",
             context=api.daemon.tail)

    status, content_type, body = curl_post(api, SAS_EXAMPLE, tmp_path)

    assert status == 200, body
    assert content_type.startswith("multipart/mixed; boundary=")
    parts = parse_multipart(content_type, body)
    assert [(cid, ctype) for cid, ctype, _ in parts] == [
        ("Accepted-CSV", CSV_PART), ("Rejected-CSV", CSV_PART), ("Global-Issue", CSV_PART)]
    accepted, rejected, global_issue = (payload for _, _, payload in parts)
    assert accepted.startswith(b"4,")  # the public example: record 4 accepted
    assert rejected.startswith(b"1,")  # and record 1's section rejected
    assert b"objectVariables column is not proper" in rejected
    assert global_issue == b""
    # Byte for byte what a drop of the same content gets, but for the contact id.
    done = api.dirs.done
    [request_id] = [r[0] for r in query(db_url, "SELECT id FROM ingestd.http_requests")]
    name = f"http-{request_id}.csv"
    assert (done / name).read_bytes() == SAS_EXAMPLE.read_bytes()
    assert accepted == sidecar(done, name, ".accepted.csv")
    assert rejected == sidecar(done, name, ".rejected.csv")
    assert global_issue == sidecar(done, name, ".global.csv")
    twin_accepted = sidecar(twin.done, "sas.csv", ".accepted.csv")
    [[our_id]] = query(db_url, "SELECT id::text FROM acme.contacts")
    [[twin_id]] = query(db_url, "SELECT id::text FROM twin.contacts")
    assert accepted == twin_accepted.replace(twin_id.encode(), our_id.encode())
    assert rejected == sidecar(twin.done, "sas.csv", ".rejected.csv")
    result = __import__("json").loads((done / f"{name}.result.json").read_text())
    assert result["source"] == "http" and result["request_id"] == request_id


# --- statuses ----------------------------------------------------------------------------

VIP = b"VIP.9ea6417c-25d5-4dd7-9377-69881d6563ef"


def vip_update(response_value: str) -> bytes:
    """The example's accepted contact again, with a new responseValue: an update."""
    header, *rows = SAS_EXAMPLE.read_bytes().split(b"\n")
    [vip] = [r for r in rows if VIP in r]
    cells = vip.split(b",")
    cells[-3] = response_value.encode()  # responseValue, responseType, responseChannel
    return header + b"\n" + b",".join(cells) + b"\n"


def stored_response_value(db_url: str) -> object:
    return query(db_url, "SELECT t.response_value FROM acme.contacts c JOIN"
                         " acme.contact_treatments t ON t.contact_id = c.id")[0][0]


def test_update_without_if_unmodified_since_is_428_and_applies_nothing(
        api: Api, db_url: str) -> None:
    assert api.post_contacts(SAS_EXAMPLE.read_bytes()).status == 200
    answer = api.post_contacts(vip_update("bought"))
    assert answer.status == 428, answer.body
    assert answer.headers["content-type"] == "application/vnd.sas.error+json"
    error = answer.json()
    assert set(error) == {"errorCode", "message", "details", "httpStatusCode", "version"}
    assert error["httpStatusCode"] == 428
    assert error["message"].startswith("Precondition Required")
    assert stored_response_value(db_url) is None  # nothing of the request applied


def test_update_of_a_contact_modified_after_if_unmodified_since_is_412(
        api: Api, db_url: str) -> None:
    assert api.post_contacts(SAS_EXAMPLE.read_bytes()).status == 200
    answer = api.post_contacts(vip_update("bought"), headers={
        "If-Unmodified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"})
    assert answer.status == 412, answer.body
    assert answer.json()["message"].startswith("Precondition Failed")
    assert stored_response_value(db_url) is None
    # With a time after the contact's last change, the update goes in.
    answer = api.post_contacts(vip_update("bought"), headers={
        "If-Unmodified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"})
    assert answer.status == 200, answer.body
    accepted = answer.parts()[0][2]
    assert accepted.startswith(b"1,") and VIP in accepted
    assert stored_response_value(db_url) == "bought"


def test_an_error_for_a_client_that_accepts_only_multipart_is_406(api: Api) -> None:
    assert api.post_contacts(SAS_EXAMPLE.read_bytes()).status == 200
    answer = api.post_contacts(vip_update("bought"), accept="multipart/mixed")
    assert answer.status == 406, answer.body
    assert "428 Precondition Required" in answer.json()["details"][0]
    # And a client that does not accept the multipart answer at all.
    answer = api.post_contacts(SAS_EXAMPLE.read_bytes(),
                               accept="application/vnd.sas.error+json")
    assert answer.status == 406, answer.body


@pytest.mark.parametrize("body", [b"", b"hello world\n", b"\xff\xfe\x00bad\n"])
def test_a_body_that_is_not_csv_with_a_header_row_is_400(
        api: Api, db_url: str, body: bytes) -> None:
    answer = api.post_contacts(body)
    assert answer.status == 400, answer.body
    assert answer.json()["httpStatusCode"] == 400
    assert query(db_url, "SELECT count(*) FROM ingestd.files") == [(0,)]
    assert not any(api.dirs.processing.iterdir())  # the spooled body is gone


def test_over_the_body_limit_is_413_declared_or_streamed(
        start_daemon: StartDaemon, db_url: str, landing: Path, env: dict[str, str]) -> None:
    api = start_api(start_daemon, db_url, landing, env, INGESTD_HTTP_BODY_LIMIT="2048")
    big = SAS_EXAMPLE.read_bytes() * 2
    assert len(big) > 2048
    assert api.post_contacts(big).status == 413  # Content-Length says so
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=60)
    conn.request("POST", "/companies/acme/contacts",
                 body=iter([big[:1500], big[1500:]]), encode_chunked=True,
                 headers={"Authorization": f"Bearer {api.token}", "Accept": ACCEPT_BOTH})
    response = conn.getresponse()
    assert response.status == 413  # counted as it arrives
    assert query(db_url, "SELECT count(*) FROM ingestd.files") == [(0,)]
    assert not any(api.dirs.processing.iterdir())


def test_an_error_that_prevents_any_csv_processing_is_the_global_issue_part(
        api: Api, db_url: str) -> None:
    """The header is fine, a later line is not UTF-8: nothing of the CSV is applied, and
    the answer's Global-Issue part says why, as the drop's global.csv does."""
    body = SAS_EXAMPLE.read_bytes() + b"2018-05-13T15:02:40.719Z,bad\xff\n"
    answer = api.post_contacts(body)
    assert answer.status == 200, answer.body
    accepted, rejected, global_issue = (payload for _, _, payload in answer.parts())
    assert accepted == rejected == b""
    assert global_issue.startswith(b"*,The file is not UTF-8 text")
    name = f"http-{answer.headers['ingestd-request-id']}.csv"
    assert global_issue == (api.dirs.failed / f"{name}.global.csv").read_bytes()
    assert query(db_url, "SELECT count(*) FROM acme.contacts") == [(0,)]
