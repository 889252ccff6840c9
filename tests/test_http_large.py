"""A 200,000-row body: spooled to disk as it arrives, and its answer streamed from the
committed row results. The daemon's peak memory for it is the drop's own for the same
file (the apply works in batches), plus little: neither the body nor the answer is held."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import StartDaemon, drop, setup_company, wait_for
from http_helpers import ACCEPT_BOTH, SAS_EXAMPLE, start_api

ROWS = 200_000
PAD = "x" * 160  # responseValue: makes the body large enough for memory to tell


def reset_peak(pid: int) -> None:
    """Start VmHWM afresh (Linux: clear_refs 5 resets the peak resident set)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_rss(pid: int) -> int:
    """VmHWM: the process's peak resident set, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def body_lines() -> Iterator[bytes]:
    header = SAS_EXAMPLE.read_text().splitlines()[0]
    names = header.split(",")
    yield (header + "\n").encode()
    for i in range(1, ROWS + 1):
        values = dict.fromkeys(names, "")
        values.update(creationTimeStamp="2018-05-13T15:02:40.719Z",
                      responseTrackingCode=f"code-{i:07d}", subjectId=f"s{i}",
                      excludeFromContactRule="false", objectVariables="a~~~1~~~string",
                      ruleFired="01", treatmentId="t1", presented="true", responseValue=PAD)
        yield (",".join(values[n] for n in names) + "\n").encode()


@pytest.mark.slow
def test_a_200k_row_body_in_bounded_memory_with_a_complete_answer(
        start_daemon: StartDaemon, db_url: str, landing: Path, env: dict[str, str]) -> None:
    api = start_api(start_daemon, db_url, landing, env)
    assert api.daemon.proc is not None
    pid = api.daemon.proc.pid
    body = b"".join(body_lines())
    size = len(body)
    twin = setup_company(db_url, landing, "twin")
    # Warm up: the first files' imports and pools are not the body's doing.
    drop(twin, "warm.csv", SAS_EXAMPLE.read_bytes())
    wait_for(lambda: (twin.done / "warm.csv").exists(), context=api.daemon.tail)
    assert api.post_contacts(SAS_EXAMPLE.read_bytes()).status == 200
    # The same body as a drop, for the apply's own peak.
    reset_peak(pid)
    before = peak_rss(pid)
    drop(twin, "big.csv", body)
    wait_for(lambda: (twin.done / "big.csv").exists(), timeout=600, context=api.daemon.tail)
    drop_grown = peak_rss(pid) - before
    reset_peak(pid)
    before = peak_rss(pid)
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=600)
    conn.putrequest("POST", "/companies/acme/contacts")
    for name, value in (("Authorization", f"Bearer {api.token}"), ("Accept", ACCEPT_BOTH),
                        ("Content-Length", str(size))):
        conn.putheader(name, value)
    conn.endheaders()
    for start in range(0, size, 1 << 20):
        conn.send(body[start:start + (1 << 20)])
    del body
    response = conn.getresponse()
    assert response.status == 200
    boundary = response.getheader("Content-Type", "").split('boundary="')[1].rstrip('"')
    # The answer is read as it comes, counting accepted lines (no need to hold it).
    lines = 0
    last = b""
    part = 0
    pending = b""
    while chunk := response.read(1 << 20):
        pending += chunk
        *complete, pending = pending.split(b"\r\n")
        for line in complete:
            if line.startswith(f"--{boundary}".encode()):
                part += 1
            elif part == 1 and line and not line.startswith(b"Content-"):
                lines += 1
                last = line
    assert lines == ROWS
    assert last.startswith(f"{ROWS},".encode())
    grown = peak_rss(pid) - before
    # The body and the answer each weigh ~size: holding either would show.
    assert grown < drop_grown + size // 4, (
        f"peak RSS grew {grown} bytes for a {size}-byte body; {drop_grown} as a drop")
