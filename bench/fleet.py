"""Several instances (issue 11): files/s with 1, 2 and 3 instances, and how long a company
waits after its instance is paused.

    .venv/bin/python bench/fleet.py [--files 600] [--companies 20] [--instances 1,2,3]
                                    [--lease 2] [--database-url URL]

Each run gets a fresh database with ``--companies`` companies (one custom field) and
``--files`` small ``.persons`` files (three rows each) spread over them, staged and
then renamed into the inboxes all at once while the instances run; the figure is
files finished per second from the renames to the last ledger row finished.

The pause: two instances with ``lease_seconds = --lease``; one of them SIGSTOPs itself
in the middle of a file (the ``before_commit:stop`` failpoint, rows written and not
committed); a file dropped into that company at that moment is timed until it is in
``done/`` (the peer must expire the paused one, end its session and recover its claim
first). Expect about ``lease + lease/3`` plus settle.

On a machine with two cores the instances share them with PostgreSQL: more
instances add parallel companies, not cores.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
from _common import cli_env, fresh_database, ingestd, server, url_for_env

FIELDS = '[[field]]\nname = "note"\ntype = "string"\n'


class Instance:
    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "ingestd", "run"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        self.events: list[dict[str, object]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                pass

    def has(self, event: str) -> bool:
        return any(e.get("event") == event for e in list(self.events))

    def stopped(self) -> bool:
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] == "T"

    def end(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)


def finished(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM ingestd.files"
                           " WHERE finished_at IS NOT NULL").fetchone()
    return int(row[0]) if row else 0


def prepare(root: Path, db_url: str, companies: list[str], lease: float,
            workers: int) -> dict[str, str]:
    env = cli_env(db_url, root)
    env.update(INGESTD_LOG_FORMAT="json", INGESTD_LOG_LEVEL="info",
               INGESTD_SETTLE_SECONDS="0.2", INGESTD_LEASE_SECONDS=str(lease),
               INGESTD_WORKERS=str(workers), INGESTD_DATABASE_URL=url_for_env(db_url))
    ingestd(env, "db", "upgrade")
    (root / "fields.toml").write_text(FIELDS)
    for c in companies:
        ingestd(env, "company", "add", c)
        ingestd(env, "fields", "load", str(root / "fields.toml"), "--company", c)
        for sub in ("inbox", "done", "failed"):
            (root / "landing" / c / sub).mkdir(parents=True, exist_ok=True)
    return env


def throughput(url: str, n: int, files: int, companies: int, lease: float,
               workers: int) -> float:
    names = [f"c{i:02d}" for i in range(companies)]
    with tempfile.TemporaryDirectory() as tmp, fresh_database(url, f"fleet{n}") as db_url:
        root = Path(tmp)
        env = prepare(root, db_url, names, lease, workers)
        staging = root / "staging"
        staging.mkdir()
        base = time.time() - 3600
        plan = []
        for k in range(files):
            company = names[k % companies]
            path = staging / f"{k:05d}.persons"
            path.write_text(f"external_person_id,note\ne1,{k}\ne{k},{k}\nshared,{k}\n")
            os.utime(path, (base + k, base + k))
            plan.append((path, root / "landing" / company / "inbox" / path.name))
        fleet = [Instance(env) for _ in range(n)]
        try:
            wait(lambda: all(i.has("daemon.started") for i in fleet), 120, "start")
            t0 = time.monotonic()
            for src, dst in plan:
                os.rename(src, dst)
            wait(lambda: finished(db_url) >= files, 1800, f"{files} files")
            return files / (time.monotonic() - t0)
        finally:
            for i in fleet:
                i.end()


def pause_wait(url: str, lease: float) -> float:
    with tempfile.TemporaryDirectory() as tmp, fresh_database(url, "fleetpause") as db_url:
        root = Path(tmp)
        env = prepare(root, db_url, ["acme"], lease, 2)
        inbox = root / "landing" / "acme" / "inbox"
        peer = Instance(env)
        paused = Instance({**env, "INGESTD_FAILPOINT": "before_commit:stop"})
        try:
            wait(lambda: peer.has("daemon.started") and paused.has("daemon.started"), 120,
                 "start")
            k = 0
            while not paused.stopped():  # feed acme until the failpoint instance has one
                (inbox / f"feed-{k:04d}.persons").write_text(f"external_person_id,note\n"
                                                             f"e1,{k}\n")
                k += 1
                time.sleep(0.05)
            t0 = time.monotonic()
            (inbox / "after-pause.persons").write_text("external_person_id,note\ne1,x\n")
            done = root / "landing" / "acme" / "done" / "after-pause.persons"
            wait(done.exists, 600, "the file dropped after the pause")
            return time.monotonic() - t0
        finally:
            paused.end()
            peer.end()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=600)
    p.add_argument("--companies", type=int, default=20)
    p.add_argument("--instances", default="1,2,3")
    p.add_argument("--workers", type=int, default=4, help="per instance")
    p.add_argument("--lease", type=float, default=2.0)
    p.add_argument("--database-url")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as scratch, server(args.database_url,
                                                          Path(scratch)) as url:
        print(f"{args.files} files over {args.companies} companies, "
              f"{args.workers} workers per instance, {os.cpu_count()} CPUs")
        base = None
        for n in (int(x) for x in args.instances.split(",")):
            rate = throughput(url, n, args.files, args.companies, args.lease, args.workers)
            base = base or rate
            print(f"  {n} instance(s): {rate:7.1f} files/s  ({rate / base:.2f}x)")
        waited = pause_wait(url, args.lease)
        print(f"  a company's wait after its instance paused (lease {args.lease:g} s): "
              f"{waited:.1f} s")


if __name__ == "__main__":
    main()
