"""The CLI as a new operator and a partner meet it (issue 20, items 3, 7, 8 and 9): the real
``ingestd`` command as a subprocess, against a real PostgreSQL and real folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import drop, result_json, run_cli, setup_company

from ingestd import errors
from ingestd.cli import build_parser
from ingestd.persons.custom_fields import FieldDefinition
from ingestd.persons.reader import NO_IDENTIFYING_COLUMN_MESSAGE
from ingestd.report import SHOWN_REJECTS

SEMICOLON_HINT = "the header row looks `;`-separated: add a `Delimiter: ;` header block"
TAB_HINT = "the header row looks tab-separated: add a `Delimiter: tab` header block"
TIER = [FieldDefinition(name="tier", type="single_select", options=["gold", "silver"])]


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# --- item 3: a spreadsheet's delimiter --------------------------------------------------------


@pytest.mark.parametrize(("body", "hint"), [
    ("external_person_id;mdn;tier\r\ncrm-1;+12295551234;gold\r\n", SEMICOLON_HINT),
    ("external_person_id\tmdn\ttier\r\ncrm-1\t+12295551234\tgold\r\n", TAB_HINT),
])
def test_a_spreadsheet_delimiter_is_explained(env: dict[str, str], db_url: str, landing: Path,
                                              body: str, hint: str) -> None:
    acme = setup_company(db_url, landing, "acme", TIER)
    path = drop(acme, "excel.persons", "\ufeff" + body)
    r = run_cli(["check", str(path)], env)
    assert r.returncode == 1, r.stdout + r.stderr
    # the source's message word for word, then what to do about it
    assert f"would fail: {errors.INVALID_IMPORT_FILE_FORMAT}: {NO_IDENTIFYING_COLUMN_MESSAGE}" \
        in r.stdout
    assert f"  {hint}" in r.stdout.splitlines()

    r = run_cli(["ingest", str(path)], env)
    assert r.returncode == 1, r.stdout + r.stderr
    error = result_json(acme.failed, "excel.persons")["error"]
    assert error == {"class": errors.INVALID_IMPORT_FILE_FORMAT,
                     "message": NO_IDENTIFYING_COLUMN_MESSAGE, "detail": hint}
    [failed] = [e for e in json_lines(r.stderr) if e["event"] == "file.failed"]
    assert failed["error_message"] == NO_IDENTIFYING_COLUMN_MESSAGE
    assert failed["error_detail"] == hint


def test_a_file_fixed_with_a_delimiter_header_is_applied(env: dict[str, str], db_url: str,
                                                         landing: Path) -> None:
    acme = setup_company(db_url, landing, "acme", TIER)
    path = drop(acme, "fixed.persons",
                "Delimiter: ;\r\n\r\nexternal_person_id;mdn;tier\r\ncrm-1;+12295551234;gold\r\n")
    r = run_cli(["ingest", str(path)], env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert result_json(acme.done, "fixed.persons")["accepted"] == 1


# --- item 7: the partner's copy of the custom fields ------------------------------------------


def test_fields_load_writes_the_partners_copy(env: dict[str, str], landing: Path,
                                              tmp_path: Path) -> None:
    r = run_cli(["company", "add", "acme"], env)
    assert r.returncode == 0, r.stdout + r.stderr
    copy = landing / "acme" / "done" / "custom-fields.json"
    first = json.loads(copy.read_text(encoding="utf-8"))
    assert first["id_columns"] == ["person_id", "person_key", "external_person_id", "mdn",
                                   "vibes_device_id"]
    assert first["custom_fields"] == []

    toml = tmp_path / "fields.toml"
    toml.write_text('[[field]]\nname = "tier"\ntype = "single_select"\n'
                    'options = ["gold", "silver"]\n\n'
                    '[[field]]\nname = "sms_name"\ntype = "string"\ncharset = "gsm7"\n\n'
                    '[[field]]\nname = "age"\ntype = "integer"\n')
    r = run_cli(["fields", "load", str(toml), "--company", "acme"], env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert str(copy) in r.stdout
    assert json.loads(copy.read_text(encoding="utf-8"))["custom_fields"] == [
        {"name": "tier", "type": "single_select", "options": ["gold", "silver"]},
        {"name": "sms_name", "type": "string", "charset": "gsm7"},
        {"name": "age", "type": "integer"},
    ]
    # the partner can read it where they read their results; nothing else is in done/
    assert os.stat(copy).st_mode & 0o040
    assert sorted(p.name for p in copy.parent.iterdir()) == ["custom-fields.json"]

    toml.write_text('[[field]]\nname = "note"\ntype = "string"\n')
    assert run_cli(["fields", "load", str(toml), "--company", "acme"], env).returncode == 0
    assert json.loads(copy.read_text(encoding="utf-8"))["custom_fields"] == [
        {"name": "note", "type": "string", "charset": "unicode"}]


# --- item 8: ingest prints the rejected records -----------------------------------------------


def test_ingest_prints_rejected_records_up_to_a_limit(env: dict[str, str], db_url: str,
                                                      landing: Path) -> None:
    acme = setup_company(db_url, landing, "acme", TIER)
    bad = SHOWN_REJECTS + 5
    rows = [f"e{i},platinum" for i in range(1, bad + 1)] + ["ok,gold"]
    path = drop(acme, "tiers.persons", "external_person_id,tier\n" + "\n".join(rows) + "\n")
    checked = run_cli(["check", str(path)], env).stdout.splitlines()
    r = run_cli(["ingest", str(path)], env)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout.splitlines()
    assert out[0].startswith(f"done: tiers.persons (persons) rows={bad + 1} accepted=1 "
                             f"rejected={bad}")
    listed = [line for line in out if line.startswith("  record ")]
    assert listed[0] == (f"  record 1: {errors.INVALID_SELECT_CUSTOM_FIELD_VALUE}: Invalid custom"
                         " field value (tier: 'platinum' is not an option of tier (gold, silver))")
    assert [line.split(":")[0] for line in listed] == [
        f"  record {i}" for i in range(1, SHOWN_REJECTS + 1)]
    assert out[-1] == "  ... and 5 more rejected record(s): see tiers.persons.errors.csv"
    # check lists them the same way
    assert [line for line in checked if line.startswith("  record ")] == listed
    assert checked[-1] == "  ... and 5 more rejected record(s)"


# --- item 9: CLI consistency --------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["fields", "list", "--company", "nosuch"],
    ["fields", "load", "{toml}", "--company", "nosuch"],
    ["check", "{file}", "--company", "nosuch"],
    ["ingest", "{file}", "--company", "nosuch"],
])
def test_a_company_that_is_not_set_up_is_exit_2_with_one_line(
        env: dict[str, str], tmp_path: Path, args: list[str]) -> None:
    toml = tmp_path / "f.toml"
    toml.write_text('[[field]]\nname = "note"\ntype = "string"\n')
    data = tmp_path / "x.persons"
    data.write_text("external_person_id\ne1\n")
    args = [a.format(toml=toml, file=data) for a in args]
    r = run_cli(args, env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.splitlines() == [
        "ingestd: company 'nosuch' is not set up (ingestd company add nosuch)"]
    assert r.stdout == ""


def test_fields_load_names_the_missing_file_once(env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "x.toml"
    r = run_cli(["fields", "load", str(missing), "--company", "acme"], env)
    assert r.returncode == 2
    assert r.stderr == f"ingestd: {missing}: No such file or directory\n"


def test_status_json_has_zero_counts(env: dict[str, str], db_url: str, landing: Path) -> None:
    setup_company(db_url, landing, "acme")
    r = run_cli(["status", "--json"], env)
    assert r.returncode == 0, r.stderr
    [acme] = json.loads(r.stdout)["companies"]
    assert acme["last_hour"] == {"done": 0, "failed": 0}


def test_prune_dry_run_lists_sidecars_and_defaults_to_retention_days(
        env: dict[str, str], db_url: str, landing: Path) -> None:
    acme = setup_company(db_url, landing, "acme", TIER)
    path = drop(acme, "old.persons", "external_person_id,tier\ne1,platinum\n")
    assert run_cli(["ingest", str(path)], env).returncode == 0

    r = run_cli(["prune", "--dry-run"], env)
    assert r.returncode == 2
    assert r.stderr == "ingestd: prune: give --older-than DAYS, or set retention_days\n"

    r = run_cli(["prune", "--dry-run"], {**env, "INGESTD_RETENTION_DAYS": "0"})
    assert r.returncode == 2  # 0 keeps files forever: nothing says how old

    # Retention of a day: the file finished just now is kept...
    r = run_cli(["prune", "--dry-run"], {**env, "INGESTD_RETENTION_DAYS": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout == "would prune 0 file(s), 0 bytes (finished 1 or more days ago)\n"
    # ... and with --older-than 0 every path that would go is listed, sidecars included.
    r = run_cli(["prune", "--dry-run", "--older-than", "0"],
                {**env, "INGESTD_RETENTION_DAYS": "1"})
    assert r.returncode == 0, r.stderr
    listed = sorted(line.removeprefix("would delete: ") for line in r.stdout.splitlines()
                    if line.startswith("would delete: "))
    assert listed == sorted(str(acme.done.absolute() / n) for n in (
        "old.persons", "old.persons.result.json", "old.persons.errors.csv"))
    assert (acme.done / "old.persons.errors.csv").exists()  # a dry run


def test_every_command_takes_landing_root_and_config() -> None:
    parser = build_parser()
    leaves = [["run"], ["ingest", "x"], ["check", "x"], ["status"], ["requeue", "x"],
              ["prune"], ["db", "upgrade"], ["company", "add", "x"], ["company", "list"],
              ["fields", "load", "x", "--company", "c"], ["fields", "list", "--company", "c"]]
    for leaf in leaves:
        args = parser.parse_args([*leaf, "--landing-root", "/l", "--config", "/c.toml"])
        assert (args.landing_root, args.config) == ("/l", "/c.toml"), leaf


def test_config_option_is_the_settings_file(env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "ingestd.toml"
    config.write_text("settle_second = 3\n")
    r = run_cli(["company", "list", "--config", str(config)], env)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"ingestd: unknown setting settle_second in {config}; did you mean settle_seconds?"]


def test_one_off_commands_say_nothing_of_the_embedded_server(tmp_path: Path) -> None:
    """No db.embedded.* JSON lines on a CLI command's stderr (the daemon logs them)."""
    landing = tmp_path / "landing"
    landing.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
    env.update(INGESTD_STATE_DIR=str(tmp_path / "state"), INGESTD_LANDING_ROOT=str(landing),
               INGESTD_LOG_FORMAT="json")
    data = tmp_path / "x.persons"
    data.write_text("external_person_id\ne1\n")
    for args in (["db", "upgrade"], ["company", "add", "acme"],
                 ["ingest", str(data), "--company", "acme"], ["status"]):
        r = subprocess.run([sys.executable, "-m", "ingestd", *args], env=env,
                           capture_output=True, text=True, timeout=180, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "db.embedded" not in r.stderr, (args, r.stderr)
        if args[0] == "ingest":  # its own info lines still come
            assert "file.done" in [e["event"] for e in json_lines(r.stderr)]
