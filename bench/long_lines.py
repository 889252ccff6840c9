"""Peak memory of the readers on a file with one enormous line.

    .venv/bin/python bench/long_lines.py [--persons-mb 200] [--contacts-mb 50]

Generates, in a temp directory, a ``.persons`` file that is one 200 MB line
between two good rows and a contacts CSV with a 50 MB field, and reads each in a
fresh process with the default ``max_line_bytes`` (1 MiB), next to the same file
without the long line. Prints each reader's peak RSS and the difference the long
line makes (before the limit it was about the size of the line, or more).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

from ingestd.contacts.reader import COLUMNS

# Run in a child, so each peak is that file's alone. Prints: records, peak RSS in KiB.
_READ = """
import resource, sys
from ingestd.contacts.reader import open_contacts
from ingestd.persons.reader import open_persons
path = sys.argv[1]
if path.endswith(".persons"):
    with open(path, "rb") as fh:
        n = sum(len(c) for c in open_persons(fh).chunks(5000))
else:
    with open_contacts(__import__("pathlib").Path(path)) as reader:
        n = sum(len(s.rows) for s in reader.sections())
print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def persons_file(path: Path, mb: int) -> None:
    with open(path, "wb") as fh:
        fh.write(b"mdn,note\n+12295550001,before\n+12295550002,")
        block = b"x" * (1 << 20)
        for _ in range(mb):
            fh.write(block)
        fh.write(b"\n+12295550003,after\n")


def contacts_file(path: Path, mb: int) -> None:
    header = [c.name for c in COLUMNS]

    def row(code: str) -> list[str]:
        values = dict.fromkeys(header, "")
        values.update(responseTrackingCode=code, subjectId="s", treatmentId="t1")
        return [values[n] for n in header]

    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerow(row("before"))
        big = row("big")
        big[header.index("responseValue")] = "PLACEHOLDER"
        line = ",".join(big)
        head, tail = line.split("PLACEHOLDER")
        fh.write(head)
        block = "v" * (1 << 20)
        for _ in range(mb):
            fh.write(block)
        fh.write(tail + "\r\n")
        writer.writerow(row("after"))


def peak(path: Path) -> tuple[int, float]:
    out = subprocess.run([sys.executable, "-c", _READ, str(path)], check=True,
                         capture_output=True, text=True).stdout.split()
    return int(out[0]), int(out[1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--persons-mb", type=int, default=200)
    ap.add_argument("--contacts-mb", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ingestd-long-lines-") as tmp:
        cases = [
            ("persons", f"{args.persons_mb} MB single line", ".persons", persons_file,
             args.persons_mb),
            ("contacts", f"{args.contacts_mb} MB field", ".csv", contacts_file, args.contacts_mb),
        ]
        for fmt, what, suffix, make, mb in cases:
            small, large = Path(tmp) / f"small{suffix}", Path(tmp) / f"large{suffix}"
            make(small, 0)
            make(large, mb)
            base_rows, base = peak(small)
            rows, high = peak(large)
            print(f"{fmt:8} {what:22} records {rows} (without it {base_rows}): "
                  f"peak RSS {high:.0f} MB, without the long line {base:.0f} MB, "
                  f"+{high - base:.0f} MB")


if __name__ == "__main__":
    main()
