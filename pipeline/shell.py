"""Quoting for a POSIX shell script: which quotes a place in a script stands in, and a value
quoted for it (``expr.render_script``)."""

from __future__ import annotations

import re
import shlex


def scan(text: str, state: str, prev: str) -> tuple[str, str]:
    """Carry a POSIX shell's quoting state across ``text``: ``""`` (unquoted), ``"'"``,
    ``'"'`` or ``"#"`` (a comment, to the end of the line).

    Rough on purpose: quotes, backslashes and comments (so an apostrophe in a comment does not
    open a quote); not heredocs or ``$'...'``. ``prev`` is the character before ``text``.
    """
    i = 0
    while i < len(text):
        c = text[i]
        if state == "#":
            if c == "\n":
                state = ""
        elif state == "'":
            if c == "'":
                state = ""
        elif state == '"':
            if c == "\\":
                i += 1
            elif c == '"':
                state = ""
        elif c == "\\":
            i += 1
        elif c in "'\"":
            state = c
        elif c == "#" and (prev == "" or prev.isspace() or prev in ";&|()"):
            state = "#"
        prev = c
        i += 1
    return state, prev


def quote(value: str, state: str) -> str:
    if state == "'":
        return value.replace("'", "'\\''")
    if state == '"':
        return re.sub(r'([\\"$`])', r"\\\1", value)
    return shlex.quote(value)
