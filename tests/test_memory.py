"""Memory the daemon keeps for good (issue 16, section 7): glibc's malloc arenas and the
in-memory caches are bounded.

The arenas are counted from outside the real daemon, in ``/proc/PID/maps``: glibc
reserves each heap of a thread arena (every arena but the main one) as 64 MiB of
anonymous memory aligned to 64 MiB, which nothing else in the process maps. The
flatness of RSS over tens of thousands of files is a measurement, not a test:
``bench/soak.py`` and docs/benchmarks.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from daemon_helpers import StartDaemon, is_finished, setup_company, wait_for

from ingestd import metrics
from ingestd.persons import phones

HEAP_BYTES = 64 << 20  # glibc's HEAP_MAX_SIZE on 64-bit


def thread_arena_heaps(pid: int) -> int:
    """Heaps of glibc's thread arenas in the process (one each, unless one outgrew 64 MiB)."""
    maps: list[tuple[int, int, bool]] = []
    with open(f"/proc/{pid}/maps") as fh:
        for line in fh:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            maps.append((lo, hi, len(parts) > 5))  # a sixth field: a file or [stack]...
    heaps = 0
    for i, (lo, hi, named) in enumerate(maps):
        if lo % HEAP_BYTES or named:
            continue
        end, j = hi, i + 1
        while j < len(maps) and maps[j][0] == end and not maps[j][2] and end - lo < HEAP_BYTES:
            end, j = maps[j][1], j + 1
        heaps += end - lo == HEAP_BYTES
    return heaps


@pytest.mark.parametrize(("setting", "most"), [("2", 1), ("1", 0)])
def test_the_daemon_limits_its_malloc_arenas(start_daemon: StartDaemon, db_url: str,
                                             landing: Path, setting: str, most: int) -> None:
    """``ingestd run`` started by hand (no MALLOC_ARENA_MAX in its environment): after
    files over several companies with four workers, at most ``malloc_arena_max`` arenas
    (the main one and ``most`` thread arenas). glibc's default gives each busy thread
    its own."""
    companies = [setup_company(db_url, landing, f"m{i}") for i in range(6)]
    d = start_daemon(INGESTD_MALLOC_ARENA_MAX=setting)
    assert d.proc is not None
    names = []
    for k in range(48):
        dirs = companies[k % len(companies)]
        name = f"f{k:03d}.persons"
        rows = "".join(f"+1229{5550000 + k * 50 + i:07d},m-{k}-{i}\n" for i in range(50))
        (dirs.inbox / name).write_text("mdn,external_person_id\n" + rows)
        names.append((dirs, name))
    for dirs, name in names:
        wait_for(lambda dirs=dirs, name=name: is_finished(dirs, name), 120,
                 what=f"{name} done", context=d.tail)
    assert thread_arena_heaps(d.proc.pid) <= most


def test_limit_arenas_leaves_an_operators_malloc_arena_max_alone() -> None:
    code = ("from ingestd import malloc; import sys; "
            "sys.stdout.write(repr(malloc.limit_arenas(2)))")
    mine = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "MALLOC_ARENA_MAX": "4"}, check=True)
    ours = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"}, check=True)
    assert (mine.stdout, ours.stdout) == ("None", "2")


def test_mdn_caches_are_bounded_by_their_setting_and_shown_as_a_metric() -> None:
    m = metrics.Metrics()
    m.watch_cache("mdn", phones.cache_entries)
    try:
        phones.configure_cache(100)
        for i in range(1000):
            assert phones.normalize_mdn(f"+1229{5550000 + i:07d}") == f"+1229{5550000 + i:07d}"
            phones.number_type_is_mobile(f"+1212{5550000 + i:07d}")
        held = phones.cache_entries()
        assert 0 < held <= 3 * 100
        assert m.registry.get_sample_value("ingestd_cache_entries", {"cache": "mdn"}) == held
        phones.configure_cache(0)
        phones.normalize_mdn("+12295550001")
        assert phones.cache_entries() == 0
    finally:
        phones.configure_cache(phones.DEFAULT_CACHE_ENTRIES)
