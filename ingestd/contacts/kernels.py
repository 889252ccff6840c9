"""The contacts CSV's per-cell checks as column kernels over a batch (``ingestd.columns``).

``Kernels.check`` finds the sections of a batch that can be created in bulk: every row of
the header's width, every cell in a spelling whose verdict by ``reader._typed`` the kernels
know (valid, with this value), each row's contact-level cells written exactly as in the
section's first row, no treatmentId twice, and a code that no other section of the batch
has. Whether the code is stored is known only after the look-up; the applier takes such
sections out (``Bulk.keep``). Every other section goes to the reader's per-cell code and
the resolver as before, so its errors are word for word theirs (a kernel that is unsure
passes the section on; it never rejects).

The values of a bulk section are COPY text made in C: its contact, its treatments, and
its rows' results (``columns.copy_lines``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from ingestd import columns
from ingestd.columns import STRING
from ingestd.contacts.reader import CODE, COLUMN_BY_NAME, TREATMENT_ID, Kind, RawSection
from ingestd.contacts.store import CONTACT_COLUMNS, TREATMENT_COLUMNS

# A timestamp that PostgreSQL reads as ``parse_timestamp`` does: a real calendar day (the
# 29th of February aside), at most microseconds (PostgreSQL rounds a finer fraction,
# ``parse_timestamp`` truncates it), and an explicit offset below 15 hours (without one,
# PostgreSQL would read the session's time zone).
_TIMESTAMP = (r"(?:000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})-"
              r"(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)"
              r"|(?:0[13578]|1[02])-31)"
              r"T(?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,6})?)?"
              r"(?:Z|[+-](?:0[0-9]|1[0-4])(?::?[0-5][0-9])?)")
_RULE_FIRED = "[01]+"
# name~~~value~~~dataType tuples joined by ';', with no '~' inside a part (a part with one
# splits as ``str.split`` says: cell by cell).
_TUPLE = r"[^~;\x00]+~~~[^~;\x00]*~~~[^~;\x00]+"
_OBJECT_VARIABLES = f"{_TUPLE}(?:;{_TUPLE})*"


@dataclass(slots=True)
class Bulk:
    """Sections of a batch that each create one contact, as columns (in file order)."""

    at: pa.Array  # int64: the section's position in its batch
    code: pa.Array  # its responseTrackingCode
    contact: list[pa.Array]  # per section: CONTACT_COLUMNS as COPY text
    section: pa.Array  # int64 per row: its section's index in this bulk
    record: pa.Array  # int64 per row
    ordinal: pa.Array  # int64 per row: its place in its section
    treatment: list[pa.Array]  # per row: TREATMENT_COLUMNS as COPY text
    fields: pa.Array  # per row: its fields as given, a COPY text[] field

    def __len__(self) -> int:
        return len(self.at)

    def keep(self, mask: pa.Array) -> Bulk:
        """The sections of ``mask`` and their rows."""
        rows = mask.take(self.section)
        renumbered = pc.subtract(pc.cumulative_sum(pc.cast(mask, pa.int64())),
                                 columns.integer(1))
        return Bulk(self.at.filter(mask), self.code.filter(mask),
                    [col.filter(mask) for col in self.contact],
                    renumbered.take(self.section).filter(rows), self.record.filter(rows),
                    self.ordinal.filter(rows), [col.filter(rows) for col in self.treatment],
                    self.fields.filter(rows))

    def contacts_copy(self, ids: pa.Array) -> memoryview:
        """COPY text for ``Store``'s contacts: (id, CONTACT_COLUMNS), ``ids`` theirs."""
        return columns.copy_lines([ids, *self.contact])

    def treatments_copy(self, ids: pa.Array) -> memoryview:
        """COPY text for the treatments: (contact_id, ordinal, TREATMENT_COLUMNS)."""
        return columns.copy_lines([ids.take(self.section), pc.cast(self.ordinal, STRING),
                                   *self.treatment])

    def accepted_lines(self, ids: pa.Array, prefix: str) -> memoryview:
        """The rows' results as ``ledger.RowResults`` stores an accepted row it keeps
        (``prefix``: each line's start)."""
        return columns.joined(columns.concat(
            prefix, pc.cast(self.record, STRING), "\tt\t", ids.take(self.section),
            "\t\\N\t\\N\t\t\t", self.fields, "\n"))


def no_bulk() -> Bulk:
    empty = pa.array([], STRING)
    number = pa.array([], pa.int64())
    return Bulk(number, empty, [empty] * len(CONTACT_COLUMNS), number, number, number,
                [empty] * len(TREATMENT_COLUMNS), empty)


_SEP = "\x00"  # joins a row's cells into one line: no valid cell holds it
_ANY = f"[^{_SEP}]*"
# A cell whose verdict is known, by kind (blank: empty; a blank cell of spaces, or one with
# a NUL, is the per-cell code's).
_TEXT = f"{_ANY}{columns.VISIBLE}{_ANY}"
# A code goes to the look-up as JSON text (``columns.json_array``): no control characters.
_CODE = f"[^\\x00-\\x1f]*{columns.VISIBLE}[^\\x00-\\x1f]*"
_CELL = {Kind.TIMESTAMP: _TIMESTAMP, Kind.RULE_FIRED: _RULE_FIRED,
         Kind.OBJECT_VARIABLES: _OBJECT_VARIABLES, Kind.TEXT: _TEXT,
         Kind.BOOLEAN: "[tT][rR][uU][eE]|[fF][aA][lL][sS][eE]"}


def _row_pattern(width: int, positions: dict[str, int]) -> str:
    """The rows whose every cell the kernels know to be valid, as one expression over the
    row's cells joined by ``_SEP``."""
    cells = [_ANY] * width  # the ignored id column: echoed in the row results only
    for name, at in positions.items():
        column = COLUMN_BY_NAME[name]
        cell = _CODE if name == CODE else _CELL[column.kind]
        cells[at] = f"(?:{cell})" + ("" if column.required else "?")
    return "^" + _SEP.join(cells) + "$"


class Kernels:
    """A file's kernels: where its columns are, and what checks each."""

    def __init__(self, width: int, positions: dict[str, int]) -> None:
        self.width = width
        self.positions = positions
        self.code = positions[CODE]
        self.treatment_id = positions[TREATMENT_ID]
        self.contact = [positions[n] for n in CONTACT_COLUMNS if n in positions]
        self.pattern = _row_pattern(width, positions)
        self.no_row = _SEP * (width - 1)

    def check(self, batch: Sequence[RawSection]) -> tuple[Bulk, list[int]]:
        """The sections of ``batch`` that may be created in bulk, and the positions of the
        others (in file order)."""
        whole = [i for i, rows in enumerate(batch)
                 if all(isinstance(f, list) and len(f) == self.width for _, f in rows)]
        bulk = self._check(batch, whole) if whole else no_bulk()
        if len(bulk) == len(batch):
            return bulk, []
        passed = set(bulk.at.to_pylist())
        return bulk, [i for i in range(len(batch)) if i not in passed]

    def _check(self, batch: Sequence[RawSection], whole: list[int]) -> Bulk:
        offsets = pc.cumulative_sum(pa.array([0, *(len(batch[i]) for i in whole)], pa.int64()))
        starts = offsets.slice(0, len(whole))  # each section's first row
        section = pc.list_parent_indices(pa.LargeListArray.from_arrays(
            offsets, pa.nulls(offsets[-1].as_py(), pa.null())))
        first = starts.take(section)
        ordinal = pc.subtract(pa.array(range(len(section)), pa.int64()), first)
        lines = columns.column([_SEP.join(f) for i in whole for _, f in batch[i]])  # type: ignore[arg-type]
        # A line with more separators has a NUL in a cell: it stands for an empty row here.
        split = pc.equal(pc.count_substring(lines, _SEP), columns.integer(self.width - 1))
        lines = pc.if_else(split, lines, pa.scalar(self.no_row, STRING))
        cells = columns.split(lines, _SEP, self.width)
        masks = [split, columns.matches(lines, self.pattern),
                 _distinct(section, cells[self.treatment_id])]
        for at in self.contact:  # written as in the first row: the same value
            masks.append(pc.equal(cells[at], cells[at].take(first)))
        ok = columns.all_true(masks, len(section))
        code = cells[self.code].take(starts)
        chosen = set(whole)
        others = [f[self.code] if isinstance(f, list) and self.code < len(f) else ""
                  for i, rows in enumerate(batch) if i not in chosen for _, f in rows[:1]]
        # Sections with a row that failed, or with a code another section of the batch has.
        failed = pc.is_in(pa.array(range(len(whole)), pa.int64()),
                          value_set=section.filter(pc.invert(ok)))
        shared = pc.is_in(code, value_set=_repeated(pa.concat_arrays(
            [code, pa.array(others, STRING)])))
        record = pc.add(pa.array([batch[i][0][0] for i in whole], pa.int64()).take(section),
                        ordinal)
        plain = columns.plain_text(lines)
        values = {name: columns.copy_text(_value(name, cells[at]), plain)
                  for name, at in self.positions.items()}
        nothing = columns.copy_text(pa.nulls(len(whole), STRING), plain=True)
        contact = [values[n].take(starts) if n in values else nothing for n in CONTACT_COLUMNS]
        bulk = Bulk(pa.array(whole, pa.int64()), code, contact, section, record, ordinal,
                    [values[n] for n in TREATMENT_COLUMNS],
                    columns.text_array(lines, _SEP, plain))
        return bulk.keep(pc.invert(pc.or_(failed, shared)))


def _value(name: str, cell: pa.Array) -> pa.Array:
    """A passed cell's value: itself (a boolean lowercased), null when blank."""
    if COLUMN_BY_NAME[name].kind is Kind.BOOLEAN:
        cell = pc.ascii_lower(cell)
    return columns.null_if_empty(cell)


def _distinct(section: pa.Array, treatment_id: pa.Array) -> pa.Array:
    """Rows whose treatmentId no other row of their section has."""
    key = columns.concat(pc.cast(section, STRING), treatment_id, sep="|")
    return pc.invert(pc.is_in(key, value_set=_repeated(key)))


def _repeated(col: pa.Array) -> pa.Array:
    counts = pc.value_counts(col)
    return counts.field("values").filter(pc.greater(counts.field("counts"), columns.integer(1)))

