"""Coverage-guided fuzzing of both parsers with atheris (optional; not part of the suite).

    pip install atheris
    python tests/fuzz/fuzz_parsers.py -atheris_runs=100000      # or any libFuzzer flags

The first input byte picks the parser and the limit; the rest is the file. A crash
is any exception other than the documented ``FileError`` or a broken record count
(the checks of ``tests/test_parser_fuzz.py``); libFuzzer then writes the input to
``crash-*`` in the current directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris  # type: ignore[import-not-found]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports():
    from test_parser_fuzz import check_contacts, check_persons

_LIMITS = (1 << 20, 64, 8, 1)


def one_input(data: bytes) -> None:
    if not data:
        return
    choice, rest = data[0], data[1:]
    limit = _LIMITS[(choice >> 1) % len(_LIMITS)]
    (check_contacts if choice & 1 else check_persons)(rest, limit)


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
