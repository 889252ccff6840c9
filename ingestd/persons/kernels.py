"""The Person Import's per-cell checks as column kernels over a chunk (``ingestd.columns``).

``Kernels.check`` finds the rows of a chunk that can be decided in bulk: rows that pass
every check and can only create a new person (no person_id, no person_key; ids, mdn and
custom values all in spellings whose per-cell verdict is known), with the values they
create it with, as columns. Every other row goes to ``RowChecks.prepare`` and
``Rules.resolve`` as before, so its error and detail are word for word those of the
per-cell code (a kernel that is unsure passes the row on; it never rejects).

The mdn kernel tests many numbers at once against phonenumbers' own metadata patterns,
the ones ``mdn_fast`` compiles for one number at a time (``deciding_alternatives``), with
RE2: only numbers of the country code that ten-digit cells are read in (NANP) whose first
region decides them, and only mobile ones (anything else is per-cell work).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from phonenumbers import PhoneNumberType

from ingestd import columns
from ingestd.columns import STRING
from ingestd.persons.custom_fields import GSM7_BASIC, FieldDefinition
from ingestd.persons.mdn_fast import (
    deciding_alternatives,
    international_prefix_pattern,
    ten_digit_country_code,
)
from ingestd.persons.reader import Record

_MOBILE = (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE)
_NATIONAL_DIGITS = 10


@dataclass(slots=True)
class Bulk:
    """Rows of a chunk that each create one person, as columns (in file order)."""

    index: pa.Array  # int64: the row's position in its chunk
    external_person_id: pa.Array  # strings, null where not given
    mdn: pa.Array  # E.164, null where not given
    vibes_device_id: pa.Array
    custom: pa.Array  # the custom fields as a JSON object
    carrier: pa.Array  # null until the mdns are looked up

    def __len__(self) -> int:
        return len(self.index)

    def _columns(self) -> tuple[pa.Array, ...]:
        return (self.index, self.external_person_id, self.mdn, self.vibes_device_id,
                self.custom, self.carrier)

    def keep(self, mask: pa.Array) -> Bulk:
        return Bulk(*(col.filter(mask) for col in self._columns()))

    def values(self, name: str) -> pa.Array:
        """The non-null values of one id column."""
        return getattr(self, name).drop_null()


_NONE = Bulk(*(pa.array([], type=t)
               for t in (pa.int64(), STRING, STRING, STRING, STRING, STRING)))
ID_COLUMNS = ("external_person_id", "mdn", "vibes_device_id")


def no_bulk() -> Bulk:
    return _NONE


class MdnKernel:
    """Cells that are valid mobile numbers read in ``region``, and their E.164 form."""

    def __init__(self, region: str) -> None:
        self.country_code = ten_digit_country_code(region)
        found = (deciding_alternatives(self.country_code, _NATIONAL_DIGITS)
                 if self.country_code is not None else None)
        self._general = f"^(?:{found[0]})$" if found else None
        # Ten digits that begin with the region's international prefix are no number there.
        idd = international_prefix_pattern(region)
        self._idd = f"^(?:{idd})" if idd else None
        # Only whether the first alternative that matches is a mobile type matters, so
        # neighbouring alternatives of one pattern on the same side are one expression.
        self._steps: list[tuple[list[str], bool]] = []
        for patterns, number_type in (found[1] if found else []):
            mobile = number_type in _MOBILE
            if self._steps and len(patterns) == 1 and len(self._steps[-1][0]) == 1 \
                    and self._steps[-1][1] == mobile:
                self._steps[-1][0][0] += f"|{patterns[0]}"
            else:
                self._steps.append(([*patterns], mobile))
        self._steps = [([f"^(?:{p})$" for p in patterns], mobile)
                       for patterns, mobile in self._steps]

    def __call__(self, col: pa.Array) -> tuple[pa.Array, pa.Array]:
        """(mobile cells, E.164 of each cell where mobile)."""
        if self._general is None:
            return pa.repeat(pa.scalar(False), len(col)), pa.nulls(len(col), STRING)
        prefix = f"+{self.country_code}"
        plus = columns.matches(col, f"^\\+{self.country_code}[0-9]{{{_NATIONAL_DIGITS}}}$")
        ten = columns.matches(col, f"^[0-9]{{{_NATIONAL_DIGITS}}}$")
        if self._idd is not None:
            ten = pc.and_(ten, pc.invert(columns.matches(col, self._idd)))
        national = pc.if_else(plus, pc.utf8_slice_codeunits(col, len(prefix)), col)
        mobile = pc.and_(pc.or_(plus, ten), columns.matches(national, self._general))
        taken: pa.Array | None = None  # an earlier alternative matched
        found: pa.Array | None = None
        for patterns, is_mobile in self._steps:
            hit = columns.all_true([columns.matches(national, p) for p in patterns], len(col))
            if is_mobile:
                first = hit if taken is None else pc.and_(hit, pc.invert(taken))
                found = first if found is None else pc.or_(found, first)
            taken = hit if taken is None else pc.or_(taken, hit)
        if found is None:
            return pa.repeat(pa.scalar(False), len(col)), pa.nulls(len(col), STRING)
        mobile = pc.and_(mobile, found)
        e164 = columns.concat(prefix, national)
        return mobile, pc.if_else(mobile, e164, pa.scalar(None, STRING))


# A kernel for one custom field: (cells it passes, each cell's value as JSON text).
ValueKernel = Callable[[pa.Array], tuple[pa.Array, pa.Array]]


def value_kernel(defn: FieldDefinition, multi_delim: str) -> ValueKernel:
    """The kernel of ``custom_fields.convert`` for ``defn``: passes a non-empty cell only
    when it knows convert's value for it."""
    kind = defn.type

    def text(col: pa.Array, ok: pa.Array) -> tuple[pa.Array, pa.Array]:
        ok = pc.and_(ok, columns.no_control(col))
        return ok, columns.json_string(col)

    if kind == "string":
        if defn.charset == "unicode":
            return lambda col: text(col, pa.array([True] * len(col)))
        if defn.charset == "ascii":
            return lambda col: text(col, pc.string_is_ascii(col))
        gsm7 = "".join(sorted(GSM7_BASIC - {"\n", "\r"}))
        allowed = "^[" + "".join(f"\\x{{{ord(c):x}}}" for c in gsm7) + "]*$"
        return lambda col: text(col, columns.matches(col, allowed))
    if kind == "integer":
        return lambda col: (columns.canonical_integer(col), col)
    if kind == "decimal":
        return lambda col: (columns.canonical_decimal(col), columns.json_string(col))
    if kind == "boolean":
        return columns.boolean_text
    if kind == "date":
        return lambda col: (columns.utc_date(col), columns.json_string(col))
    if kind == "single_select":
        return lambda col: text(col, columns.one_of(col, defn.options))
    # multi_select: one option alone (a list of it); several go cell by cell.
    def multi(col: pa.Array) -> tuple[pa.Array, pa.Array]:
        ok = pc.and_(columns.one_of(col, defn.options),
                     pc.invert(pc.match_substring(col, multi_delim)))
        ok, value = text(col, ok)
        return ok, columns.concat("[", value, "]")
    return multi


class Kernels:
    """A file's kernels: where its columns are, and what checks each."""

    def __init__(self, fields: Sequence[str], region: str, multi_delim: str,
                 definitions: dict[str, FieldDefinition], identifying: Sequence[str]) -> None:
        pos = {name: i for i, name in enumerate(fields)}
        self.width = len(fields)
        self.person_id, self.person_key, self.ext, self.mdn, self.device = (
            pos.get(name) for name in identifying)
        self.mdn_kernel = MdnKernel(region)
        # Custom columns: (position, JSON key + colon, kernel or None for an unknown field).
        self.custom: list[tuple[int, str, ValueKernel | None]] = []
        for i, name in enumerate(fields):
            if name in identifying:
                continue
            defn = definitions.get(name)
            key = orjson.dumps(name).decode() + ":"
            self.custom.append((i, key, value_kernel(defn, multi_delim) if defn else None))

    def check(self, records: Sequence[Record]) -> tuple[Bulk, list[int]]:
        """The rows of ``records`` that are decided in bulk (creates, unless an id of theirs
        turns out to be taken; see ``PersonsProcessor``), and the positions of the others."""
        good = [i for i, r in enumerate(records) if r.error is None]
        bulk = self._check(records, good) if good else _NONE
        if len(bulk) == len(records):
            return bulk, []
        passed = set(bulk.index.to_pylist())
        return bulk, [i for i in range(len(records)) if i not in passed]

    def _check(self, records: Sequence[Record], good: list[int]) -> Bulk:
        cells = [columns.column(c) for c in zip(*[records[i].values for i in good],
                                                strict=True)]
        n = len(good)
        masks: list[pa.Array] = []
        for at in (self.person_id, self.person_key):
            if at is not None:
                masks.append(columns.empty(cells[at]))
        named: list[pa.Array] = []  # an id given
        found: dict[str, pa.Array] = {}
        for at, name in ((self.ext, "ext"), (self.device, "device")):
            if at is not None:
                col = cells[at]
                is_empty = columns.empty(col)
                masks.append(pc.or_(is_empty, columns.plain_id(col)))
                named.append(pc.invert(is_empty))
                found[name] = columns.null_if_empty(col)
        if self.mdn is not None:
            col = cells[self.mdn]
            is_empty = columns.empty(col)
            mobile, e164 = self.mdn_kernel(col)
            masks.append(pc.or_(is_empty, mobile))
            named.append(pc.invert(is_empty))
            found["mdn"] = e164
        if not named:
            return _NONE
        masks.append(columns.any_true(named, n))
        pieces: list[pa.Array] = []
        for at, key, kernel in self.custom:
            col = cells[at]
            is_empty = columns.empty(col)
            if kernel is None:
                masks.append(is_empty)
                continue
            ok, value = kernel(col)
            masks.append(pc.or_(is_empty, ok))
            piece = columns.concat("," + key, value)
            pieces.append(pc.if_else(is_empty, pa.scalar("", STRING), piece))
        ok = columns.all_true(masks, n)
        if pieces:
            joined = columns.concat(*pieces, "")
            body = pc.utf8_slice_codeunits(joined, 1)
            custom = columns.concat("{", body, "}")
        else:
            custom = pa.array(["{}"] * n, type=STRING)
        nothing = pa.nulls(n, STRING)
        bulk = Bulk(pa.array(good, type=pa.int64()), found.get("ext", nothing),
                    found.get("mdn", nothing), found.get("device", nothing), custom, nothing)
        return bulk.keep(ok)
