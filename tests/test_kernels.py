"""The column kernels (ingestd/persons/kernels.py) never disagree with the per-cell code.

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
