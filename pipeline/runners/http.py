"""``uses: http`` — one HTTP request, checked against the status it should answer.

The request runs in the daemon's trio loop (httpx drives trio through anyio). Its whole time,
connection included, is bounded by one cancel scope (``timeout``); the step's own timeout and
a stop cancel it like anything else. A failed request raises ``RunnerError``; the engine
retries it under the step's retry policy.

Neither the daemon's ``HTTP_PROXY``/``NO_PROXY`` nor its ``.netrc`` are used (``trust_env`` is
off): a step sees only what its job declares, like a ``run`` step's environment. A proxy is
given with ``proxy``; certificates are checked against the system's CA store (or
``verify: /path/to/ca.pem``, or not at all with ``verify: false``).
"""

from __future__ import annotations

import codecs
import errno
import functools
import json
import os
import re
import socket
import ssl
from collections.abc import Mapping
from typing import Any

import httpx
import trio

from pipeline.errors import RunnerError
from pipeline.notation import short_duration
from pipeline.runners import StepContext
from pipeline.runners.args import bool_arg, duration_arg, mapping_arg, text_arg

DEFAULT_TIMEOUT = 30.0
BODY_CAP = 64 * 1024
ERROR_BODY_PREVIEW = 500
# Header names whose values never reach a log.
SECRET_HEADER = re.compile(r"authorization|cookie|api[-_]?key|token|secret|passw|session",
                           re.IGNORECASE)
SECRET_QUERY = re.compile(r"token|secret|key|passw|sig|auth|session", re.IGNORECASE)
MASK = "***"


async def run(args: Mapping[str, Any], ctx: StepContext) -> dict[str, Any]:
    url = text_arg(args, "url")
    method = text_arg(args, "method", "GET").upper()
    headers = {str(k): str(v) for k, v in mapping_arg(args, "headers").items()}
    timeout = duration_arg(args, "timeout", DEFAULT_TIMEOUT)
    expected = expected_statuses(args.get("expect_status"))
    proxy = args.get("proxy") or None
    if proxy is not None and not isinstance(proxy, str):
        raise RunnerError(f"proxy must be a URL, not {type(proxy).__name__}")
    follow = bool_arg(args, "follow_redirects", True)
    content, json_body = request_body(args)
    verify = verify_arg(args.get("verify", True))
    shown = f"{method} {mask_url(url)}"
    try:
        client = logging_client(ctx, headers, proxy=proxy, verify=verify, follow=follow)
    except (ValueError, TypeError, ImportError, httpx.InvalidURL) as exc:
        raise RunnerError(f"{shown} failed: bad proxy {mask_url(proxy or '')}: {exc}") from None
    begin = trio.current_time()
    try:
        with trio.fail_after(timeout if timeout > 0 else float("inf")):
            async with client, client.stream(method, url, headers=headers, content=content,
                                             json=json_body) as response:
                body, truncated = await read_capped(response, BODY_CAP)
    except trio.TooSlowError:
        raise RunnerError(f"{shown} failed: timed out after {short_duration(timeout)}") from None
    except httpx.InvalidURL as exc:  # not an HTTPError: raised before any request is made
        raise RunnerError(f"{shown} failed: invalid URL: {exc}") from None
    except httpx.HTTPError as exc:
        raise RunnerError(f"{shown} failed: {describe_error(exc, proxy)}") from None
    elapsed_ms = round((trio.current_time() - begin) * 1000)
    text = decode(body, response.encoding or "utf-8", final=not truncated)
    status = response.status_code
    if not status_ok(status, expected):
        if text:
            preview = text[:ERROR_BODY_PREVIEW]
            more = " ..." if len(text) > ERROR_BODY_PREVIEW or truncated else ""
            ctx.log(f"[http] body: {preview}{more}")
        raise RunnerError(f"expected {describe_expected(expected)}, got {status_text(response)}")
    return {
        "status": status,
        "elapsed_ms": elapsed_ms,
        "headers": json.dumps(response_headers(response)),
        "body": text,
    }


def logging_client(ctx: StepContext, headers: Mapping[str, str], *, proxy: str | None,
                   verify: bool | ssl.SSLContext, follow: bool) -> httpx.AsyncClient:
    """A client that writes each request (secrets masked) and each answer, with how long it
    took, to the step's log; none of the daemon's environment (``trust_env`` off)."""
    started: dict[int, float] = {}

    async def on_request(request: httpx.Request) -> None:
        started[id(request)] = trio.current_time()
        via = f" via proxy {mask_url(proxy)}" if proxy else ""
        ctx.log(f"[http] {request.method} {mask_url(str(request.url))}{via}"
                f"{describe_headers(headers)}")

    async def on_response(response: httpx.Response) -> None:
        began = started.pop(id(response.request), trio.current_time())
        ms = round((trio.current_time() - began) * 1000)
        ctx.log(f"[http] {status_text(response)} after {ms} ms")

    return httpx.AsyncClient(
        proxy=proxy, verify=verify, follow_redirects=follow, timeout=None,
        trust_env=False, event_hooks={"request": [on_request], "response": [on_response]})


def expected_statuses(value: Any) -> frozenset[int] | None:
    """The statuses that count as success; None means any 2xx."""
    if value is None:
        return None
    items = value if isinstance(value, list | tuple) else [value]
    codes = set()
    for item in items:
        try:
            code = int(item)
        except (TypeError, ValueError):
            code = 0
        if isinstance(item, bool) or not 100 <= code <= 599:
            raise RunnerError(f"expect_status: not an HTTP status: {item!r}")
        codes.add(code)
    if not codes:
        raise RunnerError("expect_status: an empty list accepts nothing")
    return frozenset(codes)


def request_body(args: Mapping[str, Any]) -> tuple[bytes | None, Any]:
    if "json" in args and "body" in args:
        raise RunnerError("give json or body, not both")
    body = args.get("body")
    if body is not None and not isinstance(body, str):
        # A rendered expression may give a mapping: send it as JSON text, which is what a
        # user who wrote `body: ${{ steps.x.outputs.data }}` meant.
        body = json.dumps(body)
    return (body.encode() if body is not None else None), args.get("json")


def verify_arg(value: Any) -> ssl.SSLContext | bool:
    if value is False or (isinstance(value, str) and value.lower() == "false"):
        return False
    if value is True or (isinstance(value, str) and value.lower() == "true"):
        return ssl_context(None)
    if isinstance(value, str):
        try:
            return ssl_context(value)
        except (OSError, ssl.SSLError) as exc:
            raise RunnerError(f"verify: cannot load CA bundle {value}: {exc}") from None
    raise RunnerError(f"verify must be true, false or a CA bundle's path, not {value!r}")


@functools.cache
def ssl_context(cafile: str | None) -> ssl.SSLContext:
    """One context per CA bundle, built once: building one costs ~20 ms of CPU."""
    if cafile is not None:
        return ssl.create_default_context(cafile=cafile)
    context = ssl.create_default_context()
    if not context.cert_store_stats()["x509_ca"]:  # no system CA store: fall back to certifi
        import certifi

        context.load_verify_locations(certifi.where())
    return context


# -- answers --------------------------------------------------------------------------------


async def read_capped(response: httpx.Response, cap: int) -> tuple[bytes, bool]:
    """The first ``cap`` bytes of the (decompressed) body, and whether there was more."""
    data = bytearray()
    chunks = response.aiter_bytes()
    async for chunk in chunks:
        data += chunk
        if len(data) > cap:
            break
    else:
        return bytes(data), False
    # httpx's body is a stack of async generators that nothing closes when a reader stops
    # early (httpx #3686); trio would find them in the garbage and warn. Closing the connection
    # under them makes the next step fail through every one of them, so none is left over.
    await response.aclose()
    try:
        async for _ in chunks:
            pass
    except (httpx.HTTPError, trio.ClosedResourceError, trio.BrokenResourceError):
        pass
    return bytes(data[:cap]), True


def decode(data: bytes, encoding: str, *, final: bool) -> str:
    """Text with replacement characters; a character cut by the cap is dropped, not garbled."""
    try:
        decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    except LookupError:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    return str(decoder.decode(data, final=final))


def status_text(response: httpx.Response) -> str:
    """``404 Not Found``: the phrase the server sent, else the standard one (HTTP/2 has none)."""
    phrase = response.reason_phrase or httpx.codes.get_reason_phrase(response.status_code)
    return f"{response.status_code} {phrase}".rstrip()


def status_ok(status: int, expected: frozenset[int] | None) -> bool:
    return 200 <= status < 300 if expected is None else status in expected


def describe_expected(expected: frozenset[int] | None) -> str:
    if expected is None:
        return "2xx"
    codes = [str(c) for c in sorted(expected)]
    return codes[0] if len(codes) == 1 else ", ".join(codes[:-1]) + " or " + codes[-1]


def response_headers(response: httpx.Response) -> dict[str, str]:
    """Lower-case names; a repeated header's values joined with ', ' (RFC 9110 5.3)."""
    found: dict[str, str] = {}
    for name, value in response.headers.multi_items():
        found[name] = f"{found[name]}, {value}" if name in found else value
    return found


# -- describing, with secrets masked ---------------------------------------------------------


def describe_headers(headers: Mapping[str, str]) -> str:
    if not headers:
        return ""
    shown = ", ".join(f"{k}: {MASK if SECRET_HEADER.search(k) else v}"
                      for k, v in headers.items())
    return f" ({shown})"


def mask_url(url: str) -> str:
    """``url`` with a password and secret-looking query values replaced by ``***``."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return url
    if parsed.password:
        parsed = parsed.copy_with(username=parsed.username, password=MASK)
    if parsed.query and any(SECRET_QUERY.search(k) for k in parsed.params):
        parsed = parsed.copy_with(params=[(k, MASK if SECRET_QUERY.search(k) else v)
                                          for k, v in parsed.params.multi_items()])
    return str(parsed).replace("%2A%2A%2A", MASK)


def describe_error(exc: httpx.HTTPError, proxy: str | None = None) -> str:
    """What went wrong, in the words of someone debugging a network: refused, unresolvable, ..."""
    if isinstance(exc, httpx.ProxyError):
        return f"proxy {mask_url(proxy or '')} refused: {exc}"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.TooManyRedirects):
        return "too many redirects"
    if isinstance(exc, httpx.UnsupportedProtocol):
        return str(exc)
    reason = os_reason(exc)
    if isinstance(exc, httpx.ConnectError):
        if proxy and reason is not None and "TLS" not in reason:
            # With a proxy, ours is the only direct connection: the proxy is what is down.
            return f"proxy {mask_url(proxy)} unreachable: {reason}"
        return reason or str(exc) or "cannot connect"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"the server broke the protocol: {exc}"
    return reason or f"{type(exc).__name__}: {exc}"


def os_reason(exc: BaseException) -> str | None:
    """The first operating-system or TLS error under ``exc``, in plain words."""
    for found in _causes(exc):
        if isinstance(found, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted: {found.verify_message}"
        if isinstance(found, ssl.SSLError):
            return f"TLS handshake failed: {found.reason or found}"
        if isinstance(found, socket.gaierror):
            return f"cannot resolve host: {found.strerror}"
        if isinstance(found, OSError) and found.errno:
            if found.errno == errno.ECONNREFUSED:
                return "connection refused"
            return os.strerror(found.errno).lower()
    return None


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and everything it wraps: causes, contexts and members of exception groups."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if any(current is s for s in seen) or len(seen) > 50:
            continue
        seen.append(current)
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        for nxt in (current.__cause__, current.__context__):
            if nxt is not None:
                todo.append(nxt)
    return seen
