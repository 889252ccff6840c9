"""Small files through the real daemon: latency one at a time, and a backlog.

    .venv/bin/python bench/small_files.py [--database-url URL] [--files 50]
        [--backlog 1000] [--backlog-rows 20] [--companies 10] [--workers 4]
        [--db-delay-ms 1]

Without --database-url an embedded PostgreSQL is started under a temp directory.

1. Latency: ``ingestd run`` (a subprocess, settle_seconds=1) and N files of 100 rows
   dropped one after another (write, close; the next once the last is in done/).
   Each file's latency is from the writer's close to its arrival in done/ (the
   ctime of the file in done/: the rename that put it there), minus the settle
   period. Prints p50, p95 and max.
2. Backlog: files of 20 rows over 10 companies put in the inboxes while the daemon
   is stopped (mtimes a minute old, so they are settled), then the daemon started
   with 4 workers. Prints files/s from the first ``file.claimed`` to the last
   ``file.done`` (and from ``daemon.started``).

With ``--db-delay-ms D`` the daemon reaches PostgreSQL through ``delay_proxy.py``, which
holds every byte D/2 ms each way (a database D ms away): what round trips per file cost.

Figures only, no thresholds: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from _common import scratch_database
from delay_proxy import DelayProxy
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ingestd.db.companies import add_company
from ingestd.db.migrations import upgrade
from ingestd.landing import CompanyDirs

SETTLE = 1.0


class DaemonProcess:
    """``python -m ingestd run`` with its JSON log collected line by line."""

    def __init__(self, env: dict[str, str]) -> None:
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen([sys.executable, "-m", "ingestd", "run"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()

    def wait(self, event: str, count: int = 1, timeout: float = 300.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [e for e in self.events if e.get("event") == event]
                if len(found) >= count:
                    return found
                if self.proc.poll() is not None:
                    raise SystemExit(f"the daemon exited ({self.proc.returncode}) before "
                                     f"{count}x {event}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"timed out waiting for {count}x {event}")
                self._cond.wait(left)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self._reader.join(10)


def persons(first: int, rows: int) -> str:
    lines = ["mdn,external_person_id"]
    for i in range(first, first + rows):
        # +1 229 55x xxxx: valid US numbers with distinct subscriber parts
        lines.append(f"+1229{5550000 + i:07d},ext-{i}")
    return "\n".join(lines) + "\n"


def ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


STAGES = ("file.ready", "file.claimed", "file.applied", "file.done")


def latency(env: dict[str, str], landing: Path,
            files: int) -> tuple[list[float], dict[str, list[float]]]:
    """Each file's latency, and the time from close to each stage's log line (seconds)."""
    dirs = CompanyDirs(landing / "lat")
    daemon = DaemonProcess(env)
    try:
        daemon.wait("daemon.started")
        out = []
        closed_at: dict[str, float] = {}
        for i in range(files):
            name = f"drop-{i:04d}.persons"
            with open(dirs.inbox / name, "w") as fh:
                fh.write(persons(i * 100, 100))
            closed_at[name] = time.time()
            daemon.wait("file.done", count=i + 1)
            arrived = os.stat(dirs.done / name).st_ctime
            out.append(arrived - closed_at[name] - SETTLE)
        stages: dict[str, list[float]] = {s: [] for s in STAGES}
        for e in daemon.events:
            if e.get("event") in stages and e.get("file") in closed_at:
                stages[e["event"]].append(ts(e) - closed_at[e["file"]] - SETTLE)
        return out, stages
    finally:
        daemon.stop()


def backlog(env: dict[str, str], landing: Path, files: int, rows: int,
            companies: int) -> tuple[float, float]:
    old = time.time() - 60
    for i in range(files):
        dirs = CompanyDirs(landing / f"c{i % companies:02d}")
        path = dirs.inbox / f"b-{i:05d}.persons"
        path.write_text(persons(1_000_000 + i * rows, rows))
        os.utime(path, (old + i * 0.001, old + i * 0.001))
    daemon = DaemonProcess(env)
    try:
        started = ts(daemon.wait("daemon.started")[0])
        done = daemon.wait("file.done", count=files, timeout=1800)
        claimed = [e for e in daemon.events if e.get("event") == "file.claimed"]
        first, last = ts(claimed[0]), max(ts(e) for e in done)
        return files / (last - first), files / (last - started)
    finally:
        daemon.stop()


def run(url: str, args: argparse.Namespace, tmp: Path) -> None:
    landing = tmp / "landing"
    with psycopg.connect(url, autocommit=True) as conn:
        upgrade(conn)
        for company in ["lat", *(f"c{i:02d}" for i in range(args.companies))]:
            add_company(conn, company)
            dirs = CompanyDirs(landing / company)
            dirs.inbox.mkdir(parents=True)
            dirs.ensure()
    proxy = None
    if args.db_delay_ms:
        proxy = DelayProxy(_address(url), args.db_delay_ms / 2000)
        url = make_conninfo(url, host="127.0.0.1", port=str(proxy.port))
        print(f"the daemon's database is {args.db_delay_ms:g} ms away (round trip, through"
              " a delay proxy)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
    env.update({"INGESTD_DATABASE_URL": url, "INGESTD_LANDING_ROOT": str(landing),
                "INGESTD_STATE_DIR": str(tmp / "state"), "INGESTD_LOG_FORMAT": "json",
                "INGESTD_SETTLE_SECONDS": str(SETTLE), "INGESTD_WORKERS": str(args.workers),
                "INGESTD_CARRIER_MODE": "offline", "PYTHONUNBUFFERED": "1"})
    if args.files:
        seconds, stages = latency(env, landing, args.files)
        lat = [s * 1000 for s in seconds]
        print(f"latency, {args.files} files of 100 rows, close -> done/ minus {SETTLE:g} s "
              f"settle: p50 {pct(lat, 0.5):.0f} ms, p95 {pct(lat, 0.95):.0f} ms, "
              f"max {max(lat):.0f} ms (mean {statistics.fmean(lat):.0f} ms)")
        print("  median from close (minus settle) to the log line: " + ", ".join(
            f"{s} {statistics.median(v) * 1000:.0f} ms" for s, v in stages.items() if v))
    if args.backlog:
        from_claim, from_start = backlog(env, landing, args.backlog, args.backlog_rows,
                                         args.companies)
        print(f"backlog, {args.backlog} files of {args.backlog_rows} rows over "
              f"{args.companies} companies, {args.workers} workers: {from_claim:.0f} files/s "
              f"(first claim -> last done), {from_start:.0f} files/s from daemon.started")
    if proxy is not None:
        files = args.files + args.backlog
        print(f"  the daemon's sends to PostgreSQL (about one per round trip): {proxy.sends:,}"
              f" in all, {proxy.sends / files:.1f} a file (start-up included)")


def _address(url: str) -> Path | tuple[str, int]:
    """Where the server at ``url`` listens: its socket file or its host and port."""
    params = conninfo_to_dict(url)
    host, port = str(params.get("host") or "/var/run/postgresql"), int(params.get("port") or 5432)
    return Path(host) / f".s.PGSQL.{port}" if host.startswith("/") else (host, port)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database-url")
    ap.add_argument("--files", type=int, default=50, help="latency: files one at a time")
    ap.add_argument("--backlog", type=int, default=1000, help="backlog: files in all")
    ap.add_argument("--backlog-rows", type=int, default=20)
    ap.add_argument("--companies", type=int, default=10)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--db-delay-ms", type=float, default=0,
                    help="the database this many ms away, round trip (half each way)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ingestd-bench-") as t:
        tmp = Path(t)
        with scratch_database(args.database_url, tmp, "small") as db_url:
            run(db_url, args, tmp)


if __name__ == "__main__":
    main()
