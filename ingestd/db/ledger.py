"""The ledger: all SQL of ingestd.files (one row per claimed file) and of
ingestd.row_results (its rows' stored outcomes, written by ``RowResults``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence, Sized
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Json, Jsonb

from ingestd.db.copy_text import NULL, text, text_array
from ingestd.errors import RowError


@dataclass
class LedgerEntry:
    id: int
    company: str
    name: str
    claim_id: str
    format: str | None
    status: str
    result: dict[str, Any]
    meta: dict[str, Any]
    final_path: str | None
    finished_at: datetime | None


def insert(conn: psycopg.Connection[Any], *, company: str, name: str, claim_id: str,
           fmt: str | None, sha256: str, size: int, started_at: datetime) -> int:
    return insert_later(conn, company=company, name=name, claim_id=claim_id, fmt=fmt,
                        sha256=sha256, size=size, started_at=started_at)()


def insert_later(conn: psycopg.Connection[Any], *, company: str, name: str, claim_id: str,
                 fmt: str | None, sha256: str, size: int,
                 started_at: datetime) -> Callable[[], int]:
    """``insert`` sent; the function returned reads the new id (in pipeline mode, once
    the pipeline has synced)."""
    cur = conn.execute(
        "INSERT INTO ingestd.files (company, name, claim_id, format, sha256, size, status,"
        " started_at) VALUES (%s, %s, %s, %s, %s, %s, 'failed', %s) RETURNING id",
        (company, name, claim_id, fmt, sha256, size, started_at),
    )

    def read() -> int:
        row = cur.fetchone()
        assert row is not None
        return int(row[0])
    return read


def find_duplicate(conn: psycopg.Connection[Any], company: str, sha256: str,
                   file_id: int) -> tuple[int, str] | None:
    """An earlier file of this company with the same content that was applied; None
    for content that was requeued (``ingestd requeue``), which uses the requeue up.

    Both queries go in one round trip (pipeline mode): the second only reads, and its
    answer is ignored when a requeue was used up."""
    with conn.pipeline():
        requeue = _take_requeue(conn, company, sha256)
        earlier = conn.execute(
            "SELECT id, name FROM ingestd.files WHERE company = %s AND sha256 = %s"
            " AND status = 'done' AND duplicate_of IS NULL AND id <> %s ORDER BY id LIMIT 1",
            (company, sha256, file_id),
        )
    if requeue.fetchone() is not None:
        return None
    row = earlier.fetchone()
    return (int(row[0]), str(row[1])) if row else None


_ENTRY_COLUMNS = ("id, company, name, claim_id, format, status, result, meta, final_path,"
                  " finished_at")


def complete(conn: psycopg.Connection[Any], file_id: int, result: dict[str, Any],
             meta: dict[str, Any], duplicate_of: int | None,
             final_path: str | None = None) -> LedgerEntry:
    """Record the file's outcome (and, when already chosen, its final path) in the
    apply's transaction; return the row as it now reads."""
    error = result.get("error") or {}
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "UPDATE ingestd.files SET status = %s, rows = %s, accepted = %s, rejected = %s,"
            " rejected_by_class = %s, error_class = %s, error_message = %s,"
            " duplicate_of = %s, result = %s, meta = %s, final_path = %s,"
            " committed_at = now() WHERE id = %s RETURNING " + _ENTRY_COLUMNS,
            (result["status"], result["rows"], result["accepted"], result["rejected"],
             Jsonb(result["rejected_by_class"]), error.get("class"), error.get("message"),
             duplicate_of, Json(result), Jsonb(meta), final_path, file_id),
        ).fetchone()
    assert row is not None
    return LedgerEntry(**row)


def by_claim(conn: psycopg.Connection[Any], claim_id: str) -> LedgerEntry | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT " + _ENTRY_COLUMNS + " FROM ingestd.files WHERE claim_id = %s",
            (claim_id,),
        ).fetchone()
    return LedgerEntry(**row) if row else None


def set_final_path(conn: psycopg.Connection[Any], file_id: int, final_path: str) -> None:
    conn.execute("UPDATE ingestd.files SET final_path = %s WHERE id = %s", (final_path, file_id))


def set_finished(conn: psycopg.Connection[Any], file_id: int,
                 also: Callable[[psycopg.Connection[Any]], object] | None = None) -> None:
    """Mark the file finished and commit, in one round trip (pipeline mode), with
    ``also``'s statements (results not read) in the same commit.

    A durable commit: status, requeue and prune read this mark, so a server crash
    right after the move must not lose it.
    """
    with conn.pipeline():
        conn.execute("UPDATE ingestd.files SET finished_at = now() WHERE id = %s", (file_id,))
        if also is not None:
            also(conn)
        conn.commit()


# Rows a server-side cursor fetches per round trip (psycopg's default is 100): a
# million-row file's sidecars in hundreds of round trips, still in bounded memory. The
# fields come as JSON text, parsed by orjson: psycopg parses a text[] in Python.
_ITERSIZE = 5000


@dataclass(frozen=True, slots=True)
class RejectedRow:
    record: int
    error_class: str
    message: str
    error_field: str  # the column at fault, "" for the row as a whole
    error_detail: str
    fields: list[str]


def rejected_rows(conn: psycopg.Connection[Any], file_id: int,
                  error_class: str | None = None, *,
                  leaders_only: bool = False) -> Iterator[RejectedRow]:
    """Stream rejected rows in record order (server-side cursor: constant memory);
    ``leaders_only``: without the rows a contacts section took along."""
    query = ("SELECT record, error_class, message, error_field, error_detail,"
             " to_json(fields)::text FROM ingestd.row_results WHERE file_id = %s AND NOT accepted")
    if leaders_only:
        query += " AND ref IS NULL"
    params: tuple[Any, ...] = (file_id,)
    if error_class is not None:
        query += " AND error_class = %s"
        params = (file_id, error_class)
    with conn.cursor(name=f"rej_{file_id}") as cur:
        cur.itersize = _ITERSIZE
        cur.execute(query + " ORDER BY record", params)
        for rec, cls, msg, column, detail, fields in cur:
            yield RejectedRow(int(rec), str(cls), str(msg), str(column), str(detail),
                              orjson.loads(fields))


def accepted_rows(conn: psycopg.Connection[Any],
                  file_id: int) -> Iterator[tuple[int, str, list[str]]]:
    with conn.cursor(name=f"acc_{file_id}") as cur:
        cur.itersize = _ITERSIZE
        cur.execute("SELECT record, ref, to_json(fields)::text FROM ingestd.row_results"
                    " WHERE file_id = %s AND accepted ORDER BY record", (file_id,))
        for rec, ref, fields in cur:
            yield int(rec), str(ref), orjson.loads(fields)


def recent(conn: psycopg.Connection[Any], company: str, limit: int = 5) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT name, status, format, rows, accepted, rejected, error_class, error_message,"
            " duplicate_of IS NOT NULL AS duplicate, committed_at, finished_at, final_path"
            " FROM ingestd.files WHERE company = %s ORDER BY id DESC LIMIT %s",
            (company, limit),
        ).fetchall()


def last_failed(conn: psycopg.Connection[Any], company: str) -> dict[str, Any] | None:
    """The company's most recent failed file (nothing applied), however old."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT name, error_class, error_message, committed_at FROM ingestd.files"
            " WHERE company = %s AND status = 'failed' ORDER BY id DESC LIMIT 1", (company,),
        ).fetchone()


def counts_since(conn: psycopg.Connection[Any], company: str, seconds: float) -> dict[str, int]:
    rows = conn.execute(
        "SELECT status, count(*) FROM ingestd.files WHERE company = %s"
        " AND committed_at > now() - make_interval(secs => %s) GROUP BY status",
        (company, seconds),
    ).fetchall()
    # Every status, zero too: a reader of `status --json` should not have to guess.
    return {"done": 0, "failed": 0} | {str(s): int(n) for s, n in rows}


# -- requeue and retention ----------------------------------------------------------------

@dataclass
class FinishedFile:
    """A ledger row whose file was finished into done/ or failed/."""

    id: int
    company: str
    name: str
    sha256: str
    final_path: str
    requeued_at: datetime | None


_FINISHED = ("SELECT id, company, name, sha256, final_path, requeued_at FROM ingestd.files"
             " WHERE finished_at IS NOT NULL AND final_path IS NOT NULL AND pruned_at IS NULL")


def finished_at(conn: psycopg.Connection[Any], company: str, folder: str,
                name: str) -> FinishedFile | None:
    """The file now at ``<company>/<folder>/<name>`` (folder done or failed), if ingestd
    finished it there. final_path is matched by its tail: it is as absolute as the landing
    root was for the process that finished the file."""
    tail = f"/{company}/{folder}/{name}"
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            _FINISHED + " AND company = %s AND requeued_at IS NULL"
            " AND right('/' || final_path, length(%s)) = %s ORDER BY id DESC LIMIT 1",
            (company, tail, tail),
        ).fetchone()
    return FinishedFile(**row) if row else None


def mark_requeued(conn: psycopg.Connection[Any], entry: FinishedFile, sha256: str) -> None:
    """The file went back to inbox/: its next apply with this content is not a duplicate."""
    conn.execute("UPDATE ingestd.files SET requeued_at = now() WHERE id = %s", (entry.id,))
    conn.execute("INSERT INTO ingestd.requeues (company, sha256, file_id) VALUES (%s, %s, %s)",
                 (entry.company, sha256, entry.id))


def _take_requeue(conn: psycopg.Connection[Any], company: str,
                  sha256: str) -> psycopg.Cursor[Any]:
    """Use up one requeue of this content, if there is one (in the apply's transaction:
    a rolled-back apply keeps it); the cursor returns its id."""
    return conn.execute(
        "DELETE FROM ingestd.requeues WHERE id = (SELECT id FROM ingestd.requeues"
        " WHERE company = %s AND sha256 = %s ORDER BY id LIMIT 1) RETURNING id",
        (company, sha256),
    )


def companies_finished_before(conn: psycopg.Connection[Any], days: int) -> list[str]:
    rows = conn.execute(
        "SELECT DISTINCT company FROM ingestd.files WHERE finished_at IS NOT NULL"
        " AND pruned_at IS NULL AND finished_at <= now() - make_interval(days => %s)"
        " ORDER BY company", (days,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def finished_before(conn: psycopg.Connection[Any], company: str,
                    days: int) -> list[FinishedFile]:
    """Files (requeued ones too) that finished at least ``days`` days ago, not yet pruned."""
    with conn.cursor(row_factory=dict_row) as cur:
        return [FinishedFile(**r) for r in cur.execute(
            _FINISHED + " AND company = %s AND finished_at <= now() - make_interval(days => %s)"
            " ORDER BY id", (company, days),
        ).fetchall()]


def mark_pruned(conn: psycopg.Connection[Any], file_id: int) -> None:
    """The file and its sidecars are gone: drop its stored row results, keep the row (its
    sha256 still makes a re-drop of the same content a duplicate)."""
    conn.execute("DELETE FROM ingestd.row_results WHERE file_id = %s", (file_id,))
    conn.execute("UPDATE ingestd.files SET pruned_at = now() WHERE id = %s", (file_id,))


# -- row results ---------------------------------------------------------------------------

# Rejected rows kept in memory for the CLI to print (the sidecars have them all).
SAMPLE_ERRORS = 1000


class RowResults:
    """Counts outcomes and stores the ones sidecars need in ``ingestd.row_results``.

    Rejected rows are always stored (sidecars can be rebuilt after a crash);
    accepted rows only when ``keep=True`` (contacts need them for accepted.csv).
    Stored in batches with COPY so a million-row file stays fast: each row is encoded
    to COPY text as it comes (``copy_text``, plain string work instead of psycopg's
    per-value dumpers), and a batch goes as one write. ``send_with`` lets an applier
    run the batches' COPY on its own database thread.
    """

    BATCH = 5000

    def __init__(self, conn: psycopg.Connection[Any] | None, file_id: int | None) -> None:
        self._conn = conn
        self._file_id = file_id
        self._prefix = f"{file_id}\t"
        self._pending: list[str] = []
        self._send: Callable[[Callable[[], None]], None] | None = None
        self._limit = self.BATCH
        self.rows = 0
        self.accepted = 0
        self.rejected = 0
        self.rejected_by_class: Counter[str] = Counter()
        # Rejected contacts sections; None for a format that rejects rows one by one (the
        # contacts applier sets it to 0).
        self.rejected_sections: int | None = None
        # kept in memory only up to a bound, for `ingestd check` and `ingest` to print
        self.sample_errors: list[tuple[int, RowError]] = []

    def accept(
        self, record: int, fields: Sequence[str], ref: str | None = None, *, keep: bool = False
    ) -> None:
        self.rows += 1
        self.accepted += 1
        if keep and self._conn is not None:
            self._pending.append(
                f"{self._prefix}{record}\tt\t{NULL if ref is None else text(ref)}"
                f"\t\\N\t\\N\t\t\t{text_array(fields)}\n")
            if len(self._pending) >= self._limit:
                self.flush()

    def accept_many(self, records: Sized) -> None:
        """Count accepted records whose fields nobody needs again (rows decided in bulk;
        ``records``: their numbers, a column of them)."""
        self.rows += len(records)
        self.accepted += len(records)

    def accept_kept(self, count: int, lines: Callable[[str], memoryview]) -> None:
        """Count ``count`` accepted records kept for the sidecars, whose stored lines
        ``lines`` makes at once as COPY text (rows decided in bulk), given each line's start."""
        self.rows += count
        self.accepted += count
        if self._conn is not None:
            self._pending.append(str(lines(self._prefix), "utf-8"))
            if len(self._pending) >= self._limit:
                self.flush()

    def reject(self, record: int, error: RowError, fields: Sequence[str], *, rows: int = 1) -> None:
        """Record one rejected record (or a contacts section of ``rows`` rows led by it:
        every row counts; the others are stored with ``reject_along``)."""
        self.rows += rows
        self.rejected += rows
        self.rejected_by_class[error.error_class] += rows
        if self.rejected_sections is not None:
            self.rejected_sections += 1
        self._store_rejected(record, None, error, fields)

    def reject_along(self, record: int, leader: int, error: RowError,
                     fields: Sequence[str]) -> None:
        """Store a row rejected with the section that ``leader`` (a record number) leads,
        for errors.csv; ``reject`` of the leader counted it already."""
        self._store_rejected(record, str(leader), error, fields)

    def _store_rejected(self, record: int, leader: str | None, error: RowError,
                        fields: Sequence[str]) -> None:
        if len(self.sample_errors) < SAMPLE_ERRORS:
            self.sample_errors.append((record, error))
        if self._conn is not None:
            # ``ref`` holds a taken-along row's leader; a leader's is NULL.
            self._pending.append(
                f"{self._prefix}{record}\tf\t{NULL if leader is None else leader}"
                f"\t{text(error.error_class)}"
                f"\t{text(error.message)}\t{text(error.field)}\t{text(error.detail)}"
                f"\t{text_array(fields)}\n")
            if len(self._pending) >= self._limit:
                self.flush()

    def send_with(self, send: Callable[[Callable[[], None]], None] | None) -> None:
        """Hand each batch's COPY to ``send`` (which runs it, in order, on the same
        connection) instead of running it here; None: run it here again. Meanwhile the
        applier calls ``flush`` when its database thread has nothing more urgent to do
        (rows are sent by themselves only at ``4 * BATCH``, a bound on memory)."""
        self._send = send
        self._limit = self.BATCH if send is None else 4 * self.BATCH

    def flush(self) -> None:
        if self._conn is None or not self._pending:
            return
        conn, data = self._conn, "".join(self._pending)
        self._pending = []

        def copy() -> None:
            with conn.cursor() as cur, cur.copy(_COPY_ROW_RESULTS) as c:
                c.write(data)

        if self._send is None:
            copy()
        else:
            self._send(copy)


_COPY_ROW_RESULTS = (
    "COPY ingestd.row_results (file_id, record, accepted, ref, error_class, message,"
    " error_field, error_detail, fields) FROM STDIN")
