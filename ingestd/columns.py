"""Column kernels over a chunk of records, with Arrow compute (pyarrow).

Why pyarrow: its compute kernels (RE2 regular expressions, set membership, string joins)
run in C over a whole column, it reads Python strings into a column in one call, and the
result of a string join is one contiguous buffer that COPY can take as it is. Polars
does the same work with a larger API that changes more often between releases; pyarrow's
compute functions have been stable for years and its wheel needs nothing compiled.

Only the appliers import this module (``ingestd status`` and the daemon's other paths
never load pyarrow).

A kernel here is *conservative*: it passes only cells whose per-cell verdict it knows to
be "valid, with this value"; every other cell goes to the format's per-cell code, which
gives the exact error and detail (or the value, for a spelling a kernel does not take).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

# Large strings (64-bit offsets): a chunk of long lines may hold more than 2 GiB.
STRING = pa.large_string()
NULL_TEXT = "\\N"  # COPY text's NULL

# Printable ASCII with no space at either end: Python's str.strip() leaves such a cell as it
# is (its whitespace includes more than RE2's \s, all of it outside this range).
_PLAIN_ID = r"^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$"
# Text that JSON and COPY take after escaping backslashes and quotes alone.
_NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
_INTEGER = r"^(?:0|-?[1-9][0-9]{0,17})$"  # canonical and well inside int64
_DECIMAL = r"^(?:0|-?(?:0|[1-9][0-9]*)\.[0-9]*[1-9]|-?[1-9][0-9]*)$"  # canonical already
# Already UTC, every part in a range that is a real date and time whatever the month.
_UTC_DATE = (r"^(?:000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})"
             r"-(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])"
             r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z$")


# An RE2 class of the characters that str.strip() keeps (its whitespace lies below U+3001),
# NUL aside: a cell with one of these is not blank.
VISIBLE = "[^\\x00" + "".join(f"\\x{{{ord(c):x}}}" for c in map(chr, range(0x3001))
                              if c.isspace()) + "]"
_SKIP_CHUNKS = 20
SMALL_FILE_ROWS = 32  # a file of fewer rows is checked row by row


class Worth:
    """Whether a format's kernels are worth running on the next chunk. When most rows they
    passed turn out to need row-by-row work all the same (a file of updates: they name
    stored records), the next chunks skip them, and then try again. A whole file of a few
    rows skips them too: their fixed cost (some 40 compute calls, whatever the rows) is
    more than the row-by-row checks of so few rows."""

    def __init__(self, chunk_rows: int) -> None:
        self._skip = 0
        self._chunk_rows = chunk_rows  # a full chunk: a shorter one is the file's last
        self._first = True

    def __call__(self, rows: int) -> bool:
        """For the next chunk, of ``rows`` rows."""
        first, self._first = self._first, False
        if first and rows < min(self._chunk_rows, SMALL_FILE_ROWS):
            return False
        if self._skip > 0:
            self._skip -= 1
            return False
        return True

    def wasted(self, demoted: int, passed: int) -> None:
        if demoted * 2 > passed:
            self._skip = _SKIP_CHUNKS


def integer(value: int) -> pa.Scalar:
    """An int64 scalar for a kernel's argument: given a Python int, pyarrow tries (and
    fails, uncached) to import dateutil on every call."""
    return pa.scalar(value, pa.int64())


def column(values: Sequence[str]) -> pa.Array:
    return pa.array(values, type=STRING)


def concat(*parts: pa.Array | str, sep: str = "") -> pa.Array:
    """Each row's parts joined by ``sep`` (a ``str`` part is the same for every row)."""
    args = [pa.scalar(p, STRING) if isinstance(p, str) else p for p in parts]
    return pc.binary_join_element_wise(*args, pa.scalar(sep, STRING))


def matches(col: pa.Array, pattern: str) -> pa.Array:
    return pc.match_substring_regex(col, pattern)


def empty(col: pa.Array) -> pa.Array:
    return pc.equal(pc.binary_length(col), integer(0))


def plain_id(col: pa.Array) -> pa.Array:
    """Cells an id column keeps exactly as written (after its strip)."""
    return matches(col, _PLAIN_ID)


def no_control(col: pa.Array) -> pa.Array:
    return matches(col, _NO_CONTROL)


def canonical_integer(col: pa.Array) -> pa.Array:
    return matches(col, _INTEGER)


def canonical_decimal(col: pa.Array) -> pa.Array:
    return matches(col, _DECIMAL)


def utc_date(col: pa.Array) -> pa.Array:
    return matches(col, _UTC_DATE)


def boolean_text(col: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(cells that are true or false in any letter case, the cells lowercased)."""
    lower = pc.ascii_lower(col)
    ok = pc.and_(pc.string_is_ascii(col), pc.is_in(lower, value_set=pa.array(
        ["true", "false"], type=STRING)))
    return ok, lower


def one_of(col: pa.Array, options: Sequence[str]) -> pa.Array:
    return pc.is_in(col, value_set=pa.array(list(options), type=STRING))


def all_true(masks: Sequence[pa.Array], length: int) -> pa.Array:
    if not masks:
        return pa.repeat(pa.scalar(True), length) if length else pa.array([], pa.bool_())
    ok = masks[0]
    for mask in masks[1:]:
        ok = pc.and_(ok, mask)
    return ok


def any_true(masks: Sequence[pa.Array], length: int) -> pa.Array:
    if not masks:
        return pa.repeat(pa.scalar(False), length) if length else pa.array([], pa.bool_())
    hit = masks[0]
    for mask in masks[1:]:
        hit = pc.or_(hit, mask)
    return hit


def json_array(col: pa.Array) -> str | None:
    """The non-null values of a column without control characters as one JSON array
    text, or None when it has none."""
    values = json_string(col.drop_null())
    if len(values) == 0:
        return None
    joined = pc.binary_join(pa.LargeListArray.from_arrays(pa.array([0, len(values)],
                                                                     pa.int64()), values),
                            pa.scalar(",", STRING))
    return "[" + str(joined[0].as_py()) + "]"


def json_string(col: pa.Array) -> pa.Array:
    """Cells without control characters as JSON strings."""
    escaped = pc.replace_substring(pc.replace_substring(col, "\\", "\\\\"), '"', '\\"')
    return concat('"', escaped, '"')


def copy_text(col: pa.Array, plain: bool = False) -> pa.Array:
    """Cells as COPY text fields; nulls as COPY's NULL. ``plain``: see ``plain_text``."""
    out = col
    if plain:
        return pc.fill_null(out, NULL_TEXT)
    for special, escape in (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r")):
        out = pc.replace_substring(out, special, escape)
    return pc.fill_null(out, NULL_TEXT)


def split(lines: pa.Array, sep: str, width: int) -> list[pa.Array]:
    """The ``width`` columns of lines that each hold ``width`` cells joined by ``sep``."""
    cells = pc.split_pattern(lines, sep).flatten()
    rows = pc.multiply(pa.array(range(len(lines)), pa.int64()), integer(width))
    return [cells.take(pc.add(rows, integer(at))) for at in range(width)]


def plain_text(col: pa.Array) -> bool:
    """Whether no cell holds a character that a COPY field or a quoted array element
    escapes (then ``copy_text`` and ``text_array`` need not look for them)."""
    return not pc.any(matches(col, r'[\\"\t\n\r]')).as_py()


def text_array(lines: pa.Array, sep: str, plain: bool) -> pa.Array:
    """Lines of cells joined by ``sep`` (which no cell holds, nor NUL) as COPY text[]
    fields, every element quoted: what ``db.copy_text.text_array`` makes of the cells, made
    in C. ``plain``: see ``plain_text``."""
    if not plain:
        lines = pc.replace_substring(pc.replace_substring(lines, "\\", "\\\\"), '"', '\\"')
    joined = concat('{"', pc.replace_substring(lines, sep, '","'), '"}')
    return pc.fill_null(joined, NULL_TEXT) if plain else copy_text(joined)


def null_if_empty(col: pa.Array) -> pa.Array:
    return pc.if_else(empty(col), pa.scalar(None, STRING), col)


def copy_lines(fields: Sequence[pa.Array]) -> memoryview:
    """The COPY text of rows whose fields are ``fields`` (already COPY text), as one
    buffer made in C: no Python object per row."""
    return joined(concat(concat(*fields, sep="\t"), "\n"))


def joined(col: pa.Array) -> memoryview:
    """All of a string column's values back to back: its data buffer, as it is."""
    if len(col) == 0:
        return memoryview(b"")
    col = col.cast(STRING)
    _, offsets, data = col.buffers()
    bounds = memoryview(offsets).cast("q")
    start, end = bounds[col.offset], bounds[col.offset + len(col)]
    return memoryview(data)[start:end] if data is not None else memoryview(b"")


def ranks(keys: pa.Array) -> pa.Array:
    """Each value's position in sorted order (keys distinct)."""
    return pc.sort_indices(pc.sort_indices(keys))
