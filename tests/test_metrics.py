"""The metrics/health server, scraped over real HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingestd.metrics import Metrics, ServerHandle, parse_address, start_server


class Probe:
    """Mutable health state the test flips, like the daemon's own flags."""

    def __init__(self) -> None:
        self.checks = {"alive": True, "database": True, "observer": True}
        self.ready = True


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
def m() -> Metrics:
    return Metrics()


@pytest.fixture
def server(m: Metrics, probe: Probe) -> Iterator[ServerHandle]:
    handle = start_server("127.0.0.1:0", lambda: probe.checks, lambda: probe.ready, metrics=m)
    yield handle
    handle.stop()


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def scrape(server: ServerHandle) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    code, ctype, body = get(server.url + "/metrics")
    assert code == 200
    assert ctype.startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def val(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
        **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_port_zero_gets_a_real_port(server: ServerHandle) -> None:
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"


def test_counters_after_recording_files(server: ServerHandle, m: Metrics) -> None:
    m.record_file("acme", "persons", "done", accepted=7,
                  rejected_by_class={"PersonErrors::PersonNotFound": 2,
                                     "MobilePhoneErrors::InvalidMDNFormat": 1,
                                     "PersonErrors::InvalidPersonID": 0},
                  duration_s=0.3)
    m.record_file("acme", "persons", "done", accepted=3, duration_s=1.2)
    m.record_file("acme", "persons", "failed", duration_s=0.01)
    m.record_file("globex", "contacts", "duplicate")
    m.set_backlog("acme", 4)
    m.set_backlog("globex", 0)
    m.set_oldest_ready_age(12.5)
    m.record_carrier("ok")
    m.record_carrier("ok")
    m.record_carrier("error")
    m.record_carrier_retry()

    s = scrape(server)
    files = "ingestd_files_total"
    assert val(s, files, company="acme", format="persons", outcome="done") == 2
    assert val(s, files, company="acme", format="persons", outcome="failed") == 1
    assert val(s, files, company="globex", format="contacts", outcome="duplicate") == 1
    assert val(s, "ingestd_rows_accepted_total", company="acme") == 10
    rej = "ingestd_rows_rejected_total"
    assert val(s, rej, company="acme", error_class="PersonErrors::PersonNotFound") == 2
    assert val(s, rej, company="acme", error_class="MobilePhoneErrors::InvalidMDNFormat") == 1
    # A zero count creates no series: error classes that never happened stay out.
    assert val(s, rej, company="acme", error_class="PersonErrors::InvalidPersonID") is None
    assert val(s, "ingestd_backlog_files", company="acme") == 4
    assert val(s, "ingestd_backlog_files", company="globex") == 0
    assert val(s, "ingestd_oldest_ready_age_seconds") == 12.5
    assert val(s, "ingestd_carrier_lookups_total", outcome="ok") == 2
    assert val(s, "ingestd_carrier_lookups_total", outcome="error") == 1
    assert val(s, "ingestd_carrier_retries_total") == 1
    hist = "ingestd_apply_duration_seconds"
    assert val(s, hist + "_count", company="acme", format="persons") == 3
    assert val(s, hist + "_sum", company="acme", format="persons") == pytest.approx(1.51)
    assert val(s, hist + "_bucket", company="acme", format="persons", le="0.5") == 2
    # The duplicate passed no duration: no histogram series for it.
    assert val(s, hist + "_count", company="globex", format="contacts") is None
    # Process metrics come along (RSS matters for the constant-memory promise).
    assert any(name == "process_resident_memory_bytes" for name, _ in s)

    m.set_oldest_ready_age(None)
    assert val(scrape(server), "ingestd_oldest_ready_age_seconds") == 0


def test_separate_instances_do_not_collide(m: Metrics) -> None:
    other = Metrics()
    other.record_file("acme", "persons", "done", accepted=1)
    labels = {"company": "acme", "format": "persons", "outcome": "done"}
    assert other.registry.get_sample_value("ingestd_files_total", labels) == 1
    assert m.registry.get_sample_value("ingestd_files_total", labels) is None


def test_healthz(server: ServerHandle, probe: Probe) -> None:
    code, ctype, body = get(server.url + "/healthz")
    assert (code, ctype) == (200, "application/json")
    assert json.loads(body) == {"status": "ok", "checks": probe.checks}

    probe.checks["database"] = False
    code, _, body = get(server.url + "/healthz")
    assert code == 503
    assert json.loads(body) == {
        "status": "unhealthy",
        "checks": {"alive": True, "database": False, "observer": True},
    }

    probe.checks["database"] = True  # the database came back
    assert get(server.url + "/healthz")[0] == 200


def test_healthz_check_that_raises_is_unhealthy(m: Metrics) -> None:
    def broken() -> dict[str, bool]:
        raise RuntimeError("boom")

    handle = start_server("127.0.0.1:0", broken, lambda: True, metrics=m)
    try:
        code, _, body = get(handle.url + "/healthz")
        assert code == 503
        assert json.loads(body)["status"] == "unhealthy"
    finally:
        handle.stop()


def test_readyz(server: ServerHandle, probe: Probe) -> None:
    code, _, body = get(server.url + "/readyz")
    assert (code, json.loads(body)) == (200, {"ready": True})
    probe.ready = False
    code, _, body = get(server.url + "/readyz")
    assert (code, json.loads(body)) == (503, {"ready": False})


def test_unknown_path_is_404(server: ServerHandle) -> None:
    assert get(server.url + "/nope")[0] == 404


def test_head_request(server: ServerHandle) -> None:
    req = urllib.request.Request(server.url + "/healthz", method="HEAD")
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200
        assert resp.read() == b""


def test_stop_releases_port(m: Metrics, probe: Probe) -> None:
    handle = start_server("127.0.0.1:0", lambda: probe.checks, lambda: probe.ready, metrics=m)
    port = handle.port
    handle.stop()
    handle.stop()  # idempotent
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    again = start_server(f"127.0.0.1:{port}", lambda: probe.checks, lambda: True, metrics=m)
    try:
        assert again.port == port
    finally:
        again.stop()


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:9108", ("127.0.0.1", 9108)),
        (":9108", ("0.0.0.0", 9108)),
        ("[::1]:0", ("::1", 0)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["9108", "host:port", "h:70000"])
def test_parse_address_rejects(address: str) -> None:
    with pytest.raises(ValueError, match="metrics address"):
        parse_address(address)


def test_ipv6_loopback(m: Metrics, probe: Probe) -> None:
    try:
        handle = start_server("[::1]:0", lambda: probe.checks, lambda: True, metrics=m)
    except OSError as exc:  # a host or container without IPv6
        pytest.skip(f"no IPv6 loopback: {exc}")
    try:
        assert get(handle.url + "/readyz")[0] == 200
    finally:
        handle.stop()
