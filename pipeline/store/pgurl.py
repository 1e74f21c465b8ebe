"""A PostgreSQL URL's password: where it is in the URL, masked in what is shown, and scrubbed
from the driver's messages.

The password is found by hand, before anything parses the URL: libpq quotes a URL it cannot
parse whole, password included, and a password holding what should have been percent-encoded
cuts the URL's authority short where a parser would look for it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import unquote

_QUERY_PASSWORD = re.compile(r"([?&]password=)([^&#]*)", re.IGNORECASE)
# libpq's `key=value` form: a value runs to the next blank, or is quoted.
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)",
                               re.IGNORECASE)
# What RFC 3986 allows in a URL's user information (past the user name's colon).
USERINFO = re.compile(r"(?:[A-Za-z0-9._~!$&'()*+,;=:-]|%[0-9A-Fa-f]{2})*")


def password_span(url: str) -> tuple[int, int] | None:
    """Where the password of ``scheme://user:password@host...`` is in ``url``, also when it
    holds characters that should have been percent-encoded (``/ ? # @``), which cut the
    authority short; None when the URL names no password."""
    begin = url.find("://") + 3
    if begin < 3:
        return None
    authority = re.match(r"[^/?#]*", url[begin:])
    assert authority is not None
    auth = authority.group(0)
    if "@" in auth:  # the last @ of the authority ends the user information
        userinfo = auth[:auth.rindex("@")]
        colon = userinfo.find(":")
        return None if colon < 0 else (begin + colon + 1, begin + len(userinfo))
    colon = auth.find(":")
    if colon < 0 or auth.startswith("[") or auth[colon + 1:].isdigit():
        return None  # no user information: a host, or a host and its port
    # `user:pa/ss@host/db`: what follows the colon is no port, so it is a password cut
    # short; it ends at the last @ before the host part that follows its first @.
    first = url.find("@", begin + len(auth))
    if first < 0:
        return None
    host_end = re.search(r"[/?#]|$", url[first + 1:])
    assert host_end is not None
    return begin + colon + 1, url.rindex("@", 0, first + 1 + host_end.start())


def mask_url(url: str) -> str:
    """``url`` with its password (in the user part, the query, or a ``password=`` of libpq's
    ``key=value`` form) replaced by ``***``.

    Works on text that does not parse as a URL too (a password that should have been
    percent-encoded, a malformed host): what libpq might take for the password is masked."""
    if "://" not in url:
        return _KEYWORD_PASSWORD.sub(r"\1***", url)
    span = password_span(url)
    masked = url if span is None else f"{url[:span[0]]}***{url[span[1]:]}"
    return _QUERY_PASSWORD.sub(r"\1***", masked)


def passwords_in(url: str) -> list[str]:
    """The password of ``url`` as written and as decoded, for scrubbing messages."""
    found: list[str] = []
    span = password_span(url)
    if span is not None:
        raw = url[span[0]:span[1]]
        found += [raw, unquote(raw)]
    for given in (_QUERY_PASSWORD if "://" in url else _KEYWORD_PASSWORD).finditer(url):
        value = given.group(2).strip("'")
        found += [value, unquote(value)]
    return sorted({p for p in found if p}, key=len, reverse=True)


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.strip().splitlines() if line.strip())


def scrub(exc: BaseException, passwords: Sequence[str]) -> str:
    """``exc``'s message on one line, with each of ``passwords`` masked."""
    text = _one_line(str(exc)) or type(exc).__name__
    for password in passwords:
        text = text.replace(password, "***")
    return text
