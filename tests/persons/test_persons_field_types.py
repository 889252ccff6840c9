"""Person Import custom fields: every field type, the multi-select delimiter header, a
tab delimiter with a fields header."""

from __future__ import annotations

from persons_helpers import (
    INVALID_VALUE,
    INVALID_VALUE_MSG,
    Env,
    assert_done,
    body,
)

# --- every custom field type ----------------------------------------------------------------


def test_every_custom_field_type_with_a_multi_select_delimiter_header(env: Env) -> None:
    name = "types.persons"
    outcome = env.process(name, body(
        "Multi-Select-Delimiter: ;",
        "",
        "external_person_id,nick,sms_name,bio,age,balance,vip,joined,tier,tags",
        "e1,Bob_1 ~{x}|,Øre Ç ç ¡¿ §ÆÉ,naïve ☃ 😀 中文,-12,+007.50,TRUE,"
        "2024-03-01T12:00:00Z,silver,b;a;b",
        "e2,,,,+9223372036854775807,0.000,false,2024-03-01T00:30:00+0100,bronze,B",
        "e3,,,,0,-0.0,False,2024-02-29T23:30:00-01:30,gold,a|b",
    ))
    assert_done(env, name, outcome, 3, {INVALID_VALUE: 1})
    assert env.errors(name) == [(3, INVALID_VALUE, INVALID_VALUE_MSG)]  # "|" is an option now
    assert {e: p.custom for e, p in env.by_ext().items()} == {
        "e1": {"nick": "Bob_1 ~{x}|", "sms_name": "Øre Ç ç ¡¿ §ÆÉ", "bio": "naïve ☃ 😀 中文",
               "age": -12, "balance": "7.5", "vip": True, "joined": "2024-03-01T12:00:00Z",
               "tier": "silver", "tags": ["b", "a"]},
        "e2": {"age": 9223372036854775807, "balance": "0", "vip": False,
               "joined": "2024-02-29T23:30:00Z", "tier": "bronze", "tags": ["B"]},
    }
    # jsonb types, not only Python equality: integers are numbers, decimals strings.
    row = env.conn.execute(
        "SELECT jsonb_typeof(custom->'age'), jsonb_typeof(custom->'balance'),"
        " jsonb_typeof(custom->'vip'), jsonb_typeof(custom->'tags')"
        " FROM acme.persons WHERE external_person_id = 'e1'").fetchone()
    env.conn.commit()
    assert row == ("number", "string", "boolean", "array")

    # A later file: empty cells keep values, given ones replace them.
    name2 = "types2.persons"
    outcome = env.process(name2, body(
        "external_person_id,age,tags,joined",
        "e1,13,,2024-03-01T12:00:00+0000",
        "e2,,c|a,",
    ))
    assert_done(env, name2, outcome, 2, {})
    custom = {e: p.custom for e, p in env.by_ext().items()}
    assert custom["e1"]["age"] == 13
    assert custom["e1"]["tags"] == ["b", "a"]
    assert custom["e2"]["tags"] == ["c", "a"]
    assert custom["e2"]["joined"] == "2024-02-29T23:30:00Z"


def test_tab_delimiter_and_fields_header(env: Env) -> None:
    name = "tabs.persons"
    outcome = env.process(name, body(
        "Fields: external_person_id, bio, tags",
        "Delimiter: tab",
        "Multi-Select-Delimiter: ,",
        "",
        "e1\ta,b\ta,c",
        'e2\t"tab\there"\tb',
    ))
    assert_done(env, name, outcome, 2, {})
    assert {e: p.custom for e, p in env.by_ext().items()} == {
        "e1": {"bio": "a,b", "tags": ["a", "c"]}, "e2": {"bio": "tab\there", "tags": ["b"]}}
