"""ingestd.persons.mdn_fast gives phonenumbers' own verdict: valid or not, E.164, number type.

The reference below asks phonenumbers itself (``is_valid_number``, ``number_type``,
``format_number``) about the number an accepted form spells, built the way ``parse``
builds it for clean digits; ten digits outside NANP go through ``parse``, and ten digits
are only ever a national number of the region.
"""

from __future__ import annotations

import re

import phonenumbers
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from phonenumbers import (
    CountryCodeSource,
    PhoneMetadata,
    PhoneNumber,
    PhoneNumberFormat,
    PhoneNumberType,
)

from ingestd.errors import RowError
from ingestd.persons import mdn_fast
from ingestd.persons.phones import normalize_mdn, number_type_is_mobile

REGIONS = sorted(phonenumbers.SUPPORTED_REGIONS)
NON_GEO = sorted(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS)
DEFAULT_REGIONS = ["US", "CA", "PR", "BS", "JM", "GB", "DE", "IT", "FR", "IN", "BR", "ZZ", "us"]
TYPES = [t for t in vars(PhoneNumberType).values() if isinstance(t, int)]
_MOBILE = {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE}


def reference(raw: str, region: str) -> tuple[str, int] | None:
    """phonenumbers' verdict, per call, on the number ``raw`` spells (docs/formats.md section 1)."""
    if raw.startswith("+"):
        digits = raw[1:]
        if not re.fullmatch(r"[0-9]{1,15}", digits):
            return None
        for length in (1, 2, 3):
            known = phonenumbers.COUNTRY_CODE_TO_REGION_CODE
            if digits[0] != "0" and int(digits[:length]) in known:
                country_code, national = int(digits[:length]), digits[length:]
                break
        else:
            return None
        if not national:
            return None
        number = PhoneNumber(country_code=country_code, national_number=int(national))
        zeros = min(len(national) - len(national.lstrip("0")), len(national) - 1)
        if zeros:
            number.italian_leading_zero = True
            number.number_of_leading_zeros = zeros
        assert phonenumbers.national_significant_number(number) == national
    elif re.fullmatch(r"[0-9]{10}", raw):
        # Ten digits are a national number of the region (docs/formats.md section 1):
        # never read past the region's international dialling prefix or a country code.
        metadata = PhoneMetadata.metadata_for_region(region.upper(), None)
        idd = metadata.international_prefix if metadata is not None else None
        if idd and re.match(idd, raw):
            return None
        if phonenumbers.country_code_for_region(region.upper()) == 1:
            number = PhoneNumber(country_code=1, national_number=int(raw))
        else:
            try:
                number = phonenumbers.parse(raw, region.upper(), keep_raw_input=True)
            except phonenumbers.NumberParseException:
                return None
            if number.country_code_source != CountryCodeSource.FROM_DEFAULT_COUNTRY:
                return None
    else:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    return e164, phonenumbers.number_type(number)


def check(raw: str, region: str = "US") -> None:
    expected = reference(raw, region)
    got = mdn_fast.classify(raw, region)
    assert (None if got is None else tuple(got)) == expected, (raw, region)
    # and every caller of ingestd.persons.phones sees the same verdict
    normalized = normalize_mdn(raw, region)
    if expected is None:
        assert isinstance(normalized, RowError)
    else:
        assert normalized == expected[0]
        assert number_type_is_mobile(expected[0]) == (expected[1] in _MOBILE)


def _examples() -> list[str]:
    found = set()
    for region in REGIONS:
        for number_type in TYPES:
            number = phonenumbers.example_number_for_type(region, number_type)
            if number is not None:
                found.add(phonenumbers.format_number(number, PhoneNumberFormat.E164))
    for country_code in NON_GEO:
        number = phonenumbers.example_number_for_non_geo_entity(country_code)
        if number is not None:
            found.add(phonenumbers.format_number(number, PhoneNumberFormat.E164))
    return sorted(found)


EXAMPLES = _examples()


def test_every_example_number_of_every_region_and_type() -> None:
    assert len(EXAMPLES) > 1000
    for e164 in EXAMPLES:
        check(e164)
        # the same number's digits as ten digits (meaningful in NANP, mostly invalid elsewhere)
        if e164.startswith("+1"):
            check(e164[2:], "US")
            check(e164[2:], "CA")


def test_the_types_the_offline_carrier_accepts_are_found() -> None:
    got = {mdn_fast.classify(e164) for e164 in EXAMPLES}
    types = {mdn.number_type for mdn in got if mdn is not None}
    assert {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE,
            PhoneNumberType.FIXED_LINE, PhoneNumberType.TOLL_FREE} <= types


def test_metadata_patterns_have_no_groups_of_their_own() -> None:
    # mdn_fast names the type that matched by the last group closed.
    for region in REGIONS:
        metadata = PhoneMetadata.metadata_for_region(region)
        for attr in ("general_desc", "fixed_line", "mobile", "premium_rate", "toll_free",
                     "shared_cost", "voip", "personal_number", "pager", "uan", "voicemail"):
            desc = getattr(metadata, attr)
            if desc is not None and desc.national_number_pattern:
                assert re.compile(desc.national_number_pattern).groups == 0, (region, attr)


@pytest.mark.parametrize("raw", [
    "+", "", "0", "+0", "+00", "+1", "+1229", "+12295551234", "+012295551234",
    "+112295551234", "+49030123456", "+390612345678", "+3906", "+39000000000",
    "+1229555123456789", "+1229555123", "+4474001234567", "+80012345678",
    "+8001234567890", "+979123456789", "+882", "+88213", "0012295551234",
    "12295551234", "2295551234", "1229555123", "229555123", "+12295551234\n",
    "+" + "".join(chr(0xFF10 + int(d)) for d in "12295551234"),  # full-width digits
    "+1 229 555 1234", "22955512\uff134", "+12 295551234", "++12295551234",
])
@pytest.mark.parametrize("region", ["US", "GB", "IT"])
def test_odd_inputs(raw: str, region: str) -> None:
    check(raw, region)


def _mutate(text: str, data: st.DataObject) -> str:
    digits = list(text[1:])
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["replace", "insert", "delete", "zero"]))
        at = data.draw(st.integers(0, max(len(digits) - 1, 0)))
        digit = data.draw(st.sampled_from("0123456789"))
        if op == "replace" and digits:
            digits[at] = digit
        elif op == "insert":
            digits.insert(at, digit)
        elif op == "delete" and digits:
            del digits[at]
        elif op == "zero":
            digits.insert(at, "0")
    return "+" + "".join(digits)


FAST = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.sampled_from(EXAMPLES), st.data())
def test_mutated_example_numbers(e164: str, data: st.DataObject) -> None:
    mutated = _mutate(e164, data)
    check(mutated)
    if len(mutated) == 12 and mutated.startswith("+1"):
        check(mutated[2:], data.draw(st.sampled_from(DEFAULT_REGIONS)))


@FAST
@given(st.text("0123456789", min_size=1, max_size=16))
@example("2295551234")
def test_random_e164_digits(digits: str) -> None:
    check("+" + digits)


@FAST
@given(st.text("0123456789", min_size=10, max_size=10), st.sampled_from(DEFAULT_REGIONS))
@example("2295551234", "US")
@example("7400123456", "GB")
def test_random_ten_digits_in_several_regions(digits: str, region: str) -> None:
    check(digits, region)


@FAST
@given(st.sampled_from(["1", "44", "49", "39", "33", "91", "55", "86", "7", "61", "800", "882"]),
       st.text("0123456789", min_size=0, max_size=13))
def test_random_national_numbers_of_common_country_codes(country_code: str, rest: str) -> None:
    check(f"+{country_code}{rest}")


def test_us_and_nanp_ten_digits() -> None:
    for raw in ["2125550199", "2295551234", "4165550199", "8095550123", "2422345678",
                "8002345678", "9002345678", "5002345678", "2015550123", "0123456789"]:
        for region in ["US", "CA", "PR", "BS", "JM"]:
            check(raw, region)
