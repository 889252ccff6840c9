"""Throughput of ingestd beside its floors and pgloader, all in the same run (issue 8).

    .venv/bin/python bench/throughput.py --rows 1000000 [--contacts 200000] [--repeat K]
                                         [--only {persons,contacts}] [--database-url URL]

Without --database-url an embedded PostgreSQL is started under a temp directory;
with it, each run gets a database of its own on that server (dropped afterwards).
Each run, in a fresh database with company ``acme`` and three custom fields
(``first_name`` unicode string, ``tier`` single-select, ``signup_date`` date):

* ``ingestd ingest`` of ``--rows`` new people (``external_person_id,mdn,first_name,
  tier,signup_date``, every mdn a distinct valid US number, no rejects), then of as many
  updates of the same people by ``external_person_id`` (two custom fields, no mdn);
* the indexed floor: the same rows COPYed into an empty copy of the persons table
  (``LIKE acme.persons INCLUDING ALL``: the same indexes and defaults);
* the update floor: the updates COPYed into a temp table and applied with one
  set-based ``UPDATE … FROM`` to the persons table;
* the mixed file: as many creates of other people with 5% bad rows spread through it
  (bad mdn, unknown option, bad date, unknown person_id) and 10% of rows naming a person
  a row 7 rows earlier created; its ratio is to the clean creates (target: 0.6x);
* plain COPY of the file into an unindexed text table, and pgloader into one when
  ``pgloader`` is on PATH;
* contacts: ``--contacts`` rows (two treatments a contact) created, then the same
  contacts updated with ``If-Unmodified-Since`` (``NAME.csv.headers``), and pgloader of
  the create CSV into an unindexed text table.

Before each update run the persons table is vacuumed (not timed), so the ingest and
the floor start from the same table. Times are wall-clock seconds of each step
(``ingestd ingest`` is the whole command: start-up, claim, apply, commit, sidecars,
move). With ``--repeat K`` every figure is the median of K runs. ``--only`` runs the
persons or the contacts part alone (the company is set up either way).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import psycopg
from _common import (
    COMPANY,
    CONTACT_HEADER,
    Figure,
    cli_env,
    external_id,
    first_name,
    fresh_database,
    ingest,
    mdn,
    print_table,
    server,
    set_up_company,
    signup_date,
    tier,
    url_for_env,
    write_contacts,
    write_creates,
    write_mixed,
    write_updates,
)

from ingestd.persons.store import person_keys

PERSONS = f'"{COMPANY}".persons'
BASE, CUSTOM = f"{COMPANY}.persons_base", f"{COMPANY}.persons_custom"
CREATE_COLUMNS = ("external_person_id", "mdn", "first_name", "tier", "signup_date")


def write_floor_rows(path: Path, rows: int) -> None:
    """The creates as the persons table holds them: (person_key, external_person_id, mdn,
    custom), with time-ordered person keys as ingestd makes them."""
    made = person_keys(rows)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(rows):
            custom = (f'{{""first_name"": ""{first_name(i)}"", ""tier"": ""{tier(i)}"", '
                      f'""signup_date"": ""{signup_date(i)}""}}')
            fh.write(f'{next(made)},{external_id(i)},{mdn(i)},"{custom}"\n')


def copy_file(conn: psycopg.Connection[object], sql: str, path: Path) -> None:
    with conn.cursor() as cur, cur.copy(sql) as copy, open(path, "rb") as fh:
        while data := fh.read(1 << 20):
            copy.write(data)


def timed(fn: object, *args: object) -> float:
    t0 = time.perf_counter()
    fn(*args)  # type: ignore[operator]
    return time.perf_counter() - t0


def indexed_floor(url: str, floor_rows: Path) -> float:
    with psycopg.connect(url) as conn:
        conn.execute(f"CREATE TABLE {COMPANY}.persons_floor (LIKE {BASE} INCLUDING ALL)")
        conn.commit()
        t0 = time.perf_counter()
        copy_file(conn, f"COPY {COMPANY}.persons_floor (person_key, external_person_id, mdn,"
                        " custom) FROM STDIN WITH (FORMAT csv)", floor_rows)
        conn.commit()
        seconds = time.perf_counter() - t0
        conn.execute(f"DROP TABLE {COMPANY}.persons_floor")
        conn.commit()
    return seconds


def update_floor(url: str, updates: Path) -> float:
    """Into today's tables, as one statement: the changes into persons_custom, found through
    persons_base's external_person_id index. Rolled back, so the ingest that follows
    starts from the same tables."""
    with psycopg.connect(url) as conn:
        t0 = time.perf_counter()
        conn.execute("CREATE TEMP TABLE upd (external_person_id text, first_name text, tier text)")
        copy_file(conn, "COPY upd FROM STDIN WITH (FORMAT csv, HEADER true)", updates)
        conn.execute(
            f"INSERT INTO {CUSTOM} AS c (person_id, custom) SELECT b.person_id,"
            " jsonb_build_object('first_name', u.first_name, 'tier', u.tier)"
            f" FROM upd u JOIN {BASE} b USING (external_person_id)"
            " ON CONFLICT (person_id) DO UPDATE SET custom = c.custom || EXCLUDED.custom,"
            " updated_at = now()")
        conn.execute("SELECT 1")  # the statement's work is done: the rollback is not timed
        seconds = time.perf_counter() - t0
        conn.rollback()
        return seconds


def vacuum(url: str, table: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"VACUUM (ANALYZE) {table}")


def text_table(conn: psycopg.Connection[object], name: str, columns: tuple[str, ...] | list[str]
               ) -> None:
    cols = ", ".join(f'"{c}" text' for c in columns)
    conn.execute(f"DROP TABLE IF EXISTS {name}")
    conn.execute(f"CREATE TABLE {name} ({cols})")
    conn.commit()


def plain_copy(url: str, creates: Path) -> float:
    with psycopg.connect(url) as conn:
        text_table(conn, "plain_copy", CREATE_COLUMNS)
        t0 = time.perf_counter()
        copy_file(conn, "COPY plain_copy FROM STDIN WITH (FORMAT csv, HEADER true)", creates)
        conn.commit()
        return time.perf_counter() - t0


def pgloader(url: str, path: Path, table: str, columns: tuple[str, ...] | list[str]) -> float:
    with psycopg.connect(url) as conn:
        text_table(conn, table, columns)
    target = url_for_env(url)
    env = dict(os.environ)
    if "?host=" in target:
        # pgloader takes a unix socket directory from PGHOST, not from the URL's query.
        target, env["PGHOST"] = target.split("?host=")
    cmd = ["pgloader", "--quiet", "--type", "csv", "--field", ",".join(columns),
           "--with", "skip header = 1", "--with", "fields terminated by ','",
           "--with", "fields optionally enclosed by '\"'",
           str(path), f"{target}?tablename={table}"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    loaded = row[0] if row else 0
    if done.returncode != 0 or loaded == 0:
        raise SystemExit(f"pgloader failed (exit {done.returncode}, {loaded} rows):\n"
                         f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds


MIXED = "persons: ingest mixed creates (5% bad, 10% naming an earlier row)"
FLOOR_C = "persons: indexed floor (COPY into LIKE persons_base)"
FLOOR_U = "persons: update floor (COPY + one upsert into persons_custom)"


def one_run(url: str, k: int, files: dict[str, Path], args: argparse.Namespace,
            seconds: dict[str, list[float]]) -> None:
    def record(what: str, value: float) -> None:
        seconds.setdefault(what, []).append(value)
        print(f"  run {k + 1}: {what}: {value:.2f} s", flush=True)

    with fresh_database(url, str(k)) as db_url, \
            tempfile.TemporaryDirectory(prefix="ingestd-bench-run-") as tmp:
        root = Path(tmp)
        env = cli_env(db_url, root)
        set_up_company(env, root)
        if args.only != "contacts":
            persons_run(db_url, env, root, files, args, record)
        if args.contacts and args.only != "persons":
            contacts_run(db_url, env, root, files, args, record)


def persons_run(db_url: str, env: dict[str, str], root: Path, files: dict[str, Path],
                args: argparse.Namespace, record: Callable[[str, float], None]) -> None:
    record("persons: ingest creates", ingest(env, root, files["creates"], args.rows))
    record(FLOOR_C, indexed_floor(db_url, files["floor"]))
    vacuum(db_url, BASE)
    record(FLOOR_U, update_floor(db_url, files["updates"]))
    vacuum(db_url, BASE)
    vacuum(db_url, CUSTOM)
    record("persons: ingest updates", ingest(env, root, files["updates"], args.rows))
    record(MIXED, ingest(env, root, files["mixed"], args.rows, args.mixed_accepted))
    record("persons: plain COPY, unindexed text table", plain_copy(db_url, files["creates"]))
    if args.pgloader:
        record("persons: pgloader, unindexed table",
               pgloader(db_url, files["creates"], "pgloader_persons", CREATE_COLUMNS))


def contacts_run(db_url: str, env: dict[str, str], root: Path, files: dict[str, Path],
                 args: argparse.Namespace, record: Callable[[str, float], None]) -> None:
    record("contacts: ingest creates",
           ingest(env, root, files["contacts"], args.contacts))
    headers = files["contacts_update"].with_name(
        files["contacts_update"].name + ".headers")
    since = datetime.now(UTC) + timedelta(days=1)
    headers.write_text(f"If-Unmodified-Since: {format_datetime(since, usegmt=True)}\n")
    record("contacts: ingest updates (If-Unmodified-Since)",
           ingest(env, root, files["contacts_update"], args.contacts))
    if args.pgloader:
        record("contacts: pgloader, unindexed table",
               pgloader(db_url, files["contacts"], "pgloader_contacts", CONTACT_HEADER))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="people (default 1,000,000)")
    ap.add_argument("--contacts", type=int, default=200_000,
                    help="contact rows (default 200,000; 0: no contacts run)")
    ap.add_argument("--repeat", type=int, default=1, help="runs; figures are medians")
    ap.add_argument("--only", choices=("persons", "contacts"),
                    help="run only the persons or only the contacts part")
    ap.add_argument("--database-url", help="a server to use instead of an embedded one")
    args = ap.parse_args()
    args.pgloader = shutil.which("pgloader") is not None
    if not args.pgloader:
        print("note: pgloader is not on PATH (apt-get install pgloader): its figures are left out")
    with tempfile.TemporaryDirectory(prefix="ingestd-bench-") as tmp:
        scratch = Path(tmp)
        files = {name: scratch / file for name, file in (
            ("creates", "creates.persons"), ("updates", "updates.persons"),
            ("mixed", "mixed.persons"),
            ("floor", "floor.csv"), ("contacts", "contacts.csv"),
            ("contacts_update", "contacts-update.csv"))}
        if args.only != "contacts":
            write_creates(files["creates"], args.rows)
            write_updates(files["updates"], args.rows)
            args.mixed_accepted = write_mixed(files["mixed"], args.rows, args.rows)
            write_floor_rows(files["floor"], args.rows)
        if args.contacts and args.only != "persons":
            write_contacts(files["contacts"], args.contacts)
            write_contacts(files["contacts_update"], args.contacts, update=True)
        seconds: dict[str, list[float]] = {}
        with server(args.database_url, scratch) as url:
            for k in range(args.repeat):
                one_run(url, k, files, args, seconds)
    print(f"\n{args.rows:,} people, {args.contacts:,} contact rows, "
          f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    pg_p, pg_c = "persons: pgloader, unindexed table", "contacts: pgloader, unindexed table"
    compare = {
        "persons: ingest creates": (pg_p, FLOOR_C),
        "persons: ingest updates": (pg_p, FLOOR_U),
        MIXED: (pg_p, "persons: ingest creates"),
        FLOOR_C: (pg_p, None), FLOOR_U: (pg_p, None),
        "persons: plain COPY, unindexed text table": (pg_p, None),
        "contacts: ingest creates": (pg_c, None),
        "contacts: ingest updates (If-Unmodified-Since)": (pg_c, None),
    }
    figures = []
    for what, values in seconds.items():
        rows = args.contacts if what.startswith("contacts") else args.rows
        pg, floor = compare.get(what, (None, None))
        figures.append(Figure(what, rows, values, pg, floor))
    print_table(figures, args.repeat)


if __name__ == "__main__":
    main()
