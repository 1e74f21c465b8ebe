"""Terminal colours as safe HTML: a table of sequences, and logs that try to inject markup."""

from __future__ import annotations

import html
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.ansi import lines_html, strip, to_html

ESC = "\x1b"


@pytest.mark.parametrize(("text", "lines"), [
    ("plain\n", ["plain"]),
    ("a < b && c > d\n", ["a &lt; b &amp;&amp; c &gt; d"]),
    (f"{ESC}[31mred{ESC}[0m done\n", ['<span class="a-f1">red</span> done']),
    (f"{ESC}[1;32mok{ESC}[m\n", ['<span class="a-bold a-f2">ok</span>']),
    (f"{ESC}[91mbright{ESC}[39m\n", ['<span class="a-f9">bright</span>']),
    (f"{ESC}[44;97mon blue{ESC}[0m\n", ['<span class="a-f15 a-b4">on blue</span>']),
    (f"{ESC}[2;3;4mx{ESC}[22;23;24my\n",
     ['<span class="a-dim a-it a-ul">x</span>y']),
    (f"{ESC}[38;5;208mo{ESC}[0m\n", ['<span style="color:#ff8700">o</span>']),
    (f"{ESC}[38;5;244mg{ESC}[0m\n", ['<span style="color:#808080">g</span>']),
    (f"{ESC}[38;2;1;2;3mt{ESC}[48;2;255;0;0mu{ESC}[0m\n",
     ['<span style="color:#010203">t</span>'
      '<span style="color:#010203;background-color:#ff0000">u</span>']),
    (f"{ESC}[38:2::10:20:30mc{ESC}[0m\n", ['<span style="color:#0a141e">c</span>']),
    # A colour that spans lines is closed and opened again on each.
    (f"{ESC}[33mone\ntwo{ESC}[0m\nthree\n",
     ['<span class="a-f3">one</span>', '<span class="a-f3">two</span>', "three"]),
    # What is not colour is dropped: cursor moves, erasing, titles, hyperlinks, bells.
    (f"{ESC}[2K{ESC}[1Aup{ESC}]0;title\x07 {ESC}]8;;http://x{ESC}\\link{ESC}]8;;{ESC}\\\x07\n",
     ["up link"]),
    # A carriage return overwrites the line, as a terminal shows a progress bar.
    ("10%\r50%\r100%\r\ndone\n", ["100%", "done"]),
    ("", []),
    ("no newline at the end", ["no newline at the end"]),
    ("\n\n", ["", ""]),
    ("tab\tkept, nul\x00 and bell\x07 dropped", ["tab\tkept, nul and bell dropped"]),
])
def test_sequences(text: str, lines: list[str]) -> None:
    assert lines_html(text) == (lines, 0)


def test_one_span_per_line() -> None:
    assert to_html("a\nb\n") == '<span class="ln">a</span><span class="ln">b</span>'


def test_grep_keeps_matching_lines_by_their_text() -> None:
    text = f"error: one\n{ESC}[31mERROR{ESC}[0m: two\nfine\nerr{ESC}[1mor{ESC}[0m: three\n"
    kept, hidden = lines_html(text, grep="Error")
    assert hidden == 1
    assert [strip(html.unescape(re.sub("<[^>]+>", "", k))) for k in kept] == [
        "error: one", "ERROR: two", "error: three"]


def test_a_log_cannot_inject_markup() -> None:
    attack = (f'{ESC}[31m<script>alert(1)</script>{ESC}[38;5;1" onmouseover="x"m'
              f'<img src=x onerror=alert(2)>{ESC}[38;2;1;2;3;"><b>m\n')
    out = to_html(attack)
    assert "<script" not in out and "<img" not in out and "<b>" not in out
    assert "&lt;script&gt;" in out


@given(st.text(alphabet=st.sampled_from(["a", "<", ">", "&", '"', "\n", "\r", ESC, "[", "]",
                                         ";", ":", "m", "3", "8", "5", "2", "1", "\x07", "\\",
                                         "\x9b", "K"]), max_size=80))
def test_any_text_gives_only_our_tags(text: str) -> None:
    out = to_html(text)
    # Every tag is one of ours, and what is left is the text, escaped.
    tags = re.findall(r"<[^>]*>", out)
    assert all(re.fullmatch(r'</span>|<span class="[a-z0-9 -]+">|<span( class="[a-z0-9 -]+")?'
                            r'( style="[a-z-]+:#[0-9a-f]{6}(;[a-z-]+:#[0-9a-f]{6})?")?>', tag)
               for tag in tags), tags
    assert out.count("<span") == out.count("</span>")
    assert ESC not in out and "\r" not in out
