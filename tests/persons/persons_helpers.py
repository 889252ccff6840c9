"""What the Person Import processor tests share: the partner contract's classes and
messages, a landing root with company acme and its custom fields (``Env``), and the HTTP
carrier helpers. The fixtures are in this folder's conftest.py."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
from carrier_server import CarrierServer
from pipeline_env import PipelineEnv

from ingestd import errors, landing
from ingestd.lifecycle import Outcome, Pipeline
from ingestd.persons.custom_fields import FieldDefinition

Conn = psycopg.Connection[Any]

# The error classes come from ingestd.errors, as in the contacts tests; the messages are
# spelled out: they are the partner contract, exactly as docs/formats.md section 1 says.
INVALID_MDN = errors.INVALID_MDN_FORMAT
INVALID_MDN_MSG = "The mdn is incorrectly formatted. It should be an E.164 mdn."
FIELD_NOT_FOUND = errors.CUSTOM_FIELD_NOT_FOUND
FIELD_NOT_FOUND_MSG = "Custom field not found"
INVALID_VALUE = errors.INVALID_SELECT_CUSTOM_FIELD_VALUE
CHARSET_MSG = "Custom field value is incompatible with the field's character set"
INVALID_VALUE_MSG = "Invalid custom field value"
NOT_FOUND = errors.PERSON_NOT_FOUND
NOT_FOUND_MSG = "Person not found"
MDN_TAKEN = errors.MOBILE_PHONE_ALREADY_ASSIGNED
MDN_TAKEN_MSG = "Mobile Phone Already Assigned"
INVALID_ID = errors.INVALID_PERSON_ID
INVALID_ID_MSG = "Invalid person_id"
INVALID_KEY = errors.INVALID_PERSON_KEY
INVALID_KEY_MSG = "Invalid person_key"
MDN_CHANGE = errors.MDN_CHANGE_NOT_ALLOWED
MDN_CHANGE_MSG = "mdn change not allowed"
CREATE_REQUIRES = errors.PERSON_CREATE_REQUIRES
CREATE_REQUIRES_MSG = "Creating a Person requires a device or an external person id"
UNIQUE = errors.UNIQUE_VIOLATION
UNIQUE_MSG = "duplicate key value violates unique constraint"
MALFORMED = errors.MALFORMED_ROW
PERMANENT = errors.PERMANENT_LOOKUP_FAILURE
PERMANENT_MSG = "The mdn supplied is not a valid mobile phone active on a valid carrier."
TRANSIENT = errors.TRANSIENT_LOOKUP_FAILURE
TRANSIENT_MSG = ("A temporary issue with the carrier lookup service prevented the row from being"
                 " processed. Please try again later.")
FILE_FORMAT = errors.INVALID_IMPORT_FILE_FORMAT
NO_ID_COLUMN_MSG = "Couldn't find a person_id, external_person_id, mdn, or vives_device_id field"
ENCODING = errors.UNKNOWN_8BIT_ENCODING

# errors.csv: these five columns, then the file's field names.
ERRORS_HEADER = ["record", "error_class", "error_message", "error_field", "error_detail"]
NOT_E164 = "is not E.164 (+ and digits) or 10 digits"
CREATE_REQUIRES_DETAIL = "no mdn, vibes_device_id or external_person_id to create a person with"


def guarded(cell: str) -> str:
    """A cell as errors.csv shows it: the formula guard prefixes = + - @ tab CR with ',
    unless the cell is a plain signed number (docs/formats.md, "Spreadsheet safety")."""
    if cell[:1] in ("=", "+", "-", "@", "\t", "\r") and not re.fullmatch(
            r"[+-]?[0-9]+(?:[.,][0-9]+)?", cell):
        return "'" + cell
    return cell


UK_MOBILE = "+447400123456"  # offline: mobile, carrier "Three"
UK_FIXED = "+442071234567"  # offline: a London fixed line, never a mobile

FIELDS = [
    FieldDefinition(name="tier", type="single_select", options=["gold", "silver", "bronze"]),
    FieldDefinition(name="tags", type="multi_select", options=["a", "b", "c", "B"]),
    FieldDefinition(name="nick", type="string", charset="ascii"),
    FieldDefinition(name="sms_name", type="string", charset="gsm7"),
    FieldDefinition(name="bio", type="string"),  # unicode
    FieldDefinition(name="age", type="integer"),
    FieldDefinition(name="balance", type="decimal"),
    FieldDefinition(name="vip", type="boolean"),
    FieldDefinition(name="joined", type="date"),
]


def mdn(n: int) -> str:
    """A valid US number in E.164 (+1 229 555 nnnn): offline lookup accepts it, no carrier."""
    return f"+1229555{n:04d}"


def body(*lines: str) -> str:
    return "".join(line + "\n" for line in lines)


class P(NamedTuple):
    """A stored person."""

    person_id: int
    person_key: str
    external_person_id: str | None
    mdn: str | None
    vibes_device_id: str | None
    carrier: str | None
    custom: dict[str, Any]


class Env(PipelineEnv):
    """A landing root, a database with company acme and its custom fields, and pipelines;
    where a partner reads a file's outcome, and the stored persons."""

    @property
    def company_dir(self) -> Path:
        return self.landing / "acme"

    def drop(self, name: str, content: str | bytes) -> Path:
        inbox = self.company_dir / "inbox"
        inbox.mkdir(parents=True, exist_ok=True)
        path = inbox / name
        if isinstance(content, str):
            path.write_bytes(content.encode("utf-8"))
        else:
            path.write_bytes(content)
        return path

    def process(self, name: str, content: str | bytes, pipeline: Pipeline | None = None,
                **overrides: Any) -> Outcome:
        dropped = landing.drop(self.drop(name, content), 0)
        outcome = (pipeline or self.pipeline(**overrides)).process(dropped)
        assert outcome.final_path is not None
        assert outcome.final_path.parent == self.company_dir / outcome.status
        return outcome

    def errors_csv(self, name: str) -> list[list[str]]:
        with open(self.company_dir / "done" / f"{name}.errors.csv", encoding="utf-8",
                  newline="") as fh:
            return list(csv.reader(fh))

    def errors(self, name: str) -> list[tuple[int, str, str]]:
        """(record, class, message) of each line of errors.csv (after its header)."""
        return [(int(r[0]), r[1], r[2]) for r in self.errors_csv(name)[1:]]

    def result(self, name: str, where: str = "done") -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            (self.company_dir / where / f"{name}.result.json").read_text(encoding="utf-8"))
        return data

    def persons(self) -> list[P]:
        rows = self.conn.execute(
            "SELECT person_id, person_key::text, external_person_id, mdn, vibes_device_id,"
            " carrier, custom FROM acme.persons ORDER BY person_id").fetchall()
        self.conn.commit()
        return [P(*r) for r in rows]

    def by_ext(self) -> dict[str | None, P]:
        return {p.external_person_id: p for p in self.persons()}

    def by_mdn(self) -> dict[str | None, P]:
        return {p.mdn: p for p in self.persons()}

    def person(self, person_id: int) -> P:
        (p,) = [p for p in self.persons() if p.person_id == person_id]
        return p

    def seed(self, ext: str | None = None, mdn: str | None = None, device: str | None = None,
             carrier: str | None = None, **custom: Any) -> P:
        row = self.conn.execute(
            "INSERT INTO acme.persons (external_person_id, mdn, vibes_device_id, carrier, custom)"
            " VALUES (%s, %s, %s, %s, %s) RETURNING person_id, person_key::text,"
            " external_person_id, mdn, vibes_device_id, carrier, custom",
            (ext, mdn, device, carrier, json.dumps(custom))).fetchone()
        self.conn.commit()
        assert row is not None
        return P(*row)

    def count(self, query: str) -> int:
        row = self.conn.execute(query).fetchone()
        self.conn.commit()
        assert row is not None
        return int(row[0])



def assert_done(env: Env, name: str, outcome: Outcome, rows: int,
                rejected: dict[str, int], stored: str | None = None) -> None:
    """The file is in done/ (as ``stored`` when that name was taken) with this result."""
    assert outcome.status == "done"
    assert outcome.final_path == env.company_dir / "done" / (stored or name)
    assert outcome.final_path.is_file()
    result = env.result(stored or name)
    n_rejected = sum(rejected.values())
    assert (result["status"], result["format"], result["company"], result["file"]) == (
        "done", "persons", "acme", name)
    assert result.get("stored_as") == stored
    assert (result["rows"], result["accepted"], result["rejected"]) == (
        rows, rows - n_rejected, n_rejected)
    assert result["rejected_by_class"] == rejected
    assert "error" not in result



def http_settings(server: CarrierServer, **overrides: Any) -> dict[str, Any]:
    return {"carrier_mode": "http", "carrier_url": server.url,
            "carrier_backoff_initial": 0.001, "carrier_backoff_max": 0.01,
            "carrier_max_attempts": 4, **overrides}


def cache(env: Env) -> dict[str, tuple[str | None, str | None, str | None]]:
    rows = env.conn.execute(
        "SELECT mdn, carrier, error_class, message FROM ingestd.carrier_cache").fetchall()
    env.conn.commit()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def retries(logs: Sequence[MutableMapping[str, Any]]) -> list[tuple[str, int, str]]:
    out = []
    for entry in logs:
        if entry["event"] == "carrier.retry":
            assert entry["log_level"] == "warning"
            assert 0 <= entry["wait"] <= 0.01
            out.append((entry["mdn"], entry["attempt"], entry["reason"]))
    return out
