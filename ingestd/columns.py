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


def column(values: Sequence[str]) -> pa.Array:
    return pa.array(values, type=STRING)


def concat(*parts: pa.Array | str, sep: str = "") -> pa.Array:
    """Each row's parts joined by ``sep`` (a ``str`` part is the same for every row)."""
    args = [pa.scalar(p, STRING) if isinstance(p, str) else p for p in parts]
    return pc.binary_join_element_wise(*args, pa.scalar(sep, STRING))


def matches(col: pa.Array, pattern: str) -> pa.Array:
    return pc.match_substring_regex(col, pattern)


def empty(col: pa.Array) -> pa.Array:
    return pc.equal(pc.binary_length(col), 0)


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


def copy_text(col: pa.Array) -> pa.Array:
    """Cells as COPY text fields; nulls as COPY's NULL."""
    out = col
    for special, escape in (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r")):
        out = pc.replace_substring(out, special, escape)
    return pc.fill_null(out, NULL_TEXT)


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
