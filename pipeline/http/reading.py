"""Reading a request: its body (bounded, JSON), its path parameters (matched against their
patterns before anything else sees them) and its query parameters (typed, bounded); each
refusal is an ``ApiError`` with a 4xx status.
"""

from __future__ import annotations

import json
import math
import re
from contextlib import aclosing
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.requests import Request

from pipeline.http.answers import (
    ApiError,
)
from pipeline.http.guard import (
    MAX_BODY,
)

if TYPE_CHECKING:
    pass


T = TypeVar("T")


# -- reading a request -------------------------------------------------------------------------

async def body_bytes(request: Request) -> bytes:
    """The whole body, refused with 413 past ``MAX_BODY`` even without a Content-Length."""
    chunks: list[bytes] = []
    size = 0
    async with aclosing(request.stream()) as stream:
        async for chunk in stream:
            size += len(chunk)
            if size > MAX_BODY:
                raise ApiError(413, "too_large", f"request body over {MAX_BODY} bytes")
            chunks.append(chunk)
    return b"".join(chunks)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def read_json(request: Request) -> Any:
    """The JSON body, or None when there is none. Malformed JSON is a 400."""
    data = await body_bytes(request)
    if not data.strip():
        return None
    try:
        return json.loads(data, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "bad_json", f"the body is not valid JSON: {exc}"[:300]) from None


def match(value: str, pattern: re.Pattern[str], what: str) -> str:
    if not pattern.fullmatch(value):
        raise ApiError(404, "not_found", f"no {what} {value[:80]!r}: {what}s match "
                                         f"{pattern.pattern}")
    return value


def integer(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ApiError(400, "bad_query", f"{name} must be an integer from {low} to {high}")
    return value


def flag(request: Request, name: str) -> bool:
    text = request.query_params.get(name, "").lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise ApiError(400, "bad_query", f"{name} must be 1 or 0 (true or false)")


def local_target(value: str | None) -> str:
    """Where to go after signing in: a path on this site, never another site."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def one_of(kind: type[T], value: str | None, name: str) -> T | None:
    if not value:
        return None
    try:
        return kind(value)  # type: ignore[call-arg]
    except ValueError:
        choices = ", ".join(str(v) for v in kind)  # type: ignore[attr-defined]
        raise ApiError(400, "bad_query", f"{name} must be one of {choices}") from None


def time_param(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is None or moment.utcoffset() is None:
        raise ApiError(400, "bad_query", f"{name} must be an ISO 8601 time with an offset, "
                                         "like 2026-01-02T03:04:05+00:00")
    return moment


def number(value: str | None, name: str, low: float, high: float) -> float:
    if not value:
        return low
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not low <= number <= high:
        raise ApiError(400, "bad_query", f"{name} must be a number from {low:g} to {high:g}")
    return number


