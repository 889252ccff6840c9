"""Where the time of one ``ingestd ingest`` goes: a py-spy profile, summarised (issue 8).

    .venv/bin/pip install py-spy
    .venv/bin/python bench/profile.py creates|updates|contacts|contacts-updates
                     [--rows N] [--database-url URL] [--raw FILE]

The file is the one ``bench/throughput.py`` generates for that run (``updates`` and
``contacts-updates`` first ingest their creates, unprofiled). py-spy samples every
thread of the real command 200 times a second; printed are each thread's share of
the samples, the functions where they were taken (self) and the ingestd functions
they were under (inclusive), as shares of all samples. Sampling costs the process a
little: read the shares, not the duration.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

from _common import (
    COMPANY,
    INGESTD,
    cli_env,
    fresh_database,
    ingest,
    server,
    set_up_company,
    write_contacts,
    write_creates,
    write_updates,
)

_LINE = re.compile(r":\d+\)")


def summarise(raw: Path, top: int) -> None:
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = [_LINE.sub(")", f) for f in stack.split(";")]
        threads[re.sub(r"thread \(0x[0-9a-f]+\): |\(\d+\): ", "", frames[0])] += n
        own[frames[-1]] += n
        for f in set(frames[1:]):
            if "ingestd/" in f:
                under[f] += n
    if not total:
        raise SystemExit("py-spy took no samples")
    print(f"\n{total} samples\n\nthreads:")
    for name, n in threads.most_common(8):
        print(f"  {n / total:6.1%}  {name}")
    print("\nself (where the samples were taken):")
    for name, n in own.most_common(top):
        print(f"  {n / total:6.1%}  {name}")
    print("\ninclusive (ingestd functions the samples were under):")
    for name, n in under.most_common(top):
        print(f"  {n / total:6.1%}  {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("creates", "updates", "contacts", "contacts-updates"))
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--database-url", help="a server to use instead of an embedded one")
    ap.add_argument("--raw", type=Path, help="keep py-spy's raw samples here (flamegraph.pl input)")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    with tempfile.TemporaryDirectory(prefix="ingestd-profile-") as tmp:
        scratch = Path(tmp)
        contacts = args.what.startswith("contacts")
        create = scratch / ("contacts.csv" if contacts else "creates.persons")
        (write_contacts if contacts else write_creates)(create, args.rows)
        target = create
        if args.what == "updates":
            target = scratch / "updates.persons"
            write_updates(target, args.rows)
        elif args.what == "contacts-updates":
            target = scratch / "contacts-update.csv"
            write_contacts(target, args.rows, update=True)
            since = datetime.now(UTC) + timedelta(days=1)
            target.with_name(target.name + ".headers").write_text(
                f"If-Unmodified-Since: {format_datetime(since, usegmt=True)}\n")
        with server(args.database_url, scratch) as url, fresh_database(url, "profile") as db:
            root = scratch / "run"
            env = cli_env(db, root)
            set_up_company(env, root)
            if target is not create:
                ingest(env, root, create, args.rows)
            raw = args.raw or scratch / "profile.txt"
            command = [INGESTD, "ingest", str(target), "--company", COMPANY]
            subprocess.run([py_spy, "record", "--rate", "200", "--threads", "--format", "raw",
                            "--output", str(raw), "--", *command], env=env, check=True,
                           capture_output=True)
            print(f"{args.what}: {args.rows:,} rows, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
            summarise(raw, args.top)

if __name__ == "__main__":
    main()
