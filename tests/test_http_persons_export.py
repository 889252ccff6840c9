"""POST /companies/{company}/persons (a Person Import over HTTP) and GET
/companies/{company}/contacts (the export that can be posted back)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from daemon_helpers import NOTE_FIELD, StartDaemon, query, run_cli, setup_company
from http_helpers import SAS_EXAMPLE, Api

PERSONS = (b"mdn,external_person_id,note\n"
           b"2295551234,crm-1,hello\n"
           b"12,crm-2,bad mdn\n")


@pytest.fixture
def api(start_daemon: StartDaemon, db_url: str, landing: Path, env: dict[str, str]) -> Api:
    setup_company(db_url, landing, "acme", NOTE_FIELD)
    made = run_cli(["token", "add", "acme"], env)
    daemon = start_daemon(INGESTD_HTTP_ADDRESS="127.0.0.1:0")
    port = int(daemon.wait_event("http.started")[0]["port"])
    from ingestd.landing import CompanyDirs
    return Api(daemon, port, made.stdout.strip(), CompanyDirs(landing / "acme"), env)


def test_persons_multipart_answer_is_the_drops_result(api: Api, db_url: str) -> None:
    answer = api.request("POST", "/companies/acme/persons", PERSONS,
                         accept="multipart/mixed, application/json")
    assert answer.status == 200, answer.body
    parts = answer.parts()
    assert [(cid, ctype) for cid, ctype, _ in parts] == [
        ("result.json", "application/json"), ("errors.csv", 'text/csv; charset="utf-8"'),
        ("retry.persons", 'text/plain; charset="utf-8"')]
    name = f"http-{answer.headers['ingestd-request-id']}.persons"
    done = api.dirs.done
    result = json.loads(parts[0][2])
    assert result == json.loads((done / f"{name}.result.json").read_text())
    assert result["source"] == "http" and result["accepted"] == 1 and result["rejected"] == 1
    assert parts[1][2] == (done / f"{name}.errors.csv").read_bytes()
    assert b"MobilePhoneErrors::InvalidMDNFormat" in parts[1][2]
    assert parts[2][2] == b""  # no transient carrier failures: no retry file
    assert query(db_url, "SELECT count(*) FROM acme.persons") == [(1,)]


def test_persons_json_answer_and_a_failed_file_is_400(api: Api) -> None:
    answer = api.request("POST", "/companies/acme/persons", PERSONS, accept="application/json")
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["rows"] == 2
    failed = api.request("POST", "/companies/acme/persons", b"Nickname\nAnn\n",
                         accept="application/json")
    assert failed.status == 400
    assert failed.json()["error"]["class"] == "PersonErrors::InvalidImportFileFormat"


def test_export_has_ids_and_posting_it_back_is_an_update_that_needs_the_precondition(
        api: Api, db_url: str) -> None:
    assert api.post_contacts(SAS_EXAMPLE.read_bytes()).status == 200
    exported = api.request("GET", "/companies/acme/contacts", accept="text/csv")
    assert exported.status == 200
    assert exported.headers["content-type"].startswith("text/csv")
    header, *rows = list(csv.reader(io.StringIO(exported.body.decode())))
    assert header[0] == "id"
    [[contact_id]] = query(db_url, "SELECT id::text FROM acme.contacts")
    assert [r[0] for r in rows] == [contact_id]
    assert rows[0][1:] == next(r for r in csv.reader(io.StringIO(
        SAS_EXAMPLE.read_text())) if r[1].startswith("VIP."))
    # Posted back as it is: the id is ignored and the known code is an update.
    assert api.post_contacts(exported.body).status == 428
    answer = api.post_contacts(exported.body, headers={
        "If-Unmodified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"})
    assert answer.status == 200, answer.body
    accepted = list(csv.reader(io.StringIO(answer.parts()[0][2].decode())))
    assert [(r[0], r[1]) for r in accepted] == [("1", contact_id)]
    assert query(db_url, "SELECT count(*) FROM acme.contacts") == [(1,)]
    # modifiedSince: only what changed after it.
    later = api.request("GET", "/companies/acme/contacts?modifiedSince=2100-01-01T00:00:00Z")
    assert later.body.decode().splitlines() == [",".join(header)]
    assert api.request("GET", "/companies/acme/contacts?modifiedSince=yesterday").status == 400
