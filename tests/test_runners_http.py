"""``uses: http`` against real servers on loopback: plain, TLS, through a CONNECT proxy."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from pipeline.errors import RunnerError
from pipeline.runners import StepContext
from pipeline.runners import http as http_runner

trustme = pytest.importorskip("trustme", reason="trustme is needed for the TLS tests")


def context(log: list[str]) -> StepContext:
    return StepContext(job="j", run_id="20260101T000000-00000000", step_id="s", attempt=1,
                       env={}, log=log.append, state_dir=Path("/nonexistent"))


async def call(args: Mapping[str, Any], log: list[str] | None = None) -> dict[str, Any]:
    return await http_runner.run(args, context(log if log is not None else []))


# -- the servers ------------------------------------------------------------------------------


async def echo(request: Request) -> Response:
    return JSONResponse({"method": request.method, "headers": dict(request.headers),
                         "body": (await request.body()).decode()})


async def status(request: Request) -> Response:
    code = int(request.path_params["code"])
    return PlainTextResponse(f"status {code}", status_code=code)


async def slow(request: Request) -> Response:
    await trio.sleep(30)
    return PlainTextResponse("late")


async def big(request: Request) -> Response:
    # 100 KiB of "é" (2 bytes each): the cap falls between the two bytes of a character.
    return PlainTextResponse("x" + "é" * 51200, media_type="text/plain; charset=utf-8")


async def redirect(request: Request) -> Response:
    return RedirectResponse("/status/200", status_code=302)


async def twice(request: Request) -> Response:
    response = PlainTextResponse("ok")
    response.headers.append("x-many", "a")
    response.headers.append("x-many", "b")
    return response


APP = Starlette(routes=[
    Route("/echo", echo, methods=["GET", "POST", "PUT", "DELETE"]),
    Route("/status/{code:int}", status),
    Route("/slow", slow),
    Route("/big", big),
    Route("/redirect", redirect),
    Route("/twice", twice),
])


async def start_server(nursery: trio.Nursery, *, certfile: str | None = None,
                       keyfile: str | None = None) -> str:
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.certfile, config.keyfile = certfile, keyfile
    config.accesslog = config.errorlog = None
    binds: list[str] = await nursery.start(serve, APP, config)
    return binds[0].replace("http://", "https://" if certfile else "http://")


@pytest.fixture
async def server(nursery: trio.Nursery) -> str:
    return await start_server(nursery)


@pytest.fixture
def ca(tmp_path: Path) -> Any:
    return trustme.CA()


@pytest.fixture
async def tls_server(nursery: trio.Nursery, ca: Any, tmp_path: Path) -> str:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return await start_server(nursery, certfile=str(tmp_path / "cert.pem"),
                              keyfile=str(tmp_path / "key.pem"))


async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
        await sink.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


class ConnectProxy:
    """A CONNECT-only forward proxy on loopback that remembers where it tunnelled to."""

    def __init__(self) -> None:
        self.tunnels: list[str] = []

    async def handle(self, client: trio.SocketStream) -> None:
        head = b""
        async with client:
            while b"\r\n\r\n" not in head:
                data = await client.receive_some(4096)
                if not data:
                    return
                head += data
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            if method != "CONNECT":
                await client.send_all(b"HTTP/1.1 405 Method Not Allowed\r\n"
                                      b"Content-Length: 0\r\n\r\n")
                return
            host, _, port = target.rpartition(":")
            try:
                upstream = await trio.open_tcp_stream(host, int(port))
            except OSError:
                await client.send_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return
            self.tunnels.append(target)
            await client.send_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            async with upstream, trio.open_nursery() as nursery:
                nursery.start_soon(pump, client, upstream)
                nursery.start_soon(pump, upstream, client)


@pytest.fixture
async def proxy(nursery: trio.Nursery) -> AsyncIterator[tuple[str, ConnectProxy]]:
    found = ConnectProxy()
    listeners = await nursery.start(functools.partial(trio.serve_tcp, found.handle, 0,
                                                      host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    yield f"http://127.0.0.1:{port}", found


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then closed)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- statuses ---------------------------------------------------------------------------------


async def test_get_succeeds_with_outputs(server: str) -> None:
    log: list[str] = []
    out = await call({"url": f"{server}/status/200"}, log)
    assert out["status"] == 200
    assert out["body"] == "status 200"
    assert isinstance(out["elapsed_ms"], int) and out["elapsed_ms"] >= 0
    assert json.loads(out["headers"])["content-type"].startswith("text/plain")
    assert log[0] == f"[http] GET {server}/status/200"
    assert log[1].startswith("[http] 200 OK after ")


async def test_unexpected_status_fails_and_logs_the_body(server: str) -> None:
    log: list[str] = []
    with pytest.raises(RunnerError, match=r"^expected 2xx, got 500 Internal Server Error$"):
        await call({"url": f"{server}/status/500"}, log)
    assert "[http] body: status 500" in log


async def test_expected_statuses(server: str) -> None:
    out = await call({"url": f"{server}/status/404", "expect_status": [404, 410]})
    assert out["status"] == 404
    assert (await call({"url": f"{server}/status/204", "expect_status": 204}))["status"] == 204
    with pytest.raises(RunnerError, match=r"expected 200 or 204, got 201 Created"):
        await call({"url": f"{server}/status/201", "expect_status": [200, 204]})
    with pytest.raises(RunnerError, match="not an HTTP status"):
        await call({"url": f"{server}/status/200", "expect_status": "two hundred"})


async def test_post_json_and_body_with_headers(server: str) -> None:
    out = await call({"url": f"{server}/echo", "method": "post", "json": {"a": [1, 2]},
                      "headers": {"X-Trace": "t1"}})
    seen = json.loads(out["body"])
    assert seen["method"] == "POST"
    assert json.loads(seen["body"]) == {"a": [1, 2]}
    assert seen["headers"]["content-type"] == "application/json"
    assert seen["headers"]["x-trace"] == "t1"
    out = await call({"url": f"{server}/echo", "method": "PUT", "body": "raw text"})
    assert json.loads(out["body"])["body"] == "raw text"
    with pytest.raises(RunnerError, match="json or body, not both"):
        await call({"url": f"{server}/echo", "json": {}, "body": ""})


async def test_secret_headers_are_masked_in_the_log(server: str) -> None:
    log: list[str] = []
    headers = {"Authorization": "Bearer s3cret", "X-Api-Key": "k3y", "Cookie": "sid=c00kie",
               "X-Auth-Token": "t0ken", "X-Trace": "visible"}
    out = await call({"url": f"{server}/echo?access_token=q5", "headers": headers}, log)
    seen = json.loads(out["body"])["headers"]
    assert seen["authorization"] == "Bearer s3cret"  # sent as given ...
    text = "\n".join(log)
    for secret in ("s3cret", "k3y", "c00kie", "t0ken", "q5"):  # ... but never logged
        assert secret not in text
    assert "X-Trace: visible" in text
    assert "Authorization: ***" in text
    assert "access_token=***" in text


async def test_body_is_capped_at_64_kib_without_a_broken_character(server: str) -> None:
    out = await call({"url": f"{server}/big"})
    body = out["body"]
    assert body.startswith("xé")
    assert len(body.encode()) <= http_runner.BODY_CAP
    assert len(body.encode()) >= http_runner.BODY_CAP - 1
    assert "\ufffd" not in body


async def test_repeated_headers_are_joined(server: str) -> None:
    out = await call({"url": f"{server}/twice"})
    assert json.loads(out["headers"])["x-many"] == "a, b"


# -- redirects and timeouts -------------------------------------------------------------------


async def test_redirects_followed_by_default(server: str) -> None:
    log: list[str] = []
    out = await call({"url": f"{server}/redirect"}, log)
    assert out["status"] == 200
    assert any("302 Found" in line for line in log)  # each hop is logged


async def test_redirect_not_followed_when_told(server: str) -> None:
    with pytest.raises(RunnerError, match="expected 2xx, got 302 Found"):
        await call({"url": f"{server}/redirect", "follow_redirects": False})
    out = await call({"url": f"{server}/redirect", "follow_redirects": False,
                      "expect_status": 302})
    assert out["status"] == 302


async def test_timeout_fails_the_request(server: str) -> None:
    start = trio.current_time()
    with pytest.raises(RunnerError, match=r"^GET .*/slow failed: timed out after 0.3s$"):
        await call({"url": f"{server}/slow", "timeout": "300ms"})
    assert trio.current_time() - start < 2


async def test_step_cancellation_is_not_turned_into_an_error(server: str) -> None:
    with trio.move_on_after(0.2) as scope:
        await call({"url": f"{server}/slow"})
    assert scope.cancelled_caught


# -- unreachable ------------------------------------------------------------------------------


async def test_connection_refused() -> None:
    port = closed_port()
    with pytest.raises(RunnerError) as info:
        await call({"url": f"http://127.0.0.1:{port}/"})
    assert str(info.value) == f"GET http://127.0.0.1:{port}/ failed: connection refused"


async def test_unresolvable_host() -> None:
    with pytest.raises(RunnerError, match=r"failed: cannot resolve host"):
        await call({"url": "http://no-such-host.invalid/"})


async def test_invalid_url() -> None:
    with pytest.raises(RunnerError, match=r"^GET http://\[::1 failed: invalid URL"):
        await call({"url": "http://[::1"})


async def test_missing_scheme() -> None:
    with pytest.raises(RunnerError, match=r"failed: .*missing an 'http://' or 'https://'"):
        await call({"url": "example.com/health"})


# -- TLS and proxies --------------------------------------------------------------------------


async def test_tls_with_a_ca_bundle_and_untrusted(tls_server: str, tmp_path: Path) -> None:
    out = await call({"url": f"{tls_server}/status/200", "verify": str(tmp_path / "ca.pem")})
    assert out["status"] == 200
    with pytest.raises(RunnerError, match="TLS certificate not trusted"):
        await call({"url": f"{tls_server}/status/200"})
    assert (await call({"url": f"{tls_server}/status/200", "verify": False}))["status"] == 200


async def test_through_a_connect_proxy(tls_server: str, tmp_path: Path,
                                       proxy: tuple[str, ConnectProxy]) -> None:
    proxy_url, seen = proxy
    log: list[str] = []
    out = await call({"url": f"{tls_server}/status/200", "proxy": proxy_url,
                      "verify": str(tmp_path / "ca.pem")}, log)
    assert out["status"] == 200
    assert seen.tunnels == [tls_server.removeprefix("https://")]
    assert f"via proxy {proxy_url}" in log[0]


async def test_proxy_that_is_down() -> None:
    port = closed_port()
    for url in ("https://example.invalid/", "http://example.invalid/"):
        with pytest.raises(RunnerError) as info:
            await call({"url": url, "proxy": f"http://127.0.0.1:{port}"})
        assert str(info.value) == (f"GET {url} failed: proxy http://127.0.0.1:{port} "
                                   "unreachable: connection refused")


async def test_proxy_that_cannot_reach_the_target(proxy: tuple[str, ConnectProxy]) -> None:
    proxy_url, _ = proxy
    with pytest.raises(RunnerError, match=f"failed: proxy {proxy_url} refused: .*502"):
        await call({"url": f"https://127.0.0.1:{closed_port()}/", "proxy": proxy_url})


async def test_proxy_password_is_masked(proxy: tuple[str, ConnectProxy]) -> None:
    proxy_url, _ = proxy
    with_password = proxy_url.replace("http://", "http://user:pw1234@")
    log: list[str] = []
    with pytest.raises(RunnerError) as info:
        await call({"url": f"https://127.0.0.1:{closed_port()}/", "proxy": with_password}, log)
    assert "pw1234" not in str(info.value) + "\n".join(log)


def test_mask_url() -> None:
    assert http_runner.mask_url("https://u:p@h/x?token=1&a=2") == "https://u:***@h/x?token=***&a=2"
    assert http_runner.mask_url("https://h/x?a=2") == "https://h/x?a=2"
