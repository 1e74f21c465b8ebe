"""Masking secret values as ``***`` before text reaches a log, the state or an API answer.

What is masked:

* every secret value of at least ``MIN_LENGTH`` (3) characters. Shorter values are left
  alone: a one- or two-character "secret" protects nothing, and masking every ``a`` or ``no``
  would garble every log. (GitHub Actions masks any non-empty value; we choose readable logs.)
* each line of a multi-line value on its own as well (a PEM key printed line by line), under
  the same length rule.
* exact occurrences only: the text, or its UTF-8 bytes in ``bytes``. An encoded form (base64,
  URL- or JSON-escaped) is not recognised, so mask data *before* encoding it (``value`` before
  ``json.dumps``).

Every maximal run of text covered by occurrences, overlapping or adjacent, becomes one
``***``: with secrets ``abcd`` and ``cdef``, ``xabcdefx`` is ``x***x``, so no part of either
leaks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, AnyStr

__all__ = ["MASK", "MIN_LENGTH", "Redactor", "StreamRedactor"]

MASK = "***"
MIN_LENGTH = 3


def _text_pattern(values: Iterable[str]) -> re.Pattern[str] | None:
    # Longest first: at a given position the regex takes the first alternative that matches,
    # which is then the longest secret starting there.
    ordered = sorted(values, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, ordered))) if ordered else None


def _bytes_pattern(values: Iterable[bytes]) -> re.Pattern[bytes] | None:
    ordered = sorted(values, key=len, reverse=True)  # by length in bytes, not characters
    return re.compile(b"|".join(map(re.escape, ordered))) if ordered else None


def _runs(pattern: re.Pattern[AnyStr], data: AnyStr, start: int = 0) -> Iterator[tuple[int, int]]:
    """The maximal runs ``(begin, end)`` of ``data[start:]`` covered by secret occurrences.

    Each search finds the leftmost occurrence and, there, the longest; searching again from the
    next character finds occurrences that overlap it.
    """
    run: tuple[int, int] | None = None
    pos = start
    while (m := pattern.search(data, pos)) is not None:
        begin, end = m.span()
        if run is not None and begin <= run[1]:
            run = (run[0], max(run[1], end))
        else:
            if run is not None:
                yield run
            run = (begin, end)
        pos = begin + 1
    if run is not None:
        yield run


def _mask(pattern: re.Pattern[AnyStr] | None, data: AnyStr, mask: AnyStr) -> AnyStr:
    if pattern is None or pattern.search(data) is None:
        return data
    out = []
    pos = 0
    for begin, end in _runs(pattern, data):
        out.append(data[pos:begin])
        out.append(mask)
        pos = end
    out.append(data[pos:])
    return data[:0].join(out)


class Redactor:
    """Masks the given secret values in text, bytes and JSON-like data.

    False when there is nothing to mask, so callers can skip the work::

        redactor = Redactor(secrets.values())
        line = redactor.text(line) if redactor else line
    """

    def __init__(self, values: Iterable[str]) -> None:
        masked: set[str] = set()
        for value in values:
            for candidate in (value, *value.splitlines()):
                candidate = candidate.rstrip("\r")
                if len(candidate) >= MIN_LENGTH:
                    masked.add(candidate)
        self._encoded = tuple(sorted({v.encode() for v in masked}, key=len, reverse=True))
        self._text = _text_pattern(masked)
        self._bytes = _bytes_pattern(self._encoded)
        self.maxlen = len(self._encoded[0]) if self._encoded else 0  # of a secret, in bytes

    def __bool__(self) -> bool:
        return self._text is not None

    def text(self, s: str) -> str:
        """``s`` with every secret occurrence replaced by ``***``."""
        return _mask(self._text, s, MASK)

    def bytes(self, b: bytes) -> bytes:
        """``b`` with every occurrence of a secret's UTF-8 encoding replaced by ``***``."""
        return _mask(self._bytes, b, MASK.encode())

    def value(self, obj: Any) -> Any:
        """``obj`` with every string (and bytes) inside masked, deeply.

        Mappings become dicts, lists and tuples become lists; keys are kept as they are.
        """
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, bytes):
            return self.bytes(obj)
        if isinstance(obj, Mapping):
            return {k: self.value(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self.value(v) for v in obj]
        return obj


class StreamRedactor:
    """Masks a byte stream that arrives in chunks, as ``Redactor.bytes`` would mask the whole.

    ``feed`` returns what is safe to write now. It holds back only trailing bytes that could
    be the start of a secret split across chunks (the longest end of the data that begins some
    secret: at most ``maxlen - 1`` bytes, usually none, so a followed log does not lag);
    ``flush`` returns the rest at the end of the stream. The concatenated output equals
    ``redactor.bytes(whole stream)``.
    """

    def __init__(self, redactor: Redactor) -> None:
        self._pattern = redactor._bytes
        self._secrets = redactor._encoded
        self._context = max(redactor.maxlen - 1, 0)
        self._buffer = b""  # received bytes, from `_base` on
        self._base = 0  # absolute offset of _buffer[0]
        self._emitted = 0  # absolute offset up to which output has been decided
        self._in_run = False  # the last thing emitted is a *** whose run ends at _emitted

    def feed(self, chunk: bytes) -> bytes:
        """The part of the stream so far that can be written now, masked."""
        if self._pattern is None:
            return chunk
        self._buffer += chunk
        return self._advance(final=False)

    def flush(self) -> bytes:
        """Everything held back, masked: call once at the end of the stream."""
        if self._pattern is None:
            return b""
        out = self._advance(final=True)
        self._base += len(self._buffer)
        self._emitted = self._base
        self._buffer = b""
        self._in_run = False
        return out

    def _unfinished(self) -> int:
        """How many bytes at the end of the buffer could begin a secret (a proper prefix)."""
        longest = 0
        buffer = self._buffer
        for secret in self._secrets:
            i = buffer.find(secret[:1], max(len(buffer) - len(secret) + 1, 0))
            while i != -1 and len(buffer) - i > longest:
                if secret.startswith(buffer[i:]):
                    longest = len(buffer) - i
                    break
                i = buffer.find(secret[:1], i + 1)
        return longest

    def _advance(self, *, final: bool) -> bytes:
        assert self._pattern is not None
        end = self._base + len(self._buffer)
        # Every occurrence starting before `limit` lies wholly in what we have, so the bytes
        # before it are decided: no later chunk can complete a secret that covers them.
        limit = end if final else end - self._unfinished()
        out: list[bytes] = []
        # Runs that end before _emitted were handled already; search from where one that
        # still matters could start.
        search_from = max(self._emitted - self._context, self._base) - self._base
        for begin, stop in _runs(self._pattern, self._buffer, search_from):
            begin += self._base
            stop += self._base
            if stop < self._emitted or (stop == self._emitted and not self._in_run):
                continue
            if begin >= limit:
                break
            if begin > self._emitted:
                out.append(self._buffer[self._emitted - self._base:begin - self._base])
                self._in_run = False
            if not (self._in_run and begin <= self._emitted):
                out.append(MASK.encode())
            self._emitted = max(self._emitted, stop)
            self._in_run = True
        if limit > self._emitted:
            out.append(self._buffer[self._emitted - self._base:limit - self._base])
            self._emitted = limit
            self._in_run = False
        keep_from = max(self._emitted - self._context, self._base)
        self._buffer = self._buffer[keep_from - self._base:]
        self._base = keep_from
        return b"".join(out)
