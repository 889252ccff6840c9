"""Peak RSS of ``ingestd ingest`` of a Person Import, at two sizes (issue 8).

    .venv/bin/python bench/memory.py [--rows 1000000 5000000] [--database-url URL]

For each size: a fresh database with company ``acme`` and its three custom fields,
then ``ingestd ingest`` of that many new people (the file of bench/throughput.py), as a
child process of its own; its peak resident set is the child's ``ru_maxrss``, read
with ``getrusage(RUSAGE_CHILDREN)`` by a small parent that has no other child. Prints
each peak and the ratio of each later size to the first.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import tempfile
from pathlib import Path

from _common import (
    COMPANY,
    INGESTD,
    cli_env,
    fresh_database,
    result_of,
    server,
    set_up_company,
    write_creates,
)


def peak_rss_mb(env: dict[str, str], path: Path) -> float:
    """Peak RSS of one ``ingestd ingest`` child, in MB."""
    # ru_maxrss of RUSAGE_CHILDREN is the largest waited-for descendant: run the ingest
    # in a fresh intermediate process, so earlier (larger) children cannot mask it.
    probe = ("import resource, subprocess, sys; "
             "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run(
        [os.fspath(Path(INGESTD).with_name("python")), "-c", probe,
         INGESTD, "ingest", str(path), "--company", COMPANY],
        env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"ingestd ingest failed:\n{done.stdout}{done.stderr}")
    return int(done.stdout.split()[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    ap.add_argument("--database-url", help="a server to use instead of an embedded one")
    args = ap.parse_args()
    peaks: list[tuple[int, float]] = []
    with tempfile.TemporaryDirectory(prefix="ingestd-bench-") as tmp, \
            server(args.database_url, Path(tmp)) as url:
        for k, rows in enumerate(args.rows):
            path = Path(tmp) / f"people-{rows}.persons"
            write_creates(path, rows)
            with fresh_database(url, f"mem{k}") as db_url, \
                    tempfile.TemporaryDirectory(prefix="ingestd-bench-run-") as run_dir:
                root = Path(run_dir)
                env = cli_env(db_url, root)
                set_up_company(env, root)
                peak = peak_rss_mb(env, path)
                result = result_of(root, path.name)
                if result.get("accepted") != rows:
                    raise SystemExit(f"{rows:,} rows: {result.get('accepted')} accepted")
            path.unlink()
            peaks.append((rows, peak))
            print(f"{rows:>11,} rows: peak RSS {peak:,.0f} MB", flush=True)
    base_rows, base = peaks[0]
    for rows, peak in peaks[1:]:
        print(f"{rows:,} rows / {base_rows:,} rows: {peak / base:.2f}x")
    # this process's own peak, to tell the generator's memory from the ingest's
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(this script's own peak RSS: {own:,.0f} MB)")


if __name__ == "__main__":
    main()
