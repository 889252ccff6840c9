"""A claim's ``ingestd.in_hand`` row belongs to whoever wrote it last.

With several instances a paused owner is fenced and a peer takes the claim over,
rewriting the row as its own. When the stale owner wakes, its progress updates and
its delete at the end of the file must leave the peer's row alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from ingestd.db import in_hand
from ingestd.progress import Tracker

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
