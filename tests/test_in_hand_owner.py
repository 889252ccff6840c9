"""A claim's ``ingestd.in_hand`` row belongs to whoever wrote it last.

With several instances a paused owner is fenced and a peer takes the claim over,
rewriting the row as its own. When the stale owner wakes, its progress updates and
its delete at the end of the file must leave the peer's row alone.

And a row is written only for a file still in hand at a progress tick: a small file
costs no statement for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from ingestd import landing as landing_layout
from ingestd.db import in_hand
from ingestd.db.companies import Company
from ingestd.db.database import Database
from ingestd.lifecycle.pipeline import Pipeline
from ingestd.persons.carrier import make_carrier
from ingestd.progress import Tracker
from ingestd.settings import load_settings

CLAIM = "0001-stale-owner"


def _row(conn: psycopg.Connection[Any]) -> tuple[Any, ...] | None:
    return conn.execute("SELECT host, pid, rows_done, bytes_done FROM ingestd.in_hand"
                        " WHERE claim_id = %s", (CLAIM,)).fetchone()


@pytest.fixture
def autocommit(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db_url, autocommit=True) as c:
        yield c


def test_stale_owner_leaves_the_peers_row(autocommit: psycopg.Connection[Any]) -> None:
    t0 = datetime.now(UTC)
    stale = in_hand.Owner("host-a", 100, t0)
    peer = in_hand.Owner("host-b", 200, t0 + timedelta(seconds=30))
    for owner in (stale, peer):  # the peer's insert takes the claim's row over
        in_hand.insert(autocommit, claim_id=CLAIM, company="acme", file="big.persons",
                       host=owner.host, pid=owner.pid, started_at=owner.started_at,
                       bytes_total=1000)
    in_hand.update(autocommit, [in_hand.Progress(CLAIM, peer, 7, 70, False)])

    in_hand.update(autocommit, [in_hand.Progress(CLAIM, stale, 900, 900, True)])
    in_hand.delete(autocommit, CLAIM, stale)
    assert _row(autocommit) == ("host-b", 200, 7, 70)

    # The same process beginning the claim again is a different writer too.
    in_hand.delete(autocommit, CLAIM, in_hand.Owner("host-b", 200, t0))
    assert _row(autocommit) == ("host-b", 200, 7, 70)

    in_hand.delete(autocommit, CLAIM, peer)
    assert _row(autocommit) is None


def test_recovery_discards_a_row_whoever_wrote_it(autocommit: psycopg.Connection[Any]) -> None:
    in_hand.insert(autocommit, claim_id=CLAIM, company="acme", file="big.persons",
                   host="host-a", pid=100, started_at=datetime.now(UTC), bytes_total=1000)
    in_hand.discard(autocommit, CLAIM)
    assert _row(autocommit) is None


def test_fenced_tracker_waking_up_keeps_the_peers_progress(
        db_url: str, autocommit: psycopg.Connection[Any]) -> None:
    with ConnectionPool(db_url, min_size=1, max_size=2, open=True) as pool:
        stale = Tracker(progress_seconds=3600, stuck_seconds=3600, pool=pool, log_lines=False)
        peer = Tracker(progress_seconds=3600, stuck_seconds=3600, pool=pool, log_lines=False)
        peer.host = "peer-host"  # another instance, as ingestd.fleet sees it
        mine = stale.begin("acme", "big.persons", CLAIM, 1000)
        mine.advance(3, 30)
        stale.report()
        theirs = peer.begin("acme", "big.persons", CLAIM, 1000)  # the takeover
        theirs.advance(5, 50)
        peer.report()

        mine.advance(999, 999)  # the stale owner wakes up and carries on
        stale.report()
        stale.end(mine)
        assert _row(autocommit) == ("peer-host", peer.pid, 5, 50)

        peer.end(theirs)
        assert _row(autocommit) is None


# -- a file gets its row only if it is still in hand at a progress tick (issue 17) ----------

COUNT_IN_HAND = """
CREATE TABLE public.in_hand_statements (op text);
CREATE FUNCTION public.count_in_hand() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.in_hand_statements VALUES (TG_OP); RETURN NULL; END $$;
CREATE TRIGGER count_in_hand AFTER INSERT OR UPDATE OR DELETE ON ingestd.in_hand
    FOR EACH STATEMENT EXECUTE FUNCTION public.count_in_hand();
"""


def _statements(conn: psycopg.Connection[Any]) -> list[str]:
    return [r[0] for r in conn.execute("SELECT op FROM public.in_hand_statements")]


def test_a_small_file_done_between_ticks_costs_no_in_hand_statement(
        db_url: str, autocommit: psycopg.Connection[Any], company: Company,
        landing: Path, tmp_path: Path) -> None:
    autocommit.execute(COUNT_IN_HAND)
    settings = load_settings(database_url=db_url, landing_root=landing,
                             state_dir=tmp_path / "state")
    dirs = landing_layout.company_dirs_of(landing, "acme")
    dirs.create()
    (dirs.inbox / "small.persons").write_text("external_person_id\ne1\n")
    with Database(settings, pool_size=2) as db:
        tracker = Tracker(progress_seconds=3600, stuck_seconds=3600, pool=db.pool,
                          log_lines=False)  # no tick while the file is in hand
        pipeline = Pipeline(settings, db, make_carrier(settings), tracker)
        outcome = pipeline.process(landing_layout.drop(dirs.inbox / "small.persons", 0))
    assert outcome.status == "done", outcome
    assert _statements(autocommit) == []


def test_a_file_in_hand_at_a_tick_gets_its_row_until_it_ends(
        db_url: str, autocommit: psycopg.Connection[Any]) -> None:
    with ConnectionPool(db_url, min_size=1, max_size=2, open=True) as pool:
        tracker = Tracker(progress_seconds=3600, stuck_seconds=3600, pool=pool,
                          log_lines=False)
        handle = tracker.begin("acme", "big.persons", CLAIM, 1000)
        assert _row(autocommit) is None
        handle.advance(3, 30)
        tracker.report()  # the tick
        assert _row(autocommit) == (tracker.host, tracker.pid, 3, 30)
        handle.advance(9, 90)
        tracker.report()
        assert _row(autocommit) == (tracker.host, tracker.pid, 9, 90)
        tracker.end(handle)
        assert _row(autocommit) is None


def test_a_file_finished_before_the_tick_gets_no_row(
        db_url: str, autocommit: psycopg.Connection[Any]) -> None:
    with ConnectionPool(db_url, min_size=1, max_size=2, open=True) as pool:
        tracker = Tracker(progress_seconds=3600, stuck_seconds=3600, pool=pool,
                          log_lines=False)
        handle = tracker.begin("acme", "big.persons", CLAIM, 1000)
        # Its last commit is made (no row to delete in it) while it is still registered.
        assert tracker.rows.close(handle) is False
        tracker.report()  # a tick that sees it in hand writes no row for it now
        assert _row(autocommit) is None
        tracker.end(handle)
        assert _row(autocommit) is None
