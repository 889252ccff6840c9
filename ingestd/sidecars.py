"""Writing the files a partner reads beside their drop. Each is written under a
temporary dot-name and renamed into place, so a partner never sees half a sidecar.

The CSV sidecars are opened by people, often in a spreadsheet, and echo the partner's
cells: a cell such as ``=HYPERLINK(...)`` would run as a formula there (CSV injection).
With ``guard`` on, every cell that a spreadsheet would read as a formula gets a leading
``'`` (OWASP's advice). ``NAME.retry.persons`` is data to drop again and stays exact.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from ingestd.db.ledger import RejectedRow
from ingestd.persons.reader import iter_persons

# What makes a spreadsheet read a cell as a formula (OWASP "CSV Injection").
_FORMULA_START = frozenset("=+-@\t\r")


def neutralise(cell: Any) -> Any:
    """``cell`` with a leading ``'`` when a spreadsheet would run it as a formula."""
    if isinstance(cell, str) and cell[:1] in _FORMULA_START:
        return "'" + cell
    return cell
_TEMP = re.compile(r"\.ingestd-[0-9a-f]{12}\.tmp")


def write_atomic(path: Path, fill: Callable[[TextIO], None]) -> Path:
    # Short, so a long final name still fits NAME_MAX; a dotfile, so partners skip it.
    tmp = path.with_name(f".ingestd-{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def remove_temp_files(directory: Path) -> None:
    """Delete what a process killed inside ``write_atomic`` left behind.

    Only safe while nobody writes sidecars into ``directory``: under the company lock.
    """
    try:
        names = os.listdir(directory)
    except OSError:
        return  # missing or not a folder: the finish that needs it reports that
    for name in names:
        if _TEMP.fullmatch(name):
            try:
                os.unlink(directory / name)
            except FileNotFoundError:
                pass


def result_json(directory: Path, name: str, result: dict[str, Any]) -> Path:
    def fill(fh: TextIO) -> None:
        json.dump(result, fh, indent=2, ensure_ascii=False, default=str)
        fh.write("\n")
    return write_atomic(directory / f"{name}.result.json", fill)


def _csv(directory: Path, filename: str, header: Sequence[str] | None,
         rows: Iterable[Sequence[Any]], guard: bool) -> Path:
    def fill(fh: TextIO) -> None:
        # CRLF as RFC 4180 says; it also makes the writer quote a field holding a lone CR.
        w = csv.writer(fh, lineterminator="\r\n")
        lines = rows if header is None else itertools.chain([header], rows)
        if guard:
            lines = ([neutralise(cell) for cell in line] for line in lines)
        w.writerows(lines)
    return write_atomic(directory / filename, fill)


def persons_errors(directory: Path, name: str, columns: Sequence[str],
                   rejected: Iterable[RejectedRow], *, guard: bool = True) -> Path:
    """NAME.errors.csv: record, error_class, error_message, error_field, error_detail,
    then the row's fields."""
    return _csv(directory, f"{name}.errors.csv",
                ["record", "error_class", "error_message", "error_field", "error_detail",
                 *columns],
                ((r.record, r.error_class, r.message, r.error_field, r.error_detail, *r.fields)
                 for r in rejected), guard)


def persons_retry(directory: Path, name: str, columns: Sequence[str], delimiter: str,
                  multi_select_delimiter: str, rows: Iterable[Sequence[str]]) -> Path:
    """NAME.retry.persons: the rows that failed the carrier lookup transiently, ready to
    drop again, written so that the persons reader gives back exactly these rows."""
    def fill(fh: TextIO) -> None:
        fh.writelines(iter_persons(columns, rows, delimiter, multi_select_delimiter))
    return write_atomic(directory / f"{name}.retry.persons", fill)


def contacts_accepted(directory: Path, name: str,
                      rows: Iterable[tuple[int, str, Sequence[str]]], *,
                      guard: bool = True) -> Path:
    """NAME.accepted.csv: record, contact id, the row's columns (no header row, like the API)."""
    return _csv(directory, f"{name}.accepted.csv", None,
                ((rec, ref, *fields) for rec, ref, fields in rows), guard)


def contacts_rejected(directory: Path, name: str,
                      rows: Iterable[tuple[int, Sequence[str], str]], *,
                      guard: bool = True) -> Path:
    """NAME.rejected.csv: record, the section's first row, the message."""
    return _csv(directory, f"{name}.rejected.csv", None,
                ((rec, *fields, msg) for rec, fields, msg in rows), guard)


def contacts_global(directory: Path, name: str, rows: Iterable[tuple[str, str]], *,
                    guard: bool = True) -> Path:
    """NAME.global.csv: responseTrackingCode or '*', message."""
    return _csv(directory, f"{name}.global.csv", None, rows, guard)

