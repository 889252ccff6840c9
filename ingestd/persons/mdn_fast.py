"""phonenumbers' verdict on an mdn, from its own metadata compiled once.

``classify(raw, region)`` answers what ``phonenumbers.is_valid_number``,
``number_type`` and ``format_number(..., E164)`` answer for the number ``raw``
spells in the accepted forms (docs/formats.md section 1: ``+`` and digits, or exactly
ten digits read in ``region``), or None when ``raw`` is not such a valid number.

Why not call phonenumbers per number: validity and type cost it about 25 us,
most of it re-walking one region's descriptors (general, premium rate, toll free,
..., fixed line, mobile) as separate regular expressions, each looked up by
pattern string in a cache, and doing that twice (``is_valid_number`` then
``number_type``). Here each region's descriptors that admit a given length
become ONE regular expression, compiled the first time that (region, length)
is seen: the general pattern as a lookahead, then one named alternative per
type in phonenumbers' order (``_number_type_helper``), so the first alternative
that matches the whole number is the type phonenumbers would return. Region
choice within a shared country code (``+1``: US, CA, ...) follows
``_region_code_for_number_from_list``: a region's ``leading_digits`` when it has
them, else its full type check.

The ``+`` form is read the way ``parse`` reads clean digits, without its repairs:
the country code is the first 1-3 digit prefix phonenumbers knows and the rest is
the national number as given (E.164 has no trunk prefix, so ``+112295551234`` and
``+49030123456`` stay invalid). Ten digits are always a national number of the
region: ten digits that begin with the region's international dialling prefix
(``011`` in NANP, ``00`` in most others) are invalid, never read as a foreign number
the way ``parse`` would read them. Ten digits in a NANP region are the national
number (``parse`` would only strip a leading ``1``, leaving nine digits: invalid
either way). Ten digits in any other region (trunk prefixes differ too much to
mimic) fall back to ``phonenumbers.parse`` and the library's own calls, and count
only when ``parse`` read them as a number of that region.
``tests/test_mdn_fast.py`` checks that the verdicts are the library's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

import phonenumbers
from phonenumbers import (
    CountryCodeSource,
    PhoneMetadata,
    PhoneNumber,
    PhoneNumberFormat,
    PhoneNumberType,
)

MAX_E164_DIGITS = 15
_NANP_COUNTRY_CODE = 1
_NON_GEO = "001"  # phonenumbers' region code for non-geographic country codes

# phonenumbers._number_type_helper checks these first, in this order.
_SPECIAL_TYPES = (
    ("premium_rate", PhoneNumberType.PREMIUM_RATE),
    ("toll_free", PhoneNumberType.TOLL_FREE),
    ("shared_cost", PhoneNumberType.SHARED_COST),
    ("voip", PhoneNumberType.VOIP),
    ("personal_number", PhoneNumberType.PERSONAL_NUMBER),
    ("pager", PhoneNumberType.PAGER),
    ("uan", PhoneNumberType.UAN),
    ("voicemail", PhoneNumberType.VOICEMAIL),
)


class Mdn(NamedTuple):
    e164: str
    number_type: int  # a phonenumbers.PhoneNumberType value, never UNKNOWN


def classify(raw: str, region: str = "US") -> Mdn | None:
    """phonenumbers' verdict on ``raw`` read in ``region``; None when it is not valid."""
    if raw.startswith("+"):
        digits = raw[1:]
        if not _ascii_digits(digits) or len(digits) > MAX_E164_DIGITS:
            return None
        split = split_country_code(digits)
        if split is None:
            return None
        country_code, national = split
        return _classify_national(country_code, national)
    if len(raw) != 10 or not _ascii_digits(raw):
        return None
    if international_prefix(raw, region) is not None:
        return None
    nanp = ten_digit_country_code(region)
    if nanp is not None:
        return _classify_national(nanp, raw)
    return _classify_by_parse(raw, region.upper())


def international_prefix_pattern(region: str) -> str | None:
    """The regular expression of ``region``'s international dialling prefix, if it has
    one (``international_prefix`` matches it at the start of the digits)."""
    metadata = PhoneMetadata.metadata_for_region(region.upper(), None)
    prefix = metadata.international_prefix if metadata is not None else None
    return str(prefix) if prefix else None


def international_prefix(digits: str, region: str) -> str | None:
    """The international dialling prefix of ``region`` that ``digits`` begin with, if any."""
    try:
        pattern = _IDD[region]
    except KeyError:
        prefix = international_prefix_pattern(region)
        pattern = _IDD[region] = re.compile(prefix) if prefix else None
    if pattern is None:
        return None
    found = pattern.match(digits)
    return found.group(0) if found else None


_IDD: dict[str, re.Pattern[str] | None] = {}


def split_country_code(digits: str) -> tuple[int, str] | None:
    """``digits`` (after the ``+``) as country code and national number, as ``parse`` splits.

    The country code is the first 1-3 digit prefix phonenumbers knows. None when there is
    none, or nothing follows it. E.164 has no trunk prefix, so nothing else is stripped.
    """
    if not digits or digits[0] == "0":
        return None  # no country code starts with 0
    for length in (1, 2, 3):
        country_code = int(digits[:length])
        if country_code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            national = digits[length:]
            return (country_code, national) if national else None
    return None


def _classify_national(country_code: int, national: str) -> Mdn | None:
    # With the leading-zero attributes parse sets, phonenumbers' national significant
    # number of these digits is the digits themselves (Italian zeros included).
    plan = _plan(country_code)
    if plan is None:
        return None
    if plan.library:
        return _classify_by_library(country_code, national)
    for region in plan.regions:
        if region.leading_digits is not None:
            if region.leading_digits.match(national):
                # The region is decided; the number is valid only if it is valid there.
                found = region.number_type(national)
                break
        else:
            found = region.number_type(national)
            if found != PhoneNumberType.UNKNOWN:
                break
    else:
        return None
    if found == PhoneNumberType.UNKNOWN:
        return None
    return Mdn(f"+{country_code}{national}", found)


def _classify_by_library(country_code: int, national: str) -> Mdn | None:
    return _verdict(_number(country_code, national))


def _number(country_code: int, national: str) -> PhoneNumber:
    """A PhoneNumber exactly as ``parse`` sets it for these clean digits."""
    number = PhoneNumber(country_code=country_code, national_number=int(national))
    if len(national) > 1 and national[0] == "0":
        # Leading zeros are significant in some plans (Italy); phonenumbers keeps
        # them in these two attributes, never counting the last digit.
        number.italian_leading_zero = True
        zeros = 1
        while zeros < len(national) - 1 and national[zeros] == "0":
            zeros += 1
        if zeros != 1:
            number.number_of_leading_zeros = zeros
    return number


def _classify_by_parse(raw: str, region: str) -> Mdn | None:
    try:
        number = phonenumbers.parse(raw, region, keep_raw_input=True)
    except phonenumbers.NumberParseException:
        return None
    if number.country_code_source != CountryCodeSource.FROM_DEFAULT_COUNTRY:
        return None  # parse read a country code into the digits: no national number
    return _verdict(number)


def _verdict(number: PhoneNumber) -> Mdn | None:
    if not phonenumbers.is_valid_number(number):
        return None
    return Mdn(phonenumbers.format_number(number, PhoneNumberFormat.E164),
               phonenumbers.number_type(number))


@dataclass(frozen=True, slots=True)
class _Plan:
    """The regions that share one country code, in phonenumbers' order.

    ``library`` is set when the metadata is not shaped the way this module relies on
    (a listed region whose metadata has another country code): such numbers are left
    to phonenumbers.
    """

    regions: tuple[_Region, ...]
    library: bool = False


class _Region:
    """One region's type check, a regular expression per national number length."""

    __slots__ = ("_by_length", "leading_digits", "metadata")

    def __init__(self, metadata: PhoneMetadata, *, sole: bool) -> None:
        self.metadata = metadata
        # region_code_for_number takes a sole region without looking at the number.
        self.leading_digits = (re.compile(metadata.leading_digits)
                               if metadata.leading_digits is not None and not sole else None)
        self._by_length: dict[int, tuple[re.Pattern[str], dict[int, int]] | None] = {}

    def number_type(self, national: str) -> int:
        length = len(national)
        try:
            compiled = self._by_length[length]
        except KeyError:
            compiled = self._by_length[length] = _compile(self.metadata, length)
        if compiled is None:
            return PhoneNumberType.UNKNOWN
        pattern, types = compiled
        match = pattern.fullmatch(national)
        if match is None or match.lastindex is None:
            return PhoneNumberType.UNKNOWN
        return types[match.lastindex]


_PLANS: dict[int, _Plan | None] = {}


def _plan(country_code: int) -> _Plan | None:
    try:
        return _PLANS[country_code]
    except KeyError:
        pass
    plan = _PLANS[country_code] = _build_plan(country_code)
    return plan


def _build_plan(country_code: int) -> _Plan | None:
    codes = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(country_code)
    if not codes:
        return None
    if len(codes) == 1:
        # region_code_for_number takes a sole region without looking at the number.
        code = codes[0]
        if code == _NON_GEO:
            metadata = PhoneMetadata.metadata_for_nongeo_region(country_code, None)
        else:
            metadata = PhoneMetadata.metadata_for_region(code.upper(), None)
        if metadata is None or metadata.country_code != country_code:
            return None  # is_valid_number_for_region answers False for every number
        return _Plan((_Region(metadata, sole=True),))
    regions = []
    for code in codes:
        metadata = PhoneMetadata.metadata_for_region(code.upper(), None)
        if metadata is None:
            continue  # _region_code_for_number_from_list skips it
        if metadata.country_code != country_code:
            return _Plan((), library=True)
        regions.append(_Region(metadata, sole=False))
    return _Plan(tuple(regions))


def _alternatives(metadata: PhoneMetadata, length: int
                  ) -> tuple[str, list[tuple[tuple[str, ...], int]]] | None:
    """``_number_type_helper`` on numbers of ``length`` digits, as data: the general
    pattern, then in phonenumbers' order each type with the patterns that must all match
    the whole number for it (the first alternative that matches is the type)."""
    general = _pattern(metadata.general_desc, length)
    if general is None:
        return None
    alternatives: list[tuple[tuple[str, ...], int]] = []
    for attr, number_type in _SPECIAL_TYPES:
        pattern = _pattern(getattr(metadata, attr), length)
        if pattern is not None:
            alternatives.append(((pattern,), number_type))
    fixed = _pattern(metadata.fixed_line, length)
    mobile = _pattern(metadata.mobile, length)
    same = metadata.same_mobile_and_fixed_line_pattern
    if fixed is not None:
        if same:
            alternatives.append(((fixed,), PhoneNumberType.FIXED_LINE_OR_MOBILE))
        else:
            if mobile is not None:
                alternatives.append(((mobile, fixed), PhoneNumberType.FIXED_LINE_OR_MOBILE))
            alternatives.append(((fixed,), PhoneNumberType.FIXED_LINE))
    if not same and mobile is not None:
        alternatives.append(((mobile,), PhoneNumberType.MOBILE))
    if not alternatives:
        return None
    return general, alternatives


def _compile(metadata: PhoneMetadata, length: int) -> tuple[re.Pattern[str], dict[int, int]] | None:
    """One expression for ``_number_type_helper`` on numbers of ``length`` digits."""
    found = _alternatives(metadata, length)
    if found is None:
        return None
    general, alternatives = found
    # All but the last pattern of an alternative as lookaheads: each must match the whole.
    texts = ["".join(f"(?=(?:{p})\\Z)" for p in patterns[:-1]) + f"(?:{patterns[-1]})"
             for patterns, _ in alternatives]
    body = "|".join(f"(?P<t{i}>{text})" for i, text in enumerate(texts))
    compiled = re.compile(f"(?=(?:{general})\\Z)(?:{body})")
    # The metadata patterns have no groups of their own (checked by the tests), so the
    # alternative that matched is the last group closed.
    types = {compiled.groupindex[f"t{i}"]: t for i, (_, t) in enumerate(alternatives)}
    return compiled, types


def deciding_alternatives(country_code: int, length: int
                          ) -> tuple[str, list[tuple[tuple[str, ...], int]]] | None:
    """For a bulk check of many numbers at once (``ingestd.persons.kernels``): the general
    pattern and type alternatives (see ``_alternatives``) of the region whose type decides
    a national number of ``length`` digits under ``country_code`` whenever it is not
    UNKNOWN, or None when no region decides that way (leading digits, the library's path).
    A number this gives no type must go to ``classify``."""
    plan = _plan(country_code)
    if plan is None or plan.library or not plan.regions:
        return None
    first = plan.regions[0]
    if first.leading_digits is not None:
        return None
    return _alternatives(first.metadata, length)


def ten_digit_country_code(region: str) -> int | None:
    """The country code whose national number ten digits read in ``region`` are as they
    stand (NANP), or None when they are read by ``phonenumbers.parse``."""
    if phonenumbers.country_code_for_region(region.upper()) == _NANP_COUNTRY_CODE:
        return _NANP_COUNTRY_CODE
    return None


def _pattern(desc: phonenumbers.PhoneNumberDesc | None, length: int) -> str | None:
    """``desc``'s pattern if ``_is_number_matching_desc`` would try it at ``length``."""
    if desc is None or not desc.national_number_pattern:
        return None
    if desc.possible_length and length not in desc.possible_length:
        return None
    return str(desc.national_number_pattern)


def _ascii_digits(text: str) -> bool:
    # str.isdigit alone also accepts other scripts' digits and superscripts.
    return text.isascii() and text.isdigit()
