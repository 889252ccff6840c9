"""Settings and commands (issue 10, items 4-6), through the real ``ingestd`` in a subprocess.

An invalid setting is one line on stderr naming it, exit 2, and nothing started: the
environment names no database, so anything that got as far as the database would create
an embedded PostgreSQL under the state directory; the tests check it does not exist.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from carrier_server import HANG, CarrierServer, serving
from daemon_helpers import (
    ROOT,
    Daemon,
    base_env,
    drop,
    is_finished,
    ledger,
    listing,
    run_cli,
    scalar,
    setup_company,
    wait_for,
)

from ingestd.settings import OTHER_ENV, SettingsError, load_settings, parse_host_port

TIMEOUT = 60.0


@pytest.fixture
def bare_env(tmp_path: Path) -> dict[str, str]:
    """No database URL: getting as far as the database would create tmp/state/postgres."""
    (tmp_path / "landing").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
    env.update(INGESTD_LANDING_ROOT=str(tmp_path / "landing"),
               INGESTD_STATE_DIR=str(tmp_path / "state"), INGESTD_LOG_FORMAT="json")
    return env


def refused(r: subprocess.CompletedProcess[str], state: Path) -> str:
    """Exit 2, exactly one line on stderr (returned), no traceback, nothing started."""
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert r.stdout == ""
    assert not state.exists(), "something started: the state directory was created"
    return lines[0]


# -- item 4: settings ------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "value"), [
    ("partial_grace_seconds", "-1"), ("partial_grace_seconds", "a minute"),
    ("mdn_cache_entries", "-5"), ("malloc_arena_max", "two")])
def test_new_memory_and_upload_settings_are_validated(
        bare_env: dict[str, str], tmp_path: Path, key: str, value: str) -> None:
    """Issue 16: each new setting, bad in the environment or in the TOML file: one line
    naming it, exit 2, before anything starts."""
    r = run_cli(["run"], {**bare_env, f"INGESTD_{key.upper()}": value}, timeout=TIMEOUT)
    line = refused(r, tmp_path / "state")
    assert line.startswith(f"ingestd: invalid setting {key}"), line
    config = tmp_path / "ingestd.toml"
    config.write_text(f"{key} = {value if value.lstrip('-').isdigit() else repr(value)}\n")
    r = run_cli(["run"], {**bare_env, "INGESTD_CONFIG": str(config)}, timeout=TIMEOUT)
    line = refused(r, tmp_path / "state")
    assert line.startswith(f"ingestd: invalid setting {key}") and str(config) in line, line


def test_new_settings_have_their_documented_defaults() -> None:
    s = load_settings()
    assert (s.partial_grace_seconds, s.mdn_cache_entries, s.malloc_arena_max) == (
        60.0, 10_000, 2)


@pytest.mark.parametrize("address", ["bad", "127.0.0.1:99999", "127.0.0.1:port", "::1:9108",
                                     "[not-v6]:9108", "a b:9108"])
def test_bad_metrics_address_is_refused_before_anything_starts(
        bare_env: dict[str, str], tmp_path: Path, address: str) -> None:
    r = run_cli(["run"], {**bare_env, "INGESTD_METRICS_ADDRESS": address}, timeout=TIMEOUT)
    line = refused(r, tmp_path / "state")
    assert line.startswith("ingestd: invalid setting metrics_address"), line
    assert "INGESTD_METRICS_ADDRESS" in line


def test_valid_metrics_addresses() -> None:
    assert parse_host_port("127.0.0.1:9108") == ("127.0.0.1", 9108)
    assert parse_host_port("[::1]:9108") == ("::1", 9108)
    assert parse_host_port(":9108") == ("0.0.0.0", 9108)
    assert parse_host_port("localhost:0") == ("localhost", 0)


def test_metrics_port_in_use_is_refused_before_anything_starts(
        bare_env: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        r = run_cli(["run"], {**bare_env, "INGESTD_METRICS_ADDRESS": address}, timeout=TIMEOUT)
    line = refused(r, tmp_path / "state")
    assert line.startswith(f"ingestd: metrics_address {address} cannot be bound"), line


@pytest.mark.parametrize("source", ["env", "toml"])
def test_http_carrier_without_url_is_refused(bare_env: dict[str, str], tmp_path: Path,
                                             source: str) -> None:
    if source == "env":
        env = {**bare_env, "INGESTD_CARRIER_MODE": "http"}
    else:
        config = tmp_path / "ingestd.toml"
        config.write_text('carrier_mode = "http"\n')
        env = {**bare_env, "INGESTD_CONFIG": str(config)}
    line = refused(run_cli(["run"], env, timeout=TIMEOUT), tmp_path / "state")
    assert "carrier_url" in line and "carrier_mode" in line, line


def test_carrier_url_must_be_http(bare_env: dict[str, str], tmp_path: Path) -> None:
    env = {**bare_env, "INGESTD_CARRIER_MODE": "http", "INGESTD_CARRIER_URL": "carrier:80"}
    line = refused(run_cli(["run"], env, timeout=TIMEOUT), tmp_path / "state")
    assert line.startswith("ingestd: invalid setting carrier_url"), line


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_run_refuses_a_landing_root_that_is_no_directory(
        bare_env: dict[str, str], tmp_path: Path, kind: str) -> None:
    root = tmp_path / "typo"
    if kind == "file":
        root.write_text("")
    env = {**bare_env, "INGESTD_LANDING_ROOT": str(root)}
    line = refused(run_cli(["run"], env, timeout=TIMEOUT), tmp_path / "state")
    what = "does not exist" if kind == "missing" else "is not a directory"
    assert line == (f"ingestd: landing_root {root} {what}; "
                    "create it or fix INGESTD_LANDING_ROOT"), line
    assert (kind == "file") == root.exists()  # not created


def test_toml_syntax_error_names_the_file_and_line(bare_env: dict[str, str],
                                                   tmp_path: Path) -> None:
    config = tmp_path / "ingestd.toml"
    config.write_text("workers = 2\nsettle_seconds = \n")
    line = refused(run_cli(["run"], {**bare_env, "INGESTD_CONFIG": str(config)},
                           timeout=TIMEOUT), tmp_path / "state")
    assert line.startswith(f"ingestd: invalid TOML in {config}: "), line
    assert "line 2" in line, line


def test_unknown_toml_key_says_did_you_mean(bare_env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "ingestd.toml"
    config.write_text("settle_second = 1\n")
    line = refused(run_cli(["company", "list"], {**bare_env, "INGESTD_CONFIG": str(config)},
                           timeout=TIMEOUT), tmp_path / "state")
    assert line == (f"ingestd: unknown setting settle_second in {config}; "
                    "did you mean settle_seconds?"), line


def test_unknown_environment_variable_is_a_warning(bare_env: dict[str, str],
                                                   tmp_path: Path) -> None:
    env = {**bare_env, "INGESTD_SETTLE_SECOND": "1", "INGESTD_FAILPOINT": "",
           "INGESTD_TEST_DATABASE_URL": "postgresql://unused"}
    # A usage error that needs no database: the warning comes first, then the error.
    r = run_cli(["ingest", str(tmp_path / "nothing.persons"), "--company", "acme"], env,
                timeout=TIMEOUT)
    assert r.returncode == 2, r.stderr
    warning, error = r.stderr.splitlines()
    assert warning == ("ingestd: warning: unknown environment variable INGESTD_SETTLE_SECOND "
                       "is ignored; did you mean INGESTD_SETTLE_SECONDS?"), warning
    assert error.endswith("nothing.persons: no such file"), error


def test_every_ingestd_variable_the_code_reads_is_known() -> None:
    """A variable read with os.environ but not a setting must be listed in OTHER_ENV,
    or every user of it would get a warning."""
    import re

    from ingestd.settings import Settings

    names = set()
    for path in [*ROOT.glob("ingestd/**/*.py"), *ROOT.glob("tests/*.py")]:
        names |= set(re.findall(r"environ(?:\.get)?[\[(]\"(INGESTD_[A-Z_]+)\"", path.read_text()))
    settings = {f"INGESTD_{n.upper()}" for n in Settings.model_fields}
    assert names - settings <= OTHER_ENV, names - settings - OTHER_ENV
    assert "INGESTD_FAILPOINT" in names  # the scan finds what it should


def test_default_region_must_be_known(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGESTD_DEFAULT_REGION", "XX")
    with pytest.raises(SettingsError, match=r"default_region.*unknown region 'XX'"):
        load_settings()
    monkeypatch.setenv("INGESTD_DEFAULT_REGION", "gb")
    assert load_settings().default_region == "GB"


# -- item 5: version, company add, ingest --company ------------------------------------------

def test_version(bare_env: dict[str, str], tmp_path: Path) -> None:
    r = run_cli(["--version"], bare_env, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"ingestd {importlib.metadata.version('ingestd')}\n"


def test_company_add_refuses_an_unknown_region(bare_env: dict[str, str],
                                               tmp_path: Path) -> None:
    r = run_cli(["company", "add", "acme", "--region", "XX"], bare_env, timeout=TIMEOUT)
    line = refused(r, tmp_path / "state")
    assert line.startswith("ingestd: --region: unknown region 'XX'"), line
    assert listing(tmp_path / "landing") == []


def test_ingest_for_an_unknown_company_creates_no_folder(db_url: str, landing: Path,
                                                         tmp_path: Path) -> None:
    env = base_env(db_url, landing, tmp_path / "state")
    path = tmp_path / "x.persons"
    path.write_text("mdn\n2295551234\n")
    r = run_cli(["ingest", str(path), "--company", "nosuch"], env, timeout=TIMEOUT)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.splitlines()[-1] == ("ingestd: company 'nosuch' is not set up "
                                         "(ingestd company add nosuch)"), r.stderr
    assert listing(landing) == []
    assert ledger(db_url) == []


# -- item 6: check and ingest output ---------------------------------------------------------

MIXED = "mdn,external_person_id\n2295551234,e1\nabc,e2\n"


def test_check_says_what_would_happen(db_url: str, landing: Path, tmp_path: Path) -> None:
    env = base_env(db_url, landing, tmp_path / "state")
    setup_company(db_url, landing, "acme")
    mixed = tmp_path / "mixed.persons"
    mixed.write_text(MIXED)
    r = run_cli(["check", str(mixed), "--company", "acme"], env, timeout=TIMEOUT)
    assert r.returncode == 1, r.stdout + r.stderr
    first, *rest = r.stdout.splitlines()
    assert first == "mixed.persons (persons): would be done: 2 rows, 1 accepted, 1 rejected"
    assert rest == ["  record 2: MobilePhoneErrors::InvalidMDNFormat: The mdn is incorrectly "
                    "formatted. It should be an E.164 mdn. (mdn: 'abc' is not E.164 "
                    "(+ and digits) or 10 digits)"], rest

    broken = tmp_path / "broken.persons"
    broken.write_bytes(b"mdn\n\xff\n")
    r = run_cli(["check", str(broken), "--company", "acme"], env, timeout=TIMEOUT)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.startswith("broken.persons: would fail: "
                               "FileEngine::EncodingDetection::Unknown8BitEncodingDetected: "), \
        r.stdout

    r = run_cli(["ingest", str(mixed), "--company", "acme"], env, timeout=TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli(["check", str(mixed), "--company", "acme"], env, timeout=TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == ("mixed.persons: would be a duplicate of mixed.persons (same content, "
                        "already applied): nothing would be applied\n"), r.stdout


def test_ingest_from_elsewhere_names_the_file_as_dropped(db_url: str, landing: Path,
                                                         tmp_path: Path) -> None:
    env = base_env(db_url, landing, tmp_path / "state")
    dirs = setup_company(db_url, landing, "acme")
    path = tmp_path / "crm.persons"
    path.write_text(MIXED)
    r = run_cli(["ingest", str(path), "--company", "acme"], env, timeout=TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr
    events = [json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")]
    named = [(e["event"], e["file"]) for e in events if "file" in e]
    assert [n for _, n in named] == ["crm.persons"] * len(named), named
    assert {"file.claimed", "file.applied", "file.done"} <= {ev for ev, _ in named}, named
    assert ".ingest-" not in r.stdout + r.stderr
    assert r.stdout.startswith("done: crm.persons "), r.stdout
    assert is_finished(dirs, "crm.persons") and listing(dirs.inbox) == []


# -- item 6: a second Ctrl-C -----------------------------------------------------------------

@pytest.fixture
def carrier(monkeypatch: pytest.MonkeyPatch) -> Iterator[CarrierServer]:
    """A carrier service that holds every request until ``release``: a file in hand."""
    with serving(monkeypatch, default=[HANG]) as srv:
        yield srv


SECOND_INTERRUPT = "second interrupt: stopping now"
# Two numbers to look up: in parallel, so a first Ctrl-C of ingest waits for both.
NEW_PEOPLE = "mdn,external_person_id\n2295551234,e1\n2295551235,e2\n"
RECOVERED = "roll back and are recovered at the next start"


def held_env(db_url: str, landing: Path, tmp_path: Path, carrier: CarrierServer) -> dict[str, str]:
    # Without the second Ctrl-C, the daemon would wait stop_timeout and a lookup its
    # carrier_timeout: both far beyond the test's deadline.
    return base_env(db_url, landing, tmp_path / "state", INGESTD_CARRIER_MODE="http",
                    INGESTD_CARRIER_URL=carrier.url, INGESTD_CARRIER_TIMEOUT="600",
                    INGESTD_CARRIER_MAX_ATTEMPTS="1", INGESTD_STOP_TIMEOUT="600",
                    no_proxy="*", NO_PROXY="*")


def assert_applied_once_after_restart(env: dict[str, str], db_url: str, landing: Path,
                                      carrier: CarrierServer, daemons: list[Daemon]) -> None:
    carrier.release.set()
    d = Daemon(env)
    daemons.append(d)
    d.start(timeout=TIMEOUT)
    dirs = landing / "acme"
    wait_for(lambda: (dirs / "done" / "new.persons.result.json").exists(), TIMEOUT,
             what="new.persons in done/", context=d.tail)
    assert d.find("file.recovered", company="acme", file="new.persons", action="apply")
    assert d.stop(timeout=TIMEOUT) == 0, d.tail()
    assert [r["name"] for r in ledger(db_url, "acme")] == ["new.persons"]
    assert scalar(db_url, "SELECT count(*) FROM acme.persons") == 2
    assert listing(dirs / ".processing") == []


def test_second_sigint_stops_the_daemon_at_once(db_url: str, landing: Path, tmp_path: Path,
                                                carrier: CarrierServer,
                                                daemons: list[Daemon]) -> None:
    env = held_env(db_url, landing, tmp_path, carrier)
    dirs = setup_company(db_url, landing, "acme")
    d = Daemon(env)
    daemons.append(d)
    d.start(timeout=TIMEOUT)
    drop(dirs, "new.persons", NEW_PEOPLE)
    assert carrier.arrived.wait(TIMEOUT), d.tail()  # the file is in hand
    assert d.proc is not None
    d.proc.send_signal(signal.SIGINT)
    d.wait_event("daemon.stopping", timeout=TIMEOUT)  # the first: stop gracefully
    code = d.stop(signal.SIGINT, timeout=TIMEOUT)
    assert code == 130, d.tail()
    assert d.stderr_path is not None
    stderr = d.stderr_path.read_text()
    assert SECOND_INTERRUPT in stderr and RECOVERED in stderr, stderr
    assert not d.find("daemon.stopped")
    assert ledger(db_url, "acme") == []
    assert_applied_once_after_restart(env, db_url, landing, carrier, daemons)


def test_second_sigint_stops_ingest_at_once(db_url: str, landing: Path, tmp_path: Path,
                                            carrier: CarrierServer,
                                            daemons: list[Daemon]) -> None:
    env = held_env(db_url, landing, tmp_path, carrier)
    setup_company(db_url, landing, "acme")
    path = tmp_path / "new.persons"
    path.write_text(NEW_PEOPLE)
    err = tmp_path / "ingest.stderr"
    with err.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "ingestd", "ingest", str(path),
                                 "--company", "acme"], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        assert carrier.arrived.wait(TIMEOUT), err.read_text()
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: "interrupted" in err.read_text(), TIMEOUT,
                 what="the first interrupt's message", context=err.read_text)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT) == 130, err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = err.read_text()
    assert "Traceback" not in text, text
    assert SECOND_INTERRUPT in text, text
    assert "rolls back and is recovered at the next start" in text, text
    assert ledger(db_url, "acme") == []
    assert_applied_once_after_restart(env, db_url, landing, carrier, daemons)
