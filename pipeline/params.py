"""Job parameters: declared types, the checks on a declaration, and given values typed.

A job declares ``params:``, each a type (``string``, ``integer``, ``number``, ``boolean``, or
inferred from the default), an optional default, enum and ``required``. Values arrive as text
from ``-p KEY=VALUE`` or as JSON values from the HTTP API; ``parse_params`` types them by the
declaration and names every one that does not fit. The same rules of what fits a type serve
the semantic checks (``problems``: a default or enum value of the wrong type) and building
the model (``declared``), so a declaration that loads can never refuse its own default.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

from pipeline.errors import ParamError, did_you_mean
from pipeline.model import Job, Param, ParamType
from pipeline.schema import TYPE_WORDS
from pipeline.yamlsafe import JsonPath, show

_JSON_TYPE = {ParamType.STRING: "string", ParamType.INTEGER: "integer",
              ParamType.NUMBER: "number", ParamType.BOOLEAN: "boolean"}
_TYPE_NAMES = frozenset(t.value for t in ParamType)
_TRUE_WORDS = {"true", "1", "yes", "on"}
_FALSE_WORDS = {"false", "0", "no", "off"}
_DECIMAL_INTEGER = re.compile(r"[-+]?[0-9]+\Z")


def infer_type(value: Any) -> ParamType:
    """The type a parameter declared only by its default has."""
    if isinstance(value, bool):
        return ParamType.BOOLEAN
    if isinstance(value, int):
        return ParamType.INTEGER
    if isinstance(value, float):
        return ParamType.NUMBER
    return ParamType.STRING


def fits(value: Any, kind: ParamType) -> bool:
    """Whether a JSON value is of ``kind`` (2.0 is an integer; true is not a number)."""
    if kind is ParamType.BOOLEAN:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is ParamType.INTEGER:
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if kind is ParamType.NUMBER:
        return isinstance(value, int | float)
    return isinstance(value, str)


def declared(name: str, declaration: Any) -> Param:
    """The ``Param`` of a checked declaration: a mapping, a bare default, or nothing."""
    if not isinstance(declaration, dict):
        if declaration is None:
            return Param(name)
        return Param(name, infer_type(declaration), declaration, True)
    has_default = "default" in declaration
    kind = ParamType(declaration["type"]) if "type" in declaration else (
        infer_type(declaration["default"]) if has_default else ParamType.STRING)
    default = declaration.get("default")
    if kind is ParamType.INTEGER and isinstance(default, float):
        default = int(default)
    enum = declaration.get("enum")
    return Param(name, kind, default, has_default, None if enum is None else tuple(enum),
                 declaration.get("description", Param.description),
                 bool(declaration.get("required", Param.required)))


def problems(declaration: Any) -> Iterator[tuple[JsonPath, str]]:
    """What the schema cannot say about a declaration: an enum value or a default that does
    not fit the type, a default outside the enum. Paths are relative to the declaration;
    anything the schema already refuses (an unknown type) is left to it."""
    if not isinstance(declaration, dict):
        return
    written = declaration.get("type")
    if written is None:
        kind = (infer_type(declaration["default"]) if "default" in declaration
                else ParamType.STRING)
    elif isinstance(written, str) and written in _TYPE_NAMES:
        kind = ParamType(written)
    else:
        return
    words = f"{TYPE_WORDS[_JSON_TYPE[kind]]} (the type is {kind})"
    enum = declaration.get("enum")
    if isinstance(enum, list):
        for index, option in enumerate(enum):
            if not fits(option, kind):
                yield ("enum", index), f"{show(option)} is not {words}"
    if "default" in declaration:
        default = declaration["default"]
        if not fits(default, kind):
            yield ("default",), f"{show(default)} is not {words}"
        elif isinstance(enum, list) and default not in enum:
            yield ("default",), (f"{show(default)} is not one of the enum values "
                                 f"{', '.join(show(v) for v in enum)}")


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
                if not math.isfinite(number):
                    raise ValueError
                return int(number) if _DECIMAL_INTEGER.match(text) else number
        except ValueError:
            wanted = "an integer" if kind is ParamType.INTEGER else "a number"
            raise ValueError(f"{value!r} is not {wanted}") from None
        if text.lower() in _TRUE_WORDS:
            return True
        if text.lower() in _FALSE_WORDS:
            return False
        raise ValueError(f"{value!r} is not a boolean (true/false, yes/no, 1/0)")
    if not fits(value, kind):
        raise ValueError(f"{show(value)} is not {TYPE_WORDS[_JSON_TYPE[kind]]}")
    if kind is ParamType.INTEGER and isinstance(value, float):
        return int(value)
    return value


def value_problem(param: Param, value: Any) -> str | None:
    """Why ``value`` (a JSON value, as a ``uses: job`` step passes it) cannot be ``param``'s,
    or None. A string holding a ``${{ }}`` is only known when it runs: None."""
    if isinstance(value, str) and "${{" in value:
        return None
    try:
        typed = _coerce(param, value)
    except ValueError as exc:
        return str(exc)
    if param.enum is not None and typed not in param.enum:
        return f"{show(typed)} is not one of {', '.join(show(v) for v in param.enum)}"
    return None


MAX_VALUE = 128 * 1024  # a parameter is an argument, not a payload (ARG_MAX is 128 KiB a word)


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
            errors.append(f"unknown parameter {key!r}{did_you_mean(key, job.params)} "
                          f"(parameters of {job.name}: {known})")
            continue
        try:
            value = _coerce(param, raw)
        except ValueError as exc:
            errors.append(f"parameter {key!r}: {exc}")
            continue
        if isinstance(value, str) and "\0" in value:  # no program can take it as an argument
            errors.append(f"parameter {key!r}: contains a NUL character")
            continue
        if isinstance(value, str) and len(value) > MAX_VALUE:
            errors.append(f"parameter {key!r}: longer than {MAX_VALUE} characters")
            continue
        if param.enum is not None and value not in param.enum:
            errors.append(f"parameter {key!r}: {show(value)} is not one of "
                          f"{', '.join(show(v) for v in param.enum)}")
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
