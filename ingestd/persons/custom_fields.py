"""Custom field definitions (a company's TOML file) and conversion of cell text.

``convert`` is on the per-row hot path: every check is a precompiled regex or a
set lookup, and failures return shared ``RowError`` instances.

Conversions (docs/formats.md section 1 "Values"; all results are JSON-serialisable):

* ``string``: the text as given, if every character is in the field's charset.
  ``gsm7`` is the GSM 03.38 *basic* character set only, as docs/formats.md says: the
  extension table (``[ ] { } \\ ^ ~ | €`` and form feed) costs two septets each,
  which is what partners restrict to gsm7 to avoid. Both C-cedillas are
  accepted for 0x09 (the standard's table shows ``Ç``, handsets render ``ç``).
* ``integer``: ``[+-]?digits`` -> ``int``, within the signed 64-bit range so that
  any consumer (PostgreSQL ``bigint``, JavaScript clients up to the range check
  they do themselves) can hold it.
* ``decimal``: ``[+-]?digits[.digits]`` -> canonical *string* (exact; no float
  rounding): no ``+``, no leading zeros, no trailing fractional zeros, no bare
  point, and ``-0`` is ``0``. ``+007.50`` -> ``"7.5"``.
* ``boolean``: ``true``/``false`` in any letter case -> ``bool``.
* ``date``: ``YYYY-MM-DDTHH:MM:SS`` then ``Z``, ``±HHMM`` or ``±HH:MM``; a real
  calendar date and time, no fractions -> UTC ``YYYY-MM-DDTHH:MM:SSZ``.
* ``single_select``: an option key (case-sensitive) -> ``str``.
* ``multi_select``: option keys split by the file's Multi-Select-Delimiter ->
  ``list[str]`` in first-seen order with duplicates dropped (the partner's
  order is kept; sorting would invent one). An empty element is invalid.

Empty cells never reach ``convert``: the caller skips them (an empty cell never
changes anything).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from ingestd.errors import INVALID_SELECT_CUSTOM_FIELD_VALUE, RowError, quoted
from ingestd.persons.reader import IDENTIFYING

FieldType = Literal[
    "string", "integer", "decimal", "boolean", "date", "single_select", "multi_select"
]
Charset = Literal["ascii", "gsm7", "unicode"]

# Exactly docs/formats.md's two messages for PersonErrors::InvalidSelectCustomFieldValue.
CHARSET_MESSAGE = "Custom field value is incompatible with the field's character set"
INVALID_VALUE_MESSAGE = "Invalid custom field value"
CHARSET_ERROR = RowError(INVALID_SELECT_CUSTOM_FIELD_VALUE, CHARSET_MESSAGE)
INVALID_VALUE = RowError(INVALID_SELECT_CUSTOM_FIELD_VALUE, INVALID_VALUE_MESSAGE)

# The id columns of a Person Import: a custom field of the same name could never
# be addressed, so definitions may not use them.
RESERVED_NAMES = frozenset(IDENTIFYING)
_SELECT_TYPES = frozenset({"single_select", "multi_select"})

# GSM 03.38 basic character set, in table order 0x00-0x7F, without 0x1B (ESC:
# it introduces the extension table and is not a character itself).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
) | {"ç"}

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_INT64_DIGITS = len(str(_INT64_MAX))
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"([+-]?)([0-9]+)(?:\.([0-9]+))?")
_DATE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:Z|([+-])([0-9]{2}):?([0-9]{2}))"
)
_BOOLEANS = {"true": True, "false": False}


class FieldDefinition(BaseModel):
    """One custom field of a company, as written in its ``[[field]]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    type: FieldType
    charset: Charset = "unicode"
    options: list[str] = []

    @model_validator(mode="after")
    def _check(self) -> FieldDefinition:
        _check_name(self.name)
        if self.type in _SELECT_TYPES:
            _check_options(self.options)
        elif self.options:
            raise ValueError(f"options are only for select fields, not {self.type}")
        if self.type != "string" and "charset" in self.model_fields_set:
            raise ValueError(f"charset is only for string fields, not {self.type}")
        return self

    @cached_property
    def option_set(self) -> frozenset[str]:
        """The options as a set: select conversion needs O(1) membership."""
        # A cached_property lands in the instance __dict__, so later reads are a
        # plain attribute lookup (pydantic private attributes go through __getattr__).
        return frozenset(self.options)


def _check_name(name: str) -> None:
    if not name or name != name.strip():
        raise ValueError(f"field name {name!r} must be non-empty, without surrounding spaces")
    if name != name.lower():
        raise ValueError(f"field name {name!r} must be lowercase")
    if name in RESERVED_NAMES:
        raise ValueError(f"field name {name!r} is a Person Import id column")


def _check_options(options: list[str]) -> None:
    if not options:
        raise ValueError("options are required for single_select and multi_select")
    if "" in options:
        raise ValueError("an option key may not be empty")
    seen: set[str] = set()
    for option in options:
        if option in seen:
            raise ValueError(f"option {option!r} is listed twice")
        seen.add(option)


def load_definitions(path: Path) -> list[FieldDefinition]:
    """Read a company's definitions; a bad file raises ValueError with a one-line reason.

    A file with no ``[[field]]`` table is valid and defines no fields.
    """
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: {e}") from None
    unknown = sorted(set(data) - {"field"})
    if unknown:
        raise ValueError(f"{path}: unknown top-level key {unknown[0]!r}; expected [[field]] tables")
    tables = data.get("field", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ValueError(f"{path}: 'field' must be an array of tables ([[field]])")
    definitions = [_definition(path, number, table) for number, table in enumerate(tables, 1)]
    seen: set[str] = set()
    for number, definition in enumerate(definitions, 1):
        if definition.name in seen:
            raise ValueError(
                f"{path}: [[field]] #{number} ({definition.name!r}): name is defined twice"
            )
        seen.add(definition.name)
    return definitions


def _definition(path: Path, number: int, table: dict[str, Any]) -> FieldDefinition:
    try:
        return FieldDefinition.model_validate(table)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        reason = f"{where}: {first['msg']}" if where else first["msg"]
        name = table.get("name")
        raise ValueError(f"{path}: [[field]] #{number} ({name!r}): {reason}") from None


def convert(defn: FieldDefinition, raw: str, multi_select_delimiter: str) -> object | RowError:
    """The stored (JSON-serialisable) value of non-empty cell text ``raw``, or its row error."""
    return _CONVERTERS[defn.type](defn, raw, multi_select_delimiter)


def explain(defn: FieldDefinition, raw: str, multi_select_delimiter: str) -> str:
    """Why ``convert`` rejected ``raw``, in words a partner can act on.

    Only called for a rejected cell, so the good path never pays for the words.
    """
    name, kind = defn.name, defn.type
    if kind == "string":
        allowed = GSM7_BASIC if defn.charset == "gsm7" else None
        bad = next((c for c in raw if not (c in allowed if allowed else c.isascii())), raw)
        return f"{quoted(bad)} is not in {name}'s character set {defn.charset}"
    if kind == "integer":
        if _INTEGER.fullmatch(raw) is None:
            return f"{quoted(raw)} is not an integer"
        return f"{quoted(raw)} is outside the 64-bit integer range"
    if kind == "decimal":
        return f"{quoted(raw)} is not a decimal number (digits, an optional sign and point)"
    if kind == "boolean":
        return f"{quoted(raw)} is not a boolean (true or false)"
    if kind == "date":
        if _DATE.fullmatch(raw) is None:
            return (f"{quoted(raw)} is not a date like 2024-05-01T09:30:00Z"
                    " (YYYY-MM-DDTHH:MM:SS then Z, +HHMM or +HH:MM)")
        return f"{quoted(raw)} is not a real date and time (or its UTC offset is out of range)"
    if kind == "multi_select":
        keys = raw.split(multi_select_delimiter)
        if "" in keys:
            return (f"{quoted(raw)} has an empty option between the separators"
                    f" {quoted(multi_select_delimiter)}")
        raw = next((k for k in keys if k not in defn.option_set), raw)
    return f"{quoted(raw)} is not an option of {name} ({_options(defn.options)})"


def _options(options: list[str], limit: int = 10) -> str:
    shown = ", ".join(options[:limit])
    return shown + (f", … ({len(options)} in all)" if len(options) > limit else "")


def _string(defn: FieldDefinition, raw: str, _: str) -> object | RowError:
    charset = defn.charset
    if charset == "unicode":
        return raw
    if charset == "ascii":
        return raw if raw.isascii() else CHARSET_ERROR
    return raw if GSM7_BASIC.issuperset(raw) else CHARSET_ERROR


def _integer(defn: FieldDefinition, raw: str, _: str) -> object | RowError:
    if _INTEGER.fullmatch(raw) is None:
        return INVALID_VALUE
    if len(raw.lstrip("+-").lstrip("0")) > _INT64_DIGITS:
        # Out of range anyway; and int() refuses more than 4300 digits with a ValueError.
        return INVALID_VALUE
    value = int(raw)
    return value if _INT64_MIN <= value <= _INT64_MAX else INVALID_VALUE


def _decimal(defn: FieldDefinition, raw: str, _: str) -> object | RowError:
    match = _DECIMAL.fullmatch(raw)
    if match is None:
        return INVALID_VALUE
    sign, whole, fraction = match.groups()
    whole = whole.lstrip("0") or "0"
    fraction = (fraction or "").rstrip("0")
    text = f"{whole}.{fraction}" if fraction else whole
    return "-" + text if sign == "-" and text != "0" else text


def _boolean(defn: FieldDefinition, raw: str, _: str) -> object | RowError:
    value = _BOOLEANS.get(raw.lower())
    return INVALID_VALUE if value is None else value


def _date(defn: FieldDefinition, raw: str, _: str) -> object | RowError:
    match = _DATE.fullmatch(raw)
    if match is None:
        return INVALID_VALUE
    year, month, day, hour, minute, second, sign, off_h, off_m = match.groups()
    try:
        # Naive, read as UTC: isoformat() then gives exactly YYYY-MM-DDTHH:MM:SS.
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
        if sign is None:
            return raw  # already UTC, every part two or four digits: what isoformat() gives
        if int(off_h) > 23 or int(off_m) > 59:
            return INVALID_VALUE
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        # Local time = UTC + offset, so UTC = local - offset.
        moment = moment - offset if sign == "+" else moment + offset
    except (ValueError, OverflowError):
        # Not a calendar date/time, or the UTC moment falls outside years 1-9999.
        return INVALID_VALUE
    return moment.isoformat() + "Z"


def _single_select(defn: FieldDefinition, raw: str, _: str) -> object | RowError:
    return raw if raw in defn.option_set else INVALID_VALUE


def _multi_select(defn: FieldDefinition, raw: str, delimiter: str) -> object | RowError:
    options = defn.option_set
    # dict keeps first-seen order while dropping duplicates.
    chosen: dict[str, None] = {}
    for key in raw.split(delimiter):
        if key not in options:
            return INVALID_VALUE  # also catches "" (options are never empty)
        chosen[key] = None
    return list(chosen)


_CONVERTERS: dict[str, Callable[[FieldDefinition, str, str], object | RowError]] = {
    "string": _string,
    "integer": _integer,
    "decimal": _decimal,
    "boolean": _boolean,
    "date": _date,
    "single_select": _single_select,
    "multi_select": _multi_select,
}
