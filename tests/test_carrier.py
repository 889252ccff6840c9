"""Carrier lookup: the offline adapter on phonenumbers' metadata, the HTTP adapter against a
real local HTTP server (retries, permanent answers, refused connections, time-outs, the
shared concurrency bound, the circuit breaker).

Backoffs are milliseconds so the suite is fast. Nothing here depends on how long things take:
the slow server blocks until the test ends, and concurrency is observed with a barrier.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Iterator, MutableMapping, Sequence
from typing import Any

import pytest
import structlog
from carrier_server import HANG, CarrierServer, serving
from structlog.testing import capture_logs

from ingestd.errors import PERMANENT_LOOKUP_FAILURE, TRANSIENT_LOOKUP_FAILURE
from ingestd.persons.carrier import (
    PERMANENT,
    PERMANENT_MESSAGE,
    TRANSIENT,
    TRANSIENT_MESSAGE,
    CarrierLookup,
    CarrierResult,
    HttpCarrierLookup,
    OfflineCarrierLookup,
    make_carrier,
)
from ingestd.settings import Settings

US = "+12295551234"
UK_MOBILE = "+447400123456"
UK_FIXED = "+442071234567"

@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[CarrierServer]:
    with serving(monkeypatch) as srv:
        yield srv


class Events:
    """An on_event hook that records what it is told."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, event: str, outcome: str) -> None:
        with self._lock:
            self.seen.append((event, outcome))

    def of(self, event: str) -> Counter[str]:
        return Counter(outcome for name, outcome in self.seen if name == event)


def http(url: str, **kw: Any) -> HttpCarrierLookup:
    params: dict[str, Any] = dict(timeout=10.0, concurrency=4, max_attempts=5,
                                  backoff_initial=0.001, backoff_max=0.005, max_wait=60.0)
    params.update(kw)
    return HttpCarrierLookup(url, **params)


def retries(logs: Sequence[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == "carrier.retry"]


FOUND = CarrierResult(carrier="TestTel", error=None)


# -- offline ------------------------------------------------------------------------------


def test_offline_accepts_mobiles_and_rejects_fixed_lines() -> None:
    events = Events()
    lookup = OfflineCarrierLookup("US", on_event=events)
    got = lookup.lookup_many([US, UK_MOBILE, UK_FIXED, US])
    assert list(got) == [US, UK_MOBILE, UK_FIXED]
    # US numbers are FIXED_LINE_OR_MOBILE and have no carrier name in the metadata.
    assert got[US] == CarrierResult(carrier=None, error=None)
    assert got[UK_MOBILE] == CarrierResult(carrier="Three", error=None)
    assert got[UK_FIXED] == CarrierResult(carrier=None, error=PERMANENT)
    error = got[UK_FIXED].error
    assert error is not None
    assert error.error_class == PERMANENT_LOOKUP_FAILURE
    assert error.message == PERMANENT_MESSAGE
    assert events.of("lookup") == Counter(found=2, permanent=1)


def test_offline_rejects_invalid_and_unparsable_numbers() -> None:
    got = OfflineCarrierLookup().lookup_many(["+1229555123", "not a number"])
    assert {r.error for r in got.values()} == {PERMANENT}


# -- HTTP: answers and retries --------------------------------------------------------------


def test_503_twice_then_found_after_logged_retries(server: CarrierServer) -> None:
    server.script[US] = [503, 503, 200]
    events = Events()
    with capture_logs() as logs:
        got = http(server.url, on_event=events).lookup_many([US])
    assert got == {US: FOUND}
    assert server.calls[US] == 3
    logged = retries(logs)
    assert [e["attempt"] for e in logged] == [1, 2]
    for e in logged:
        assert e["log_level"] == "warning"
        assert e["mdn"] == US
        assert e["reason"] == "HTTP 503"
        assert 0 <= e["wait"] <= 0.005
    assert events.of("retry") == Counter(http_5xx=2)
    assert events.of("lookup") == Counter(found=1)


def test_always_503_is_transient_after_max_attempts(server: CarrierServer) -> None:
    server.script[US] = [503]
    events = Events()
    with capture_logs() as logs:
        got = http(server.url, max_attempts=3, on_event=events).lookup_many([US])
    assert got == {US: CarrierResult(carrier=None, error=TRANSIENT)}
    error = got[US].error
    assert error is not None
    assert error.error_class == TRANSIENT_LOOKUP_FAILURE
    assert error.message == TRANSIENT_MESSAGE
    assert server.calls[US] == 3
    assert [e["attempt"] for e in retries(logs)] == [1, 2]
    assert any(e["event"] == "carrier.lookup_failed" and e["attempts"] == 3 for e in logs)
    assert events.of("lookup") == Counter(transient=1)
    assert events.of("circuit") == Counter(open=1)


@pytest.mark.parametrize("status", [404, 422])
def test_404_and_422_are_permanent_with_a_single_call(server: CarrierServer,
                                                      status: int) -> None:
    server.script[US] = [status]
    with capture_logs() as logs:
        got = http(server.url).lookup_many([US])
    assert got == {US: CarrierResult(carrier=None, error=PERMANENT)}
    assert server.calls[US] == 1
    assert retries(logs) == []


@pytest.mark.parametrize(("status", "kind"), [(429, "http_429"), (408, "http_408"),
                                              (500, "http_5xx")])
def test_429_408_and_5xx_are_retried(server: CarrierServer, status: int, kind: str) -> None:
    server.script[US] = [status, 200]
    events = Events()
    assert http(server.url, on_event=events).lookup_many([US]) == {US: FOUND}
    assert server.calls[US] == 2
    assert events.of("retry") == Counter({kind: 1})


def test_unexpected_status_is_transient_without_retry(server: CarrierServer) -> None:
    server.script[US] = [401]
    events = Events()
    got = http(server.url, on_event=events).lookup_many([US])
    assert got == {US: CarrierResult(carrier=None, error=TRANSIENT)}
    assert server.calls[US] == 1
    assert events.of("circuit") == Counter()  # not an outage: the breaker stays closed


def test_malformed_2xx_is_retried_and_empty_carrier_is_none(server: CarrierServer) -> None:
    server.script[US] = [b"<html>proxy error</html>", b'{"name": "x"}', b'{"carrier": ""}']
    server.script[UK_MOBILE] = [b'{"carrier": null}']
    events = Events()
    got = http(server.url, on_event=events).lookup_many([US, UK_MOBILE])
    assert got == {US: CarrierResult(carrier=None, error=None),
                   UK_MOBILE: CarrierResult(carrier=None, error=None)}
    assert server.calls[US] == 3
    assert events.of("retry") == Counter(bad_response=2)


def test_connection_refused_is_transient() -> None:
    # A bound socket that does not listen: the kernel refuses connections to its port.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/lookup"
        events = Events()
        with capture_logs() as logs:
            got = http(url, max_attempts=3, on_event=events).lookup_many([US])
    assert got == {US: CarrierResult(carrier=None, error=TRANSIENT)}
    assert [e["attempt"] for e in retries(logs)] == [1, 2]
    assert "refused" in retries(logs)[0]["reason"].lower()
    assert events.of("retry") == Counter(connection=2)


def test_server_slower_than_the_timeout_is_transient(server: CarrierServer) -> None:
    server.script[US] = [HANG]  # never answers while the test runs
    events = Events()
    got = http(server.url, timeout=0.05, max_attempts=2, on_event=events).lookup_many([US])
    assert got == {US: CarrierResult(carrier=None, error=TRANSIENT)}
    assert server.wait_for_calls(US, 2) == 2
    assert events.of("retry") == Counter(timeout=1)


def test_lookups_one_after_another_share_one_kept_alive_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A pooled client: a file's numbers do not each pay a new connection (over https, a
    new TLS handshake too)."""
    numbers = ["+12295550001", "+12295550002", "+12295550003"]
    with serving(monkeypatch, keep_alive=True) as server:
        lookup = http(server.url)
        try:
            for n in numbers:
                assert lookup.lookup_many([n]) == {n: FOUND}
        finally:
            lookup.close()
    assert len(server.peers) == 3
    assert len(set(server.peers)) == 1, server.peers


def test_numbers_are_deduplicated_and_url_encoded(server: CarrierServer) -> None:
    lookup = http(server.url + "?key=secret")
    got = lookup.lookup_many([US, UK_MOBILE, US, UK_MOBILE, US])
    assert got == {US: FOUND, UK_MOBILE: FOUND}
    assert server.calls == Counter({US: 1, UK_MOBILE: 1})  # a raw "+" would read as a space
    assert all(q["key"] == ["secret"] for q in server.queries)
    assert lookup.lookup_many([]) == {}


# -- HTTP: concurrency and outages ----------------------------------------------------------


def test_concurrency_bound_is_shared_by_all_callers(server: CarrierServer) -> None:
    # Requests are let through in groups of exactly 3; two callers each with a pool of 3
    # threads would put 6 on the wire without the shared bound.
    server.barrier = threading.Barrier(3)
    lookup = http(server.url, concurrency=3)
    batches = [[f"+1229555{n:04d}" for n in range(k, k + 6)] for k in (1000, 2000)]
    results: list[dict[str, CarrierResult]] = []
    errors: list[BaseException] = []

    def call(numbers: list[str]) -> None:
        try:
            results.append(lookup.lookup_many(numbers))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(r for got in results for r in got) == sorted(n for b in batches for n in b)
    assert all(r == FOUND for got in results for r in got.values())
    assert sum(server.calls.values()) == 12  # no barrier time-out, hence no retry
    assert server.max_in_flight == 3


def test_outage_opens_the_breaker_and_later_numbers_fail_fast(server: CarrierServer) -> None:
    numbers = ["+12295550001", "+12295550002", "+12295550003"]
    for n in numbers:
        server.script[n] = [503]
    events = Events()
    # One thread per call, so the numbers go in order and the first one runs out first.
    lookup = http(server.url, concurrency=1, max_attempts=2, on_event=events)
    with capture_logs() as logs:
        got = lookup.lookup_many(numbers)
    assert all(r.error == TRANSIENT for r in got.values())
    assert server.calls == Counter({numbers[0]: 2})  # the others were never sent
    assert events.of("lookup") == Counter(transient=1, circuit_open=2)
    assert [e["event"] for e in logs].count("carrier.circuit_open") == 1
    # Another caller (another company) during the cool-down: answered at once, not sent.
    assert lookup.lookup_many([UK_MOBILE]) == {UK_MOBILE: CarrierResult(None, TRANSIENT)}
    assert server.calls[UK_MOBILE] == 0


def test_no_breaker_with_zero_cooldown(server: CarrierServer) -> None:
    numbers = ["+12295550001", "+12295550002"]
    for n in numbers:
        server.script[n] = [503]
    lookup = http(server.url, concurrency=1, max_attempts=2, circuit_cooldown=0)
    got = lookup.lookup_many(numbers)
    assert all(r.error == TRANSIENT for r in got.values())
    assert server.calls == Counter({n: 2 for n in numbers})
    assert lookup.lookup_many([US]) == {US: FOUND}


def test_a_failing_event_hook_does_not_fail_the_lookup(server: CarrierServer) -> None:
    def broken(event: str, outcome: str) -> None:
        raise RuntimeError("metrics are down")

    with capture_logs() as logs:
        assert http(server.url, on_event=broken).lookup_many([US]) == {US: FOUND}
    assert any(e["event"] == "carrier.event_hook_failed" for e in logs)


def test_retry_logs_keep_the_callers_context(server: CarrierServer) -> None:
    server.script[US] = [503, 200]
    server.script[UK_MOBILE] = [503, 200]
    structlog.contextvars.bind_contextvars(company="acme")
    try:
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            http(server.url).lookup_many([US, UK_MOBILE])  # two numbers: pool threads
    finally:
        structlog.contextvars.unbind_contextvars("company")
    assert [e.get("company") for e in retries(logs)] == ["acme", "acme"]


# -- selection ------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INGESTD_CONFIG", raising=False)
    for key in list(Settings.model_fields):
        monkeypatch.delenv(f"INGESTD_{key.upper()}", raising=False)


@pytest.mark.usefixtures("clean_env")
def test_make_carrier_picks_the_adapter() -> None:
    # model_validate: mypy has no pydantic plugin here, so keyword construction trips it.
    offline: CarrierLookup = make_carrier(Settings.model_validate({"default_region": "GB"}))
    assert isinstance(offline, OfflineCarrierLookup)
    assert offline.region == "GB"
    online = make_carrier(Settings.model_validate({
        "carrier_mode": "http", "carrier_url": "http://svc/lookup", "carrier_timeout": 1.5,
        "carrier_concurrency": 2, "carrier_max_attempts": 7, "carrier_backoff_initial": 0.1,
        "carrier_backoff_max": 2.0, "carrier_max_wait": 9.0}))
    assert isinstance(online, HttpCarrierLookup)
    assert (online.url, online.timeout, online.concurrency, online.max_attempts,
            online.backoff_initial, online.backoff_max, online.max_wait,
            online.circuit_cooldown) == ("http://svc/lookup", 1.5, 2, 7, 0.1, 2.0, 9.0, 9.0)


@pytest.mark.usefixtures("clean_env")
def test_make_carrier_http_needs_a_url() -> None:
    with pytest.raises(ValueError, match="carrier_url"):
        make_carrier(Settings.model_validate({"carrier_mode": "http"}))

