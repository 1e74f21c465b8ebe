"""The JSON Schema of a job file: where it is, how runners compose into it, and its errors in words.

The committed ``schemas/job.schema.json`` is what editors and CI tools validate against; each
runner's ``with`` schema lives in ``schemas/runners/`` and ``job_schema`` composes them (plug-in
runners included) into one standalone schema.

Validation is in two steps because the common case is a valid file: jsonschema-rs answers
"valid?" in microseconds, and only for an invalid document does Python ``jsonschema`` run, to
list every error with its path. ``Validators.explain`` turns those errors into messages a user
can act on: for an ``anyOf``/``oneOf`` it picks the branch the user most likely meant instead of
listing every branch, it says what a pattern means instead of showing the regex, and it offers
a did-you-mean for unknown keys and words. Where each error was written is for the caller to
find from its path (``yamlsafe.Document.where``).
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import jsonschema_rs

import pipeline
from pipeline.errors import did_you_mean
from pipeline.model import JOB_NAME
from pipeline.notation import (
    AT_PATTERN,
    AT_WORDS,
    DURATION_PATTERN,
    DURATION_WORDS,
    EXPRESSION_PATTERN,
    EXPRESSION_WORDS,
)
from pipeline.yamlsafe import JsonPath, show

if TYPE_CHECKING:
    # Python jsonschema explains invalid documents; valid ones never need it, so it is
    # imported on first use (it is a fifth of the start-up time of `pipeline validate`).
    import jsonschema

# The patterns the schemas use, so that messages can say in words what a pattern means.
PATTERN_WORDS = {
    JOB_NAME.pattern: "a valid job name (a letter or digit, then letters, digits, '_', '.' "
                      "or '-'; at most 64 characters)",
    r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$": "a valid step id (a letter or '_', then letters, "
                                       "digits, '_' or '-'; at most 64 characters)",
    r"^[A-Za-z_][A-Za-z0-9_]{0,63}$": "a valid parameter name (a letter or '_', then "
                                      "letters, digits or '_')",
    r"^[A-Za-z_][A-Za-z0-9_]*$": "a valid environment variable name (letters, digits and "
                                 "'_', not starting with a digit)",
    DURATION_PATTERN: DURATION_WORDS,
    EXPRESSION_PATTERN: EXPRESSION_WORDS,
    AT_PATTERN: AT_WORDS,
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"
    r"(\.[A-Za-z_][A-Za-z0-9_]*)*$": "a callable written \"package.module:function\"",
    r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$": "a valid HTTP header name",
    r"^[Hh][Tt][Tt][Pp][Ss]?://": "an http:// or https:// URL",
    r"^\s*\$\{\{": "a URL that starts with a ${{ }} expression",
}
# Schemas in $defs whose title says what they are better than any one of their branches.
TITLE_WORDS = {"duration": DURATION_WORDS, "expression": EXPRESSION_WORDS}
TYPE_WORDS = {"string": "a string", "integer": "an integer", "number": "a number",
              "boolean": "true or false", "object": "a mapping", "array": "a list",
              "null": "nothing (null)"}


# -- the schemas -------------------------------------------------------------------------


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
class Validators:
    """The compiled schema for one set of runners; built once, used for every file."""

    schema: dict[str, Any]
    fast: Any  # jsonschema_rs validator, or None if it could not compile the schema

    @functools.cached_property
    def slow(self) -> jsonschema.Draft202012Validator:
        """Python jsonschema, for its error messages and paths."""
        from jsonschema import Draft202012Validator

        return Draft202012Validator(self.schema)

    def is_valid(self, document: Any) -> bool:
        if self.fast is not None:
            try:
                return bool(self.fast.is_valid(document))
            except Exception:  # a value jsonschema-rs cannot take: ask the slow path
                pass
        return bool(self.slow.is_valid(document))

    def explain(self, document: Any) -> Iterator[tuple[JsonPath, bool, str]]:
        """Every error in ``document`` as (path, whether it is about the key at ``path``
        rather than its value, message). The message starts with the dotted path."""
        for error in self.slow.iter_errors(document):
            for leaf in _leaves(error):
                for path, at_key, message in _explain(leaf):
                    where = dotted(path[:-1] if at_key else path)
                    yield path, at_key, f"{where}: {message}" if where else message


_validator_cache: dict[str, Validators] = {}
# The daemon passes the same registry mapping for every file: skip serialising it each time.
_last_given: tuple[Mapping[str, Mapping[str, Any]] | None, Validators] | None = None


def validators(runner_schemas: Mapping[str, Mapping[str, Any]] | None) -> Validators:
    """The ``Validators`` of ``job_schema(runner_schemas)``, compiled once per set of runners."""
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
        found = _validator_cache[key] = Validators(schema, fast)
    _last_given = (runner_schemas, found)
    return found


# -- errors in words ---------------------------------------------------------------------


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
        return "one of " + ", ".join(show(v) for v in cast(list[Any], error.validator_value))
    if error.validator == "const":
        return show(error.validator_value)
    if error.validator in ("anyOf", "oneOf") and error.context:
        return _either(list(dict.fromkeys(_expected(e) for e in _branch_heads(error))))
    if error.validator == "type":
        wanted = cast(str | list[str], error.validator_value)
        names = [wanted] if isinstance(wanted, str) else list(wanted)
        pattern = schema.get("pattern")
        if names == ["string"] and isinstance(pattern, str) and pattern in PATTERN_WORDS:
            return PATTERN_WORDS[pattern]
        return _either([TYPE_WORDS.get(n, n) for n in names])
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
    """The errors under an anyOf/oneOf, grouped by the branch they come from."""
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


def _required_only(branches: Any) -> bool:
    """Whether an anyOf/oneOf only picks one key of several (``run``, ``exec`` or ``uses``).

    Such a branch is ``{"required": [k]}``, with ``"properties": {k: true}`` beside it: ajv's
    strict mode (``strictRequired``) wants every required key defined where it is required,
    and ``true`` defines it without saying anything the parent's ``properties`` do not.
    """
    return isinstance(branches, list) and all(
        isinstance(b, dict) and "required" in b and set(b) <= {"required", "properties"}
        and all(v is True for v in b.get("properties", {}).values()) for b in branches)


def _leaves(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """The errors worth showing for ``error``: for an anyOf/oneOf, those of the branch that
    got furthest (deepest into the value); if every branch failed on the value's kind, the
    alternative itself, to be worded "expected X or Y"."""
    if (error.validator not in ("anyOf", "oneOf") or not error.context
            or _required_only(error.validator_value)):
        return [error]
    candidates = [errs for errs in _branches(error).values() if not _shallow(errs)]
    if not candidates:
        return [error]

    def depth(errs: list[jsonschema.ValidationError]) -> tuple[int, int]:
        return max(len(e.relative_path) for e in errs), -len(errs)

    best = max(candidates, key=depth)
    return [leaf for e in best for leaf in _leaves(e)]


def _explain(error: jsonschema.ValidationError) -> Iterator[tuple[JsonPath, bool, str]]:
    """(path, at the key?, message) for one leaf error: one or more about a mapping's keys
    (unknown, missing, not together, one of), or one about the value."""
    path: JsonPath = tuple(error.absolute_path)
    if _about_keys(error):
        yield from _key_problems(error, path)
    else:
        yield path, False, _value_problem(error, path)


def _about_keys(error: jsonschema.ValidationError) -> bool:
    value, kind = error.instance, error.validator
    return ("propertyNames" in error.relative_schema_path
            or (isinstance(value, dict)
                and kind in ("additionalProperties", "required", "dependentRequired"))
            or (kind == "not" and isinstance(value, dict)
                and _required_only([error.validator_value]))
            or (kind in ("oneOf", "anyOf") and _required_only(error.validator_value)))


def _key_problems(error: jsonschema.ValidationError,
                  path: JsonPath) -> Iterator[tuple[JsonPath, bool, str]]:
    value = error.instance
    mapping: dict[str, Any] = value if isinstance(value, dict) else {}
    schema = error.schema if isinstance(error.schema, dict) else {}
    kind = error.validator
    if "propertyNames" in error.relative_schema_path:
        # jsonschema checks a key as a value at the mapping's own path
        yield (*path, cast(str, value)), True, f"{value!r} is not {_expected(error)}"
    elif kind == "additionalProperties":
        known = schema.get("properties", {})
        patterns = schema.get("patternProperties", {})
        for key in mapping:
            if key in known or any(re.search(p, key) for p in patterns):
                continue
            hint = did_you_mean(key, known)
            if not hint and len(known) <= 20:
                hint = f" (expected one of: {', '.join(known)})"
            yield (*path, key), True, f"unknown key {key!r}{hint}"
    elif kind == "required":
        known = schema.get("properties", {})
        strays = [k for k in mapping if k not in known]
        for key in cast(list[str], error.validator_value):
            # A misspelt key is reported as unknown, with this key as its did-you-mean.
            if key not in mapping and not any(did_you_mean(k, [key]) for k in strays):
                yield path, False, f"missing required key {key!r}"
    elif kind == "dependentRequired":
        for key, needed in cast(dict[str, list[str]], error.validator_value).items():
            for other in needed:
                if key in mapping and other not in mapping:
                    yield (*path, key), True, (f"{key!r} only applies together with "
                                               f"{other!r}, which is missing")
    elif kind == "not":
        keys = cast(dict[str, list[str]], error.validator_value)["required"]
        yield (*path, keys[-1]), True, f"{' and '.join(map(repr, keys))} cannot be used together"
    else:  # oneOf/anyOf that picks one key of several
        options = [b["required"][0] for b in cast(list[dict[str, list[str]]],
                                                   error.validator_value)]
        found = [k for k in options if k in mapping]
        if found:
            yield (*path, found[-1]), True, (f"takes only one of {', '.join(options)}; found "
                                             f"{' and '.join(found)}")
        else:
            yield path, False, f"needs one of {', '.join(options)}"


def _value_problem(error: jsonschema.ValidationError, path: JsonPath) -> str:
    value, kind = error.instance, error.validator
    if kind in ("oneOf", "anyOf"):
        if not error.context:
            return "matches more than one of the allowed forms"
        hint = did_you_mean(value, _words(error)) if isinstance(value, str) else ""
        return f"expected {_expected(error)}, got {show(value)}{hint}"
    if kind == "enum" and path and path[-1] == "uses":
        names = cast(list[str], error.validator_value)
        return (f"unknown runner {show(value)}{did_you_mean(str(value), names)} (known: "
                f"{', '.join(names)})")
    if kind == "pattern":
        return f"{show(value)} is not {_expected(error)}"
    if kind in ("type", "enum", "const"):
        hint = did_you_mean(value, cast(list[str], error.validator_value)) \
            if kind == "enum" and isinstance(value, str) else ""
        return f"expected {_expected(error)}, got {show(value)}{hint}"
    if kind in ("minItems", "minLength", "minProperties") and error.validator_value == 1:
        return "must not be empty"
    if kind in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        words = {"minimum": "at least", "exclusiveMinimum": "greater than",
                 "maximum": "at most", "exclusiveMaximum": "less than"}[kind]
        return f"must be {words} {error.validator_value}, got {show(value)}"
    if kind == "uniqueItems":
        return "has the same item more than once"
    return str(error.message)
