"""``pipeline trigger`` and ``stop``'s client against a real daemon (sync httpx in a thread)."""

from __future__ import annotations

import json
import socket
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from pipeline import client
from pipeline.client import Client, Refused, server_url
from pipeline.daemon import DAEMON_FILE, write_daemon_file
from pipeline.errors import DaemonUnreachable, NotFound, ParamError, PipelineError
from pipeline.statedir import process_identity
from tests.test_http import first_output, open_daemon


async def in_thread(function: partial[object]) -> object:
    return await trio.to_thread.run_sync(function)


def test_where_the_daemon_is(tmp_path: Path) -> None:
    assert server_url(tmp_path, "127.0.0.1:9") == "http://127.0.0.1:9"
    assert server_url(tmp_path, "http://0.0.0.0:8765/") == "http://127.0.0.1:8765"
    assert server_url(tmp_path, "http://[::]:8765") == "http://[::1]:8765"
    with pytest.raises(DaemonUnreachable, match="no daemon is running"):
        server_url(tmp_path)
    info = {"pid": 1, "owner": process_identity(), "listen": None}
    (tmp_path / DAEMON_FILE).write_text(json.dumps(info))
    with pytest.raises(DaemonUnreachable, match="--no-http"):
        server_url(tmp_path)
    (tmp_path / DAEMON_FILE).write_text(json.dumps({**info, "owner": "1:0"}))  # a dead one
    with pytest.raises(DaemonUnreachable, match="no daemon is running"):
        server_url(tmp_path)


def test_nothing_listening_and_not_our_api() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with pytest.raises(DaemonUnreachable, match="connection refused"):
        client.stop(f"http://127.0.0.1:{port}", None, "20260101T000000-00000000")

    def not_pipeline(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>hello</html>")

    with Client("http://x", transport=httpx.MockTransport(not_pipeline)) as other, \
            pytest.raises(PipelineError, match="not the pipeline API"):
        other.trigger("job")


@pytest.mark.slow
async def test_trigger_wait_and_stop_through_the_api(tmp_path: Path) -> None:
    async with open_daemon(tmp_path) as daemon:
        write_daemon_file(daemon)
        base = server_url(daemon.state_dir)
        assert base == daemon.listen

        started = await in_thread(partial(client.trigger, base, None, "hello"))
        assert isinstance(started, dict) and started["status"] in ("running", "queued")
        done = await in_thread(partial(client.trigger, base, None, "params",
                                       {"count": "5"}, wait=True))
        assert isinstance(done, dict) and done["status"] == "succeeded"
        assert done["params"]["count"] == 5 and done["steps"][0]["status"] == "succeeded"

        with pytest.raises(ParamError, match="count"):
            await in_thread(partial(client.trigger, base, None, "params", {"count": "x"}))
        with pytest.raises(NotFound, match="nope"):
            await in_thread(partial(client.trigger, base, None, "nope"))

        slow = await in_thread(partial(client.trigger, base, None, "slow"))
        assert isinstance(slow, dict)
        with pytest.raises(Refused, match="forbid") as refused:
            await in_thread(partial(client.trigger, base, None, "slow"))
        assert refused.value.status == 409 and refused.value.answer["status"] == "skipped"
        await first_output(daemon, f"/api/v1/runs/{slow['run_id']}/steps/tick/log")
        stopping = await in_thread(partial(client.stop, base, None, slow["run_id"]))
        assert stopping == {"run_id": slow["run_id"], "status": "stopping"}
        with Client(base) as http:
            ended = await in_thread(partial(http.wait, slow["run_id"], timeout=10))
        assert isinstance(ended, dict) and ended["status"] == "cancelled"
        with pytest.raises(Refused, match="not running"):
            await in_thread(partial(client.stop, base, None, slow["run_id"]))
        with pytest.raises(NotFound):
            await in_thread(partial(client.stop, base, None, "20260101T000000-00000000"))
        with pytest.raises(NotFound):
            await in_thread(partial(client.stop, base, None, "../../state.db"))


@pytest.mark.slow
async def test_the_token(tmp_path: Path) -> None:
    async with open_daemon(tmp_path, token="tok") as daemon:
        assert daemon.listen is not None
        with pytest.raises(Refused, match="--token") as refused:
            await in_thread(partial(client.trigger, daemon.listen, None, "hello"))
        assert refused.value.status == 401
        with pytest.raises(Refused, match="wrong token"):
            await in_thread(partial(client.trigger, daemon.listen, "bad", "hello"))
        done = await in_thread(partial(client.trigger, daemon.listen, "tok", "hello",
                                       wait=True))
        assert isinstance(done, dict) and done["status"] == "succeeded"
