"""Who may talk to the daemon: the address it listens on, and the checks every request passes
before any route runs (``Guard``). See the package's docstring for the rules.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

import trio
from loguru import logger
from starlette.datastructures import Headers
from starlette.responses import HTMLResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline import page
from pipeline.errors import PipelineError
from pipeline.http.answers import SECURITY_HEADERS, error_body, refuse, wants_page

MAX_BODY = 1024 * 1024  # bytes of a request body
MAX_LIMIT = 1000  # runs in one page of /api/v1/runs
MAX_WAIT = 60.0  # seconds of the longest ?wait= on a run
CONCURRENT_REQUESTS = 4  # handled at once; the others wait their turn (see Guard)
SESSION_COOKIE = "pipeline_session"
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class ListenRefused(PipelineError):
    """``--listen`` is malformed, or not loopback while no token is set."""

    exit_code = 2


# -- where to listen ---------------------------------------------------------------------------

def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as (host, port). Raises ``ListenRefused``."""
    host, sep, port = listen.strip().rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    if not sep or not port.isdigit() or int(port) > 65535 or (
            ":" in host and not (bracketed and _is_ip(host))):
        raise ListenRefused(f"--listen {listen!r}: expected HOST:PORT, like 127.0.0.1:8765 or "
                            "[::1]:8765")
    return host, int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, without port) can only mean this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(listen: str, token: str | None) -> None:
    """Refuse (``ListenRefused``) a malformed address, or a non-loopback one without a token."""
    host, _ = parse_listen(listen)
    if not token and not is_loopback(host):
        raise ListenRefused(
            f"refusing to serve HTTP on {listen} without a token: anyone who reaches it could "
            "run jobs. Set --token (or PIPELINE_TOKEN), or listen on 127.0.0.1")


def _host_of(header: str) -> str:
    """The name in a ``Host`` header, without its port."""
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    name, sep, port = header.rpartition(":")
    return name if sep and port.isdigit() else header


def session_value(token: str) -> str:
    """The status page's cookie: derived from the token, so the cookie is not the token."""
    return hmac.new(token.encode(), b"pipeline status page session v1",
                    hashlib.sha256).hexdigest()


# -- the guard ---------------------------------------------------------------------------------

class Guard:
    """The outer ASGI layer: host, origin, token and size checks, and the last-resort 500."""

    def __init__(self, app: ASGIApp, *, token: str | None, read_only: bool = False) -> None:
        self.app = app
        self.read_only = read_only
        self.token = token.encode() if token else None
        self.session = session_value(token).encode() if token else None
        # Requests are handled a few at a time: fifty busy clients then leave the trio run
        # queue short, so the scheduler's tasks (same loop) are not queued behind them.
        self.limiter = trio.CapacityLimiter(CONCURRENT_REQUESTS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", ()))
                # An answer that says how long it may be kept (an asset) keeps saying so.
                cached = any(name.lower() == b"cache-control" for name, _ in headers)
                message = {**message, "headers": [*headers, *(
                    h for h in SECURITY_HEADERS if not (cached and h[0] == b"cache-control"))]}
            await send(message)

        try:
            refusal = self.refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, guarded_send)
                return
            if _long_lived(scope):
                await self.app(scope, receive, guarded_send)
            else:
                async with self.limiter:
                    await self.app(scope, receive, guarded_send)
        except Exception as exc:  # a bug of ours: log it, answer 500, keep serving
            logger.opt(exception=exc).error("HTTP {} {} failed", scope["method"], scope["path"])
            if not started:
                await error_body(500, "internal", "internal error (logged by the daemon)")(
                    scope, receive, guarded_send)

    def refusal(self, scope: Scope) -> Response | None:
        """The answer that ends the request before any route runs, or None to go on."""
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        method: str = scope["method"]
        path: str = scope["path"]
        if self.token is None and not is_loopback(_host_of(host)):
            return refuse(scope, 403, "forbidden_host",
                            f"Host {host!r} is not a loopback name; this daemon has no token, "
                            "so it answers only to localhost, 127.0.0.1 or [::1] (protection "
                            "against DNS rebinding)")
        unsafe = method in _UNSAFE
        origin = headers.get("origin")
        fetch_site = headers.get("sec-fetch-site")
        same_origin = origin == f"{scope['scheme']}://{host}" or fetch_site == "same-origin"
        if unsafe and ((origin is not None and not same_origin)
                       or fetch_site in ("cross-site", "same-site")):
            return refuse(scope, 403, "cross_origin",
                            f"refusing a {method} from another site ({origin or fetch_site})")
        if self.token is not None and path not in ("/healthz", "/login") and not (
                path.startswith("/assets/") and method in ("GET", "HEAD")):
            how = self.authenticated(headers)
            if how is None:
                return self.unauthenticated(scope, headers)
            if how == "cookie" and unsafe and not same_origin:
                return refuse(scope, 403, "cross_origin",
                                "a signed-in browser may change state only from this site")
        if unsafe and self.read_only and path != "/login":
            return refuse(scope, 403, "read_only",
                          f"this daemon serves read-only (--read-only): {method} {path} is "
                          "refused")
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return error_body(400, "bad_request", "Content-Length is not a number")
            if int(length) > MAX_BODY:
                return error_body(413, "too_large",
                                   f"request body over {MAX_BODY} bytes ({length})")
        if unsafe:
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind and not _is_json(kind) and not (
                    path == "/login" and kind == "application/x-www-form-urlencoded"):
                return error_body(415, "unsupported_media_type",
                                   f"send a JSON body (Content-Type: application/json) or "
                                   f"none, not {kind}")
        return None

    def authenticated(self, headers: Headers) -> str | None:
        assert self.token is not None and self.session is not None
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
                credentials.strip().encode(), self.token):
            return "bearer"
        cookie = _cookie(headers.get("cookie", ""), SESSION_COOKIE)
        if cookie is not None and hmac.compare_digest(cookie.encode(), self.session):
            return "cookie"
        return None

    def unauthenticated(self, scope: Scope, headers: Headers) -> Response:
        if wants_page(scope):
            target = scope["path"] + (f"?{scope['query_string'].decode('latin-1')}"
                                      if scope.get("query_string") else "")
            return HTMLResponse(page.render("login.html", {"next": target, "failed": False}),
                                status_code=401)
        given = "authorization" in headers
        response = error_body(401, "unauthorized",
                               "wrong token" if given else
                               "this daemon needs a token: send Authorization: Bearer TOKEN")
        response.headers["WWW-Authenticate"] = 'Bearer realm="pipeline"'
        return response


def _long_lived(scope: Scope) -> bool:
    """A followed log or a run waited for: parked for long, so never counted as busy."""
    query: bytes = scope.get("query_string", b"")
    return b"follow=" in query or b"wait=" in query


def _is_json(kind: str) -> bool:
    return kind == "application/json" or (kind.startswith("application/")
                                          and kind.endswith("+json"))


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value
    return None


