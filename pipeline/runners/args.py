"""A runner's ``with`` arguments, checked again where they are used.

``with`` was validated against the runner's schema, but a ``${{ }}`` expression can give any
value at run time, so each argument is checked as it is read; a bad one raises
``RunnerError``, which fails the step with the message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.errors import PipelineError, RunnerError
from pipeline.notation import parse_duration


def text_arg(args: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = args.get(key, default)
    if value is None:
        raise RunnerError(f"{key} is required")
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise RunnerError(f"{key} must be a string, not {type(value).__name__}")
    return str(value)


def mapping_arg(args: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = args.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RunnerError(f"{key} must be a mapping, not {type(value).__name__}")
    return value


def bool_arg(args: Mapping[str, Any], key: str, default: bool) -> bool:
    value = args.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise RunnerError(f"{key} must be true or false, not {value!r}")


def duration_arg(args: Mapping[str, Any], key: str, default: float) -> float:
    """``args[key]`` as seconds (a duration string or a number), ``default`` when absent."""
    value = args.get(key)
    if value is None:
        return default
    try:
        seconds = float(parse_duration(value))
    except (ValueError, TypeError, PipelineError) as exc:
        raise RunnerError(f"{key}: {exc}") from None
    if seconds < 0:
        raise RunnerError(f"{key}: a duration cannot be negative: {value!r}")
    return seconds
