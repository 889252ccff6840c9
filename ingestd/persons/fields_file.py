"""The partner's own copy of what a Person Import may hold: ``done/custom-fields.json``.

A partner otherwise learns the field names, types and option keys only from rejected
rows. The company folder is root-owned (the SFTP chroot) and ``inbox/`` is where they
upload, so the file lives in ``done/``, which they read already and ingestd writes.
It is rewritten by ``ingestd fields load`` and ``ingestd company add``; its name ends
in neither ``.persons`` nor ``.csv``, so it is never taken for a finished drop.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from ingestd.landing import CompanyDirs
from ingestd.persons.custom_fields import FieldDefinition
from ingestd.persons.reader import DEFAULT_MULTI_SELECT_DELIMITER, IDENTIFYING
from ingestd.sidecars import write_atomic

FIELDS_FILE = "custom-fields.json"


def describe(company: str, definitions: Sequence[FieldDefinition]) -> dict[str, Any]:
    """The file's content: the id columns and every custom field with what it takes."""
    fields = []
    for d in definitions:
        field: dict[str, Any] = {"name": d.name, "type": d.type}
        if d.type == "string":
            field["charset"] = d.charset
        if d.options:
            field["options"] = list(d.options)
        fields.append(field)
    return {
        "company": company,
        "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        # in the order that decides which one names the person (docs/formats.md)
        "id_columns": list(IDENTIFYING),
        "custom_fields": fields,
        "multi_select_delimiter": DEFAULT_MULTI_SELECT_DELIMITER,
    }


def write(dirs: CompanyDirs, definitions: Sequence[FieldDefinition]) -> Path:
    """Write (atomically) the company's ``done/custom-fields.json``; OSError if it cannot."""
    content = describe(dirs.company, definitions)

    def fill(fh: TextIO) -> None:
        json.dump(content, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
    return write_atomic(dirs.done / FIELDS_FILE, fill)
