"""Who may talk to the daemon: the token, the status page's sign-in, DNS rebinding, other sites."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pipeline.daemon import Daemon
from pipeline.http import SESSION_COOKIE, ListenRefused, check_listen, parse_listen
from tests.test_http import client, error_of, get_request, open_daemon, raw, wait_run

TOKEN = "s3cret-token-for-tests"


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with open_daemon(tmp_path, token=TOKEN) as daemon:
        yield daemon


@pytest.fixture
async def open_on_loopback(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with open_daemon(tmp_path) as daemon:
        yield daemon


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.slow
async def test_every_route_but_healthz_needs_the_token(guarded: Daemon) -> None:
    async with client(guarded) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        for method, path in (("GET", "/api/v1/jobs"), ("GET", "/api/v1/jobs/hello"),
                             ("GET", "/api/v1/runs"), ("GET", "/metrics"),
                             ("GET", "/api/v1/metrics"), ("GET", "/api/v1/openapi.json"),
                             ("POST", "/api/v1/jobs/hello/runs"),
                             ("POST", "/api/v1/jobs/hello/circuit/reset"),
                             ("GET", "/api/v1/runs/20260101T000000-00000000"),
                             ("DELETE", "/api/v1/runs/20260101T000000-00000000"),
                             ("GET", "/api/v1/nothing")):
            for headers in ({}, bearer("wrong"), {"Authorization": "Basic " + TOKEN},
                            bearer(TOKEN + "x"), bearer(TOKEN[:-1])):
                response = await http.request(method, path, headers=headers)
                error_of(response, 401)
                assert response.headers["www-authenticate"].startswith("Bearer")
        assert (await http.get("/api/v1/jobs", headers=bearer())).status_code == 200
        assert (await http.get("/metrics", headers=bearer())).status_code == 200
        started = await http.post("/api/v1/jobs/hello/runs", headers=bearer())
        assert started.status_code == 202
        http.headers.update(bearer())
        await wait_run(http, started.json()["run_id"])


@pytest.mark.slow
async def test_the_page_asks_for_the_token_once(guarded: Daemon) -> None:
    async with client(guarded) as http:
        page = await http.get("/runs/20260101T000000-00000000", params={"x": "1"})
        assert page.status_code == 401 and 'type="password"' in page.text
        assert 'value="/runs/20260101T000000-00000000?x=1"' in page.text

        wrong = await http.post("/login", data={"token": "nope", "next": "/"})
        assert wrong.status_code == 401 and SESSION_COOKIE not in wrong.cookies
        signed = await http.post("/login", data={"token": TOKEN, "next": "//evil.example/"})
        assert signed.status_code == 303 and signed.headers["location"] == "/"
        cookie = signed.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert TOKEN not in cookie  # the cookie is derived from the token, not the token
        http.cookies.set(SESSION_COOKIE, signed.cookies[SESSION_COOKIE])

        assert (await http.get("/")).status_code == 200
        assert (await http.get("/api/v1/jobs")).status_code == 200  # raw logs open from the page
        # A signed-in browser changes state only from this site: its fetch sends Origin.
        error_of(await http.post("/api/v1/jobs/hello/runs"), 403)
        error_of(await http.post("/api/v1/jobs/hello/runs",
                                 headers={"Origin": "http://evil.example"}), 403)
        own = await http.post("/api/v1/jobs/hello/runs", json={},
                              headers={"Origin": str(http.base_url).rstrip("/")})
        assert own.status_code == 202, own.text
        same = await http.post("/api/v1/jobs/hello/runs", json={},
                               headers={"Sec-Fetch-Site": "same-origin"})
        assert same.status_code in (202, 409)
        http.cookies.clear()
        http.cookies.set(SESSION_COOKIE, "0" * 64)
        assert (await http.get("/api/v1/jobs")).status_code == 401


@pytest.mark.slow
async def test_without_a_token_only_loopback_host_names_are_served(
        open_on_loopback: Daemon) -> None:
    daemon = open_on_loopback
    assert daemon.listen is not None
    port = daemon.listen.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}",
                 "127.0.0.2", f"LOCALHOST:{port}"):
        status, _ = await raw(daemon, get_request(daemon, "/api/v1/jobs", host=host))
        assert status == 200, host
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example",
                 f"localhost.evil.example:{port}", "192.168.1.10", "[::2]:80", "0.0.0.0"):
        status, body = await raw(daemon, get_request(daemon, "/api/v1/jobs", host=host))
        assert status == 403 and b"forbidden_host" in body, host
        status, _ = await raw(daemon, get_request(daemon, "/", host=host))
        assert status == 403, host


@pytest.mark.slow
async def test_other_sites_cannot_change_state(open_on_loopback: Daemon) -> None:
    async with client(open_on_loopback) as http:
        for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                        {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}):
            error_of(await http.post("/api/v1/jobs/hello/runs", headers=headers), 403)
            error_of(await http.delete("/api/v1/runs/20260101T000000-00000000",
                                       headers=headers), 403)
        # A form cannot send JSON: every form encoding is refused before any route runs.
        for kind in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=b",
                     "text/plain"):
            error_of(await http.post("/api/v1/runs/20260101T000000-00000000/stop",
                                     content=b"", headers={"Content-Type": kind}), 415)
        # Reading from another site is harmless (the browser hides the answer), and GET
        # changes nothing.
        assert (await http.get("/api/v1/jobs", headers={"Origin": "http://x"})).status_code \
            == 200
        assert (await http.get("/login")).status_code == 303  # no token: nothing to sign in
        assert "access-control-allow-origin" not in (await http.get("/api/v1/jobs")).headers


def test_check_listen() -> None:
    for listen in ("127.0.0.1:8765", "localhost:0", "[::1]:8765", "127.1.2.3:80"):
        check_listen(listen, None)
    for listen in ("0.0.0.0:8765", ":8765", "192.168.1.5:80", "example.com:80", "[::]:80"):
        with pytest.raises(ListenRefused, match="token"):
            check_listen(listen, None)
        check_listen(listen, "t")
    for listen in ("8765", "localhost", "127.0.0.1:http", "127.0.0.1:70000", "::1:80"):
        with pytest.raises(ListenRefused, match="HOST:PORT"):
            check_listen(listen, "t")
    assert parse_listen("[::1]:8765") == ("::1", 8765)
    assert ListenRefused.exit_code == 2


@pytest.mark.slow
async def test_serve_http_refuses_an_unsafe_or_taken_address(
        open_on_loopback: Daemon) -> None:
    from pipeline.errors import PipelineError
    from pipeline.http import serve_http

    with pytest.raises(ListenRefused):
        await serve_http(open_on_loopback, listen="0.0.0.0:0")
    assert open_on_loopback.listen is not None
    taken = open_on_loopback.listen.removeprefix("http://")
    with pytest.raises(PipelineError, match="cannot listen"):
        await serve_http(open_on_loopback, listen=taken)
