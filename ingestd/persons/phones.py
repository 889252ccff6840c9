"""Mobile numbers (``mdn``): strict syntax, validity by ``phonenumbers``, E.164 out.

Accepted forms (docs/formats.md section 1): ``+`` then digits (E.164), or exactly ten
digits, a national number of the company's region (ten digits that begin with the
region's international dialling prefix are rejected, never read as a foreign number).
Nothing else: no spaces, dashes, dots, brackets, and no ``1``-prefixed eleven-digit
forms. The caller trims the cell's surrounding whitespace first.

Validity, type and E.164 form are phonenumbers' verdicts, computed by
``ingestd.persons.mdn_fast`` from phonenumbers' own metadata (one compiled expression per
region and length) instead of its per-number calls, which cost ~15 us; see that
module for the shapes it reads directly and for what it leaves to the library.

Results are memoised per ``(raw, region)`` in a bounded cache: partner files
repeat numbers (retries, daily deltas) and a hit costs well under a microsecond.
The bound is the ``mdn_cache_entries`` setting (``configure_cache``); each entry costs
a few hundred bytes, and a full cache is memory the daemon keeps for good, so the
default is modest. ``cache_entries`` is shown as a metric.
"""

from __future__ import annotations

from functools import _lru_cache_wrapper, lru_cache

from phonenumbers import PhoneNumberType

from ingestd.errors import INVALID_MDN_FORMAT, RowError, quoted
from ingestd.persons.mdn_fast import MAX_E164_DIGITS, classify, international_prefix

# docs/formats.md's message cell for this class is empty; its description is the text
# partners know, so that is the message.
INVALID_MDN_MESSAGE = "The mdn is incorrectly formatted. It should be an E.164 mdn."
INVALID_MDN = RowError(INVALID_MDN_FORMAT, INVALID_MDN_MESSAGE)

_MOBILE_TYPES = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE})
DEFAULT_CACHE_ENTRIES = 10_000


def normalize_mdn(raw: str, region: str = "US") -> str | RowError:
    """Return ``raw`` as E.164, or an ``InvalidMDNFormat`` row error.

    ``region`` (ISO 3166 alpha-2) is how a ten-digit number is read.
    """
    return _normalize_cached(raw, region)


def explain_invalid_mdn(raw: str, region: str = "US") -> str:
    """Why :func:`normalize_mdn` rejected ``raw``; only called for a rejected row."""
    plus = raw.startswith("+")
    digits = raw[1:] if plus else raw
    if not _ascii_digits(digits) or (len(digits) > MAX_E164_DIGITS if plus
                                     else len(digits) != 10):
        return f"{quoted(raw)} is not E.164 (+ and digits) or 10 digits"
    if plus:
        return f"{quoted(raw)} is not a valid number"
    idd = international_prefix(digits, region.upper())
    if idd is not None:
        return (f"{quoted(raw)} begins with {idd}, the international dialling prefix of "
                f"region {region.upper()}: ten digits are a national number; write a foreign "
                "number as E.164 (+ and digits)")
    return f"{quoted(raw)} is not a valid number in region {region.upper()}"


def number_type_is_mobile(e164: str) -> bool:
    """True when the E.164 number is mobile or may be (US numbers do not say which).

    ``e164`` must come from :func:`normalize_mdn`; anything else is not mobile.
    """
    return _is_mobile(e164)


def configure_cache(entries: int) -> None:
    """Bound each of this module's caches to ``entries`` (0: no caching); emptied."""
    global _entries, _normalize_cached, _is_mobile_cached
    _entries = entries
    _TYPES.clear()
    _normalize_cached = lru_cache(maxsize=entries)(_normalize)
    _is_mobile_cached = lru_cache(maxsize=entries)(_is_mobile_slow)


def cache_entries() -> int:
    """Entries held now, all of this module's caches together."""
    return (_normalize_cached.cache_info().currsize + len(_TYPES)
            + _is_mobile_cached.cache_info().currsize)


# The number type of numbers normalize_mdn validated, so the offline carrier lookup
# right after does not repeat phonenumbers' most expensive step (the type matching
# that validation has just done). Bounded like the caches above.
_TYPES: dict[str, int] = {}


def _normalize(raw: str, region: str) -> str | RowError:
    mdn = classify(raw, region)
    if mdn is None:
        return INVALID_MDN
    if _entries:
        if len(_TYPES) >= _entries:
            _TYPES.clear()
        _TYPES[mdn.e164] = mdn.number_type
    return mdn.e164


def _is_mobile(e164: str) -> bool:
    known = _TYPES.get(e164)
    if known is not None:
        return known in _MOBILE_TYPES
    return _is_mobile_cached(e164)


def _is_mobile_slow(e164: str) -> bool:
    mdn = classify(e164) if e164.startswith("+") else None
    return mdn is not None and mdn.number_type in _MOBILE_TYPES


_entries = DEFAULT_CACHE_ENTRIES
_normalize_cached: _lru_cache_wrapper[str | RowError] = lru_cache(
    maxsize=_entries)(_normalize)
_is_mobile_cached: _lru_cache_wrapper[bool] = lru_cache(maxsize=_entries)(_is_mobile_slow)


def _ascii_digits(text: str) -> bool:
    # str.isdigit alone also accepts other scripts' digits and superscripts.
    return text.isascii() and text.isdigit()
