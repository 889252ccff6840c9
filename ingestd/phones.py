"""Mobile numbers (``mdn``): strict syntax, validity by ``phonenumbers``, E.164 out.

Accepted forms (FORMATS.md section 1): ``+`` then digits (E.164), or exactly ten
digits read in the company's region. Nothing else: no spaces, dashes, dots,
brackets, and no ``1``-prefixed eleven-digit forms.

``phonenumbers.parse`` costs about 11-16 us a number and ``is_valid_number``
about 9 us; ``parse`` is mostly spent normalising punctuation we never accept.
So the number object is built directly from the digits, the way ``parse``
would build it for input that is already clean:

* ``+`` form: the country code is the first 1-3 digit prefix phonenumbers knows
  (``parse`` does the same), the rest is the national number as given. E.164
  has no trunk prefix, so nothing is stripped: ``+112295551234`` and
  ``+49030123456`` stay invalid instead of being "repaired" by ``parse``.
* ten digits in a NANP region (US, CA, ...): the national number is the digits.
  ``parse`` would only strip a leading ``1`` there, which leaves nine digits:
  invalid either way, so the result is the same.
* ten digits in any other region: ``phonenumbers.parse`` (trunk prefixes and
  region rules differ too much to mimic).

Validity is always ``phonenumbers.is_valid_number``. Results are memoised per
``(raw, region)`` in a bounded cache: partner files repeat numbers (retries,
daily deltas) and a hit costs well under a microsecond.
"""

from __future__ import annotations

from functools import lru_cache

import phonenumbers
from phonenumbers import PhoneNumber, PhoneNumberFormat, PhoneNumberType

from ingestd.errors import INVALID_MDN_FORMAT, RowError, quoted

# The seed's message cell for this class is empty; its description is the text
# partners know, so that is the message.
INVALID_MDN_MESSAGE = "The mdn is incorrectly formatted. It should be an E.164 mdn."
INVALID_MDN = RowError(INVALID_MDN_FORMAT, INVALID_MDN_MESSAGE)

_MAX_E164_DIGITS = 15
_NANP_COUNTRY_CODE = 1
_MOBILE_TYPES = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE})
_CACHE_SIZE = 1 << 16


def normalize_mdn(raw: str, region: str = "US") -> str | RowError:
    """Return ``raw`` as E.164, or an ``InvalidMDNFormat`` row error.

    ``region`` (ISO 3166 alpha-2) is how a ten-digit number is read.
    """
    return _normalize(raw, region)


def explain_invalid_mdn(raw: str, region: str = "US") -> str:
    """Why :func:`normalize_mdn` rejected ``raw``; only called for a rejected row."""
    plus = raw.startswith("+")
    digits = raw[1:] if plus else raw
    if not _ascii_digits(digits) or (len(digits) > _MAX_E164_DIGITS if plus
                                     else len(digits) != 10):
        return f"{quoted(raw)} is not E.164 (+ and digits) or 10 digits"
    if plus:
        return f"{quoted(raw)} is not a valid number"
    return f"{quoted(raw)} is not a valid number in region {region.upper()}"


def number_type_is_mobile(e164: str) -> bool:
    """True when the E.164 number is mobile or may be (US numbers do not say which).

    ``e164`` must come from :func:`normalize_mdn`; anything else is not mobile.
    """
    return _is_mobile(e164)


# The number type of numbers normalize_mdn validated, so the offline carrier lookup
# right after does not repeat phonenumbers' most expensive step (the type matching
# that validation has just done). Bounded like the caches above.
_TYPES: dict[str, int] = {}


@lru_cache(maxsize=_CACHE_SIZE)
def _normalize(raw: str, region: str) -> str | RowError:
    number = _number_from_text(raw, region)
    if number is None or not phonenumbers.is_valid_number(number):
        return INVALID_MDN
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    if len(_TYPES) >= _CACHE_SIZE:
        _TYPES.clear()
    _TYPES[e164] = phonenumbers.number_type(number)
    return e164


def _is_mobile(e164: str) -> bool:
    known = _TYPES.get(e164)
    if known is not None:
        return known in _MOBILE_TYPES
    return _is_mobile_slow(e164)


@lru_cache(maxsize=_CACHE_SIZE)
def _is_mobile_slow(e164: str) -> bool:
    number = _number_from_text(e164, "US") if e164.startswith("+") else None
    return number is not None and phonenumbers.number_type(number) in _MOBILE_TYPES


def _number_from_text(raw: str, region: str) -> PhoneNumber | None:
    """The number ``raw`` spells, or None when its syntax is not an accepted form."""
    if raw.startswith("+"):
        digits = raw[1:]
        if not _ascii_digits(digits) or len(digits) > _MAX_E164_DIGITS:
            return None
        return _from_international(digits)
    if len(raw) != 10 or not _ascii_digits(raw):
        return None
    region = region.upper()
    country_code = phonenumbers.country_code_for_region(region)
    if country_code == _NANP_COUNTRY_CODE:
        return _build(country_code, raw)
    try:
        return phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None


def _from_international(digits: str) -> PhoneNumber | None:
    if digits.startswith("0"):
        return None  # no country code starts with 0
    for length in (1, 2, 3):
        country_code = int(digits[:length])
        if country_code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            national = digits[length:]
            return _build(country_code, national) if national else None
    return None


def _build(country_code: int, national: str) -> PhoneNumber:
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


def _ascii_digits(text: str) -> bool:
    # str.isdigit alone also accepts other scripts' digits and superscripts.
    return text.isascii() and text.isdigit()
