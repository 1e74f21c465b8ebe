"""Job files in, frozen ``Job`` objects out: safe YAML, JSON Schema, then semantic checks.

A file goes through four stages. Each reports located ``Problem``s (``FILE:LINE:COL``) and
never lets another exception out, whatever the bytes:

1. bytes: at most ``MAX_BYTES``, UTF-8, no control characters;
2. YAML: libyaml composes nodes (which carry marks); we construct plain data from them
   ourselves, so that only the YAML core tags exist (no Python object is ever constructed),
   plain scalars follow YAML 1.2 core rules (``on``, ``no``, ``yes`` stay strings), duplicate
   keys are errors, ``<<`` merge keys work, and alias expansion and nesting are bounded;
3. JSON Schema: jsonschema-rs answers "valid?" in microseconds; only for an invalid document
   does Python ``jsonschema`` run, to explain every error at the node it is about;
4. semantic checks the schema cannot express: needs and cycles, cron, zones, durations,
   expressions, parameter defaults.

Only a document that passed all of them becomes a ``Job``.
"""

from __future__ import annotations

import copy
import functools
import gc
import hashlib
import json
import math
import os
import re
import shlex
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast
from zoneinfo import ZoneInfo

import jsonschema_rs
import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

import pipeline
from pipeline import dag, expr, triggers
from pipeline.errors import JobInvalid, ParamError, Problem

if TYPE_CHECKING:
    # Python jsonschema explains invalid documents; valid ones never need it, so it is
    # imported on first use (it is a fifth of the start-up time of `pipeline validate`).
    import jsonschema

from pipeline.model import (
    EMPTY,
    JOB_NAME,
    Backoff,
    Catchup,
    CircuitBreaker,
    Concurrency,
    History,
    Job,
    Param,
    ParamType,
    Policy,
    RetryPolicy,
    Schedule,
    ScheduleKind,
    Secret,
    Step,
    StepKind,
)

MAX_BYTES = 1 << 20  # a job file is a page or two; anything near this is a mistake or an attack
MAX_VALUES = 50_000  # values constructed from one file, aliases expanded
MAX_DEPTH = 64  # nesting of mappings and lists
MAX_DURATION = 100 * 365.25 * 86400.0  # longer is a typo, and overflows datetime arithmetic

# The patterns the schema uses, so that messages can say in words what a pattern means.
DURATION_PATTERN = r"^(([0-9]+(\.[0-9]+)?(ms|s|m|h|d|w))+|[0-9]+(\.[0-9]+)?)$"
EXPRESSION_PATTERN = r"^\s*\$\{\{.*\}\}\s*$"
AT_PATTERN = (r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]+)?)?"
              r"([Zz]|[+-][0-9]{2}(:?[0-9]{2})?)?)?$")
PATTERN_WORDS = {
    JOB_NAME.pattern: "a valid job name (a letter or digit, then letters, digits, '_', '.' "
                      "or '-'; at most 64 characters)",
    r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$": "a valid step id (a letter or '_', then letters, "
                                       "digits, '_' or '-'; at most 64 characters)",
    r"^[A-Za-z_][A-Za-z0-9_]{0,63}$": "a valid parameter name (a letter or '_', then "
                                      "letters, digits or '_')",
    r"^[A-Za-z_][A-Za-z0-9_]*$": "a valid environment variable name (letters, digits and "
                                 "'_', not starting with a digit)",
    DURATION_PATTERN: "a duration such as 30s, 5m, 1h30m, 2d or 250ms, or a number of seconds",
    EXPRESSION_PATTERN: "a ${{ }} expression",
    AT_PATTERN: "an ISO 8601 time such as 2026-12-01T09:00:00+01:00",
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"
    r"(\.[A-Za-z_][A-Za-z0-9_]*)*$": "a callable written \"package.module:function\"",
    r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$": "a valid HTTP header name",
    r"^[Hh][Tt][Tt][Pp][Ss]?://": "an http:// or https:// URL",
}
TITLE_WORDS = {
    "duration": PATTERN_WORDS[DURATION_PATTERN],
    "expression": PATTERN_WORDS[EXPRESSION_PATTERN],
}

JsonPath = tuple[str | int, ...]
Mark = tuple[int, int]


# -- durations ---------------------------------------------------------------------------

_DURATION = re.compile(DURATION_PATTERN)
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(value: str | int | float) -> float:
    """Seconds in ``30s``, ``5m``, ``1h30m``, ``2d``, ``250ms`` or a number of seconds.

    Raises ValueError with a message for anything else, negative numbers included.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{value!r} is not {PATTERN_WORDS[DURATION_PATTERN]}")
    if isinstance(value, str):
        return _duration_text(value)
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    return _bounded(seconds, value)


def _bounded(seconds: float, value: object) -> float:
    if not 0 <= seconds <= MAX_DURATION:  # also refuses NaN
        raise ValueError(f"{value!r} is not a duration: it must be between 0 seconds and "
                         "100 years")
    return seconds


@functools.lru_cache(maxsize=1024)  # the same few durations recur in every file
def _duration_text(value: str) -> float:
    text = value.strip()
    if not _DURATION.match(text):
        raise ValueError(f"{value!r} is not {PATTERN_WORDS[DURATION_PATTERN]}")
    if text[-1].isdigit():
        return _bounded(float(text), value)
    return _bounded(sum(float(n) * _UNIT[u] for n, u in _DURATION_PART.findall(text)), value)


# -- finding job files -------------------------------------------------------------------


def _ignored(name: str) -> bool:
    return (name.startswith((".", "#")) or name.endswith(("~", ".swp", ".tmp", "#")))


def find_job_files(root: Path) -> list[Path]:
    """Every ``*.yaml``/``*.yml`` under ``root``, sorted; ``root`` itself if it is a file.

    Hidden files and directories and editor leftovers (``.*``, ``*~``, ``*.swp``, ``*.tmp``,
    ``#*#``) are skipped; so is anything that is not a regular file (a FIFO would block).
    """
    if not root.is_dir():
        return [root] if root.exists() else []
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if _ignored(name) or not name.endswith((".yaml", ".yml")):
                continue
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                found.append(path)
    return sorted(map(Path, found))


# -- schemas -----------------------------------------------------------------------------


def schema_dir() -> Path:
    """Where the JSON Schemas are: inside the installed package, else the checkout's."""
    inside = Path(pipeline.__file__).parent / "schemas"
    if (inside / "job.schema.json").is_file():
        return inside
    return Path(pipeline.__file__).parent.parent / "schemas"


@functools.cache
def _schema_texts() -> tuple[str, dict[str, str]]:
    where = schema_dir()
    runners = {p.name.removesuffix(".schema.json"): p.read_text(encoding="utf-8")
               for p in sorted((where / "runners").glob("*.schema.json"))}
    return (where / "job.schema.json").read_text(encoding="utf-8"), runners


def builtin_runner_schemas() -> dict[str, dict[str, Any]]:
    """The ``with`` schemas of the built-in runners, by runner name (a fresh copy each call)."""
    return {name: json.loads(text) for name, text in _schema_texts()[1].items()}


def _pointer(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


def job_schema(runner_schemas: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The job schema with each runner's ``with`` schema composed in (standalone-valid).

    Each runner's schema goes into ``$defs`` as ``runner-NAME``, selected by an ``if``/``then``
    on ``uses``, and ``uses`` accepts exactly the given runner names. ``None`` means the
    built-in runners: the result is then equal to the committed ``job.schema.json``.
    """
    schema: dict[str, Any] = json.loads(_schema_texts()[0])
    runners = builtin_runner_schemas() if runner_schemas is None else runner_schemas
    defs: dict[str, Any] = {k: v for k, v in schema["$defs"].items()
                            if not k.startswith("runner-")}
    branches = []
    for name in sorted(runners):
        embedded = copy.deepcopy(dict(runners[name]))
        # An embedded resource needs its own $id so that its "#/$defs/..." refer to itself.
        embedded.setdefault("$id", f"urn:pipeline:runner:{name}")
        defs[f"runner-{name}"] = embedded
        then: dict[str, Any] = {"properties": {"with": {
            "$ref": f"#/$defs/runner-{_pointer(name)}",
            "description": embedded.get("description", f"The arguments of {name}.")}}}
        if embedded.get("required"):
            then["required"] = ["with"]
        branches.append({"if": {"properties": {"uses": {"const": name}}, "required": ["uses"]},
                         "then": then})
    step = defs["step"]
    step["properties"]["uses"]["enum"] = sorted(runners)
    step["allOf"] = branches
    schema["$defs"] = defs
    return schema


@dataclass
class _Validators:
    """The compiled schema for one set of runners; built once, used for every file."""

    schema: dict[str, Any]
    fast: Any  # jsonschema_rs validator, or None if it could not compile the schema
    _slow: jsonschema.Draft202012Validator | None = None

    @property
    def slow(self) -> jsonschema.Draft202012Validator:
        """Python jsonschema, for its error messages and paths."""
        if self._slow is None:
            from jsonschema import Draft202012Validator

            self._slow = Draft202012Validator(self.schema)
        return self._slow

    def is_valid(self, document: Any) -> bool:
        if self.fast is not None:
            try:
                return bool(self.fast.is_valid(document))
            except Exception:  # a value jsonschema-rs cannot take: ask the slow path
                pass
        return bool(self.slow.is_valid(document))


_validator_cache: dict[str, _Validators] = {}
# The daemon passes the same registry mapping for every file: skip serialising it each time.
_last_given: tuple[Mapping[str, Mapping[str, Any]] | None, _Validators] | None = None


def _validators(runner_schemas: Mapping[str, Mapping[str, Any]] | None) -> _Validators:
    global _last_given
    if _last_given is not None and _last_given[0] is runner_schemas:
        return _last_given[1]
    key = "" if runner_schemas is None else json.dumps(runner_schemas, sort_keys=True,
                                                         default=str)
    found = _validator_cache.get(key)
    if found is None:
        schema = job_schema(runner_schemas)
        try:
            fast = jsonschema_rs.validator_for(schema)
        except Exception:  # jsonschema-rs refused a plug-in's schema: Python still copes
            fast = None
        found = _Validators(schema, fast)
        _validator_cache[key] = found
    _last_given = (runner_schemas, found)
    return found


# -- YAML: nodes -> plain data -----------------------------------------------------------

PLAIN = "!plain"  # what our resolver calls every untagged plain scalar; see _plain
CORE = "tag:yaml.org,2002:"
_ALLOWED_TAGS = {CORE + t for t in ("str", "int", "float", "bool", "null", "map", "seq")}


def _resolve(self: Any, kind: Any, value: Any, implicit: Any) -> str:
    # PyYAML resolves plain scalars with YAML 1.1 rules (`no` is False, `on` is True); mark
    # them instead, and _plain applies the YAML 1.2 core rules.
    if kind is ScalarNode and implicit[0]:
        return PLAIN
    return {ScalarNode: CORE + "str", SequenceNode: CORE + "seq"}.get(kind, CORE + "map")


class _PyLoader(yaml.SafeLoader):
    resolve = _resolve


_LOADER: type[Any] = _PyLoader
if yaml.__with_libyaml__:  # pragma: no branch - the C loader is 10x faster

    class _CLoader(yaml.CSafeLoader):
        resolve = _resolve

    _LOADER = _CLoader

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


class _Refused(Exception):
    """The document cannot be read further (alias bomb, recursion, nesting)."""

    def __init__(self, mark: Mark, message: str) -> None:
        super().__init__(message)
        self.mark = mark
        self.message = message


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


@dataclass
class _Document:
    """Plain data built from YAML nodes, and the nodes to find where each value was written.

    Marks are looked up by walking the nodes along a JSON path, only when a message needs
    one: recording them for every value would cost a quarter of the time of a valid file.
    """

    root: MappingNode
    data: Any = None
    problems: list[tuple[Mark, str]] = field(default_factory=list)

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
    return value


class _Builder:
    """Constructs plain data from a node graph. Written for speed: it runs on every node of
    every file, so the common case (an untagged plain scalar) is handled inline."""

    def __init__(self) -> None:
        self.problems: list[tuple[Mark, str]] = []
        self.budget = MAX_VALUES
        self.active: set[int] = set()  # collection nodes being built: an alias to one recurses

    def problem(self, node: Node, message: str) -> None:
        self.problems.append((_mark(node), message))

    def value(self, node: Node, depth: int) -> Any:
        if node.__class__ is ScalarNode:
            if node.tag == PLAIN:
                return self.number(node) if node.value[:1] in _NUMBER_START else _plain(
                    node.value)
            return self.scalar(node)
        self.budget -= 1
        if self.budget < 0:
            self.refuse_bomb(node)
        if depth >= MAX_DEPTH:
            raise _Refused(_mark(node), f"nested more than {MAX_DEPTH} levels deep")
        if id(node) in self.active:
            raise _Refused(_mark(node), "recursive alias: this node contains itself")
        self.active.add(id(node))
        try:
            if node.__class__ is SequenceNode:
                return self.sequence(node, depth)
            return self.mapping(cast(MappingNode, node), depth)
        finally:
            self.active.discard(id(node))

    def number(self, node: ScalarNode) -> Any:
        """A plain scalar that may be a number; JSON has no infinities and we want no
        4,000-digit integers (Python refuses to parse them anyway)."""
        value: str = node.value
        try:
            result = _plain(value)
        except ValueError:
            result = math.inf
        if _INF_NAN.match(value) or (result.__class__ is float and not math.isfinite(result)):
            self.problem(node, f"{_show(value)} is not a number JSON can hold (quote it for "
                         "a string)")
            return None
        return result

    def refuse_bomb(self, node: Node) -> None:
        raise _Refused(_mark(node), f"more than {MAX_VALUES} values once aliases are "
                       "expanded (an alias bomb?); refusing to read further")

    def sequence(self, node: SequenceNode, depth: int) -> list[Any]:
        if node.tag != CORE + "seq":
            self.problem(node, _bad_tag(node.tag, "a list", "!!seq"))
        self.budget -= len(node.value)
        if self.budget < 0:
            self.refuse_bomb(node)
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
            reported = len(self.problems)
            number = self.number(node)
            if len(self.problems) > reported:
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
        self.budget -= len(node.value)
        if self.budget < 0:
            self.refuse_bomb(node)
        result: dict[str, Any] = {}
        merges: list[Node] = []
        for key_node, value_node in node.value:
            if key_node.__class__ is not ScalarNode:
                self.problem(key_node, "a mapping key must be a single value, not a mapping "
                             "or a list")
                continue
            key: str = key_node.value
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
                    raise _Refused(_mark(source), "recursive merge: this mapping merges "
                                   "itself")
                self.active.add(id(source))
                try:
                    merged = self.mapping(source, depth + 1)
                finally:
                    self.active.discard(id(source))
                for key, value in merged.items():
                    result.setdefault(key, value)


def _char_at(text: str, line: int, column: int) -> str:
    """The character at a 0-based line and column, or ""."""
    lines = text.split("\n", line + 1)
    return lines[line][column:column + 1] if line < len(lines) else ""


def _offset_mark(text: str, offset: int) -> Mark:
    line_start = text.rfind("\n", 0, offset) + 1
    return text.count("\n", 0, offset) + 1, offset - line_start + 1


# Characters YAML does not allow (besides tab, newline and carriage return it wants printable
# ones): find them first, since libyaml would stop with an offset that is hard to map back.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff\ufffe\uffff]")


def _parse_yaml(data: bytes, loader_class: type[Any] | None = None) -> _Document:
    """Bytes -> a ``_Document``; raises ``_Refused`` when nothing sensible can be built.

    ``loader_class`` is libyaml's composer if PyYAML has it, else the pure-Python one.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = exc.start
        line_start = data.rfind(b"\n", 0, start) + 1
        column = len(data[line_start:start].decode("utf-8", "replace")) + 1
        raise _Refused((data.count(b"\n", 0, start) + 1, column),
                       f"not valid UTF-8 (byte 0x{data[start]:02x}); job files are UTF-8 "
                       "text") from None
    text = text.removeprefix("\ufeff")
    bad = _UNPRINTABLE.search(text)
    if bad:
        char = bad.group()
        what = "a NUL byte" if char == "\0" else f"control character U+{ord(char):04X}"
        raise _Refused(_offset_mark(text, bad.start()), f"{what} is not allowed in a job "
                       "file (is it binary?)")
    loader = (loader_class or _LOADER)(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        if isinstance(exc, yaml.composer.ComposerError) and "another document" in str(exc):
            raise _Refused(where, "a job file holds one YAML document; a second one starts "
                           "here") from None
        message = f"invalid YAML: {exc.problem}"
        if mark is not None and _char_at(text, mark.line, mark.column) == "\t":
            message += "; YAML is indented with spaces, not tabs"
        if exc.context:
            context_mark = exc.context_mark
            message += f" ({exc.context}"
            if context_mark is not None and context_mark is not mark:
                message += f" at line {context_mark.line + 1}"
            message += ")"
        raise _Refused(where, message) from None
    except yaml.YAMLError as exc:
        raise _Refused((1, 1), f"invalid YAML: {exc}") from None
    except RecursionError:  # only the pure-Python composer recurses; libyaml caps depth
        raise _Refused((1, 1), f"nested more than {MAX_DEPTH} levels deep") from None
    finally:
        loader.dispose()
    if root is None:
        raise _Refused((1, 1), "the file is empty: a job needs at least `steps:`")
    if not isinstance(root, MappingNode):
        raise _Refused(_mark(root), "a job file is a mapping of keys such as name, schedule "
                       "and steps")
    builder = _Builder()
    return _Document(root, builder.value(root, 0), builder.problems)


# -- schema errors -> problems -----------------------------------------------------------

_TYPE_WORDS = {"string": "a string", "integer": "an integer", "number": "a number",
               "boolean": "true or false", "object": "a mapping", "array": "a list",
               "null": "nothing (null)"}


def dotted(path: JsonPath) -> str:
    """``steps[2].with.url``: a JSON path as users read it."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_$-]*", part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part)}]"
    return text


def _show(value: Any) -> str:
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


def _expected(error: jsonschema.ValidationError) -> str:
    """What a branch that failed at its top wanted, in words."""
    schema = error.schema if isinstance(error.schema, dict) else {}
    title = schema.get("title")
    if isinstance(title, str) and title in TITLE_WORDS:
        return TITLE_WORDS[title]
    if error.validator == "pattern":
        return PATTERN_WORDS.get(str(error.validator_value),
                                 f"a string matching {error.validator_value}")
    if error.validator == "enum":
        return "one of " + ", ".join(_show(v) for v in cast(list[Any], error.validator_value))
    if error.validator == "const":
        return _show(error.validator_value)
    if error.validator in ("anyOf", "oneOf") and error.context:
        return _either(list(dict.fromkeys(_expected(e) for e in _branch_heads(error))))
    if error.validator == "type":
        wanted = cast(str | list[str], error.validator_value)
        names = [wanted] if isinstance(wanted, str) else list(wanted)
        pattern = schema.get("pattern")
        if names == ["string"] and isinstance(pattern, str) and pattern in PATTERN_WORDS:
            return PATTERN_WORDS[pattern]
        return _either([_TYPE_WORDS.get(n, n) for n in names])
    return str(error.message)


def _either(options: list[str]) -> str:
    """"a, b or c"."""
    return options[0] if len(options) == 1 else ", ".join(options[:-1]) + " or " + options[-1]


def _words(error: jsonschema.ValidationError) -> list[str]:
    """Every word an enum or const under ``error`` would accept, for a did-you-mean."""
    if error.validator == "enum":
        return [v for v in cast(list[Any], error.validator_value) if isinstance(v, str)]
    if error.validator == "const" and isinstance(error.validator_value, str):
        return [error.validator_value]
    return [w for e in error.context or () for w in _words(e)]


def _branches(error: jsonschema.ValidationError) -> dict[int, list[jsonschema.ValidationError]]:
    found: dict[int, list[jsonschema.ValidationError]] = {}
    for sub in error.context or ():
        found.setdefault(cast(int, sub.relative_schema_path[0]), []).append(sub)
    return found


def _shallow(errors: list[jsonschema.ValidationError]) -> bool:
    """Whether a branch failed on the value's kind itself, rather than inside it."""
    return any(
        not e.relative_path and (
            e.validator in ("type", "const", "enum", "pattern")
            or (e.validator in ("anyOf", "oneOf") and e.context
                and all(_shallow(b) for b in _branches(e).values())))
        for e in errors)


def _branch_heads(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    return [next((e for e in errs if not e.relative_path), errs[0])
            for errs in _branches(error).values()]


def _leaves(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """The errors worth showing for ``error``: for an anyOf/oneOf, those of the branch that
    got furthest (deepest into the value); if every branch failed on the value's kind, the
    alternative itself, to be worded "expected X or Y"."""
    if error.validator not in ("anyOf", "oneOf") or not error.context:
        return [error]
    branches = _branches(error)
    if _required_only(error.validator_value):
        return [error]
    candidates = [errs for errs in branches.values() if not _shallow(errs)]
    if not candidates:
        return [error]

    def depth(errs: list[jsonschema.ValidationError]) -> tuple[int, int]:
        return max(len(e.relative_path) for e in errs), -len(errs)

    best = max(candidates, key=depth)
    return [leaf for e in best for leaf in _leaves(e)]


def _required_only(branches: Any) -> bool:
    return isinstance(branches, list) and all(
        isinstance(b, dict) and set(b) == {"required"} for b in branches)


def _explain(error: jsonschema.ValidationError) -> Iterator[tuple[JsonPath, bool, str]]:
    """(path, at the key?, message) for one leaf error."""
    path: JsonPath = tuple(error.absolute_path)
    value = error.instance
    schema = error.schema if isinstance(error.schema, dict) else {}
    kind = error.validator
    if "propertyNames" in error.relative_schema_path:
        # jsonschema checks a key as a value at the mapping's own path
        yield (*path, cast(str, value)), True, f"{value!r} is not {_expected(error)}"
    elif kind == "additionalProperties" and isinstance(value, dict):
        known = schema.get("properties", {})
        patterns = schema.get("patternProperties", {})
        for key in value:
            if key in known or any(re.search(p, key) for p in patterns):
                continue
            hint = dag.did_you_mean(key, known)
            if not hint and len(known) <= 20:
                hint = f" (expected one of: {', '.join(known)})"
            yield (*path, key), True, f"unknown key {key!r}{hint}"
    elif kind == "required" and isinstance(value, dict):
        known = schema.get("properties", {})
        strays = [k for k in value if k not in known]
        for key in cast(list[str], error.validator_value):
            # A misspelt key is reported as unknown, with this key as its did-you-mean.
            if key not in value and not any(dag.did_you_mean(k, [key]) for k in strays):
                yield path, False, f"missing required key {key!r}"
    elif kind == "dependentRequired" and isinstance(value, dict):
        for key, needed in cast(dict[str, list[str]], error.validator_value).items():
            for other in needed:
                if key in value and other not in value:
                    yield (*path, key), True, (f"{key!r} only applies together with "
                                               f"{other!r}, which is missing")
    elif kind == "not" and isinstance(value, dict) and _required_only([error.validator_value]):
        keys = cast(dict[str, list[str]], error.validator_value)["required"]
        yield (*path, keys[-1]), True, f"{' and '.join(map(repr, keys))} cannot be used together"
    elif kind in ("oneOf", "anyOf") and _required_only(error.validator_value):
        options = [b["required"][0] for b in cast(list[dict[str, list[str]]],
                                                   error.validator_value)]
        found = [k for k in options if isinstance(value, dict) and k in value]
        if found:
            yield (*path, found[-1]), True, (f"takes only one of {', '.join(options)}; found "
                                             f"{' and '.join(found)}")
        else:
            yield path, False, f"needs one of {', '.join(options)}"
    elif kind in ("oneOf", "anyOf"):
        if error.context:
            hint = dag.did_you_mean(value, _words(error)) if isinstance(value, str) else ""
            yield path, False, f"expected {_expected(error)}, got {_show(value)}{hint}"
        else:
            yield path, False, "matches more than one of the allowed forms"
    elif kind == "enum" and path and path[-1] == "uses":
        names = cast(list[str], error.validator_value)
        yield path, False, (f"unknown runner {_show(value)}"
                            f"{dag.did_you_mean(str(value), names)} (known: "
                            f"{', '.join(names)})")
    elif kind in ("type", "enum", "const", "pattern"):
        hint = dag.did_you_mean(value, cast(list[str], error.validator_value)) \
            if kind == "enum" and isinstance(value, str) else ""
        if kind == "pattern":
            yield path, False, f"{_show(value)} is not {_expected(error)}"
        else:
            yield path, False, f"expected {_expected(error)}, got {_show(value)}{hint}"
    elif kind in ("minItems", "minLength", "minProperties") and error.validator_value == 1:
        yield path, False, "must not be empty"
    elif kind in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        words = {"minimum": "at least", "exclusiveMinimum": "greater than",
                 "maximum": "at most", "exclusiveMaximum": "less than"}[kind]
        yield path, False, f"must be {words} {error.validator_value}, got {_show(value)}"
    elif kind == "uniqueItems":
        yield path, False, "has the same item more than once"
    else:
        yield path, False, error.message


def _schema_problems(validator: jsonschema.Draft202012Validator, document: _Document
                     ) -> Iterator[tuple[JsonPath, Mark, str]]:
    for error in validator.iter_errors(document.data):
        for leaf in _leaves(error):
            for path, at_key, message in _explain(leaf):
                prefix = f"{dotted(path[:-1] if at_key else path)}: "
                if prefix == ": ":
                    prefix = ""
                yield path, document.where(path, key=at_key), prefix + message


# -- semantic checks ---------------------------------------------------------------------


_STEP_TEMPLATES = frozenset({"run", "exec", "with", "cwd"})
_STEP_LISTS = ("steps", *dag.HOOK_LISTS)


class _Checks:
    """The checks a schema cannot express. Tolerant: the document may be schema-invalid."""

    def __init__(self, document: _Document, skip: set[JsonPath]) -> None:
        self.doc = document
        self.skip = skip  # paths the schema (or YAML) already complained about
        self.found: list[tuple[Mark, str]] = []

    def report(self, path: JsonPath, message: str, *, key: bool = False) -> None:
        if path in self.skip:
            return
        self.skip.add(path)
        self.found.append((self.doc.where(path, key=key), f"{dotted(path)}: {message}"))

    def duration(self, value: Any, path: JsonPath, *, positive: bool = False) -> None:
        if value is None:
            return
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.report(path, str(exc))
            return
        if positive and seconds <= 0:
            self.report(path, "must be longer than 0")

    def template(self, value: Any, path: JsonPath) -> None:
        if isinstance(value, str):
            if "${{" in value:
                message = expr.check_template(value)
                if message:
                    self.report(path, message)
        elif isinstance(value, dict):
            for key, item in value.items():
                self.template(item, (*path, key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self.template(item, (*path, index))

    def expression(self, value: Any, path: JsonPath) -> None:
        if isinstance(value, str):
            try:
                bare = unwrap(value)
            except ValueError as exc:
                self.report(path, str(exc))
                return
            message = expr.check_expression(bare)
            if message:
                self.report(path, message)

    def run(self, data: dict[str, Any], file_stem: str) -> None:
        if "name" not in data and not JOB_NAME.match(file_stem):
            self.found.append(((1, 1), f"the job name {file_stem!r} comes from the file name "
                               f"and is not {PATTERN_WORDS[JOB_NAME.pattern]}; rename the "
                               "file or set `name:`"))
        schedule = data.get("schedule")
        if isinstance(schedule, list):
            for index, entry in enumerate(schedule):
                self.schedule(entry, ("schedule", index))
        elif schedule is not None:
            self.schedule(schedule, ("schedule",))
        self.duration(data.get("timeout"), ("timeout",), positive=True)
        self.retries(data.get("retries"), ("retries",))
        breaker = data.get("circuit_breaker")
        if isinstance(breaker, dict):
            self.duration(breaker.get("cooldown"), ("circuit_breaker", "cooldown"))
        history = data.get("history")
        if isinstance(history, dict):
            days = history.get("keep_days")
            if isinstance(days, int | float) and not isinstance(days, bool):
                try:
                    days = float(days) * 86400.0  # a number is days; check it as seconds
                except OverflowError:
                    days = math.inf
            self.duration(days, ("history", "keep_days"), positive=True)
        self.env(data.get("env"), ("env",))
        params = data.get("params")
        if isinstance(params, dict):
            for name, declared in params.items():
                self.param(declared, ("params", name))
        self.steps(data)

    def schedule(self, entry: Any, path: JsonPath) -> None:
        if isinstance(entry, str):
            kind, text = schedule_form(entry)
            if kind is ScheduleKind.EVERY:
                self.duration(text, path, positive=True)
            else:
                self.cron(text, path)
            return
        if not isinstance(entry, dict):
            return
        if isinstance(entry.get("cron"), str):
            self.cron(entry["cron"], (*path, "cron"))
        self.duration(entry.get("every"), (*path, "every"), positive=True)
        self.duration(entry.get("jitter"), (*path, "jitter"))
        zone_name = entry.get("timezone")
        if isinstance(zone_name, str):
            try:
                _zone(zone_name)
            except ValueError as exc:
                self.report((*path, "timezone"), str(exc))
        for key in ("at", "start"):
            if isinstance(entry.get(key), str):
                try:
                    parse_time(entry[key], ZoneInfo("UTC"))
                except ValueError as exc:
                    self.report((*path, key), str(exc))

    def cron(self, text: str, path: JsonPath) -> None:
        try:
            triggers.parse_cron(text)
        except ValueError as exc:
            self.report(path, f"invalid cron expression {text!r}: {exc}")

    def retries(self, value: Any, path: JsonPath) -> None:
        if isinstance(value, dict):
            self.duration(value.get("delay"), (*path, "delay"))
            self.duration(value.get("max_delay"), (*path, "max_delay"))

    def env(self, value: Any, path: JsonPath) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                self.template(item, (*path, key))

    def param(self, declared: Any, path: JsonPath) -> None:
        if not isinstance(declared, dict):
            return
        written = declared.get("type")
        if written in _PARAM_TYPES:
            kind = ParamType(written)
        elif written is None and "default" in declared:
            kind = _infer_type(declared["default"])
        elif written is None:
            kind = ParamType.STRING
        else:
            return  # a bad type is the schema's complaint
        words = f"{_TYPE_WORDS[_JSON_TYPE[kind]]} (the type is {kind})"
        enum = declared.get("enum")
        if isinstance(enum, list):
            for index, option in enumerate(enum):
                if not _fits(option, kind):
                    self.report((*path, "enum", index), f"{_show(option)} is not {words}")
        if "default" in declared:
            default = declared["default"]
            if not _fits(default, kind):
                self.report((*path, "default"), f"{_show(default)} is not {words}")
            elif isinstance(enum, list) and default not in enum:
                self.report((*path, "default"), f"{_show(default)} is not one of the enum "
                            f"values {', '.join(_show(v) for v in enum)}")

    def steps(self, data: dict[str, Any]) -> None:
        first: dict[str, tuple[str, int]] = {}  # step id -> its list and index there
        graphs: list[dict[str, list[str]]] = []
        for list_name in _STEP_LISTS:
            items = data.get(list_name)
            if items.__class__ is not list:
                continue
            needs: dict[str, list[str]] = {}
            for index, step in enumerate(items):
                if step.__class__ is not dict:
                    continue
                path = (list_name, index)
                self.step(step, path)
                sid = step.get("id")
                if sid.__class__ is not str:
                    continue
                if sid in first:
                    where, before = first[sid]
                    place = "" if where == list_name else f" in {where}"
                    self.report((*path, "id"), f"duplicate step id {sid!r} (first at line "
                                f"{self.doc.where((where, before, 'id'))[0]}{place}); step "
                                "ids are unique in a job")
                    continue
                first[sid] = (list_name, index)
                wanted = step.get("needs", ())
                if wanted.__class__ is str:
                    wanted = [wanted]
                elif wanted.__class__ is not list:
                    wanted = []
                needs[sid] = [n for n in wanted if n.__class__ is str]
            graphs.append(needs)
        elsewhere = {sid: where for sid, (where, _) in first.items()}
        for needs in graphs:
            for flaw in dag.check(needs, elsewhere=elsewhere):
                where, index = first[flaw.step]
                written = data[where][index]["needs"]
                self.report((where, index, "needs", written.index(flaw.need))
                            if isinstance(written, list) else (where, index, "needs"),
                            f"step {flaw.step!r} {flaw.message}")

    def step(self, step: dict[str, Any], path: JsonPath) -> None:
        # Every step of every file passes here: look only at the keys that are present.
        for key in step.keys() & _STEP_TEMPLATES:
            self.template(step[key], (*path, key))
        if "env" in step:
            self.env(step["env"], (*path, "env"))
        if "if" in step:
            self.expression(step["if"], (*path, "if"))
        if isinstance(step.get("for_each"), str):
            self.expression(step["for_each"], (*path, "for_each"))
        shell = step.get("shell")
        if isinstance(shell, str):
            try:
                if not shlex.split(shell):
                    self.report((*path, "shell"), "names no command")
            except ValueError as exc:
                self.report((*path, "shell"), f"cannot be split into words: {exc}")
        if "timeout" in step:
            self.duration(step["timeout"], (*path, "timeout"), positive=True)
        if "grace" in step:
            self.duration(step["grace"], (*path, "grace"))
        if "retries" in step:
            self.retries(step["retries"], (*path, "retries"))


# -- building the model ------------------------------------------------------------------

_JSON_TYPE = {ParamType.STRING: "string", ParamType.INTEGER: "integer",
              ParamType.NUMBER: "number", ParamType.BOOLEAN: "boolean"}
_PARAM_TYPES = frozenset(t.value for t in ParamType)


def _infer_type(value: Any) -> ParamType:
    if isinstance(value, bool):
        return ParamType.BOOLEAN
    if isinstance(value, int):
        return ParamType.INTEGER
    if isinstance(value, float):
        return ParamType.NUMBER
    return ParamType.STRING


def _fits(value: Any, kind: ParamType) -> bool:
    if kind is ParamType.BOOLEAN:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is ParamType.INTEGER:
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if kind is ParamType.NUMBER:
        return isinstance(value, int | float)
    return isinstance(value, str)


def unwrap(text: str) -> str:
    """A bare expression from ``text``, accepting one ``${{ }}`` around the whole of it.

    Raises ValueError when the text holds ``${{ }}`` in any other way.
    """
    stripped = text.strip()
    if stripped.startswith("${{") and stripped.endswith("}}"):
        inner = stripped[3:-2]
        if "${{" not in inner and "}}" not in inner:
            return inner.strip()
    if "${{" in text:
        raise ValueError("takes one expression: write it bare, or wrap all of it in one "
                         "${{ }}")
    return stripped


def schedule_form(text: str) -> tuple[ScheduleKind, str]:
    """How a schedule string reads: ``every 15m`` (or ``@every 15m``) or a cron expression."""
    words = text.split(None, 1)
    if len(words) == 2 and words[0] in ("every", "@every"):
        return ScheduleKind.EVERY, words[1].strip()
    return ScheduleKind.CRON, text.strip()


def parse_time(text: str, zone: tzinfo) -> datetime:
    """An ISO 8601 time; one without offset is read in ``zone``. ValueError if malformed."""
    if not re.match(AT_PATTERN, text.strip()):
        raise ValueError(f"{text!r} is not {PATTERN_WORDS[AT_PATTERN]}")
    try:
        moment = datetime.fromisoformat(text.strip().replace("z", "Z").replace("t", "T"))
    except ValueError:
        raise ValueError(f"{text!r} is not a real time (check the day, hour and offset)"
                         ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)


@functools.lru_cache(maxsize=8)
def _local_zone(tz_setting: str | None) -> ZoneInfo:
    # The machine's zone does not change under a running process, but TZ may (tests).
    return triggers.local_zone()


def _zone(name: str) -> ZoneInfo:
    """An IANA time zone; ValueError naming it (with a did-you-mean) if unknown."""
    try:
        return triggers.zone(name)
    except ValueError as exc:
        from zoneinfo import available_timezones

        raise ValueError(f"{exc}{dag.did_you_mean(name, available_timezones())}") from None


def _schedule(entry: Any) -> Schedule:
    if isinstance(entry, str):
        kind, text = schedule_form(entry)
        zone = _local_zone(os.environ.get("TZ"))
        if kind is ScheduleKind.EVERY:
            return Schedule(kind, zone, every=parse_duration(text), text=entry)
        return Schedule(kind, zone, cron=triggers.parse_cron(text), text=entry)
    zone = _zone(entry["timezone"]) if "timezone" in entry else _local_zone(os.environ.get("TZ"))
    common: dict[str, Any] = {
        "jitter": parse_duration(entry.get("jitter", 0)),
        "catchup": Catchup(entry.get("catchup", "latest")),
    }
    if "cron" in entry:
        return Schedule(ScheduleKind.CRON, zone, cron=triggers.parse_cron(entry["cron"]),
                        text=entry["cron"], **common)
    if "every" in entry:
        start = parse_time(entry["start"], zone) if "start" in entry else None
        return Schedule(ScheduleKind.EVERY, zone, every=parse_duration(entry["every"]),
                        start=start, text=f"every {entry['every']}", **common)
    return Schedule(ScheduleKind.AT, zone, at=parse_time(entry["at"], zone),
                    text=f"at {entry['at']}", **common)


def _retries(value: Any) -> RetryPolicy:
    if isinstance(value, int | float):
        return RetryPolicy(limit=int(value))
    max_delay = value.get("max_delay")
    return RetryPolicy(limit=int(value["limit"]), delay=parse_duration(value.get("delay", 0)),
                       backoff=Backoff(value.get("backoff", "constant")),
                       max_delay=None if max_delay is None else parse_duration(max_delay))


def _freeze(value: Any) -> Any:
    """``model.freeze`` for the plain dicts and lists we construct, without its ABC checks
    (which cost a third of building a job); the result is the same."""
    kind = value.__class__
    if kind is dict:
        return MappingProxyType({k: v if v.__class__ not in _CONTAINERS else _freeze(v)
                                 for k, v in value.items()})
    if kind is list:
        return tuple([v if v.__class__ not in _CONTAINERS else _freeze(v) for v in value])
    return value


_CONTAINERS = frozenset({dict, list})


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _env(value: Any) -> Mapping[str, str]:
    return _freeze({k: _text(v) for k, v in value.items()}) if value else EMPTY


def _int(value: Any) -> Any:
    """JSON Schema's integers include 2.0; the model wants 2."""
    return int(value) if isinstance(value, float) else value


def _step(raw: dict[str, Any], frozen: Mapping[str, Any], line: int) -> Step:
    kind = StepKind.RUN if "run" in raw else StepKind.EXEC if "exec" in raw else StepKind.USES
    needs = raw.get("needs", ())
    shell = raw.get("shell")
    for_each = raw.get("for_each")
    if_ = raw.get("if", "success()")
    return Step(
        id=raw["id"], kind=kind, line=line, name=raw.get("name"), run=raw.get("run"),
        exec=tuple(_text(a) for a in raw.get("exec", ())), uses=raw.get("uses"),
        with_=frozen.get("with", EMPTY),
        needs=(needs,) if isinstance(needs, str) else tuple(needs),
        if_=_text(if_) if isinstance(if_, bool) else unwrap(if_),
        env=_env(raw.get("env")), cwd=raw.get("cwd"),
        shell=None if shell is None else tuple(shlex.split(shell) if isinstance(shell, str)
                                               else shell),
        timeout=parse_duration(raw["timeout"]) if "timeout" in raw else None,
        grace=parse_duration(raw.get("grace", 10)),
        retries=_retries(raw["retries"]) if "retries" in raw else None,
        continue_on_error=bool(raw.get("continue_on_error", False)),
        for_each=(unwrap(for_each) if isinstance(for_each, str)
                  else None if for_each is None else frozen["for_each"]),
        max_parallel=_int(raw.get("max_parallel")),
    )


def _param(name: str, declared: Any) -> Param:
    if not isinstance(declared, dict):
        if declared is None:
            return Param(name)
        return Param(name, _infer_type(declared), declared, True)
    has_default = "default" in declared
    kind = ParamType(declared["type"]) if "type" in declared else (
        _infer_type(declared["default"]) if has_default else ParamType.STRING)
    default = declared.get("default")
    if kind is ParamType.INTEGER and isinstance(default, float):
        default = int(default)
    enum = declared.get("enum")
    return Param(name, kind, default, has_default, None if enum is None else tuple(enum),
                 declared.get("description", ""), bool(declared.get("required", False)))


def _build(data: dict[str, Any], document: _Document, *, name: str, file: str,
           sha256: str) -> Job:
    frozen = _freeze(data)

    def steps(key: str) -> tuple[Step, ...]:
        return tuple(_step(raw, frozen[key][i], document.where((key, i))[0])
                     for i, raw in enumerate(data.get(key, ())))

    schedule = data.get("schedule")
    entries = [] if schedule is None else schedule if isinstance(schedule, list) else [schedule]
    concurrency = data.get("concurrency", "forbid")
    if isinstance(concurrency, str):
        concurrency = {"policy": concurrency}
    breaker = data.get("circuit_breaker")
    history = data.get("history", {})
    keep_days = history.get("keep_days")
    if isinstance(keep_days, str):
        keep_days = parse_duration(keep_days) / 86400.0
    return Job(
        name=name, file=file, sha256=sha256, steps=steps("steps"),
        description=data.get("description", ""), enabled=data.get("enabled", True),
        schedules=tuple(_schedule(e) for e in entries),
        concurrency=Concurrency(Policy(concurrency["policy"]),
                                _int(concurrency.get("max_active")),
                                _int(concurrency.get("max_queued", 10))),
        timeout=parse_duration(data["timeout"]) if "timeout" in data else None,
        retries=_retries(data["retries"]) if "retries" in data else RetryPolicy(),
        circuit_breaker=None if breaker is None else CircuitBreaker(
            _int(breaker["after"]), parse_duration(breaker.get("cooldown", "1h"))),
        history=History(_int(history.get("keep_runs")),
                        None if keep_days is None else float(keep_days)),
        env=_env(data.get("env")),
        params=_freeze({k: _param(k, v) for k, v in data.get("params", {}).items()}),
        secrets=_freeze({k: Secret(k, v.get("env"), v.get("file"))
                        for k, v in data.get("secrets", {}).items()}),
        on_success=steps("on_success"), on_failure=steps("on_failure"),
        finally_=steps("finally"), document=frozen,
    )


# -- loading -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Result:
    job: Job | None
    problems: tuple[Problem, ...]
    name: str | None = None  # the job's name, when it could be read
    name_mark: Mark = (1, 1)  # where it is written; 1:1 when it comes from the file name


def _read(path: Path) -> bytes:
    """At most MAX_BYTES + 1 bytes of a regular file; OSError or ValueError with a message."""
    # O_NONBLOCK: opening a FIFO that happens to be called x.yaml must not hang us.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        chunks = []
        size = 0
        while size <= MAX_BYTES:
            chunk = os.read(fd, MAX_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _load(path: Path, validators: _Validators, display: str) -> _Result:
    def fail(problems: list[tuple[Mark, str]], name: str | None = None,
             name_mark: Mark = (1, 1)) -> _Result:
        found = sorted({Problem(display, line, col, message)
                        for (line, col), message in problems})
        return _Result(None, tuple(found), name, name_mark)

    try:
        data = _read(path)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return fail([((1, 1), f"cannot read the file: {reason}")])
    if len(data) > MAX_BYTES:
        size = path.stat().st_size if path.exists() else len(data)
        return fail([((1, 1), f"the file is {size / (1 << 20):.1f} MiB; a job file may be at "
                      f"most {MAX_BYTES >> 20} MiB")])
    try:
        document = _parse_yaml(data)
    except _Refused as exc:
        return fail([(exc.mark, exc.message)])
    mapping = cast(dict[str, Any], document.data)
    stem = os.path.basename(display).rsplit(".", 1)[0]
    name_value = mapping.get("name", stem)
    name = name_value if isinstance(name_value, str) else None
    name_mark = document.where(("name",)) if "name" in mapping else (1, 1)
    problems = list(document.problems)
    skip: set[JsonPath] = set()
    if problems or not validators.is_valid(mapping):
        # A value YAML already complained about (a bad tag) was built as null: the schema's
        # complaint about that null, at the same node, would only confuse.
        bad_marks = {mark for mark, _ in problems}
        for where, mark, message in _schema_problems(validators.slow, document):
            if mark not in bad_marks:
                problems.append((mark, message))
            skip.add(where)
    checks = _Checks(document, skip)
    checks.run(mapping, stem)
    problems.extend(checks.found)
    if problems:
        return fail(problems, name, name_mark)
    job = _build(mapping, document, name=cast(str, name), file=display,
                 sha256=hashlib.sha256(data).hexdigest())
    return _Result(job, (), job.name, name_mark)


def load_job(path: Path, *, runner_schemas: Mapping[str, Mapping[str, Any]] | None = None,
             display_path: str | None = None) -> Job:
    """Read, validate and build one job file.

    ``runner_schemas`` maps each runner name to the JSON Schema of its ``with`` (None: the
    built-in runners). ``display_path`` is the file name used in messages and ``Job.file``
    (default ``str(path)``). Raises ``JobInvalid`` with every problem found in the file.
    """
    result = _load(path, _validators(runner_schemas),
                   str(path) if display_path is None else display_path)
    if result.job is None:
        raise JobInvalid(result.problems)
    return result.job


@dataclass(frozen=True)
class Loaded:
    """What a set of job files holds: valid jobs by name, problems by file."""

    jobs: Mapping[str, Job]
    problems: Mapping[str, tuple[Problem, ...]]  # only the invalid files
    files: Mapping[str, str]  # file -> job name, wherever the name could be read


def load_jobs(paths: Sequence[Path], *,
              runner_schemas: Mapping[str, Mapping[str, Any]] | None = None) -> Loaded:
    """Load every job file in ``paths`` (directories are searched with ``find_job_files``).

    A job name used by an earlier file makes every later file with that name invalid.
    Never raises for a bad file: its problems are in ``Loaded.problems``.
    """
    validators = _validators(runner_schemas)
    # Loading allocates many short-lived objects while the loaded jobs pile up; the cyclic
    # collector's full passes over them cost a fifth of the time (measured), and what we
    # build has no cycles worth collecting mid-load.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _load_all(paths, validators)
    finally:
        if collecting:
            gc.enable()


def _load_all(paths: Sequence[Path], validators: _Validators) -> Loaded:
    jobs: dict[str, Job] = {}
    problems: dict[str, tuple[Problem, ...]] = {}
    files: dict[str, str] = {}
    owner: dict[str, str] = {}  # job name -> the first file that uses it
    targets: list[Path] = []
    for path in paths:
        targets.extend(find_job_files(path) if path.is_dir() else [path])
    for path in dict.fromkeys(targets):
        display = str(path)
        result = _load(path, validators, display)
        found = result.problems
        if result.name is not None:
            files[display] = result.name
            if result.name in owner:
                line, column = result.name_mark
                found = tuple(sorted({*found, Problem(
                    display, line, column, f"the job name {result.name!r} is already used "
                    f"by {owner[result.name]}")}))
            else:
                owner[result.name] = display
        if found:
            problems[display] = found
        elif result.job is not None:
            jobs[result.job.name] = result.job
    return Loaded(jobs, problems, files)


# -- parameters --------------------------------------------------------------------------

_TRUE_WORDS = {"true", "1", "yes", "on"}
_FALSE_WORDS = {"false", "0", "no", "off"}


def _coerce(param: Param, value: Any) -> Any:
    """``value`` (a CLI string or a JSON value) as ``param``'s type; ValueError if it is not."""
    kind = param.type
    if isinstance(value, str) and kind is not ParamType.STRING:
        text = value.strip()
        try:
            if kind is ParamType.INTEGER:
                return int(text, 10)
            if kind is ParamType.NUMBER:
                number = float(text)
                if number != number or number in (float("inf"), float("-inf")):
                    raise ValueError
                return int(number) if _INT.match(text) else number
        except ValueError:
            wanted = "an integer" if kind is ParamType.INTEGER else "a number"
            raise ValueError(f"{value!r} is not {wanted}") from None
        if text.lower() in _TRUE_WORDS:
            return True
        if text.lower() in _FALSE_WORDS:
            return False
        raise ValueError(f"{value!r} is not a boolean (true/false, yes/no, 1/0)")
    if not _fits(value, kind):
        raise ValueError(f"{_show(value)} is not {_TYPE_WORDS[_JSON_TYPE[kind]]}")
    if kind is ParamType.INTEGER and isinstance(value, float):
        return int(value)
    return value


def parse_params(job: Job, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every declared parameter's value: given ones checked and typed, defaults for the rest.

    ``given`` holds strings (``-p KEY=VALUE``) or JSON values (the HTTP API). A parameter that
    is neither given nor defaulted is None, unless it is ``required``. Raises ``ParamError``
    naming every unknown, ill-typed, out-of-enum or missing parameter.
    """
    errors: list[str] = []
    values: dict[str, Any] = {}
    for key, raw in given.items():
        param = job.params.get(key)
        if param is None:
            known = ", ".join(sorted(job.params)) or "none"
            errors.append(f"unknown parameter {key!r}{dag.did_you_mean(key, job.params)} "
                          f"(parameters of {job.name}: {known})")
            continue
        try:
            value = _coerce(param, raw)
        except ValueError as exc:
            errors.append(f"parameter {key!r}: {exc}")
            continue
        if param.enum is not None and value not in param.enum:
            errors.append(f"parameter {key!r}: {_show(value)} is not one of "
                          f"{', '.join(_show(v) for v in param.enum)}")
            continue
        values[key] = value
    for name, param in job.params.items():
        if name in values or name in given:
            continue
        if param.has_default:
            values[name] = param.default
        elif param.required:
            errors.append(f"parameter {name!r} is required (-p {name}=VALUE)")
        else:
            values[name] = None
    if errors:
        raise ParamError("; ".join(errors))
    return values
