"""Soak: many small files through the real daemon, RSS against files handled.

    .venv/bin/python bench/soak.py [--files 50000] [--companies 12] [--rows 10]
        [--every 1000] [--medium-every 0] [--workers 4] [--database-url URL]

``ingestd run`` in a subprocess (settle 0.1 s); a feeder keeps about ``--outstanding``
files of ``--rows`` rows in the inboxes of ``--companies`` companies (round robin,
distinct people and numbers throughout) until ``--files`` are done. Every ``--every``
files done it prints the daemon's RSS (VmRSS), threads and open descriptors.
``--medium-every N`` makes every Nth file a medium one (20,000 rows), as in the
production soak where RSS climbed in steps. At the end: RSS at file 2,000 and at the
last file, and the change between them (the target: within 10%).

Figures only, no thresholds: the machine may be shared. Without --database-url an
embedded PostgreSQL is started under a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
from _common import scratch_database

from ingestd.db.companies import add_company
from ingestd.db.migrations import upgrade
from ingestd.landing import CompanyDirs

MEDIUM_ROWS = 20_000
BASELINE_FILE = 2_000


def proc_status(pid: int) -> tuple[float, int, int]:
    """RSS (MB), threads and open descriptors of ``pid``."""
    rss, threads = 0.0, 0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss, threads, len(os.listdir(f"/proc/{pid}/fd"))


def persons(first: int, rows: int) -> str:
    # +1 229 xxx xxxx and +1 212 ...: valid US numbers, distinct for 16 M people
    lines = ["mdn,external_person_id"]
    for i in range(first, first + rows):
        area, sub = ("229", i) if i < 8_000_000 else ("212", i - 8_000_000)
        lines.append(f"+1{area}{2_000_000 + sub:07d},soak-{i}")
    return "\n".join(lines) + "\n"


class Counter:
    """Files done, counted from the daemon's ``file.done`` lines."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.done = 0
        self.failed = 0
        self._proc = proc
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if '"event": "file.done"' in line:
                self.done += 1
            elif '"event": "file.failed"' in line:
                self.failed += 1


def run(url: str, args: argparse.Namespace, tmp: Path) -> None:
    landing = tmp / "landing"
    companies = [f"s{i:02d}" for i in range(args.companies)]
    with psycopg.connect(url, autocommit=True) as conn:
        upgrade(conn)
        for company in companies:
            add_company(conn, company)
            dirs = CompanyDirs(landing / company)
            dirs.inbox.mkdir(parents=True)
            dirs.ensure()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
    env.update({"INGESTD_DATABASE_URL": url, "INGESTD_LANDING_ROOT": str(landing),
                "INGESTD_STATE_DIR": str(tmp / "state"), "INGESTD_LOG_FORMAT": "json",
                "INGESTD_SETTLE_SECONDS": "0.1", "INGESTD_WORKERS": str(args.workers),
                "INGESTD_CARRIER_MODE": "offline", "PYTHONUNBUFFERED": "1"})
    proc = subprocess.Popen([sys.executable, "-m", "ingestd", "run"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, text=True, bufsize=1)
    counter = Counter(proc)
    t0 = time.monotonic()
    print(f"{'files':>8} {'seconds':>8} {'RSS MB':>8} {'threads':>7} {'fds':>4}", flush=True)
    samples: dict[int, float] = {}
    try:
        written, person, next_mark = 0, 0, args.every
        while counter.done + counter.failed < args.files:
            if proc.poll() is not None:
                raise SystemExit(f"the daemon exited ({proc.returncode})")
            handled = counter.done + counter.failed
            while written < args.files and written - handled < args.outstanding:
                rows = (MEDIUM_ROWS if args.medium_every and written % args.medium_every
                        == args.medium_every - 1 else args.rows)
                dirs = CompanyDirs(landing / companies[written % len(companies)])
                (dirs.inbox / f"f{written:07d}.persons").write_text(persons(person, rows))
                written += 1
                person += rows
            for mark in (BASELINE_FILE, next_mark):
                if handled >= mark and mark not in samples:
                    rss, threads, fds = proc_status(proc.pid)
                    samples[mark] = rss
                    print(f"{handled:>8} {time.monotonic() - t0:>8.0f} {rss:>8.1f} "
                          f"{threads:>7} {fds:>4}", flush=True)
            if handled >= next_mark:
                next_mark += args.every
            time.sleep(0.05)
        rss, threads, fds = proc_status(proc.pid)
        seconds = time.monotonic() - t0
        print(f"{args.files:>8} {seconds:>8.0f} {rss:>8.1f} {threads:>7} {fds:>4}")
        print(f"{args.files:,} files ({counter.failed} failed) in {seconds:.0f} s, "
              f"{args.files / seconds:.0f} files/s")
        base = samples.get(BASELINE_FILE)
        if base:
            print(f"RSS at file {BASELINE_FILE:,}: {base:.1f} MB; at file {args.files:,}: "
                  f"{rss:.1f} MB; change {100 * (rss - base) / base:+.1f}%")
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=50_000)
    ap.add_argument("--companies", type=int, default=12)
    ap.add_argument("--rows", type=int, default=10)
    ap.add_argument("--every", type=int, default=1000)
    ap.add_argument("--medium-every", type=int, default=0)
    ap.add_argument("--outstanding", type=int, default=48, help="files waiting at most")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--database-url")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ingestd-soak-") as t:
        tmp = Path(t)
        with scratch_database(args.database_url, tmp, "soak") as db_url:
            run(db_url, args, tmp)


if __name__ == "__main__":
    main()
