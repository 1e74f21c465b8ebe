"""Answers the HTTP app gives: JSON encoding, errors in the contract's shape, and the shared
list answers (``RecentAnswers``).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any, TypeVar, cast

import trio
from loguru import logger
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.types import Scope

from pipeline import page
from pipeline.errors import NotFound, ParamError, StateError

T = TypeVar("T")
_PAGES = ("/runs/", "/login")  # besides "/": the HTML pages


class ApiError(Exception):
    """A client's request that cannot be served; becomes ``{"error": {code, message}}``."""

    def __init__(self, status: int, code: str, message: str,
                 extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra or {}


# -- answers -----------------------------------------------------------------------------------

def dumps(content: Any) -> bytes:
    # default=str: values from YAML (dates) inside params and outputs are shown as text.
    return json.dumps(content, ensure_ascii=False, separators=(",", ":"),
                      default=str).encode()


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return content if isinstance(content, bytes) else dumps(content)


Encoded = tuple[bytes, bytes]  # a JSON answer, plain and gzipped


def encode_shared(content: Any) -> Encoded:
    """A shared answer, encoded once: plain and gzipped (a thousand jobs: 700 KB, or 60)."""
    body = dumps(content)
    return body, gzip.compress(body, compresslevel=1, mtime=0)


def shared_answer(request: Request, encoded: Encoded) -> Response:
    plain, packed = encoded
    if "gzip" in request.headers.get("accept-encoding", "") and len(plain) > 1024:
        return JSONResponse(packed, headers={"Content-Encoding": "gzip",
                                             "Vary": "Accept-Encoding"})
    return JSONResponse(plain, headers={"Vary": "Accept-Encoding"})


def error_body(status: int, code: str, message: str,
               extra: Mapping[str, Any] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}, **(extra or {})},
                        status_code=status)


def wants_page(scope: Scope) -> bool:
    path: str = scope["path"]
    return scope["method"] in ("GET", "HEAD") and (path == "/" or path.startswith(_PAGES))


def error_page(status: int, message: str) -> HTMLResponse:
    return HTMLResponse(page.render("error.html", {"status": status, "message": message}),
                        status_code=status)


def refuse(scope: Scope, status: int, code: str, message: str) -> Response:
    if wants_page(scope):
        return error_page(status, message)
    return error_body(status, code, message)


SECURITY_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy",
     # The pages' script is a file of ours: no inline script runs. Inline style attributes
     # stay allowed (the timeline places its bars with them).
     b"default-src 'none'; style-src 'self' 'unsafe-inline'; script-src 'self'; "
     b"connect-src 'self'; img-src 'self' data:; form-action 'self'; "
     b"frame-ancestors 'none'; base-uri 'none'"),
]


# -- errors as answers ----------------------------------------------------------------------

async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    if wants_page(request.scope):
        return error_page(exc.status, exc.message)
    return error_body(exc.status, exc.code, exc.message, exc.extra)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    message = {404: f"no such route: {request.url.path[:200]}",
               405: f"{request.method} is not allowed here"}.get(exc.status_code, exc.detail)
    response = refuse(request.scope, exc.status_code, code, message)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def pipeline_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ParamError):
        return error_body(422, "bad_params", str(exc))
    if isinstance(exc, NotFound):
        return refuse(request.scope, 404, "not_found", str(exc))
    if isinstance(exc, StateError):
        logger.error("HTTP {} {}: {}", request.method, request.url.path, exc)
        return refuse(request.scope, 503, "state_unavailable", str(exc))
    return error_body(409, "refused", str(exc))


async def internal_error(request: Request, exc: Exception) -> Response:
    # Starlette sends this, then raises the exception again for the Guard to log.
    return error_body(500, "internal", "internal error (logged by the daemon)")


# -- recent answers ---------------------------------------------------------------------------

REBUILD = 0.5  # seconds: the list answers are rebuilt at most this often while state changes
MAX_AGE = 5.0  # and at least this often (a circuit's cooldown ends without any event)
MAX_ENTRIES = 64


class _Entry:
    __slots__ = ("at", "value", "version")

    def __init__(self, version: Hashable, at: float, value: Any) -> None:
        self.version = version
        self.at = at
        self.value = value


class RecentAnswers:
    """The list routes' answers, built once and shared by every request that comes meanwhile.

    Listing a thousand jobs costs tens of milliseconds of CPU, and fifty clients polling it
    would queue behind one another and behind the scheduler. An answer is reused while the
    daemon's state ``version`` (events seen, the catalog loaded) is unchanged, and, while the
    state keeps changing, for ``REBUILD`` seconds: so a list may lag by that much, except right
    after a change made through this API (``clear``). Concurrent requests for a stale answer
    wait for one rebuild instead of each doing it.
    """

    def __init__(self, version: Callable[[], Hashable]) -> None:
        self.version = version
        self.entries: dict[str, _Entry] = {}
        self.locks: dict[str, trio.Lock] = {}

    def clear(self) -> None:
        self.entries.clear()

    def _fresh(self, entry: _Entry | None, now: float) -> bool:
        if entry is None or now - entry.at >= MAX_AGE:
            return False
        return now - entry.at < REBUILD or entry.version == self.version()

    async def get(self, key: str, build: Callable[[], Awaitable[T]]) -> T:
        asked = trio.current_time()
        entry = self.entries.get(key)
        if self._fresh(entry, asked):
            return cast(T, entry.value)  # type: ignore[union-attr]
        lock = self.locks.setdefault(key, trio.Lock())
        async with lock:
            entry = self.entries.get(key)
            if entry is not None and entry.at >= asked:  # rebuilt while this one waited
                return cast(T, entry.value)
            version, started = self.version(), trio.current_time()
            value = await build()
            if len(self.entries) >= MAX_ENTRIES:
                self.entries.clear()
                self.locks = {k: v for k, v in self.locks.items() if v.locked()}
            self.entries[key] = _Entry(version, started, value)
            return value


