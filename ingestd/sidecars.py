"""Writing the files a partner reads beside their drop; the parts every format shares.

Each file is written under a temporary dot-name and renamed into place, so a partner
never sees half a sidecar. Which sidecars a format writes is its own business
(``persons/sidecars.py``, ``contacts/sidecars.py``); ``NAME.result.json`` is written for
every file, after the format's, by the lifecycle.

The CSV sidecars are opened by people, often in a spreadsheet, and echo the partner's
cells: a cell such as ``=HYPERLINK(...)`` would run as a formula there (CSV injection).
With ``guard`` on, every cell that a spreadsheet would read as a formula gets a leading
``'`` (OWASP's advice), except a plain signed number (``+12295551234``, ``-0.25``): a
spreadsheet reads that as a number, not a formula, and a partner who fixes a row in
``errors.csv`` and sends it again must send what they sent the first time. These files
begin with a UTF-8 byte-order mark exactly when the upload did (``Finished.bom``): the
partner's tool wrote one, so it expects one, and Excel needs it to read UTF-8.
``NAME.retry.persons`` is data to drop again and stays exact.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import psycopg

from ingestd.landing import RESULT_JSON
from ingestd.results import FileResult

# What makes a spreadsheet read a cell as a formula (OWASP "CSV Injection").
_FORMULA_START = frozenset("=+-@\t\r")
_TEMP = re.compile(r"\.ingestd-[0-9a-f]{12}\.tmp")


@dataclass(frozen=True, slots=True)
class Finished:
    """What a format's sidecar writer gets: the committed file and where it goes."""

    conn: psycopg.Connection[Any]  # reads the stored row results (server-side cursors)
    file_id: int
    directory: Path  # done/ or failed/
    name: str  # the file's final name there
    result: FileResult
    meta: dict[str, Any]  # what the applier recorded (ApplyContext.columns and .extra)
    guard: bool  # settings.sidecar_formula_guard

    @property
    def bom(self) -> bool:
        """The upload began with a UTF-8 byte-order mark (so the CSV sidecars do too)."""
        return bool(self.meta.get("bom"))


# A plain signed number: what a spreadsheet takes for a number, never for a formula.
_PLAIN_NUMBER = re.compile(r"[+-]?[0-9]+(?:[.,][0-9]+)?")


def neutralise(cell: Any) -> Any:
    """``cell`` with a leading ``'`` when a spreadsheet would run it as a formula."""
    if (isinstance(cell, str) and cell[:1] in _FORMULA_START
            and _PLAIN_NUMBER.fullmatch(cell) is None):
        return "'" + cell
    return cell


# A cell that starts with a formula character, in a line's cells joined by NUL (which no
# stored cell holds): one C-level search tells a line that needs no guard.
_FORMULA_CELL = re.compile("\x00[=+\\-@\t\r]")


def _guarded(line: Sequence[Any]) -> Sequence[Any]:
    """``line`` with every cell neutralised; the same line when none needs it."""
    if _FORMULA_CELL.search("\x00" + "\x00".join(map(str, line))) is None:
        return line
    return [neutralise(cell) for cell in line]


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
    return write_atomic(directory / (name + RESULT_JSON), fill)


def csv_file(path: Path, header: Sequence[str] | None, rows: Iterable[Sequence[Any]],
             guard: bool, *, bom: bool = False) -> Path:
    """A CSV sidecar: RFC 4180 line ends, cells guarded against formulas if ``guard``,
    a byte-order mark first if ``bom``."""
    def fill(fh: TextIO) -> None:
        fh.writelines(csv_text(header, rows, guard, bom=bom))
    return write_atomic(path, fill)


# Text handed on at a time by ``csv_text``: an HTTP answer's chunk, a file's write.
CSV_CHUNK_CHARS = 1 << 16


def csv_text(header: Sequence[str] | None, rows: Iterable[Sequence[Any]], guard: bool, *,
             bom: bool = False) -> Iterator[str]:
    """A CSV sidecar's text in chunks of about ``CSV_CHUNK_CHARS``: the one encoding of
    the sidecars, whether they go to a file or into an HTTP answer (bounded memory)."""
    out = io.StringIO()
    if bom:
        out.write("\ufeff")
    # CRLF as RFC 4180 says; it also makes the writer quote a field holding a lone CR.
    w = csv.writer(out, lineterminator="\r\n")
    lines = rows if header is None else itertools.chain([header], rows)
    if guard:
        lines = map(_guarded, lines)
    for line in lines:
        w.writerow(line)
        if out.tell() >= CSV_CHUNK_CHARS:
            yield out.getvalue()
            out.seek(0)
            out.truncate()
    if out.tell():
        yield out.getvalue()
