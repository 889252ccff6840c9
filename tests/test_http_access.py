"""Who may call the HTTP intake: bearer tokens per company (made by `ingestd token`),
401 without a valid one, 404 for another company's path (whether it exists or not),
403 without the route's scope; and one company's token never reaches another's data."""

from __future__ import annotations

from pathlib import Path

import pytest
from daemon_helpers import StartDaemon, query, run_cli, setup_company
from http_helpers import SAS_EXAMPLE, Api, start_api


@pytest.fixture
def api(start_daemon: StartDaemon, db_url: str, landing: Path, env: dict[str, str]) -> Api:
    return start_api(start_daemon, db_url, landing, env)


def test_no_token_or_a_bad_one_is_401(api: Api) -> None:
    for token in (None, "igd_not-a-token"):
        answer = api.post_contacts(SAS_EXAMPLE.read_bytes(), token=token)
        assert answer.status == 401, answer.body
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert answer.json()["httpStatusCode"] == 401
    answer = api.request("GET", "/companies/acme/contacts", token=None)
    assert answer.status == 401


def test_a_revoked_token_is_401(api: Api) -> None:
    listed = run_cli(["token", "list", "acme"], api.env)
    [line] = listed.stdout.splitlines()
    token_id = line.split("\t")[0]
    assert api.token not in listed.stdout  # only ever shown once, when made
    assert run_cli(["token", "revoke", token_id], api.env).returncode == 0
    assert api.post_contacts(SAS_EXAMPLE.read_bytes()).status == 401
    assert "revoked" in run_cli(["token", "list"], api.env).stdout


def test_tokens_are_stored_hashed(api: Api, db_url: str) -> None:
    stored = query(db_url, "SELECT token_sha256 FROM ingestd.api_tokens")
    assert len(stored) == 1 and api.token not in stored[0][0]
    import hashlib
    assert stored[0][0] == hashlib.sha256(api.token.encode()).hexdigest()


def test_another_companys_path_is_404_whether_it_exists_or_not(
        api: Api, db_url: str, landing: Path) -> None:
    setup_company(db_url, landing, "beta")
    existing = api.request("POST", "/companies/beta/contacts", SAS_EXAMPLE.read_bytes())
    missing = api.request("POST", "/companies/nosuch/contacts", SAS_EXAMPLE.read_bytes())
    assert existing.status == missing.status == 404
    assert existing.body == missing.body  # nothing tells them apart
    assert api.request("GET", "/companies/acme/nothing-here").status == 404
    assert query(db_url, "SELECT count(*) FROM ingestd.files") == [(0,)]


def test_a_token_without_the_scope_is_403(api: Api) -> None:
    read_only = api.add_token("acme", "--scope", "read")
    answer = api.post_contacts(SAS_EXAMPLE.read_bytes(), token=read_only)
    assert answer.status == 403, answer.body
    assert "contacts scope" in answer.json()["message"]
    assert api.request("GET", "/companies/acme/contacts", token=read_only).status == 200
    contacts_only = api.add_token("acme", "--scope", "contacts")
    assert api.request("GET", "/companies/acme/contacts", token=contacts_only).status == 403


def test_token_add_refuses_an_unknown_scope_or_company(api: Api) -> None:
    bad = run_cli(["token", "add", "acme", "--scope", "contacts,admin"], api.env)
    assert bad.returncode == 2 and "--scope" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    unknown = run_cli(["token", "add", "nosuch"], api.env)
    assert unknown.returncode == 2 and "not set up" in unknown.stderr


def test_tenant_isolation(api: Api, db_url: str, landing: Path) -> None:
    """Each company's token reaches its own contacts, requests and folders only."""
    beta_dirs = setup_company(db_url, landing, "beta")
    beta_token = api.add_token("beta")
    answer = api.post_contacts(SAS_EXAMPLE.read_bytes())
    assert answer.status == 200
    request_id = answer.headers["ingestd-request-id"]
    # beta's token: acme's request, contacts and upload are not found
    assert api.request("GET", f"/companies/acme/requests/{request_id}",
                       token=beta_token).status == 404
    assert api.request("GET", f"/companies/beta/requests/{request_id}",
                       token=beta_token).status == 404
    assert api.request("GET", "/companies/acme/contacts", token=beta_token).status == 404
    assert api.request("POST", "/companies/acme/contacts", SAS_EXAMPLE.read_bytes(),
                       token=beta_token).status == 404
    # beta's own upload of the same content lands in beta alone (not a duplicate of acme's)
    mine = api.request("POST", "/companies/beta/contacts", SAS_EXAMPLE.read_bytes(),
                       token=beta_token)
    assert mine.status == 200 and "ingestd-duplicate-of" not in mine.headers
    assert query(db_url, "SELECT count(*) FROM acme.contacts") == [(1,)]
    assert query(db_url, "SELECT count(*) FROM beta.contacts") == [(1,)]
    assert [f.name for f in beta_dirs.done.iterdir() if f.name.endswith(".csv")
            and f.name.count(".") == 1]
    exported = api.request("GET", "/companies/beta/contacts", token=beta_token)
    [[beta_id]] = query(db_url, "SELECT id::text FROM beta.contacts")
    [[acme_id]] = query(db_url, "SELECT id::text FROM acme.contacts")
    assert beta_id.encode() in exported.body and acme_id.encode() not in exported.body
