"""deploy/grafana/ingestd.json and deploy/prometheus/ingestd-alerts.yml: well-formed, and
every metric they use is exported by a running daemon; per-company series at zero."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from daemon_helpers import NOTE_FIELD, ROOT, Daemon, base_env, drop, setup_company, wait_for
from prometheus_client.parser import text_string_to_metric_families

from ingestd.landing import CompanyDirs

DASHBOARD = ROOT / "deploy" / "grafana" / "ingestd.json"
ALERTS = ROOT / "deploy" / "prometheus" / "ingestd-alerts.yml"
ALERT_TESTS = ROOT / "tests" / "data" / "ingestd-alerts.test.yml"

# Series Prometheus makes itself for every scrape target, not exported by ingestd.
PROMETHEUS_OWN = {"up"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, aggregations, label
    names, keywords, durations and Grafana variables left out)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range and subquery durations
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)  # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", s):
        if s[m.end():].lstrip().startswith("(") or m.group().lower() in KEYWORDS:
            continue  # a function or an aggregation
        names.add(m.group())
    return names


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text())
    return [r for g in data["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def used_metrics() -> set[str]:
    names = {n for e in [*dashboard_exprs(), *(r["expr"] for r in rules())]
             for n in metric_names(e)}
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((\w+),\s*\w+\)", var["query"]["query"])
            assert m, var["query"]
            names.add(m.group(1))
    return names


def test_metric_names_are_read_from_promql() -> None:
    assert metric_names('histogram_quantile(0.95, sum by (le) (rate('
                        'ingestd_apply_duration_seconds_bucket{company=~"$company"}'
                        '[$__rate_interval])))') == {"ingestd_apply_duration_seconds_bucket"}
    assert metric_names('sum by (instance, company) (increase(ingestd_files_total'
                        '{outcome="failed"}[1h])) > 0') == {"ingestd_files_total"}
    assert metric_names("up{job=\"ingestd\"} == 0 or absent(ingestd_x) unless on (a) b"
                        ) == {"up", "ingestd_x", "b"}
    assert metric_names("max_over_time(ingestd_carrier_circuit_open[5m]) == 1") == {
        "ingestd_carrier_circuit_open"}


# -- the files --------------------------------------------------------------------------

def test_dashboard_is_a_grafana_dashboard() -> None:
    d = dashboard()
    assert isinstance(d["schemaVersion"], int) and d["uid"] and d["title"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    company = variables["company"]
    assert company["query"]["query"] == "label_values(ingestd_files_total, company)"
    assert company["includeAll"] and company["multi"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"]), p["title"]
        assert {"x", "y", "w", "h"} <= p["gridPos"].keys()
    # what the issue asks the dashboard to show, by the metric behind each
    used = {n for e in dashboard_exprs() for n in metric_names(e)}
    assert used >= {
        "ingestd_backlog_files", "ingestd_backlog_oldest_age_seconds", "ingestd_files_total",
        "ingestd_rows_accepted_total", "ingestd_rows_rejected_total",
        "ingestd_apply_duration_seconds_bucket", "ingestd_carrier_retries_total",
        "ingestd_carrier_circuit_open", "ingestd_database_up"}
    # per-company panels follow the company variable
    for e in dashboard_exprs():
        if re.search(r"ingestd_(files|rows|backlog|apply)", e):
            assert 'company=~"$company"' in e, e


def test_alert_rules_are_complete() -> None:
    alerts = {r["alert"]: r for r in rules()}
    assert set(alerts) == {"IngestdDown", "IngestdDatabaseUnavailable",
                           "IngestdFileWaitingTooLong", "IngestdFailedFiles",
                           "IngestdCarrierCircuitOpen", "IngestdWorkerStuck",
                           "IngestdMisplacedFiles"}
    for name, r in alerts.items():
        assert re.fullmatch(r"\d+[smh]", r["for"]), name
        assert r["labels"]["severity"] in {"critical", "warning"}, name
        assert r["annotations"]["summary"], name
        assert len(r["annotations"]["description"]) > 80, name  # says what to do
    assert metric_names(alerts["IngestdWorkerStuck"]["expr"]) == {"ingestd_workers_stuck"}
    assert metric_names(alerts["IngestdDatabaseUnavailable"]["expr"]) == {"ingestd_database_up"}
    assert metric_names(alerts["IngestdMisplacedFiles"]["expr"]) == {"ingestd_misplaced_files"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not installed (Debian package prometheus; .ci/run installs it)")
    return subprocess.run([found, *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_promtool_check_rules() -> None:
    r = promtool("check", "rules", str(ALERTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 7 rules found" in r.stdout, r.stdout


def test_alerts_fire_when_they_should_promtool_test_rules() -> None:
    """tests/data/ingestd-alerts.test.yml: each alert stays quiet during its `for:` and
    then fires with its labels and rendered annotations."""
    tested = {c["alertname"] for t in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
              for c in t["alert_rule_test"]}
    assert tested == {r["alert"] for r in rules()}
    r = promtool("test", "rules", str(ALERT_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr


# -- a running daemon ---------------------------------------------------------------------

@pytest.fixture
def daemon(db_url: str, landing: Path, tmp_path: Path) -> Iterator[Daemon]:
    env = base_env(db_url, landing, tmp_path / "state",
                   INGESTD_METRICS_ADDRESS="127.0.0.1:0")
    d = Daemon(env)
    yield d
    d.kill()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(d: Daemon) -> Samples:
    address = d.wait_event("metrics.listening")[0]["address"]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


MIXED = "mdn,external_person_id,note\n2295551234,e1,hello\nabc,e2,x\n"


def test_every_metric_the_dashboard_and_alerts_use_is_exported(
        daemon: Daemon, db_url: str, landing: Path) -> None:
    acme = setup_company(db_url, landing, "acme", NOTE_FIELD)
    daemon.start()
    drop(acme, "crm.persons", MIXED)
    done = daemon.wait_event("file.done", company="acme", file="crm.persons")[0]
    assert done["accepted"] == 1 and done["rejected"] == 1
    # The counters are bumped just after file.done is logged: poll until they show it.
    used = used_metrics()

    def all_exported() -> bool:
        return used - {name for name, _ in scrape(daemon)} == PROMETHEUS_OWN

    try:
        wait_for(all_exported, 30, what="every used metric in /metrics")
    except AssertionError:
        gone = used - {name for name, _ in scrape(daemon)} - PROMETHEUS_OWN
        raise AssertionError(f"used but not exported: {gone}") from None
    assert daemon.stop() == 0


def test_company_series_start_at_zero_and_stray_folders_get_only_their_failures(
        daemon: Daemon, db_url: str, landing: Path) -> None:
    acme = setup_company(db_url, landing, "acme")
    stray = CompanyDirs(landing / "stray")
    stray.inbox.mkdir(parents=True)
    drop(stray, "x.persons", MIXED)
    daemon.env["INGESTD_WORKERS"] = "1"  # outcomes are recorded in the order files finish
    daemon.start()
    daemon.wait_event("file.failed", company="stray", file="x.persons")
    s = scrape(daemon)

    def value(name: str, **labels: str) -> float | None:
        return s.get((name, frozenset(labels.items())))

    for fmt in ("persons", "contacts", "unknown"):
        for outcome in ("done", "failed", "duplicate"):
            assert value("ingestd_files_total", company="acme", format=fmt,
                         outcome=outcome) == 0, (fmt, outcome)
    assert value("ingestd_rows_accepted_total", company="acme") == 0
    assert value("ingestd_backlog_files", company="acme") == 0
    assert value("ingestd_backlog_oldest_age_seconds", company="acme") == 0
    assert value("ingestd_database_up") == 1
    assert value("ingestd_carrier_circuit_open") == 0
    assert value("ingestd_workers_stuck") == 0

    # Once acme's later file is counted, the stray file's outcome was seen too.
    drop(acme, "later.persons", "external_person_id\ne1\n")
    acme_done = ("ingestd_files_total",
                 frozenset({"company": "acme", "format": "persons", "outcome": "done"}.items()))
    s = wait_for(lambda: (got := scrape(daemon)).get(acme_done) == 1 and got,
                 what="acme's file counted")
    # The stray folder's file is counted under its name, and nothing else of it.
    stray_failed = ("ingestd_files_total", frozenset(
        {"company": "stray", "format": "persons", "outcome": "failed"}.items()))
    assert [k for k in s if ("company", "stray") in k[1]
            and not k[0].endswith("_created")] == [stray_failed]
    assert s[stray_failed] == 1
    assert daemon.stop() == 0


def test_one_metrics_port_in_the_readme_and_the_config_examples() -> None:
    ports = {}
    for rel in ("docs/operations.md", "config/ingestd.example.toml", "config/ingestd.env.example"):
        text = (ROOT / rel).read_text()
        # METRICS_ADDRESS=host:port, metrics_address = "host:port", curl and scrape targets
        found = set(re.findall(r"metrics_address\s*=\s*\"?[\w.]*:(\d+)", text, re.I))
        found |= set(re.findall(r"(?:http://127\.0\.0\.1|\"ingest-host):(\d+)", text))
        assert found, rel
        ports[rel] = found
    assert set().union(*ports.values()) == {"9108"}, ports
