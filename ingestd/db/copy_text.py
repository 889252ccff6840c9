"""Text and text[] values as fields of COPY's text format, with plain string work.

psycopg's ``Copy.write_row`` dumps a list element by element in Python; the row results
(``ledger.RowResults``), a text[] of the row's fields each, encode their lines here
instead and send a batch as one ``Copy.write``. What PostgreSQL reads back is the same.

Kept hand-written on purpose: psycopg's own dumpers are the per-element path this
replaces, and no library exposes COPY's text escaping as plain string functions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

NULL = "\\N"
# What COPY's text format escapes; a quoted array element escapes these and '"'.
_COPY_SPECIAL = re.compile(r"[\\\t\n\r\x00]")
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_ELEMENT_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})


def text(value: str) -> str:
    """``value`` as a COPY text field. PostgreSQL text cannot hold NUL: a row echoed into
    the row results (a rejected one, for holding it) keeps U+FFFD in its place."""
    if _COPY_SPECIAL.search(value) is None:
        return value
    return value.replace("\x00", "\ufffd").translate(_COPY_ESCAPES)


def text_array(values: Sequence[str]) -> str:
    """A text[] field: every element quoted, so none reads as NULL or loses its spaces."""
    joined = '","'.join(values)
    # Plain when no value holds a quote (the joins' own are counted) or an escape.
    if joined.count('"') == 2 * len(values) - 2 and _COPY_SPECIAL.search(joined) is None:
        return f'{{"{joined}"}}' if values else "{}"
    return text("{" + ",".join('"' + v.translate(_ELEMENT_ESCAPES) + '"' for v in values) + "}")

