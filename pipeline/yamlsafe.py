"""YAML that cannot hurt us, with positions: bytes in, plain data and its marks out.

Job files come from users, and a daemon reads whatever lands in its directory, so reading one
must be safe against any bytes: no Python object is ever constructed, memory and time are
bounded, and every refusal is located. ``parse`` lets libyaml compose the nodes (which carry
line and column) and builds plain data from them itself, so that

* only the YAML core tags exist (``!!python/...`` is a located error, never a call);
* plain scalars follow the YAML 1.2 core schema (``on``, ``no``, ``yes`` stay strings, and
  ``0o17`` is octal), where PyYAML would use YAML 1.1's;
* numbers are what JSON can hold (no ``.inf``, no 4,000-digit integers);
* duplicate keys are errors, and ``<<`` merge keys work;
* alias expansion (``MAX_VALUES``) and nesting (``MAX_DEPTH``) are bounded.

Marks are not recorded per value: ``Document.where`` walks the nodes along a JSON path when
a message needs a position, which is rare next to building values.
"""

from __future__ import annotations

import math
import os
import re
import stat
import sys
from dataclasses import dataclass
from typing import Any, cast

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_VALUES = 50_000  # values constructed from one file, aliases expanded
MAX_DEPTH = 64  # nesting of mappings and lists

JsonPath = tuple[str | int, ...]
Mark = tuple[int, int]  # line and column, from 1

PLAIN = "!plain"  # what our resolver calls every untagged plain scalar; see _plain
CORE = "tag:yaml.org,2002:"
_ALLOWED_TAGS = {CORE + t for t in ("str", "int", "float", "bool", "null", "map", "seq")}


def _resolve(self: Any, kind: Any, value: Any, implicit: Any) -> str:
    # PyYAML resolves plain scalars with YAML 1.1 rules (`no` is False, `on` is True); mark
    # them instead, and _plain applies the YAML 1.2 core rules.
    if kind is ScalarNode:
        return PLAIN if implicit[0] else CORE + "str"
    return CORE + "seq" if kind is SequenceNode else CORE + "map"


class PyLoader(yaml.SafeLoader):
    """PyYAML's pure-Python composer, with our resolver."""

    resolve = _resolve


LOADER: type[Any] = PyLoader  # what ``parse`` uses: libyaml's composer when PyYAML has it
if yaml.__with_libyaml__:  # pragma: no branch - the C loader is 10x faster

    class _CLoader(yaml.CSafeLoader):
        resolve = _resolve

    LOADER = _CLoader

_INT = re.compile(r"[-+]?[0-9]+\Z")
_OCT = re.compile(r"0o[0-7]+\Z")
_HEX = re.compile(r"0x[0-9a-fA-F]+\Z")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?\Z")
_INF_NAN = re.compile(r"[-+]?\.(inf|Inf|INF)\Z|\.(nan|NaN|NAN)\Z")
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_BOOLS = {"true": True, "True": True, "TRUE": True,
          "false": False, "False": False, "FALSE": False}
_NUMBER_START = frozenset("0123456789+-.")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Characters YAML does not allow (besides tab, newline and carriage return it wants printable
# ones): find them first, since libyaml would stop with an offset that is hard to map back.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff\ufffe\uffff]")


class Refused(Exception):
    """The document cannot be read further (not YAML, alias bomb, recursion, nesting)."""

    def __init__(self, mark: Mark, message: str) -> None:
        super().__init__(message)
        self.mark = mark
        self.message = message


def show(value: Any) -> str:
    """A value built by ``parse`` as a message shows it: in YAML's words, long text cut."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return repr(shown)
    return repr(value)


def _mark(node: Node) -> Mark:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def _tag_name(tag: str) -> str:
    return "!!" + tag.removeprefix(CORE) if tag.startswith(CORE) else tag


def _bad_tag(tag: str, kind: str, fitting: str) -> str:
    if tag in _ALLOWED_TAGS:
        return f"tag {_tag_name(tag)} does not fit {kind} (use {fitting}, or no tag)"
    return (f"tag {_tag_name(tag)} is not allowed: only the YAML core tags (!!str !!int "
            "!!float !!bool !!null !!seq !!map) are, and no tag is needed")


def _pair(node: MappingNode, key: str, seen: set[int]) -> tuple[Node, Node] | None:
    """The (key node, value node) that gave ``key`` its value in a mapping: the first pair
    written with that key, else the first found through ``<<`` merges (as _Builder does)."""
    merges: list[Node] = []
    for key_node, value_node in node.value:
        if key_node.__class__ is ScalarNode:
            if key_node.value == "<<" and key_node.tag == PLAIN:
                merges.append(value_node)
            elif key_node.value == key:
                return key_node, value_node
    for merge in merges:
        for source in merge.value if merge.__class__ is SequenceNode else [merge]:
            if source.__class__ is MappingNode and id(source) not in seen:
                seen.add(id(source))
                found = _pair(source, key, seen)
                if found:
                    return found
    return None


@dataclass(frozen=True)
class Document:
    """A mapping read from YAML, and the nodes to find where each of its values was written.

    ``problems`` are the values that could not be built (a forbidden tag, a duplicate key, a
    number JSON cannot hold): each was built as null or left out, and the rest of the data is
    still there to be checked.
    """

    root: MappingNode
    data: dict[str, Any]
    problems: list[tuple[Mark, str]]

    def node(self, path: JsonPath, *, key: bool = False) -> Node | None:
        """The node at ``path`` (the key node of its last part if ``key``), or None."""
        node: Node = self.root
        for index, part in enumerate(path):
            if node.__class__ is SequenceNode:
                if not isinstance(part, int) or not 0 <= part < len(node.value):
                    return None
                node = node.value[part]
            elif node.__class__ is MappingNode:
                found = _pair(node, str(part), set())
                if found is None:
                    return None
                if key and index == len(path) - 1:
                    return found[0]
                node = found[1]
            else:
                return None
        return node

    def where(self, path: JsonPath, *, key: bool = False) -> Mark:
        """The mark of the node at ``path`` (of its key if ``key``), else of its nearest parent."""
        node = self.node(path, key=key) if path else self.root
        while node is None:
            path = path[:-1]
            node = self.node(path)
        return _mark(node)


_INTERNED_BELOW = 40  # characters


def _plain(value: str) -> Any:
    """A plain scalar by the YAML 1.2 core schema."""
    if not value or value in _NULLS:
        return None
    if value in _BOOLS:
        return _BOOLS[value]
    if value[0] in _NUMBER_START:
        if _INT.match(value):
            return int(value)
        if _FLOAT.match(value):
            return float(value)
        if _OCT.match(value):
            return int(value[2:], 8)
        if _HEX.match(value):
            return int(value[2:], 16)
    # Short words (`shell`, `true`, `forbid`, step ids) repeat across files: one copy each.
    return sys.intern(value) if len(value) < _INTERNED_BELOW else value


class _Builder:
    """Constructs plain data from a node graph. Written for speed: it runs on every node of
    every file, so the common case (an untagged plain scalar that cannot be a number) is
    handled inline, without a call."""

    def __init__(self) -> None:
        self.problems: list[tuple[Mark, str]] = []
        self.budget = MAX_VALUES
        self.active: set[int] = set()  # collection nodes being built: an alias to one recurses

    def problem(self, node: Node, message: str) -> None:
        self.problems.append((_mark(node), message))

    def spend(self, node: Node, values: int) -> None:
        """Count ``values`` more against MAX_VALUES; aliases make a small file build a lot."""
        self.budget -= values
        if self.budget < 0:
            raise Refused(_mark(node), f"more than {MAX_VALUES} values once aliases are "
                          "expanded (an alias bomb?); refusing to read further")

    def value(self, node: Node, depth: int) -> Any:
        if node.__class__ is ScalarNode:
            if node.tag == PLAIN:
                return self.number(node) if node.value[:1] in _NUMBER_START else _plain(
                    node.value)
            return self.scalar(node)
        self.spend(node, 1)
        if depth >= MAX_DEPTH:
            raise Refused(_mark(node), f"nested more than {MAX_DEPTH} levels deep")
        if id(node) in self.active:
            raise Refused(_mark(node), "recursive alias: this node contains itself")
        self.active.add(id(node))
        try:
            if node.__class__ is SequenceNode:
                return self.sequence(node, depth)
            return self.mapping(cast(MappingNode, node), depth)
        finally:
            self.active.discard(id(node))

    def number(self, node: ScalarNode) -> Any:
        """A plain scalar that may be a number, or None once a problem is reported: JSON has
        no infinities and we want no 4,000-digit integers (Python refuses to parse them)."""
        value: str = node.value
        try:
            result = _plain(value)
        except ValueError:
            result = math.inf
        if _INF_NAN.match(value) or (result.__class__ is float and not math.isfinite(result)):
            self.problem(node, f"{show(value)} is not a number JSON can hold (quote it for "
                         "a string)")
            return None
        return result

    def sequence(self, node: SequenceNode, depth: int) -> list[Any]:
        if node.tag != CORE + "seq":
            self.problem(node, _bad_tag(node.tag, "a list", "!!seq"))
        self.spend(node, len(node.value))
        return [_plain(item.value) if (item.__class__ is ScalarNode and item.tag == PLAIN
                                       and item.value[:1] not in _NUMBER_START)
                else self.value(item, depth + 1) for item in node.value]

    def scalar(self, node: ScalarNode) -> Any:
        """A scalar with an explicit tag (or quoted: then it is a !!str)."""
        value: str = node.value
        tag = node.tag
        if tag == CORE + "str":
            if not value.isascii() and _SURROGATE.search(value):
                # libyaml refuses "\ud800" escapes itself; the pure-Python parser does not.
                self.problem(node, "a lone surrogate escape (\\ud800-\\udfff) is not text")
                return None
            return value
        if tag not in _ALLOWED_TAGS or tag in (CORE + "map", CORE + "seq"):
            self.problem(node, _bad_tag(tag, "a single value", "!!str, !!int, !!float, "
                                        "!!bool or !!null"))
            return None
        if tag == CORE + "null" and value in _NULLS:
            return None
        if tag == CORE + "bool" and value in _BOOLS:
            return _BOOLS[value]
        if tag in (CORE + "int", CORE + "float") and value[:1] in _NUMBER_START:
            number = self.number(node)
            if number is None:  # reported
                return None
            if number.__class__ is int:
                return number if tag == CORE + "int" else float(number)
            if number.__class__ is float and tag == CORE + "float":
                return number
        self.problem(node, f"{value!r} is not a valid {_tag_name(tag)}")
        return None

    def mapping(self, node: MappingNode, depth: int) -> dict[str, Any]:
        if node.tag != CORE + "map":
            self.problem(node, _bad_tag(node.tag, "a mapping", "!!map"))
        self.spend(node, len(node.value))
        result: dict[str, Any] = {}
        merges: list[Node] = []
        for key_node, value_node in node.value:
            if key_node.__class__ is not ScalarNode:
                self.problem(key_node, "a mapping key must be a single value, not a mapping "
                             "or a list")
                continue
            # Interned: a thousand job files repeat the same thirty keys, and the daemon
            # keeps every file's tree (2–3 MiB of equal copies for 1,000 jobs).
            key: str = sys.intern(key_node.value)
            if key == "<<" and key_node.tag == PLAIN:
                merges.append(value_node)
            elif key in result:
                first = _pair(node, key, set())
                line = _mark(first[0])[0] if first else 0
                self.problem(key_node, f"duplicate key {key!r} (first at line {line})")
            elif (value_node.__class__ is ScalarNode and value_node.tag == PLAIN
                    and value_node.value[:1] not in _NUMBER_START):
                result[key] = _plain(value_node.value)
            else:
                result[key] = self.value(value_node, depth + 1)
        if merges:
            self.merge(result, merges, depth)
        return result

    def merge(self, result: dict[str, Any], merges: list[Node], depth: int) -> None:
        """``<<: *defaults``: keys of the merged mappings that ``result`` does not have yet.

        As in YAML 1.1's merge key: keys written in the mapping win over merged ones, and an
        earlier mapping in ``<<: [*a, *b]`` wins over a later one.
        """
        for merge in merges:
            for source in merge.value if merge.__class__ is SequenceNode else [merge]:
                if source.__class__ is not MappingNode:
                    self.problem(source, "a merge key << takes a mapping or a list of "
                                 "mappings (usually an alias such as *defaults)")
                    continue
                if id(source) in self.active or depth >= MAX_DEPTH:
                    raise Refused(_mark(source), "recursive merge: this mapping merges itself")
                self.active.add(id(source))
                try:
                    merged = self.mapping(source, depth + 1)
                finally:
                    self.active.discard(id(source))
                for key, value in merged.items():
                    result.setdefault(key, value)


def read_file(path: str | os.PathLike[str], limit: int) -> bytes:
    """At most ``limit + 1`` bytes of a regular file (one more than allowed, so that a caller
    can tell the file is too big); OSError, or ValueError for what is not a regular file."""
    # O_NONBLOCK: opening a FIFO that happens to be called x.yaml must not hang us.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        chunks = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _text(data: bytes) -> str:
    """The text of a job file; Refused, located, unless it is UTF-8 YAML may hold."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = exc.start
        line_start = data.rfind(b"\n", 0, start) + 1
        column = len(data[line_start:start].decode("utf-8", "replace")) + 1
        raise Refused((data.count(b"\n", 0, start) + 1, column),
                      f"not valid UTF-8 (byte 0x{data[start]:02x}); job files are UTF-8 "
                      "text") from None
    text = text.removeprefix("\ufeff")
    bad = _UNPRINTABLE.search(text)
    if bad:
        char, offset = bad.group(), bad.start()
        what = "a NUL byte" if char == "\0" else f"control character U+{ord(char):04X}"
        line_start = text.rfind("\n", 0, offset) + 1
        raise Refused((text.count("\n", 0, offset) + 1, offset - line_start + 1),
                      f"{what} is not allowed in a job file (is it binary?)")
    return text


def _yaml_error(exc: yaml.MarkedYAMLError, text: str) -> Refused:
    """libyaml's complaint, located, in our words."""
    mark = exc.problem_mark or exc.context_mark
    where = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    if isinstance(exc, yaml.composer.ComposerError) and "another document" in str(exc):
        return Refused(where, "a job file holds one YAML document; a second one starts here")
    message = f"invalid YAML: {exc.problem}"
    if mark is not None:
        lines = text.split("\n", mark.line + 1)
        if mark.line < len(lines) and lines[mark.line][mark.column:mark.column + 1] == "\t":
            message += "; YAML is indented with spaces, not tabs"
    if exc.context:
        context_mark = exc.context_mark
        message += f" ({exc.context}"
        if context_mark is not None and context_mark is not mark:
            message += f" at line {context_mark.line + 1}"
        message += ")"
    return Refused(where, message)


def parse(data: bytes, loader_class: type[Any] = LOADER) -> Document:
    """The bytes of a job file as a ``Document``; raises ``Refused`` when nothing sensible can
    be built from them (whatever they are, no other exception escapes).

    ``loader_class`` is the composer: ``LOADER``, or ``PyLoader`` to test the fallback.
    """
    text = _text(data)
    loader = loader_class(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(exc, text) from None
    except yaml.YAMLError as exc:
        raise Refused((1, 1), f"invalid YAML: {exc}") from None
    except RecursionError:  # only the pure-Python composer recurses; libyaml caps depth
        raise Refused((1, 1), f"nested more than {MAX_DEPTH} levels deep") from None
    finally:
        loader.dispose()
    if root is None:
        raise Refused((1, 1), "the file is empty: a job needs at least `steps:`")
    if not isinstance(root, MappingNode):
        raise Refused(_mark(root), "a job file is a mapping of keys such as name, schedule "
                      "and steps")
    builder = _Builder()
    return Document(root, builder.value(root, 0), builder.problems)
