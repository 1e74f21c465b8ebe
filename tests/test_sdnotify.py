"""The systemd notification protocol against real datagram sockets: a path and an abstract
(``@``) name; the daemon says READY=1 once it listens, WATCHDOG=1 while its loop runs and
STOPPING=1 on SIGTERM, in-process and as a real ``pipeline serve``."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from pipeline import daemon as daemon_module
from pipeline import sdnotify
from pipeline.http import serve_http
from pipeline.runners import load_runners
from pipeline.store.sqlite import SqliteStore
from tests.test_http import JOBS, write_jobs


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket as systemd makes one, and its NOTIFY_SOCKET value."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(10)
    try:
        yield sock, str(path)
    finally:
        sock.close()


def received(sock: socket.socket) -> list[str]:
    """Every datagram waiting on ``sock``, without waiting for more."""
    found = []
    sock.setblocking(False)
    try:
        while True:
            found.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(10)
    return found


def test_one_datagram_to_a_path(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    assert sdnotify.notify("READY=1\nSTATUS=up", environ={"NOTIFY_SOCKET": address})
    assert sock.recv(4096) == b"READY=1\nSTATUS=up"


def test_one_datagram_to_an_abstract_socket() -> None:
    name = f"pipeline-test-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        assert sdnotify.notify("STOPPING=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"STOPPING=1"


def test_without_a_socket_nothing_happens(tmp_path: Path) -> None:
    assert not sdnotify.notify("READY=1", environ={})
    assert not sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1234"})
    # Gone, or never there: dropped, no exception (the daemon must not stop over it).
    assert not sdnotify.notify("READY=1",
                               environ={"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "4000000"}) is None


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    here = {"NOTIFY_SOCKET": "/run/systemd/notify"}
    assert sdnotify.watchdog_interval({**here, "WATCHDOG_USEC": "30000000"}) == 15.0
    assert sdnotify.watchdog_interval(
        {**here, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}) == 2.0
    for other in ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"},  # meant for another
                  {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "soon"}, {}):
        assert sdnotify.watchdog_interval({**here, **other}) is None, other


async def test_watchdog_pings_until_cancelled(autojump_clock: Any) -> None:
    sent: list[tuple[float, str]] = []
    with trio.move_on_after(10.5):
        await sdnotify.watchdog_forever(2.0, send=lambda m: sent.append((trio.current_time(),
                                                                         m)))
    assert [m for _, m in sent] == ["WATCHDOG=1"] * 6
    assert [t for t, _ in sent] == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]


async def test_the_daemon_says_ready_pings_and_says_stopping(
        tmp_path: Path, listener: tuple[socket.socket, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    sock, address = listener
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s
    jobs_dir, state_dir = write_jobs(tmp_path, {"hello.yaml": JOBS["hello.yaml"]})
    store = SqliteStore.open(state_dir)
    try:
        async with trio.open_nursery() as nursery:
            started = await nursery.start(partial(
                daemon_module.serve, jobs_dir=jobs_dir, state_dir=state_dir, store=store,
                runners=load_runners(plugins=False)[0], grace=1.0,
                serve_http=partial(serve_http, listen="127.0.0.1:0")))
            ready = await trio.to_thread.run_sync(sock.recv, 4096)
            assert ready.decode().startswith("READY=1\nSTATUS=serving 1 jobs on http://")
            # READY=1 came after the address answers.
            async with httpx.AsyncClient(base_url=started.listen) as http:
                assert (await http.get("/healthz")).status_code == 200
            await trio.sleep(0.5)
            pings = received(sock)
            assert len(pings) >= 3 and set(pings) == {"WATCHDOG=1"}, pings
            os.kill(os.getpid(), signal.SIGTERM)  # as systemctl stop does
            with trio.fail_after(10):
                while True:
                    got = await trio.to_thread.run_sync(sock.recv, 4096)
                    if got != b"WATCHDOG=1":
                        break
            assert got.decode().startswith("STOPPING=1\n")
    finally:
        store.close()


@pytest.mark.slow
def test_pipeline_serve_under_notify_socket(tmp_path: Path,
                                            listener: tuple[socket.socket, str]) -> None:
    """As systemd runs it: READY=1 once the address listens, STOPPING=1 on SIGTERM."""
    sock, address = listener
    jobs_dir, state_dir = write_jobs(tmp_path, {"hello.yaml": JOBS["hello.yaml"]})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "NOTIFY_SOCKET": address}
    env.pop("WATCHDOG_USEC", None)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--listen",
                             f"127.0.0.1:{port}", "--jobs-dir", str(jobs_dir), "--state-dir",
                             str(state_dir)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        ready = sock.recv(4096).decode()
        assert ready.startswith("READY=1\n") and f"127.0.0.1:{port}" in ready
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert sock.recv(4096).decode().startswith("STOPPING=1\n")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
