"""The column kernels (ingestd/persons/kernels.py, ingestd/contacts/kernels.py) never
disagree with the per-cell code.

A kernel may pass on a cell (the per-cell code then decides it); when it passes a cell,
its value must be the per-cell code's: the mdn's E.164 form and a mobile type
(``mdn_fast.classify``), a custom value's JSON (``custom_fields.convert``), an id cell
kept as written (``str.strip``). Hypothesis draws cells near each kernel's edges.
"""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumberType

from ingestd import columns
from ingestd.contacts.kernels import Kernels as ContactKernels
from ingestd.contacts.reader import (
    CODE,
    COLUMN_BY_NAME,
    COLUMNS,
    Level,
    RawSection,
    _typed,
    parse_timestamp,
)
from ingestd.contacts.store import CONTACT_COLUMNS, TREATMENT_COLUMNS
from ingestd.db import copy_text
from ingestd.errors import RowError
from ingestd.persons.custom_fields import FieldDefinition, convert
from ingestd.persons.kernels import MdnKernel, value_kernel
from ingestd.persons.mdn_fast import classify

_MOBILE = {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE}
DIGITS = st.text(alphabet="0123456789", min_size=9, max_size=12)
MDN_CELLS = st.one_of(
    DIGITS, DIGITS.map(lambda d: "+" + d), DIGITS.map(lambda d: "+1" + d[:10]),
    st.sampled_from(["2295550001", "+12295550001", "0112295550", "9005550001", "+19005550001",
                     "8005550001", "2125550123", "+442071234567", "", "+1", "+1229555000a"]),
)


@settings(max_examples=400, deadline=None)
@given(cells=st.lists(MDN_CELLS, min_size=1, max_size=30),
       region=st.sampled_from(["US", "CA", "PR", "GB", "DE"]))
def test_the_mdn_kernel_passes_only_mobiles_and_gives_their_e164(cells: list[str],
                                                                 region: str) -> None:
    mobile, e164 = MdnKernel(region)(columns.column(cells))
    for cell, ok, out in zip(cells, mobile.to_pylist(), e164.to_pylist(), strict=True):
        if ok:
            verdict = classify(cell, region)
            assert verdict is not None and verdict.number_type in _MOBILE, cell
            assert out == verdict.e164, cell


def test_the_mdn_kernel_passes_the_common_spellings() -> None:
    """It is not a kernel that passes nothing: both US spellings of a mobile get through."""
    mobile, e164 = MdnKernel("US")(columns.column(["+12295550001", "2295550001", "0112295550"]))
    assert mobile.to_pylist() == [True, True, False]
    assert e164.to_pylist()[:2] == ["+12295550001", "+12295550001"]


DEFINITIONS = [
    FieldDefinition(name="s", type="string"),
    FieldDefinition(name="a", type="string", charset="ascii"),
    FieldDefinition(name="g", type="string", charset="gsm7"),
    FieldDefinition(name="i", type="integer"),
    FieldDefinition(name="d", type="decimal"),
    FieldDefinition(name="b", type="boolean"),
    FieldDefinition(name="t", type="date"),
    FieldDefinition(name="one", type="single_select", options=["x", "y|z", 'q"'] ),
    FieldDefinition(name="many", type="multi_select", options=["x", "y", "y|z"]),
]
EDGES = ["0", "-0", "+1", "007", "1.50", "-0.5", "7.", ".5", "99999999999999999999", "TRUE",
         "fAlse", "2024-02-29T00:00:00Z", "2024-02-30T00:00:00Z", "0000-01-01T00:00:00Z",
         "2024-05-01T09:30:00+0200", "x", "x|y", "y|z", 'q"', "a\\b", "tab\there", "é", "{",
         "\u00a0x"]
CELLS = st.one_of(st.sampled_from(EDGES), st.text(max_size=12),
                  st.from_regex(r"-?[0-9]{1,20}(\.[0-9]{0,4})?", fullmatch=True),
                  st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z",
                                fullmatch=True))


@settings(max_examples=300, deadline=None)
@given(cells=st.lists(CELLS.filter(bool), min_size=1, max_size=20),
       defn=st.sampled_from(DEFINITIONS))
def test_a_value_kernel_gives_converts_value(cells: list[str], defn: FieldDefinition) -> None:
    ok, value = value_kernel(defn, "|")(columns.column(cells))
    for cell, passed, text in zip(cells, ok.to_pylist(), value.to_pylist(), strict=True):
        if passed:
            converted = convert(defn, cell, "|")
            assert not isinstance(converted, RowError), (defn.type, cell)
            assert orjson.loads(text) == converted, (defn.type, cell)


@given(cells=st.lists(st.text(max_size=6), min_size=1, max_size=20))
def test_an_id_the_kernel_passes_is_its_own_strip(cells: list[str]) -> None:
    passed = columns.plain_id(columns.column(cells)).to_pylist()
    for cell, ok in zip(cells, passed, strict=True):
        if ok:
            assert cell and cell.strip() == cell


# --- the contacts kernels (ingestd/contacts/kernels.py) -------------------------------------

CONTACT_HEADER = [c.name for c in COLUMNS]
CONTACT_BASE = {"responseTrackingCode": "c", "subjectId": "s", "treatmentId": "t"}
CONTACT_EDGES = ["", " ", "\u3000", "\x1c", "\u00a0x", "x\x00", "TRUE", "fAlse", "true ",
                 "2018-05-13T15:02:40.719Z", "2018-05-13T15:02Z", "2018-05-13T15:02:40",
                 "2018-05-13T15:02:40.1234567Z", "2020-02-29T00:00Z", "2019-02-29T00:00Z",
                 "2018-04-31T00:00Z", "2018-12-31T23:59:59+14:00", "2018-12-31T23:59:59+2400",
                 "0000-01-01T00:00Z", "0101", "012", "a~~~b~~~c", "a~~~~~~c;d~~~e~~~f",
                 "a~~~~b~~~c", "a~~~b", "a~~~b~~~c;", 'q"uote', "back\\slash", "tab\tx"]


def test_visible_is_every_character_strip_keeps() -> None:
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    passed = columns.matches(columns.column(chars), f"^{columns.VISIBLE}$").to_pylist()
    assert [c for c, ok in zip(chars, passed, strict=True)
            if ok != (not c.isspace() and c != "\x00")] == []


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(CONTACT_HEADER),
       cells=st.lists(st.one_of(st.sampled_from(CONTACT_EDGES), st.text(max_size=8)),
                      min_size=1, max_size=12))
def test_a_contacts_kernel_passes_only_what_the_per_cell_check_takes(
        name: str, cells: list[str]) -> None:
    """A new contact of one row whose ``name`` cell is drawn: when the kernels pass it, the
    per-cell check (``_typed``) finds it valid, and its COPY value is the typed one's."""
    positions = {n: i for i, n in enumerate(CONTACT_HEADER)}
    batch: list[RawSection] = []
    for n, cell in enumerate(cells):
        row = {**CONTACT_BASE, name: cell}
        if name != CODE:
            row[CODE] = f"c{n}"
        batch.append([(n + 1, [row.get(h, "") for h in CONTACT_HEADER])])
    bulk, _ = ContactKernels(len(CONTACT_HEADER), positions).check(batch)
    column = COLUMN_BY_NAME[name]
    where = (bulk.contact[CONTACT_COLUMNS.index(name)] if column.level is Level.CONTACT
             else bulk.treatment[TREATMENT_COLUMNS.index(name)])
    for at, value in zip(bulk.at.to_pylist(), where.to_pylist(), strict=True):
        typed, error = _typed(column, cells[at])
        assert error is None, (name, cells[at])
        if typed is None:
            assert value == "\\N", (name, cells[at])
        elif isinstance(typed, bool):
            assert value == ("true" if typed else "false")
        elif isinstance(typed, str):
            assert value == copy_text.text(typed)
        else:
            assert parse_timestamp(value) == typed


def test_the_contacts_kernels_pass_the_common_spellings() -> None:
    """Not a kernel that passes nothing: a plain row of every column gets through."""
    row = {**CONTACT_BASE, "creationTimeStamp": "2018-05-13T15:02:40.719Z",
           "excludeFromContactRule": "false", "objectVariables": "a~~~b~~~c",
           "ruleFired": "00010", "presented": "TRUE", "respondedTimeStamp": "2018-05-13T15:02Z"}
    batch: list[RawSection] = [[(1, [row.get(h, "") for h in CONTACT_HEADER])]]
    bulk, slow = ContactKernels(len(CONTACT_HEADER), {n: i for i, n in enumerate(
        CONTACT_HEADER)}).check(batch)
    assert (len(bulk), slow) == (1, [])
