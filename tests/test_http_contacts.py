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
