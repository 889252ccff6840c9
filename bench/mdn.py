"""Cost of one mdn verdict: phonenumbers' own calls against ingestd.mdn_fast.

    .venv/bin/python bench/mdn.py [--numbers 200000]

The numbers are distinct, so no cache helps: E.164 US numbers, the same as ten
digits, and E.164 numbers of other regions (phonenumbers' example numbers). The
phonenumbers side is what ingestd did before mdn_fast: build the number from the
digits, then ``is_valid_number``, ``number_type`` and ``format_number``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import phonenumbers
from _common import mdn
from phonenumbers import PhoneNumber, PhoneNumberFormat

from ingestd.persons.mdn_fast import classify, split_country_code


def library(raw: str, region: str) -> tuple[str, int] | None:
    if raw.startswith("+"):
        split = split_country_code(raw[1:])
        if split is None:
            return None
        country_code, national = split
    else:
        country_code, national = 1, raw
    # bench numbers have no leading zeros: the number needs no Italian-zero attributes
    number = PhoneNumber(country_code=country_code, national_number=int(national))
    if not phonenumbers.is_valid_number(number):
        return None
    return (phonenumbers.format_number(number, PhoneNumberFormat.E164),
            phonenumbers.number_type(number))


def per_number_us(fn: Callable[[str, str], object], numbers: list[str]) -> float:
    t0 = time.perf_counter()
    for raw in numbers:
        fn(raw, "US")
    return (time.perf_counter() - t0) / len(numbers) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--numbers", type=int, default=200_000)
    args = ap.parse_args()
    us = [mdn(i) for i in range(args.numbers)]
    examples = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        number = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
        if number is not None and not number.italian_leading_zero:
            examples.append(phonenumbers.format_number(number, PhoneNumberFormat.E164))
    world = (examples * (args.numbers // max(len(examples), 1) + 1))[:args.numbers]
    for what, numbers in (("US E.164", us), ("US ten digits", [n[2:] for n in us]),
                          ("mobiles of every region (E.164)", world)):
        classify(numbers[0], "US")  # compile the first region outside the timing
        slow, fast = per_number_us(library, numbers), per_number_us(classify, numbers)
        print(f"{what:32} phonenumbers {slow:6.2f} µs   mdn_fast {fast:6.2f} µs   "
              f"{slow / fast:5.1f}x")


if __name__ == "__main__":
    main()
