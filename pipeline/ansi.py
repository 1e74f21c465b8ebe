"""Terminal colours in step logs, as safe HTML for the run page.

Tools colour their output with SGR escape sequences (``ESC [ 31 m``). ``to_html`` turns them
into ``<span>`` elements and escapes everything else, so a log can never inject markup: the
only tags in the answer are the ones written here, and the only attribute values are class
names from a fixed set or a ``#rrggbb`` colour computed from numbers. Other escape sequences
(cursor movement, window titles, hyperlinks) are dropped, and a carriage return keeps only
what was written after it, as a terminal shows a progress bar.

The 16 basic colours become classes (``a-f1`` ... ``a-f15``, ``a-b1`` ...), so the page's
stylesheet picks shades that read on a light and on a dark background; 256-colour and
true-colour sequences become an inline ``color:#rrggbb``.

Each line is one ``<span class="ln">`` (the filter box hides lines one by one); a colour that
spans lines is closed at each line's end and opened again on the next.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Callable
from typing import NamedTuple

# CSI sequences (ESC [ params final), OSC sequences (ESC ] ... BEL or ESC \), and two-byte
# escapes; the 8-bit CSI (0x9b) too.
_ESCAPE = re.compile(r"(?:\x1b\[|\x9b)([0-9;:?<=>]*)[ -/]*([@-~])"
                     r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
                     r"|\x1b[@-Z\\-_]")
# Left after the sequences are gone: every control character but tab and newline.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_CUBE = (0, 95, 135, 175, 215, 255)
_TOKEN = re.compile(r"\n|" + _ESCAPE.pattern)
# What makes a line more than text to escape: an escape, a carriage return, a control.
_SPECIAL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x9b]")


class Style(NamedTuple):
    """The SGR state that matters for display (a tuple: compared and hashed at C speed)."""

    fg: int | str | None = None  # 0-15 (a class), or "#rrggbb"
    bg: int | str | None = None
    bold: bool = False
    dim: bool = False
    italic: bool = False
    underline: bool = False


@functools.lru_cache(maxsize=256)
def _open_tag(style: Style) -> str:
    if style == _PLAIN:
        return ""
    classes = [name for name, on in (("a-bold", style.bold), ("a-dim", style.dim),
                                     ("a-it", style.italic), ("a-ul", style.underline)) if on]
    styles = []
    for prefix, prop, value in (("a-f", "color", style.fg),
                                ("a-b", "background-color", style.bg)):
        if isinstance(value, int):
            classes.append(f"{prefix}{value}")
        elif isinstance(value, str):
            styles.append(f"{prop}:{value}")
    attrs = f' class="{" ".join(classes)}"' if classes else ""
    if styles:
        attrs += f' style="{";".join(styles)}"'
    return f"<span{attrs}>"


_PLAIN = Style()


def _rgb(r: int, g: int, b: int) -> str:
    return f"#{max(0, min(r, 255)):02x}{max(0, min(g, 255)):02x}{max(0, min(b, 255)):02x}"


def _color_256(n: int) -> int | str | None:
    if not 0 <= n <= 255:
        return None
    if n < 16:
        return n
    if n < 232:
        n -= 16
        return _rgb(_CUBE[n // 36], _CUBE[n // 6 % 6], _CUBE[n % 6])
    level = 8 + (n - 232) * 10
    return _rgb(level, level, level)


def _extended(numbers: list[int]) -> int | str | None:
    """The colour of ``38``/``48``'s arguments: ``5;N`` or ``2;R;G;B``."""
    if len(numbers) >= 2 and numbers[0] == 5:
        return _color_256(numbers[1])
    if len(numbers) >= 4 and numbers[0] == 2:
        return _rgb(*numbers[1:4])
    return None


def _number(text: str) -> int:
    return int(text) if text.isdigit() else 0


@functools.lru_cache(maxsize=1024)
def _apply(style: Style, params: str) -> Style:
    """``style`` after one SGR sequence's parameters (``1;31``, ``38;5;208``, ``38:2::1:2:3``)."""
    groups = params.split(";") if params else ["0"]
    i = 0
    while i < len(groups):
        group = groups[i]
        i += 1
        if ":" in group:  # ITU T.416 form: the colour's arguments are this group's sub-fields
            fields = group.split(":")
            code = _number(fields[0])
            if code in (38, 48):
                args = fields[1:]
                if len(args) == 5 and args[0] == "2":  # 2:colour-space:R:G:B
                    args = [args[0], *args[2:]]
                color = _extended([_number(a) for a in args])
                style = _colored(style, code, color)
                continue
            group = fields[0]
        code = _number(group)
        if code in (38, 48):
            kind = _number(groups[i]) if i < len(groups) else 0
            take = 2 if kind == 5 else 4 if kind == 2 else 1
            color = _extended([_number(g) for g in groups[i:i + take]])
            i += take
            style = _colored(style, code, color)
        else:
            style = _BASIC.get(code, _keep)(style, code)
    return style


def _colored(style: Style, code: int, color: int | str | None) -> Style:
    if color is None:
        return style
    return style._replace(fg=color) if code == 38 else style._replace(bg=color)


def _keep(style: Style, code: int) -> Style:
    return style


def _fg(style: Style, code: int) -> Style:
    return style._replace(fg=code - 30 if code < 90 else code - 90 + 8)


def _bg(style: Style, code: int) -> Style:
    return style._replace(bg=code - 40 if code < 100 else code - 100 + 8)


_BASIC: dict[int, Callable[[Style, int], Style]] = {
    0: lambda s, c: _PLAIN,
    1: lambda s, c: s._replace(bold=True),
    2: lambda s, c: s._replace(dim=True),
    3: lambda s, c: s._replace(italic=True),
    4: lambda s, c: s._replace(underline=True),
    22: lambda s, c: s._replace(bold=False, dim=False),
    23: lambda s, c: s._replace(italic=False),
    24: lambda s, c: s._replace(underline=False),
    39: lambda s, c: s._replace(fg=None),
    49: lambda s, c: s._replace(bg=None),
    **{c: _fg for c in (*range(30, 38), *range(90, 98))},
    **{c: _bg for c in (*range(40, 48), *range(100, 108))},
}


def _overwritten(line: str) -> str:
    """What a terminal shows of a line with carriage returns: the last part written (with the
    colour changes of the parts it overwrote, which still hold)."""
    parts = line.split("\r")
    while len(parts) > 1 and not parts[-1]:
        parts.pop()
    earlier = "".join(found.group() for part in parts[:-1] for found in _ESCAPE.finditer(part))
    return earlier + parts[-1]


def strip(text: str) -> str:
    """``text`` without escape sequences or control characters (for filtering and search)."""
    return _CONTROL.sub("", _ESCAPE.sub("", text))


def lines_html(text: str, *, grep: str | None = None) -> tuple[list[str], int]:
    """``text`` as HTML lines (without their newline), and how many lines ``grep`` hid.

    With ``grep``, only the lines whose text (colours stripped) contains it, case-insensitive.
    The text is escaped whole first (no escape sequence holds ``&``, ``<`` or ``>``, so they
    survive it), then one substitution turns the sequences into tags: a coloured log costs
    about a microsecond per sequence.
    """
    if text.endswith("\n"):
        text = text[:-1]  # the newline that ends the last line starts no new one
    if not text:
        return [], 0
    if "\r" in text:
        text = "\n".join(_overwritten(line) for line in text.split("\n"))
    escaped = html.escape(text, quote=False)
    if _SPECIAL.search(text):
        style = _PLAIN

        def tag(found: re.Match[str]) -> str:
            nonlocal style
            if found.group() == "\n":
                return "\n" if style == _PLAIN else f"</span>\n{_open_tag(style)}"
            if found.group(2) != "m" or (found.group(1) or "").startswith(("?", "<", "=", ">")):
                return ""  # cursor movement, titles, links: nothing a page shows
            new = _apply(style, found.group(1) or "")
            if new == style:
                return ""
            closing = "" if style == _PLAIN else "</span>"
            style = new
            return closing + _open_tag(new)

        escaped = _CONTROL.sub("", _TOKEN.sub(tag, escaped))
        if style != _PLAIN:
            escaped += "</span>"
    lines = escaped.split("\n")
    if grep is None:
        return lines, 0
    needle = grep.casefold()
    kept = [line for line, plain in zip(lines, strip(text).split("\n"), strict=True)
            if needle in plain.casefold()]
    return kept, len(lines) - len(kept)


def to_html(text: str, *, grep: str | None = None) -> str:
    """``text`` as safe HTML: one ``<span class="ln">`` per line, colours as spans inside.

    Empty ``<span class="ln"></span>`` lines keep their height through CSS, not through the
    newline, so that hiding a line (the filter box) leaves no gap.
    """
    lines, _ = lines_html(text, grep=grep)
    return "".join(f'<span class="ln">{line}</span>' for line in lines)
