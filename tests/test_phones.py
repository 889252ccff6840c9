"""mdn syntax, validity and normalisation; the offline carrier lookup's type check."""

from __future__ import annotations

import re

import phonenumbers
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ingestd.errors import INVALID_MDN_FORMAT, RowError
from ingestd.persons.phones import (
    INVALID_MDN_MESSAGE,
    explain_invalid_mdn,
    normalize_mdn,
    number_type_is_mobile,
)

INVALID = RowError(INVALID_MDN_FORMAT, INVALID_MDN_MESSAGE)


def test_message_is_the_seed_description() -> None:
    assert INVALID_MDN_MESSAGE == "The mdn is incorrectly formatted. It should be an E.164 mdn."


@pytest.mark.parametrize(
    "e164",
    [
        "+12295551234",  # US (the seed's example)
        "+14165550199",  # Canada shares +1
        "+447400123456",  # UK mobile
        "+442079460000",  # UK London fixed line
        "+4915123456789",  # DE mobile
        "+4930123456",  # DE Berlin fixed line
        "+390612345678",  # IT: the leading 0 is part of the number
    ],
)
def test_valid_e164_is_returned_unchanged(e164: str) -> None:
    assert normalize_mdn(e164) == e164


def test_ten_digits_are_read_in_the_region() -> None:
    assert normalize_mdn("2295551234") == "+12295551234"
    assert normalize_mdn("2295551234", "CA") == "+12295551234"
    assert normalize_mdn("7400123456", "GB") == "+447400123456"
    assert normalize_mdn("7400123456", "gb") == "+447400123456"
    assert normalize_mdn("7400123456", "US") == INVALID  # exchange 012 does not exist


@pytest.mark.parametrize(("raw", "region", "prefix"), [
    ("0116907290", "US", "011"),  # NANP: 011 then Tokelau's +690
    ("0116907290", "CA", "011"),
    ("0069072900", "GB", "00"),  # was stored as +69072900
    ("0069072900", "DE", "00"),
    ("0044740012", "FR", "00"),
])
def test_ten_digits_starting_with_the_international_prefix_are_invalid(
        raw: str, region: str, prefix: str) -> None:
    """Ten digits are a national number of the company's region, never a foreign number
    dialled with the region's international prefix (issue 20, item 6)."""
    assert normalize_mdn(raw, region) == INVALID
    assert explain_invalid_mdn(raw, region).startswith(
        f"'{raw}' begins with {prefix}, the international dialling prefix of region {region}")


def test_a_national_number_is_not_read_as_a_foreign_one() -> None:
    """What parse would read as the region's own country code and a shorter national
    number is no national number of ten digits."""
    assert normalize_mdn("4930123456", "DE") == INVALID
    assert normalize_mdn("3012345678", "DE") == "+493012345678"


def test_region_does_not_matter_for_e164() -> None:
    assert normalize_mdn("+447400123456", "US") == "+447400123456"
    assert normalize_mdn("+12295551234", "DE") == "+12295551234"


@pytest.mark.parametrize(
    "raw",
    [
        "+1 229 555 1234",
        "+1-229-555-1234",
        "(229) 555-1234",
        "229-555-1234",
        "229.555.1234",
        " 2295551234",
        "2295551234 ",
        "+12295551234\n",
        "tel:+12295551234",
    ],
)
def test_punctuation_is_rejected(raw: str) -> None:
    assert normalize_mdn(raw) == INVALID


@pytest.mark.parametrize(
    "raw",
    [
        "12295551234",  # 11 digits with the NANP trunk 1
        "+112295551234",  # E.164 has no trunk prefix; parse() would strip it
        "+49030123456",  # nor does German 0
        "0012295551234",  # international access code
        "229555123",  # 9 digits
        "1229555123",  # 10 digits, but area codes do not start with 1
    ],
)
def test_other_digit_forms_are_rejected(raw: str) -> None:
    assert normalize_mdn(raw) == INVALID


@pytest.mark.parametrize(
    "raw",
    [
        "+15555555555",  # 555 is not an area code
        "+12225551234",  # 222 is not assigned
        "5555555555",
        "+10000000000",
        "+999123456789",  # no such country code
        "+0123456789",
        "+4474001234567890",  # more than 15 digits
        "+",
        "",
        "++12295551234",
        "+١٢٢٩٥٥٥١٢٣٤",  # Arabic-Indic digits are digits, but not ASCII
        "²²⁹5551234",
    ],
)
def test_invalid_numbers_are_rejected(raw: str) -> None:
    assert normalize_mdn(raw) == INVALID


def _reference(raw: str, region: str) -> str | RowError:
    """The slow, obviously-correct rule: phonenumbers.parse, valid, E.164 exactly as given."""
    plus = raw.startswith("+")
    digits = raw[1:] if plus else raw
    if not (digits.isascii() and digits.isdigit()) or (not plus and len(digits) != 10):
        return INVALID
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    idd = metadata.international_prefix if metadata is not None else None
    if not plus and idd and re.match(f"(?:{idd})", digits):
        # FORMATS.md: ten digits are always a national number of the region, so ten
        # digits that begin with its international dialling prefix are no number there
        # (phonenumbers would read '0050020000' in GB as the Falklands' +50020000).
        return INVALID
    try:
        number = phonenumbers.parse(raw, None if plus else region)
    except phonenumbers.NumberParseException:
        return INVALID
    if not phonenumbers.is_valid_number(number):
        return INVALID
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return INVALID if plus and e164 != raw else e164


_PLUS = st.one_of(
    st.from_regex(r"\+1[2-9][0-9]{9}", fullmatch=True),
    st.from_regex(r"\+1[0-9]{9,11}", fullmatch=True),
    st.from_regex(r"\+44[0-9]{9,11}", fullmatch=True),
    st.from_regex(r"\+49[0-9]{6,12}", fullmatch=True),
    st.from_regex(r"\+39[0-9]{6,11}", fullmatch=True),
    st.from_regex(r"\+7[0-9]{9,11}", fullmatch=True),
    st.from_regex(r"\+[0-9]{4,15}", fullmatch=True),
)
_TEN = st.from_regex(r"[0-9]{10}", fullmatch=True)
_REGIONS = st.sampled_from(["US", "CA", "PR", "BS", "GB", "DE", "IT", "RU", "IN", "BR"])


@settings(max_examples=2000, deadline=None)
@given(st.one_of(_PLUS, _TEN), _REGIONS)
@example("0050020000", "GB")  # ten digits led by GB's international prefix (00)
def test_fast_path_agrees_with_phonenumbers_parse(raw: str, region: str) -> None:
    assert normalize_mdn(raw, region) == _reference(raw, region)


@pytest.mark.parametrize(
    ("e164", "mobile"),
    [
        ("+12295551234", True),  # US: fixed line or mobile, cannot tell
        ("+447400123456", True),
        ("+442079460000", False),
        ("+4915123456789", True),
        ("+4930123456", False),
        ("not a number", False),
        ("2295551234", False),  # not E.164
    ],
)
def test_number_type_is_mobile(e164: str, mobile: bool) -> None:
    assert number_type_is_mobile(e164) is mobile
