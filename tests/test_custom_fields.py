"""Custom field definitions (model, TOML loading) and cell conversion."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from ingestd.errors import INVALID_SELECT_CUSTOM_FIELD_VALUE, RowError
from ingestd.persons.custom_fields import (
    GSM7_BASIC,
    FieldDefinition,
    convert,
    load_definitions,
)

INVALID = RowError(INVALID_SELECT_CUSTOM_FIELD_VALUE, "Invalid custom field value")
CHARSET = RowError(
    INVALID_SELECT_CUSTOM_FIELD_VALUE,
    "Custom field value is incompatible with the field's character set",
)


def field(type_: str, **kwargs: Any) -> FieldDefinition:
    return FieldDefinition.model_validate({"name": "f", "type": type_, **kwargs})


def conv(defn: FieldDefinition, raw: str, delimiter: str = "|") -> object:
    return convert(defn, raw, delimiter)


# --- the model --------------------------------------------------------------------


def test_defaults() -> None:
    defn = field("string")
    assert (defn.charset, defn.options) == ("unicode", [])


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"name": "Tier", "type": "string"}, "lowercase"),
        ({"name": "", "type": "string"}, "non-empty"),
        ({"name": " tier", "type": "string"}, "non-empty"),
        ({"name": "mdn", "type": "string"}, "id column"),
        ({"name": "t", "type": "text"}, "Input should be"),
        ({"name": "t", "type": "single_select"}, "options are required"),
        ({"name": "t", "type": "multi_select", "options": []}, "options are required"),
        ({"name": "t", "type": "single_select", "options": ["a", ""]}, "may not be empty"),
        ({"name": "t", "type": "single_select", "options": ["a", "a"]}, "listed twice"),
        ({"name": "t", "type": "string", "options": ["a"]}, "only for select"),
        ({"name": "t", "type": "integer", "charset": "ascii"}, "only for string"),
        ({"name": "t", "type": "string", "charset": "latin1"}, "Input should be"),
        ({"name": "t", "type": "string", "colour": "red"}, "Extra inputs"),
    ],
)
def test_invalid_definitions(data: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        FieldDefinition.model_validate(data)


# --- loading ----------------------------------------------------------------------

FORMATS_EXAMPLE = """
[[field]]
name = "tier"              # exact, lowercase
type = "single_select"     # string | integer | decimal | boolean | date | single_select
options = ["gold", "silver", "bronze"]   # selects: option keys, case-sensitive

[[field]]
name = "sms_name"
type = "string"
charset = "gsm7"           # strings: ascii | gsm7 | unicode (default unicode)
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fields.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_the_formats_example(tmp_path: Path) -> None:
    tier, sms = load_definitions(write(tmp_path, FORMATS_EXAMPLE))
    assert (tier.name, tier.type, tier.options) == (
        "tier",
        "single_select",
        ["gold", "silver", "bronze"],
    )
    assert (sms.name, sms.type, sms.charset) == ("sms_name", "string", "gsm7")


def test_load_empty_file_defines_nothing(tmp_path: Path) -> None:
    assert load_definitions(write(tmp_path, "")) == []


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[[field]]\nname = "a"\ntype = \n', "line 3"),
        (
            '[[field]]\nname = "a"\ntype = "string"\n[[field]]\nname = "B"\ntype = "string"\n',
            "[[field]] #2 ('B'): ",
        ),
        ('[[field]]\nname = "a"\n', "[[field]] #1 ('a'): type: Field required"),
        (
            '[[field]]\nname = "a"\ntype = "string"\n[[field]]\nname = "a"\ntype = "integer"\n',
            "#2 ('a'): name is defined twice",
        ),
        ('[fields]\nname = "a"\n', "unknown top-level key 'fields'"),
        ('field = "a"\n', "array of tables"),
    ],
)
def test_load_errors_are_one_line(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ValueError) as info:
        load_definitions(write(tmp_path, text))
    message = str(info.value)
    assert words in message
    assert "\n" not in message
    assert str(tmp_path) in message


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="No such file"):
        load_definitions(tmp_path / "absent.toml")


# --- conversion -------------------------------------------------------------------


def test_string_unicode_takes_anything() -> None:
    assert conv(field("string"), "Zoë 😀 [x]") == "Zoë 😀 [x]"


def test_string_ascii() -> None:
    defn = field("string", charset="ascii")
    assert conv(defn, "Plain text ~ [ok]") == "Plain text ~ [ok]"
    assert conv(defn, "café") == CHARSET


def test_gsm7_basic_set_is_the_standard_table() -> None:
    # 128 code points minus ESC, plus the lowercase reading of 0x09.
    assert len(GSM7_BASIC) == 128
    assert {"@", "£", "Δ", "¤", "¡", "§", "¿", "à", "\n", "\r", "Ç", "ç"} <= GSM7_BASIC


@pytest.mark.parametrize("raw", ["Hello @ £5, ok?", "Straße Ñoño ÆØÅ §1 ¿Qué? où", "Δ_ΦΓΛΩΠΨΣΘΞ"])
def test_gsm7_accepts_basic_characters(raw: str) -> None:
    assert conv(field("string", charset="gsm7"), raw) == raw


@pytest.mark.parametrize(
    "raw", ["5 €", "[x]", "{x}", "a\\b", "a^b", "a~b", "a|b", "é ok ê", "`", "😀"]
)
def test_gsm7_rejects_extension_table_and_others(raw: str) -> None:
    assert conv(field("string", charset="gsm7"), raw) == CHARSET


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("0", 0),
        ("42", 42),
        ("+42", 42),
        ("-42", -42),
        ("007", 7),
        ("-9223372036854775808", -(2**63)),
    ],
)
def test_integer(raw: str, value: int) -> None:
    assert conv(field("integer"), raw) == value


@pytest.mark.parametrize(
    "raw",
    ["4.0", "1e3", " 1", "1 ", "--1", "+", "abc", "\u0661", "9223372036854775808", "0x10", "1_000"],
)
def test_integer_invalid(raw: str) -> None:
    assert conv(field("integer"), raw) == INVALID


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("0", "0"),
        ("1.50", "1.5"),
        ("+007.50", "7.5"),
        ("-0.000", "0"),
        ("-0.010", "-0.01"),
        ("100", "100"),
        ("100.00", "100"),
        ("12345678901234567890.123456789", "12345678901234567890.123456789"),
    ],
)
def test_decimal_canonical_string(raw: str, value: str) -> None:
    assert conv(field("decimal"), raw) == value


@pytest.mark.parametrize("raw", [".5", "5.", "1,5", "1e3", "NaN", "inf", "1.2.3", " 1.0", "+-1"])
def test_decimal_invalid(raw: str) -> None:
    assert conv(field("decimal"), raw) == INVALID


@pytest.mark.parametrize(
    ("raw", "value"), [("true", True), ("TRUE", True), ("False", False), ("fALSE", False)]
)
def test_boolean(raw: str, value: bool) -> None:
    assert conv(field("boolean"), raw) is value


@pytest.mark.parametrize("raw", ["yes", "1", "0", "t", "true ", "truee"])
def test_boolean_invalid(raw: str) -> None:
    assert conv(field("boolean"), raw) == INVALID


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("2024-03-01T12:30:45Z", "2024-03-01T12:30:45Z"),
        ("2024-03-01T12:30:45+0200", "2024-03-01T10:30:45Z"),
        ("2024-03-01T12:30:45-05:00", "2024-03-01T17:30:45Z"),
        ("2024-03-01T12:30:45+05:30", "2024-03-01T07:00:45Z"),
        ("2024-01-01T01:00:00+0200", "2023-12-31T23:00:00Z"),  # crosses the year
        ("2024-02-29T00:00:00Z", "2024-02-29T00:00:00Z"),  # leap day
        ("2024-03-01T00:00:00+0000", "2024-03-01T00:00:00Z"),
        ("0999-01-01T00:00:00Z", "0999-01-01T00:00:00Z"),
    ],
)
def test_date_to_utc(raw: str, value: str) -> None:
    assert conv(field("date"), raw) == value


@pytest.mark.parametrize(
    "raw",
    [
        "2023-02-29T00:00:00Z",  # not a leap year
        "2024-04-31T00:00:00Z",
        "2024-13-01T00:00:00Z",
        "2024-01-01T24:00:00Z",
        "2024-01-01T23:60:00Z",
        "2024-01-01T23:59:60Z",  # leap seconds are not datetimes
        "2024-01-01T00:00:00.5Z",  # fractions
        "2024-01-01T00:00:00.000Z",
        "2024-01-01T00:00:00",  # no offset
        "2024-01-01T00:00Z",
        "2024-01-01 00:00:00Z",
        "2024-01-01t00:00:00z",
        "2024-01-01",
        "2024-01-01T00:00:00+2400",
        "2024-01-01T00:00:00+0060",
        "2024-01-01T00:00:00+02",
        "2024-01-01T00:00:00+02:0",
        "0000-01-01T00:00:00Z",
        "0001-01-01T00:00:00+0100",  # before year 1 in UTC
        "9999-12-31T23:00:00-0200",  # after year 9999 in UTC
        "\uff12\uff10\uff12\uff14-01-01T00:00:00Z",  # fullwidth digits
    ],
)
def test_date_invalid(raw: str) -> None:
    assert conv(field("date"), raw) == INVALID


def test_single_select_is_case_sensitive() -> None:
    defn = field("single_select", options=["gold", "silver"])
    assert conv(defn, "gold") == "gold"
    assert conv(defn, "Gold") == INVALID
    assert conv(defn, "gold|silver") == INVALID


def test_multi_select_first_seen_order_without_duplicates() -> None:
    defn = field("multi_select", options=["a", "b", "c"])
    assert conv(defn, "c|a|c|b|a") == ["c", "a", "b"]
    assert conv(defn, "b") == ["b"]
    assert conv(defn, "a;b", ";") == ["a", "b"]
    assert conv(defn, "a|b", ";") == INVALID


@pytest.mark.parametrize("raw", ["a||b", "a|", "|a", "a|B", "a|d", "a | b"])
def test_multi_select_invalid(raw: str) -> None:
    assert conv(field("multi_select", options=["a", "b"]), raw) == INVALID


@pytest.mark.parametrize(
    ("type_", "raw"),
    [
        ("string", "x"),
        ("integer", "1"),
        ("decimal", "1.5"),
        ("boolean", "true"),
        ("date", "2024-01-01T00:00:00Z"),
        ("multi_select", "a|b"),
    ],
)
def test_values_are_json_serialisable(type_: str, raw: str) -> None:
    options = {"options": ["a", "b"]} if type_ == "multi_select" else {}
    json.dumps(conv(field(type_, **options), raw))
