"""``ingestd check`` of a Person Import: the errors, and nothing written."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from carrier_server import CarrierServer
from persons_helpers import (
    INVALID_VALUE,
    INVALID_VALUE_MSG,
    MDN_TAKEN,
    MDN_TAKEN_MSG,
    PERMANENT,
    PERMANENT_MSG,
    Env,
    assert_done,
    body,
    cache,
    http_settings,
    mdn,
)

from ingestd.errors import RowError

# --- ingestd check -----------------------------------------------------------------------------


def test_check_returns_the_errors_and_writes_nothing(env: Env, tmp_path: Path) -> None:
    p1 = env.seed(ext="e1", mdn=mdn(1), tier="gold")
    before = env.persons()
    path = tmp_path / "check.persons"
    content = body(
        "external_person_id,mdn,tier",
        f"e1,{mdn(1)},silver",  # an update
        f"e2,{mdn(2)},platinum",
        f"e3,{mdn(3)},gold",  # a create
        f"e4,{mdn(1)},",
    )
    path.write_text(content, encoding="utf-8")
    result = env.pipeline().check(path, "acme")
    assert (result.status, result.rows, result.accepted, result.rejected) == (
        "done", 4, 2, 2)
    assert result.rejected_by_class == {INVALID_VALUE: 1, MDN_TAKEN: 1}
    assert result.sample_errors == [
        (2, RowError(INVALID_VALUE, INVALID_VALUE_MSG, "tier",
                     "'platinum' is not an option of tier (gold, silver, bronze)")),
        (4, RowError(MDN_TAKEN, MDN_TAKEN_MSG, "mdn", f"mdn {mdn(1)} belongs to another person"))]
    # Nothing written: persons, the ledger, row results; the file is where it was.
    assert env.persons() == before == [p1]
    assert env.count("SELECT count(*) FROM ingestd.files") == 0
    assert env.count("SELECT count(*) FROM ingestd.row_results") == 0
    assert path.read_text(encoding="utf-8") == content
    assert not (env.company_dir / "done").exists()
    # The same file dropped for real is applied, not taken for a duplicate of the check.
    outcome = env.process("check.persons", content)
    assert_done(env, "check.persons", outcome, 4, {INVALID_VALUE: 1, MDN_TAKEN: 1})
    assert {e: p.custom for e, p in env.by_ext().items()} == {
        "e1": {"tier": "silver"}, "e3": {"tier": "gold"}}


def test_check_over_http_looks_up_but_caches_nothing(env: Env, server: CarrierServer,
                                                     tmp_path: Path) -> None:
    server.script[mdn(2)] = [404]
    path = tmp_path / "check.persons"
    path.write_text(body("mdn", mdn(1), mdn(2)), encoding="utf-8")
    result = env.pipeline(**http_settings(server)).check(path, "acme")
    assert result.sample_errors == [(2, RowError(
        PERMANENT, PERMANENT_MSG, "mdn",
        f"the carrier lookup service answered HTTP 404 for {mdn(2)}"))]
    assert server.calls == Counter({mdn(1): 1, mdn(2): 1})
    assert cache(env) == {}
    assert env.persons() == []
    assert env.count("SELECT count(*) FROM ingestd.files") == 0
