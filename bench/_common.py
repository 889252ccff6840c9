"""What the benchmarks share: a PostgreSQL, a fresh database per run, the CLI, the files.

Every file is generated from its row count alone (no randomness), so two runs of
the same size ingest the same bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ingestd.contacts.reader import COLUMNS
from ingestd.db.embedded import EmbeddedPostgres

COMPANY = "acme"
INGESTD = str(Path(sys.executable).with_name("ingestd"))

FIELDS_TOML = """\
[[field]]
name = "first_name"
type = "string"
charset = "unicode"

[[field]]
name = "tier"
type = "single_select"
options = ["gold", "silver", "bronze"]

[[field]]
name = "signup_date"
type = "date"
"""

# Unicode on purpose: the string field is checked against its charset.
_NAMES = ("José", "Zoë", "Łukasz", "Søren", "Chloé", "Björk", "Nguyễn", "Aoife", "Дмитрий",
          "Ana", "Mário", "Renée", "李娜", "Ömer")
_TIERS = ("gold", "silver", "bronze")
_AREAS = ("229", "212", "312", "415", "646", "713", "305", "404")
_PER_AREA = 8_000_000  # subscriber parts 200-0000 .. 999-9999: every one valid in phonenumbers
_STRIDE = 4_000_037  # coprime with _PER_AREA: scatters the numbers over the index, no repeats


def mdn(i: int) -> str:
    """The i-th distinct valid US number (+1 NPA NXX XXXX), not in index order."""
    area, j = divmod(i, _PER_AREA)
    return f"+1{_AREAS[area]}{2_000_000 + j * _STRIDE % _PER_AREA:07d}"


def external_id(i: int) -> str:
    return f"ext-{i:09d}"


def first_name(i: int, update: bool = False) -> str:
    return _NAMES[(i + update * 5) % len(_NAMES)]


def tier(i: int, update: bool = False) -> str:
    return _TIERS[(i + update) % 3]


def signup_date(i: int) -> str:
    return f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z"


def write_creates(path: Path, rows: int) -> None:
    """``external_person_id,mdn,first_name,tier,signup_date``: every row a new person."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("external_person_id,mdn,first_name,tier,signup_date\n")
        for i in range(rows):
            fh.write(f"{external_id(i)},{mdn(i)},{first_name(i)},{tier(i)},{signup_date(i)}\n")


MIXED_BAD = ("229-555-0000", "platinum", "2024-13-45T00:00:00Z", "999999999")


def write_mixed(path: Path, rows: int, offset: int) -> int:
    """Creates like ``write_creates`` (people ``offset`` on, so they are new beside its
    people), with 5% bad rows spread through the file (every 20th: a bad mdn, an unknown
    tier, a bad date or an unknown person_id, in turn) and 10% of rows naming the person a
    row 7 rows earlier created (new first_name and tier, no mdn). Returns the rows to
    accept."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("person_id,external_person_id,mdn,first_name,tier,signup_date\n")
        for i in range(rows):
            n = offset + i
            cells = ["", external_id(n), mdn(n), first_name(n), tier(n), signup_date(n)]
            if i % 20 == 0:  # never a row that a later one names (those are i % 10 == 8)
                kind = i // 20 % 4
                if kind == 3:
                    cells[0], cells[1] = MIXED_BAD[3], ""
                else:
                    cells[(2, 4, 5)[kind]] = MIXED_BAD[kind]
            elif i % 10 == 5 and i >= 7:
                cells = ["", external_id(n - 7), "", first_name(n, True), tier(n, True), ""]
            fh.write(",".join(cells) + "\n")
    return rows - (rows + 19) // 20


def write_updates(path: Path, rows: int) -> None:
    """The same people by ``external_person_id``, two custom fields changed, no mdn."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("external_person_id,first_name,tier\n")
        for i in range(rows):
            fh.write(f"{external_id(i)},{first_name(i, True)},{tier(i, True)}\n")


CONTACT_HEADER = [c.name for c in COLUMNS]
TREATMENTS_PER_CONTACT = 2


def write_contacts(path: Path, rows: int, update: bool = False) -> None:
    """``rows`` treatment rows, two per contact; ``update``: the same contacts, updatable
    columns changed, immutable ones identical."""
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(",".join(CONTACT_HEADER) + "\r\n")
        for r in range(rows):
            c, t = divmod(r, TREATMENTS_PER_CONTACT)
            values = dict.fromkeys(CONTACT_HEADER, "")
            values.update(
                creationTimeStamp=f"2024-05-{1 + c % 28:02d}T15:02:40.719Z",
                responseTrackingCode=f"bench.{c:09d}",
                subjectId=f"subject.{c % 100_003}",
                subjectLevel="household",
                excludeFromContactRule="false",
                conclusionResponseType="crt_x",
                objectUri=f"/decisions/flows/{c % 97}",
                objectType="decision",
                objectVariables="ov1~~~A~~~string;ov2~~~B~~~string",
                receiverId=f"subject.{c % 100_003}",
                receiverRole="customer",
                channel="web",
                ruleFired="00010",
                treatmentId=f"treatment-{t}",
                treatmentGroupId=f"group-{c % 13}",
                presented="false" if update else "true",
                presentedTimeStamp="2024-05-13T15:02:40.719Z",
                respondedTimeStamp="2024-05-14T09:00:00Z" if update else "",
                responseValue="clicked" if update else "",
                responseType="click" if update else "",
            )
            fh.write(",".join(values[n] for n in CONTACT_HEADER) + "\r\n")


@contextlib.contextmanager
def server(url: str | None, scratch: Path) -> Iterator[str]:
    """``url``, or an embedded PostgreSQL under ``scratch`` for the duration."""
    if url:
        yield url
        return
    pg = EmbeddedPostgres(scratch / "state")
    try:
        yield pg.start()
    finally:
        pg.stop()


@contextlib.contextmanager
def fresh_database(url: str, tag: str) -> Iterator[str]:
    """A new database on ``url``'s server, dropped afterwards: earlier people are not there."""
    name = f"ingestd_bench_{os.getpid()}_{tag}"
    admin_url = make_conninfo(url, dbname="postgres")
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(url, dbname=name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def scratch_database(url: str | None, scratch: Path, tag: str) -> Iterator[str]:
    """A new database on ``url``'s server, dropped afterwards; without ``url``, an
    embedded PostgreSQL of its own under ``scratch``."""
    if url:
        with fresh_database(url, tag) as db_url:
            yield db_url
    else:
        with server(None, scratch) as db_url:
            yield db_url


def url_for_env(url: str) -> str:
    """A URL form of ``url`` (pydantic settings and pgloader want a URL, not key=value)."""
    params = conninfo_to_dict(url)
    host = str(params.get("host", ""))
    query = f"?host={host}" if host.startswith("/") else ""
    netloc = "" if query else host
    port = f":{params['port']}" if params.get("port") else ""
    user = params.get("user", "postgres")
    password = f":{params['password']}" if params.get("password") else ""
    return f"postgresql://{user}{password}@{netloc}{port}/{params.get('dbname', 'postgres')}{query}"


def cli_env(db_url: str, root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(INGESTD_DATABASE_URL=url_for_env(db_url), INGESTD_LANDING_ROOT=str(root / "landing"),
               INGESTD_STATE_DIR=str(root / "state"), INGESTD_CARRIER_MODE="offline",
               INGESTD_LOG_LEVEL="warning")
    return env


def ingestd(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([INGESTD, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"ingestd {' '.join(args)} exited {done.returncode}:\n"
                         f"{done.stdout}{done.stderr}")
    return done


def set_up_company(env: dict[str, str], root: Path) -> None:
    ingestd(env, "db", "upgrade")
    ingestd(env, "company", "add", COMPANY)
    fields = root / "fields.toml"
    fields.write_text(FIELDS_TOML)
    ingestd(env, "fields", "load", str(fields), "--company", COMPANY)


def result_of(root: Path, name: str) -> dict[str, object]:
    done = root / "landing" / COMPANY / "done" / f"{name}.result.json"
    result: dict[str, object] = json.loads(done.read_text())
    return result


def ingest(env: dict[str, str], root: Path, path: Path, rows: int,
           accepted: int | None = None) -> float:
    """Seconds of ``ingestd ingest`` of ``path``; every row must be accepted (or
    ``accepted`` of them)."""
    rows = rows if accepted is None else accepted
    t0 = time.perf_counter()
    ingestd(env, "ingest", str(path), "--company", COMPANY)
    seconds = time.perf_counter() - t0
    result = result_of(root, path.name)
    if result.get("status") != "done" or result.get("accepted") != rows:
        got = {k: result.get(k) for k in ("status", "accepted", "rejected_by_class")}
        raise SystemExit(f"{path.name}: expected {rows} rows accepted, got {got}")
    return seconds


@dataclass
class Figure:
    what: str
    rows: int
    seconds: list[float]
    pgloader: str | None = None  # the pgloader figure this one is compared with
    floor: str | None = None  # the floor figure this one is compared with

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        return self.rows / self.median if self.median else float("inf")


def print_table(figures: list[Figure], repeat: int) -> None:
    by_what = {f.what: f for f in figures}

    def ratio(f: Figure, other: str | None) -> str:
        ref = by_what.get(other) if other else None
        return f"{f.rate / ref.rate:.2f}x" if ref and ref.rate else "—"

    title = f"median of {repeat}" if repeat > 1 else "one run"
    print(f"\n| what | rows | seconds ({title}) | rows/s | / pgloader | / floor |")
    print("|---|---:|---:|---:|---:|---:|")
    for f in figures:
        print(f"| {f.what} | {f.rows:,} | {f.median:.2f} | {f.rate:,.0f} | "
              f"{ratio(f, f.pgloader)} | {ratio(f, f.floor)} |")
