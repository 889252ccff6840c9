"""Throughput of a Person Import through the whole pipeline, against plain COPY.

    .venv/bin/python bench/bench_persons.py --rows 200000 [--database-url URL]

Without --database-url an embedded PostgreSQL is started under a temp directory.
Prints rows/s for: parsing only, the full `ingest` (claim → apply → commit →
sidecars → move), and a plain COPY of the same rows into a bare table, so the
figures can be compared on the same machine in the same run.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from ingestd.carrier import make_carrier
from ingestd.db.companies import add_company
from ingestd.db.database import Database
from ingestd.formats.persons import open_persons
from ingestd.lifecycle import Pipeline
from ingestd.settings import Settings


def make_file(path: Path, rows: int) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("mdn,external_person_id\n")
        for i in range(rows):
            # +1 229 55x xxxx: valid US numbers with distinct subscriber parts
            fh.write(f"+1229{5550000 + i % 10_000_000:07d},ext-{i}\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--database-url")
    args = ap.parse_args()
    scratch_db = None
    if args.database_url:
        # A fresh database, so earlier runs' people do not turn creates into updates.
        scratch_db = f"ingestd_bench_{os.getpid()}"
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{scratch_db}"')
        args.database_url = make_conninfo(args.database_url, dbname=scratch_db)
    try:
        run(args)
    finally:
        if scratch_db:
            with psycopg.connect(make_conninfo(args.database_url, dbname="postgres"),
                                 autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{scratch_db}" WITH (FORCE)')


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = Settings(database_url=args.database_url, landing_root=root / "landing",
                            state_dir=root / "state", carrier_mode="offline")
        src = root / "bench.persons"
        make_file(src, args.rows)
        size_mb = src.stat().st_size / 1e6

        t0 = time.perf_counter()
        with open(src, "rb") as fh:
            n = sum(len(c) for c in open_persons(fh).chunks(settings.chunk_size))
        parse_s = time.perf_counter() - t0

        with Database(settings, pool_size=2) as db:
            db.upgrade()
            with db.connect() as conn:
                add_company(conn, "bench")
            inbox = settings.landing_root / "bench" / "inbox"
            inbox.mkdir(parents=True)
            target = inbox / src.name
            os.link(src, target)
            pipeline = Pipeline(settings, db, make_carrier(settings))
            t0 = time.perf_counter()
            outcome = pipeline.process(target)
            ingest_s = time.perf_counter() - t0
            assert outcome.status == "done", outcome.result

            with db.connect() as conn:
                conn.execute("CREATE TEMP TABLE plain (mdn text, external_person_id text)")
                t0 = time.perf_counter()
                with conn.cursor() as cur, cur.copy(
                        "COPY plain FROM STDIN WITH (FORMAT csv, HEADER true)") as copy, \
                        open(src, "rb") as fh:
                    while data := fh.read(1 << 20):
                        copy.write(data)
                conn.commit()
                copy_s = time.perf_counter() - t0
            with psycopg.connect(db.url) as conn:
                stored = conn.execute("SELECT count(*) FROM bench.persons").fetchone()

        print(f"rows: {n:,} ({size_mb:.1f} MB), accepted {outcome.result['accepted']:,}, "
              f"stored {stored[0] if stored else 0:,}")
        print(f"parse only : {n / parse_s:>10,.0f} rows/s  ({parse_s:.2f} s)")
        print(f"full ingest: {n / ingest_s:>10,.0f} rows/s  ({ingest_s:.2f} s)")
        print(f"plain COPY : {n / copy_s:>10,.0f} rows/s  ({copy_s:.2f} s)")
        print(f"ingest / COPY: {copy_s / ingest_s:.2%}")
        # Peak RSS of this process (the file is streamed: it should not grow with N).
        print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
