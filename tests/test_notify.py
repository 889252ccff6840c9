"""sd_notify over a real unix datagram socket, as systemd would receive it."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingestd.notify import Notifier


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2)
    return sock


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = _receiver(path)
    yield path, sock
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    name = f"ingestd-test-{uuid.uuid4().hex}"
    sock = _receiver(b"\0" + name.encode())
    yield "@" + name, sock
    sock.close()


def _drain(sock: socket.socket) -> list[bytes]:
    sock.setblocking(False)
    out = []
    try:
        while True:
            out.append(sock.recv(4096))
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(2)


@pytest.mark.parametrize("which", ["path_socket", "abstract_socket"])
def test_exact_datagrams(which: str, request: pytest.FixtureRequest) -> None:
    address, sock = request.getfixturevalue(which)
    with Notifier({"NOTIFY_SOCKET": address}) as n:
        assert n.enabled
        assert n.ready() is True
        assert sock.recv(4096) == b"READY=1"
        assert n.status("backlog 3, 12 done") is True
        assert sock.recv(4096) == b"STATUS=backlog 3, 12 done"
        assert n.watchdog() is True
        assert sock.recv(4096) == b"WATCHDOG=1"
        assert n.stopping() is True
        assert sock.recv(4096) == b"STOPPING=1"


def test_notify_fields_in_order_and_one_line_per_field(
    path_socket: tuple[str, socket.socket],
) -> None:
    address, sock = path_socket
    n = Notifier({"NOTIFY_SOCKET": address})
    n.notify(READY=1, STATUS="line one\nline two", ERRNO=0)
    assert sock.recv(4096) == b"READY=1\nSTATUS=line one line two\nERRNO=0"
    n.extend_timeout(1.5)
    assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=1500000"
    n.reloading()
    msg = sock.recv(4096)
    assert msg.startswith(b"RELOADING=1\nMONOTONIC_USEC=")
    assert int(msg.rsplit(b"=", 1)[1]) > 0
    n.close()


def test_no_socket_is_a_silent_noop() -> None:
    n = Notifier({})
    assert not n.enabled
    assert n.ready() is False
    assert n.watchdog() is False
    assert n.status("x") is False
    assert n.stopping() is False


def test_unsupported_address_disables() -> None:
    assert not Notifier({"NOTIFY_SOCKET": "relative/path"}).enabled


def test_send_failure_never_raises_and_recovers(tmp_path: Path) -> None:
    path = str(tmp_path / "gone.sock")
    n = Notifier({"NOTIFY_SOCKET": path})
    # Nobody listening yet: the send fails, quietly.
    assert n.ready() is False
    assert n.watchdog() is False
    # systemd (re)appears: the next message gets through on a fresh socket.
    sock = _receiver(path)
    try:
        assert n.watchdog() is True
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        sock.close()
        n.close()


def test_send_failure_is_logged_once(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody.sock")})
    with capture_logs() as logs:
        for _ in range(5):
            n.watchdog()
    assert [e["event"] for e in logs] == ["notify.failed"]


def test_unset_environment_hides_socket_from_children(
    path_socket: tuple[str, socket.socket],
) -> None:
    address, sock = path_socket
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid()),
           "OTHER": "kept"}
    n = Notifier(env, unset_environment=True)
    assert env == {"OTHER": "kept"}
    # The notifier read everything it needs before unsetting.
    assert n.watchdog_interval == 15.0
    assert n.ready()
    assert sock.recv(4096) == b"READY=1"
    assert _drain(sock) == []


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),  # WATCHDOG_PID unset: it is for us
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "{me}"}, 15.0),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "{me}"}, 0.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "{other}"}, None),  # a parent's
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "junk"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    me = str(os.getpid())
    other = str(os.getpid() + 1)
    env = {k: v.format(me=me, other=other) for k, v in env.items()}
    assert Notifier(env).watchdog_interval == expected


def test_reads_os_environ_by_default(
    path_socket: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, sock = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    n = Notifier()
    assert n.watchdog_interval == 10.0
    n.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    n.close()
