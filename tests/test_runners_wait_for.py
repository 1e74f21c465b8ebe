"""``uses: wait_for``: real files growing in real time, a real server coming up."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from pipeline.errors import RunnerError
from pipeline.runners import StepContext, wait_for


def context(log: list[str], cwd: Path | None = None) -> StepContext:
    return StepContext(job="j", run_id="20260101T000000-00000000", step_id="s", attempt=1,
                       env={}, log=log.append, state_dir=Path("/nonexistent"),
                       cwd=str(cwd) if cwd else None)


async def call(args: dict[str, Any], log: list[str] | None = None,
               cwd: Path | None = None) -> None:
    await wait_for.run(args, context(log if log is not None else [], cwd))


# -- paths ------------------------------------------------------------------------------------


async def test_path_that_appears(tmp_path: Path, nursery: trio.Nursery) -> None:
    target = tmp_path / "ready.flag"

    async def create_later() -> None:
        await trio.sleep(0.3)
        target.write_text("")

    nursery.start_soon(create_later)
    log: list[str] = []
    start = trio.current_time()
    await call({"path": str(target), "interval": "50ms"}, log)
    assert 0.3 <= trio.current_time() - start < 1.5
    assert log[0] == f"[wait_for] {target} does not exist"
    assert log[1] == f"[wait_for] {target} exists"
    assert log[-1].startswith(f"[wait_for] {target} ready after ")


async def test_relative_path_is_taken_from_the_step_cwd(tmp_path: Path) -> None:
    (tmp_path / "here.txt").write_text("x")
    await call({"path": "here.txt", "timeout": "1s"}, cwd=tmp_path)
    with pytest.raises(RunnerError, match=r"gave up after 0.2s: here.txt does not exist"):
        await call({"path": "here.txt", "timeout": "200ms", "interval": "50ms"})


@pytest.mark.slow
async def test_file_still_being_written_is_not_taken(tmp_path: Path,
                                                     nursery: trio.Nursery) -> None:
    target = tmp_path / "export.csv"
    done = trio.Event()

    async def grow() -> None:
        # Two seconds of writing, a line every 100 ms.
        with target.open("a") as f:
            for i in range(20):
                f.write(f"line {i}\n")
                f.flush()
                await trio.sleep(0.1)
        done.set()

    nursery.start_soon(grow)
    await trio.sleep(0.05)
    log: list[str] = []
    await call({"path": str(target), "stable_for": "400ms", "interval": "100ms"}, log)
    assert done.is_set()  # not before the writer finished
    assert target.read_text().count("\n") == 20
    assert f"[wait_for] {target} waiting until it has stayed so for 0.4s" in log


async def test_gives_up_after_the_timeout(tmp_path: Path) -> None:
    target = tmp_path / "never"
    start = trio.current_time()
    with pytest.raises(RunnerError) as info:
        await call({"path": str(target), "timeout": 0.3, "interval": "0.1"})
    assert str(info.value) == f"gave up after 0.3s: {target} does not exist"
    assert trio.current_time() - start < 1


@pytest.mark.slow
async def test_gives_up_on_a_file_that_keeps_changing(tmp_path: Path) -> None:
    target = tmp_path / "busy.log"
    target.write_text("")

    async def keep_writing() -> None:
        with target.open("a") as f:
            while True:
                f.write("x")
                f.flush()
                await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_writing)
        with pytest.raises(RunnerError, match=r"exists, but not unchanged for 1s$"):
            await call({"path": str(target), "timeout": "500ms", "interval": "50ms",
                        "stable_for": "1s"})
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("args", "message"), [
    ({}, "give exactly one of path and url"),
    ({"path": "/x", "url": "http://x/"}, "give exactly one of path and url"),
    ({"path": ""}, "path must be a non-empty string"),
    ({"path": "/x", "interval": "soon"}, "interval: 'soon' is not a duration"),
])
async def test_bad_arguments(args: dict[str, Any], message: str) -> None:
    with pytest.raises(RunnerError, match=message):
        await call(args)


async def test_step_timeout_cancels_the_wait(tmp_path: Path) -> None:
    with trio.move_on_after(0.2) as scope:
        await call({"path": str(tmp_path / "never"), "interval": "50ms"})
    assert scope.cancelled_caught


# -- URLs -------------------------------------------------------------------------------------


class Warming:
    """Answers 503 for the first ``cold`` requests, then 200."""

    def __init__(self, cold: int) -> None:
        self.cold = cold
        self.seen = 0

    async def health(self, request: Request) -> Response:
        self.seen += 1
        return PlainTextResponse("", status_code=503 if self.seen <= self.cold else 200)


async def start_server(nursery: trio.Nursery, app: Starlette) -> str:
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = config.errorlog = None
    binds: list[str] = await nursery.start(serve, app, config)
    return binds[0]


async def test_url_that_comes_up(nursery: trio.Nursery) -> None:
    warming = Warming(cold=3)
    base = await start_server(nursery, Starlette(routes=[Route("/health", warming.health)]))
    log: list[str] = []
    await call({"url": f"{base}/health", "interval": "50ms"}, log)
    assert warming.seen == 4
    assert log[0] == f"[wait_for] {base}/health answered 503"  # said once, not three times
    assert log[1] == f"[wait_for] {base}/health answered 200"


async def test_url_that_must_stay_up(nursery: trio.Nursery) -> None:
    warming = Warming(cold=1)
    base = await start_server(nursery, Starlette(routes=[Route("/health", warming.health)]))
    await call({"url": f"{base}/health", "interval": "50ms", "stable_for": "200ms"})
    assert warming.seen >= 5  # one 503, then 200s for 200 ms


async def test_url_that_never_answers() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RunnerError) as info:
        await call({"url": f"http://127.0.0.1:{port}/", "timeout": "300ms",
                    "interval": "100ms"})
    assert str(info.value) == (f"gave up after 0.3s: http://127.0.0.1:{port}/ "
                               "failed: connection refused")
