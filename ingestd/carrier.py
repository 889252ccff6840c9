"""Carrier lookup: a small port with two adapters (offline, http). PLACEHOLDER until issue 3 lands."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from ingestd.errors import RowError


@dataclass(frozen=True, slots=True)
class CarrierResult:
    """``error`` is None when the number is an active mobile on a valid carrier."""

    carrier: str | None
    error: RowError | None


class CarrierLookup(Protocol):
    def lookup_many(self, numbers: Iterable[str]) -> dict[str, CarrierResult]:
        """Look up E.164 numbers; transient failures are retried inside, and only
        become a TransientLookupFailureError result once retries run out."""
        ...
