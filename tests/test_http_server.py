"""The HTTP server in the daemon: its settings, its log line and metrics (and no token in
any log line), /openapi.json as kept in docs/, and SIGTERM draining a request in hand."""

from __future__ import annotations

import os
import signal
import socket
import urllib.request
from pathlib import Path

import pytest
from daemon_helpers import StartDaemon, run_cli
from http_helpers import SAS_EXAMPLE, Api, start_api
from test_http_requests import BODY, finish_partial, start_partial

from ingestd.http.openapi import document_bytes

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("key", "value"), [
    ("http_address", "nowhere"), ("http_body_limit", "10"), ("http_body_timeout", "0"),
    ("http_header_timeout", "-1"), ("http_max_concurrency", "0")])
def test_an_invalid_http_setting_is_one_line_and_exit_2(
        tmp_path: Path, key: str, value: str) -> None:
    (tmp_path / "landing").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
    env.update(INGESTD_LANDING_ROOT=str(tmp_path / "landing"),
               INGESTD_STATE_DIR=str(tmp_path / "state"), **{f"INGESTD_{key.upper()}": value})
    r = run_cli(["run"], env)
    assert r.returncode == 2, r.stdout + r.stderr
    [line] = r.stderr.splitlines()
    assert key in line
    assert not (tmp_path / "state").exists()  # nothing started


def test_http_address_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "landing").mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
        env.update(INGESTD_LANDING_ROOT=str(tmp_path / "landing"),
                   INGESTD_STATE_DIR=str(tmp_path / "state"),
                   INGESTD_HTTP_ADDRESS=f"127.0.0.1:{port}")
        r = run_cli(["run"], env)
    assert r.returncode == 2
    [line] = r.stderr.splitlines()
    assert line.startswith(f"ingestd: http_address 127.0.0.1:{port} cannot be bound")


def test_log_line_metrics_and_no_token_in_any_log(
        start_daemon: StartDaemon, db_url: str, landing: Path, env: dict[str, str]) -> None:
    metrics_port = free_port()
    api = start_api(start_daemon, db_url, landing, env,
                    INGESTD_METRICS_ADDRESS=f"127.0.0.1:{metrics_port}")
    answer = api.post_contacts(BODY)
    assert answer.status == 200
    assert api.post_contacts(BODY, token="igd_wrong").status == 401
    [line] = api.daemon.wait_event("http.request", status=200)
    assert line["company"] == "acme"
    assert line["request_id"] == answer.headers["ingestd-request-id"]
    assert line["route"] == "/companies/{company}/contacts"
    assert line["bytes_in"] == len(BODY) and line["bytes_out"] == len(answer.body)
    api.daemon.wait_event("http.request", status=401)
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                     timeout=10).read().decode()
    assert ('ingestd_http_requests_total{route="/companies/{company}/contacts",status="200"}'
            ' 1.0') in scraped
    assert ('ingestd_http_requests_total{route="/companies/{company}/contacts",status="401"}'
            ' 1.0') in scraped
    assert ('ingestd_http_request_duration_seconds_count{route='
            '"/companies/{company}/contacts"} 2.0') in scraped
    api.daemon.stop(signal.SIGTERM)
    logged = "\n".join(api.daemon.lines)
    assert api.daemon.stderr_path is not None
    logged += api.daemon.stderr_path.read_text()
    assert api.token not in logged and "igd_wrong" not in logged
    assert "Bearer" not in logged


def test_openapi_is_served_and_kept_in_docs(api_for_openapi: Api) -> None:
    kept = (ROOT / "docs" / "openapi.json").read_bytes()
    assert document_bytes() == kept, "docs/openapi.json is stale: regenerate it"
    served = api_for_openapi.request("GET", "/openapi.json", token=None)
    assert served.status == 200 and served.body == kept


@pytest.fixture
def api_for_openapi(start_daemon: StartDaemon, db_url: str, landing: Path,
                    env: dict[str, str]) -> Api:
    return start_api(start_daemon, db_url, landing, env)


def test_sigterm_drains_a_request_in_hand(api_for_openapi: Api) -> None:
    api = api_for_openapi
    sock = start_partial(api, "drain-1")
    assert api.daemon.proc is not None
    api.daemon.proc.send_signal(signal.SIGTERM)
    api.daemon.wait_event("daemon.stopping")
    answer = finish_partial(sock)  # the rest of the body after SIGTERM
    assert answer.status == 200, answer.body
    assert answer.parts()[0][2].startswith(b"4,")
    assert api.daemon.wait_exit() == 0
    assert api.daemon.find("http.stopped", drained=True)
    assert SAS_EXAMPLE.exists()
