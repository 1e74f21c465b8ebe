import copy
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.redact import MIN_LENGTH, Redactor, StreamRedactor


def test_masks_every_occurrence() -> None:
    r = Redactor(["hunter22"])
    assert r.text("pw=hunter22, again hunter22.") == "pw=***, again ***."


def test_empty_and_short_values_are_not_masked() -> None:
    assert MIN_LENGTH == 3
    r = Redactor(["", "a", "no"])
    assert not r
    assert r.text("a no banana") == "a no banana"
    assert Redactor(["abc"])


def test_nothing_to_mask_is_false_and_a_no_op() -> None:
    r = Redactor([])
    assert not r
    assert r.text("x") == "x"
    assert r.bytes(b"x") == b"x"
    assert r.value({"a": ("b",)}) == {"a": ["b"]}


def test_overlapping_secrets_are_masked_whole() -> None:
    r = Redactor(["abcd", "cdef"])
    assert r.text("xabcdefx") == "x***x"
    assert Redactor(["pass", "password"]).text("password!") == "***!"
    assert Redactor(["abab"]).text("ababababab") == "***"


def test_each_line_of_a_multiline_secret_is_masked() -> None:
    key = "-----BEGIN KEY-----\r\nMIIEvQIBADAN\r\nxy\n-----END KEY-----"
    r = Redactor([key])
    assert r.text(key) == "***"
    assert r.text("line: MIIEvQIBADAN") == "line: ***"
    assert r.text("xy stays: too short") == "xy stays: too short"


def test_bytes_mask_the_utf8_encoding() -> None:
    r = Redactor(["pässwörd"])
    assert r.bytes("pw=pässwörd\n".encode()) == b"pw=***\n"
    assert r.text("pässwörd") == "***"


def test_value_is_deep_and_plain() -> None:
    r = Redactor(["hunter22"])
    data = MappingProxyType({"hunter22": ("x hunter22", 3, None, {"b": [b"hunter22"]})})
    assert r.value(data) == {"hunter22": ["x ***", 3, None, {"b": [b"***"]}]}


def test_stream_passes_through_without_secrets() -> None:
    s = StreamRedactor(Redactor([]))
    assert s.feed(b"abc") == b"abc"
    assert s.flush() == b""


def test_stream_holds_back_only_a_possible_start_of_a_secret() -> None:
    s = StreamRedactor(Redactor(["password"]))
    assert s.feed(b"hello world\n") == b"hello world\n"
    assert s.feed(b"my pass") == b"my "
    assert s.feed(b"word!") == b"***!"
    assert s.feed(b"passwor") == b""  # 7 == maxlen - 1
    assert s.feed(b"x") == b"passworx"
    assert s.feed(b"pa") == b""
    assert s.flush() == b"pa"


def test_stream_masks_a_secret_split_inside_a_character() -> None:
    r = Redactor(["pässwörd"])
    data = "<pässwörd>".encode()
    s = StreamRedactor(r)
    out = b"".join(s.feed(data[i:i + 1]) for i in range(len(data))) + s.flush()
    assert out == b"<***>"


# A small alphabet makes overlaps, repeats and near misses common; no "*", so a mask can never
# spell a secret.
ALPHABET = "abcé\n"
secrets_st = st.lists(st.text(alphabet=ALPHABET, min_size=1, max_size=8), max_size=4)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[str], bytes, list[int]]:
    secrets = draw(secrets_st)
    pieces = draw(st.lists(
        st.one_of(st.text(alphabet=ALPHABET + "xyz", max_size=6),
                  st.sampled_from(secrets) if secrets else st.just("")),
        max_size=12))
    data = "".join(pieces).encode()
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=10)))
    return secrets, data, cuts


def masked_values(secrets: list[str]) -> list[bytes]:
    values = {line for s in secrets for line in (s, *s.splitlines())}
    return [v.encode() for v in values if len(v) >= MIN_LENGTH]


@pytest.mark.slow
@settings(max_examples=500, deadline=None)
@given(streams())
def test_stream_equals_whole_and_never_leaks(case: tuple[list[str], bytes, list[int]]) -> None:
    secrets, data, cuts = case
    r = Redactor(secrets)
    whole = r.bytes(data)
    s = StreamRedactor(r)
    out = b""
    for start, stop in zip([0, *cuts], [*cuts, len(data)], strict=True):
        out += s.feed(data[start:stop])
        # What came out so far, plus what a flush would give, is the masked prefix.
        assert out + copy.deepcopy(s).flush() == r.bytes(data[:stop])
    out += s.flush()
    assert out == whole
    for secret in masked_values(secrets):
        assert secret not in out


@settings(max_examples=300, deadline=None)
@given(secrets_st, st.text(alphabet=ALPHABET + "xyz", max_size=60))
def test_text_never_leaks(secrets: list[str], text: str) -> None:
    masked = Redactor(secrets).text(text)
    for secret in masked_values(secrets):
        assert secret.decode() not in masked
    assert Redactor(secrets).bytes(text.encode()) == masked.encode()
