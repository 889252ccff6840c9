"""Person Import rows: one error a row (the check order), a later row sees an earlier
one, which id column identifies a person and the others as data."""

from __future__ import annotations

from collections import Counter

import pytest
from persons_helpers import (
    CREATE_REQUIRES,
    CREATE_REQUIRES_MSG,
    FIELD_NOT_FOUND,
    FIELD_NOT_FOUND_MSG,
    INVALID_ID,
    INVALID_ID_MSG,
    INVALID_KEY,
    INVALID_KEY_MSG,
    INVALID_MDN,
    INVALID_MDN_MSG,
    INVALID_VALUE,
    INVALID_VALUE_MSG,
    MALFORMED,
    MDN_CHANGE,
    MDN_CHANGE_MSG,
    MDN_TAKEN,
    MDN_TAKEN_MSG,
    NOT_FOUND,
    NOT_FOUND_MSG,
    UK_FIXED,
    UNIQUE,
    UNIQUE_MSG,
    Env,
    assert_done,
    body,
    mdn,
)

# --- one error a row: the check order ------------------------------------------------------


def test_check_order_names_the_first_failing_check(env: Env) -> None:
    p1 = env.seed(ext="e1", mdn=mdn(1), device="d1")
    p2 = env.seed(ext="e2", mdn=mdn(2), device="d2")
    p3 = env.seed(ext="e3")
    cols = "person_id,person_key,external_person_id,mdn,vibes_device_id,tier,ghost,age"
    rows = [
        # (line, expected class, expected message)
        ("0,,,,,,,,extra", MALFORMED, "Row has 9 fields; the header has 8"),  # shape > id
        ("abc,NOTAKEY,,,,,,", INVALID_ID, INVALID_ID_MSG),  # person_id before person_key
        (",NOTAKEY,,229-555,,,,", INVALID_KEY, INVALID_KEY_MSG),  # id syntax > mdn format
        # identification > mdn format and custom fields
        (f"{p3.person_id + 99},,,229-555,,platinum,,", NOT_FOUND, NOT_FOUND_MSG),
        (",,,,,platinum,boo,", CREATE_REQUIRES, CREATE_REQUIRES_MSG),  # identification first
        (",,e9,229-555,,platinum,,", INVALID_MDN, INVALID_MDN_MSG),  # mdn format > custom
        (",,e3,,,platinum,boo,", INVALID_VALUE, INVALID_VALUE_MSG),  # column order: tier first
        (",,e3,,,gold,boo,x", FIELD_NOT_FOUND, FIELD_NOT_FOUND_MSG),  # ghost before age
        (f",,e1,{mdn(7)},,,,x", INVALID_VALUE, INVALID_VALUE_MSG),  # custom > mdn change
        (f",,e1,{mdn(2)},,,,", MDN_CHANGE, MDN_CHANGE_MSG),  # change > already assigned
        (f",,e3,{mdn(2)},d1,,,", MDN_TAKEN, MDN_TAKEN_MSG),  # mdn ownership > device id
        (f",,e3,{UK_FIXED},d1,,,", UNIQUE, UNIQUE_MSG),  # uniqueness > carrier lookup
        (f",,e9,{UK_FIXED},,,boo,", FIELD_NOT_FOUND, FIELD_NOT_FOUND_MSG),  # custom > carrier
        (f"{p2.person_id},,e1,,,,,", UNIQUE, UNIQUE_MSG),  # p1's external id, as data
        (f",,e3,{mdn(3)},d3,gold,,30", None, None),
    ]
    name = "order.persons"
    outcome = env.process(name, body(cols, *(line for line, _, _ in rows)))
    expected = [(n, cls, msg) for n, (_, cls, msg) in enumerate(rows, 1) if cls is not None]
    assert_done(env, name, outcome, len(rows), dict(Counter(cls for _, cls, _ in expected)))
    assert env.errors(name) == expected
    # A rejected row changes nothing; the last row applied.
    assert env.persons() == [p1, p2, p3._replace(mdn=mdn(3), vibes_device_id="d3",
                                                 custom={"tier": "gold", "age": 30})]


# --- a later row sees an earlier one --------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [5000, 2, 1])
def test_a_later_row_sees_an_earlier_one(env: Env, chunk_size: int) -> None:
    name = "later.persons"
    lines = ["mdn,vibes_device_id,tier,age,bio"]
    for n in range(1, 11):
        if n == 3:
            lines.append(f"{mdn(103)},,gold,30,")  # create by mdn
        elif n == 6:
            lines.append(f"{mdn(103)},d103,,,")  # a first device id for that person
        elif n == 9:
            lines.append("2295550103,,silver,,nine")  # update by the same mdn, ten digits
        else:
            lines.append(f"{mdn(n)},d{n},bronze,{n},")
    outcome = env.process(name, body(*lines), chunk_size=chunk_size)
    assert_done(env, name, outcome, 10, {})
    people = env.by_mdn()
    assert len(people) == 8
    assert people[mdn(103)].vibes_device_id == "d103"
    assert people[mdn(103)].custom == {"tier": "silver", "age": 30, "bio": "nine"}
    assert people[mdn(10)].custom == {"tier": "bronze", "age": 10}


@pytest.mark.parametrize("chunk_size", [5000, 1])
def test_a_released_id_can_be_taken_by_a_later_row(env: Env, chunk_size: int) -> None:
    p1 = env.seed(ext="e1", mdn=mdn(1), device="d1")
    p2 = env.seed(ext="e2", mdn=mdn(2), device="d2")
    name = "swap.persons"
    outcome = env.process(name, body(
        "person_id,mdn,external_person_id,vibes_device_id",
        f"{p1.person_id},,e1b,d1b",  # p1 gives up e1 and d1
        f"{p2.person_id},,e1,",  # p2 takes e1 (and gives up e2)
        f",{mdn(3)},e2,d1",  # e2 finds nobody now: a new person, taking e2 and d1
    ), chunk_size=chunk_size)
    assert_done(env, name, outcome, 3, {})
    persons = env.persons()
    assert persons[:2] == [p1._replace(external_person_id="e1b", vibes_device_id="d1b"),
                           p2._replace(external_person_id="e1")]
    assert [(p.mdn, p.external_person_id, p.vibes_device_id) for p in persons[2:]] == [
        (mdn(3), "e2", "d1")]


# --- identification precedence; other id columns are data; empty cells -------------------


def test_identification_precedence_and_ids_as_data(env: Env) -> None:
    p1 = env.seed(ext="e1", mdn=mdn(1), device="d1", tier="gold")
    p2 = env.seed(ext="e2", mdn=mdn(2), device="d2", tier="gold")
    p3 = env.seed(ext="e3", device="d3", tier="gold")
    p4 = env.seed(ext="e4", mdn=mdn(4), device="d4", tier="gold", age=4)
    p5 = env.seed(ext="e5", mdn=mdn(5), device="d5", tier="gold")
    name = "precedence.persons"
    cols = "person_id,person_key,external_person_id,mdn,vibes_device_id,tier,age"
    outcome = env.process(name, body(
        cols,
        # person_id beats person_key (p2's key is then ignored) and the rest is data
        f"{p1.person_id},{p2.person_key},e1x,,d1x,silver,",
        # person_key beats external_person_id: e2x is p2's new external id
        f",{p2.person_key},e2x,,,silver,",
        # external_person_id beats mdn: p3 gets its first mdn
        f",,e3,{mdn(3)},,silver,",
        # mdn beats vibes_device_id: p4's device becomes d4x, the empty age is kept
        f",,,{mdn(4)},d4x,silver,",
        # vibes_device_id alone identifies
        ",,,,d5,silver,5",
        # only empty cells besides the id: nothing changes
        f"{p5.person_id},,,,,,",
        f",,,{mdn(5)}, ,,",
    ))
    assert_done(env, name, outcome, 7, {})
    assert env.persons() == [
        p1._replace(external_person_id="e1x", vibes_device_id="d1x", custom={"tier": "silver"}),
        p2._replace(external_person_id="e2x", custom={"tier": "silver"}),
        p3._replace(mdn=mdn(3), custom={"tier": "silver"}),
        p4._replace(vibes_device_id="d4x", custom={"tier": "silver", "age": 4}),
        p5._replace(custom={"tier": "silver", "age": 5}),
    ]


def test_a_winning_id_that_finds_nobody_creates_with_the_other_ids_as_data(env: Env) -> None:
    p1 = env.seed(ext="e1", mdn=mdn(1), device="d1")
    name = "create.persons"
    outcome = env.process(name, body(
        "external_person_id,mdn,vibes_device_id",
        f"new1,{mdn(11)},dnew1",  # external id finds nobody: a new person
        f",{mdn(12)},d1",  # mdn finds nobody: a new person, whose device is p1's
        f"new1,{mdn(11)},",  # found now by external id
    ))
    assert_done(env, name, outcome, 3, {UNIQUE: 1})
    persons = env.persons()
    assert persons[0] == p1
    assert [(p.external_person_id, p.mdn, p.vibes_device_id) for p in persons[1:]] == [
        ("new1", mdn(11), "dnew1")]
