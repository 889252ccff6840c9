"""Values as lines of COPY's text format, encoded with plain string work.

psycopg's ``Copy.write_row`` calls a dumper per value (in Python for arrays); the bulk
writers of row results and contacts encode their few value types here instead and send
a batch as one ``Copy.write``. What PostgreSQL reads back is the same.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

import psycopg

NULL = "\\N"
# What COPY's text format escapes; a quoted array element escapes these and '"'.
_COPY_SPECIAL = re.compile(r"[\\\t\n\r\x00]")
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_ELEMENT_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})
# psycopg's own words for it: a value holding a NUL fails as it did through write_row.
_NUL = "PostgreSQL text fields cannot contain NUL (0x00) bytes"


def text(value: str) -> str:
    """``value`` as a COPY text field."""
    if _COPY_SPECIAL.search(value) is None:
        return value
    if "\x00" in value:
        raise psycopg.DataError(_NUL)
    return value.translate(_COPY_ESCAPES)


def field(value: str | bool | datetime | int | None) -> str:
    """A text, boolean, timestamp (aware: ISO 8601 with its offset), integer or NULL."""
    if value is None:
        return NULL
    if isinstance(value, str):
        return text(value)
    if value is True:
        return "t"
    if value is False:
        return "f"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def text_array(values: Sequence[str]) -> str:
    """A text[] field: every element quoted, so none reads as NULL or loses its spaces."""
    joined = '","'.join(values)
    # Plain when no value holds a quote (the joins' own are counted) or an escape.
    if joined.count('"') == 2 * len(values) - 2 and _COPY_SPECIAL.search(joined) is None:
        return f'{{"{joined}"}}' if values else "{}"
    return text("{" + ",".join('"' + v.translate(_ELEMENT_ESCAPES) + '"' for v in values) + "}")


def line(values: Sequence[str | bool | datetime | int | None]) -> str:
    """One COPY line of ``values`` (``field`` each), built in one join when no text value
    needs an escape (the separators' own tabs are counted)."""
    cells = [v if type(v) is str else field(v) for v in values]
    joined = "\t".join(cells)
    if joined.count("\t") == len(cells) - 1 and _COPY_SPECIAL.search(joined) is None:
        return joined + "\n"
    return "\t".join([field(v) for v in values]) + "\n"
