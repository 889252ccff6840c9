"""The formats ingestd accepts: the only place that knows which exist.

A format is its file name extension, its applier (``persons/``, ``contacts/``: reads
the file and applies its rows, inside the file's transaction) and its sidecar writer
(the files beside the finished drop, written after the commit). Adding a format is a
new folder beside those two and one line in ``FORMATS``; the lifecycle, which claims,
applies and moves files, asks this module and names no format itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ingestd.apply_context import Applier
from ingestd.contacts import sidecars as contacts_sidecars
from ingestd.persons import sidecars as persons_sidecars
from ingestd.persons.carrier import CarrierLookup
from ingestd.persons.carrier_cache import cached as cached_carrier
from ingestd.sidecars import Finished

# The one service a format needs from the daemon: the Person Import's carrier lookup,
# cached in PostgreSQL for a real apply (other formats ignore it). Named here so that
# the lifecycle, which hands it to every applier, names no format.
__all__ = ["FORMATS", "CarrierLookup", "Format", "cached_carrier", "expected", "for_file", "named"]


@dataclass(frozen=True, slots=True)
class Format:
    name: str  # what the ledger, result.json and the metrics call it
    extension: str  # lowercase, with the dot
    applier: Callable[[], Applier]
    write_sidecars: Callable[[Finished], None]


# Appliers are imported on first use: they pull in their rules and SQL.
def _persons() -> Applier:
    from ingestd.persons.apply import PersonsProcessor

    return PersonsProcessor()


def _contacts() -> Applier:
    from ingestd.contacts.apply import ContactsProcessor

    return ContactsProcessor()


FORMATS = (
    Format("persons", ".persons", _persons, persons_sidecars.write),
    Format("contacts", ".csv", _contacts, contacts_sidecars.write),
)
_BY_EXTENSION = {f.extension: f for f in FORMATS}
_BY_NAME = {f.name: f for f in FORMATS}


def for_file(name: str) -> Format | None:
    """The format a drop's name says, or None (an unsupported file)."""
    return _BY_EXTENSION.get(Path(name).suffix.lower())


def named(name: str | None) -> Format | None:
    """The format the ledger recorded (None for a file that failed before it was known)."""
    return _BY_NAME.get(name) if name else None


def expected() -> str:
    """The extensions, for an unsupported file's message: ".persons or .csv"."""
    names = [f.extension for f in FORMATS]
    return " or ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else names[0]
