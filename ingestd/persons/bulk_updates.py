"""Updates decided in bulk: rows that name a stored person by ``external_person_id`` alone.

Such a row (no person_id, person_key, mdn or vibes_device_id; custom values the kernels
passed) can only set its person's custom fields: row by row it would find its person,
pass every id check (the only id it gives is the person's own) and patch the custom
fields with its non-empty cells. So it is decided in bulk, as long as nothing else in
its chunk could change what it finds: no other row of the chunk names that person by
any id (``Triage`` sends such rows row by row, in file order), and no other row shares
its id value (already true of every bulk row).

The patches are written as columns (``PersonsStore.patch``): one UPDATE for people who
have custom values stored, one COPY for those who do not.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ingestd.persons.kernels import Bulk
from ingestd.persons.store import Person

_EMPTY_PATCH = "{}"


@dataclass(slots=True)
class Updates:
    """Rows of a chunk that each patch one stored person's custom fields (file order)."""

    index: pa.Array  # int64: the row's position in its chunk
    person_id: pa.Array  # int64
    has_custom: pa.Array  # bool: a persons_custom row exists
    custom: pa.Array  # the patch, a JSON object

    def __len__(self) -> int:
        return len(self.index)

    def keep(self, mask: pa.Array) -> Updates:
        return Updates(*(col.filter(mask) for col in
                         (self.index, self.person_id, self.has_custom, self.custom)))

    def changing(self, stored: bool) -> Updates:
        """The rows with a patch to write, for people with (or without) stored custom values."""
        has = self.has_custom if stored else pc.invert(self.has_custom)
        return self.keep(pc.and_(has, pc.not_equal(self.custom, _EMPTY_PATCH)))


_NONE = Updates(pa.array([], pa.int64()), pa.array([], pa.int64()),
                pa.array([], pa.bool_()), pa.array([], pa.large_string()))


def no_updates() -> Updates:
    return _NONE


def ext_only(bulk: Bulk) -> pa.Array:
    """The bulk rows whose only id is an ``external_person_id``."""
    return pc.and_(pc.is_null(bulk.mdn), pc.is_null(bulk.vibes_device_id))


def updates_of(rows: Bulk, stored: list[Person]) -> Updates:
    """``rows`` (ext-only rows whose id a stored person has) as updates of those people."""
    if not len(rows):
        return no_updates()
    with_ext = [p for p in stored if p.external_person_id]
    at = pc.index_in(rows.external_person_id, value_set=pa.array(
        [p.external_person_id for p in with_ext], type=rows.external_person_id.type))
    person_id = pa.array([p.person_id for p in with_ext], pa.int64()).take(at)
    has_custom = pa.array([p.has_custom for p in with_ext], pa.bool_()).take(at)
    return Updates(rows.index, person_id, has_custom, rows.custom)


def named_people(rows: Iterable[Any], stored: list[Person]) -> pa.Array:
    """The person_ids of the stored people that any of ``rows`` (checked rows without an
    error of their own) names, by any id, as identifier or as data."""
    rows = [r for r in rows if r.error is None]
    if not rows:
        return pa.array([], pa.int64())
    tables: dict[str, dict[Any, int]] = {
        "person_id": {}, "person_key": {}, "ext": {}, "mdn": {}, "device": {}}
    for p in stored:
        for name, value in (("person_id", p.person_id), ("person_key", p.person_key),
                            ("ext", p.external_person_id), ("mdn", p.mdn),
                            ("device", p.vibes_device_id)):
            if value is not None:
                tables[name][value] = p.person_id
    named: set[int] = set()
    for r in rows:
        pairs = [("ext", r.ext), ("mdn", r.mdn), ("device", r.device)]
        if r.by in ("person_id", "person_key"):
            pairs.append((r.by, r.ident))
        named.update(found for name, value in pairs
                     if value is not None and (found := tables[name].get(value)) is not None)
    return pa.array(sorted(named), pa.int64())
