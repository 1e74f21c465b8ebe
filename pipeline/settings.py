"""The settings file of a jobs directory: pools, a cap on active runs, defaults, SMTP.

One YAML file in the jobs directory says ``kind: settings`` (CONTRACT §11); every other YAML
file there is a job. It goes through the stages a job file does (``spec``): bounded bytes,
safe YAML with positions (``yamlsafe``), its own JSON Schema (``schemas/settings.schema.json``,
every error in words), the checks a schema cannot express (``checks.check_settings``), then a
frozen ``Settings``. Every problem is located, ``FILE:LINE:COL``.

``defaults`` reach a job through ``apply_defaults``: ``spec`` merges them into the job's
document, key by key where the job does not set the key, before it builds the job. So the
document stored with each run holds them, and a node that rebuilds the job from that record
(``build.job_from_record``) gets the same job without the settings file.

The builders of the values jobs and the settings file share (retries, history, notify targets,
pools, secret references) live here too, below ``spec``, which uses them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import jsonschema_rs

from pipeline import checks, cron, yamlsafe
from pipeline.errors import Problem, SettingsInvalid
from pipeline.lookups import STEP_LISTS
from pipeline.model import (
    Backoff,
    Defaults,
    History,
    NotifyEvent,
    NotifyTarget,
    Pool,
    RetryPolicy,
    ScheduleKind,
    Secret,
    Settings,
    Smtp,
    TargetKind,
    freeze,
    thaw,
)
from pipeline.notation import parse_duration, schedule_form, zone
from pipeline.schema import Validators, schema_dir

__all__ = ["KIND", "MAX_BYTES", "apply_defaults", "is_settings_file", "load_settings",
           "notify_targets", "pool", "retry_policy", "settings_schema"]

KIND = "settings"
MAX_BYTES = 1 << 20
# `kind: settings` at the left margin: the settings file as people write it. Anything else
# that mentions `kind` (flow style, a merge key) is parsed to be sure.
_KIND_LINE = re.compile(rb"^kind[ \t]*:[ \t]*(['\"]?)settings\1[ \t]*(#.*)?\r?$", re.MULTILINE)
# What a target sends when its `when:` is not given.
DEFAULT_WHEN = frozenset({NotifyEvent.FAILURE})
PING_WHEN = frozenset({NotifyEvent.START, NotifyEvent.SUCCESS, NotifyEvent.FAILURE})


# -- recognising the file ----------------------------------------------------------------


def is_settings_file(path: str | os.PathLike[str], data: bytes | None = None) -> bool:
    """Whether ``path`` (or ``data``, its bytes) is a settings file: top-level ``kind:
    settings``.

    Cheap for job files: bytes without ``kind`` are not read as YAML at all. A file that
    cannot be read is not one (it is then reported as a job file that cannot be read); one
    that is not valid YAML is one if a ``kind: settings`` line starts at the left margin, so
    that its YAML error is reported as the settings file's.
    """
    if data is None:
        try:
            data = yamlsafe.read_file(path, MAX_BYTES)
        except (OSError, ValueError):
            return False
    if b"kind" not in data or len(data) > MAX_BYTES:
        return False
    try:
        document = yamlsafe.parse(data)
    except yamlsafe.Refused:
        return _KIND_LINE.search(data) is not None
    return document.data.get("kind") == KIND


# -- the schema --------------------------------------------------------------------------


@functools.cache
def _validators() -> Validators:
    schema = settings_schema()
    return Validators(schema, jsonschema_rs.validator_for(schema))


def settings_schema() -> dict[str, Any]:
    """The settings file's JSON Schema (``schemas/settings.schema.json``), a fresh copy."""
    text = (schema_dir() / "settings.schema.json").read_text(encoding="utf-8")
    result: dict[str, Any] = json.loads(text)
    return result


# -- loading -----------------------------------------------------------------------------


def load_settings(path: str | os.PathLike[str], *, display_path: str | None = None,
                  data: bytes | None = None) -> Settings:
    """Read, validate and build the settings file at ``path``.

    ``display_path`` names the file in messages and ``Settings.file`` (default ``str(path)``);
    ``data`` stands for its bytes. Raises ``SettingsInvalid`` with every problem found.
    """
    settings, problems = settings_or_problems(path, display_path=display_path, data=data)
    if settings is None:
        raise SettingsInvalid(problems)
    return settings


def settings_or_problems(path: str | os.PathLike[str], *, display_path: str | None = None,
                         data: bytes | None = None
                         ) -> tuple[Settings | None, tuple[Problem, ...]]:
    """``load_settings`` without raising: the settings, or None and the problems."""
    display = str(path) if display_path is None else display_path
    problems: list[tuple[yamlsafe.Mark, str]] = []

    def fail() -> tuple[None, tuple[Problem, ...]]:
        return None, tuple(sorted({Problem(display, line, col, message)
                                   for (line, col), message in problems}))

    try:
        data = yamlsafe.read_file(path, MAX_BYTES) if data is None else data
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        problems.append(((1, 1), f"cannot read the file: {reason}"))
        return fail()
    if len(data) > MAX_BYTES:
        problems.append(((1, 1), f"the settings file may be at most {MAX_BYTES >> 20} MiB"))
        return fail()
    try:
        document = yamlsafe.parse(data)
    except yamlsafe.Refused as exc:
        problems.append((exc.mark, exc.message))
        return fail()
    mapping = document.data
    problems.extend(document.problems)
    reported: set[yamlsafe.JsonPath] = set()
    validators = _validators()
    if problems or not validators.is_valid(mapping):
        bad_marks = {mark for mark, _ in problems}
        for where, at_key, message in validators.explain(mapping):
            mark = document.where(where, key=at_key)
            if mark not in bad_marks:
                problems.append((mark, message))
            reported.add(where)
    text = data.decode("utf-8").removeprefix("\ufeff")
    problems.extend(checks.check_settings(document, reported, text=text).errors)
    if problems:
        return fail()
    return _build(mapping, display, hashlib.sha256(data).hexdigest()), ()


def _build(data: dict[str, Any], file: str, sha256: str) -> Settings:
    given = data.get("defaults", {})
    smtp = data.get("smtp")
    password = smtp.get("password") if smtp else None
    return Settings(
        file=file, sha256=sha256,
        pools=freeze({name: int(size) for name, size in data.get("pools", {}).items()}),
        max_active_runs=_int(data.get("max_active_runs")),
        defaults=Defaults(
            timezone=zone(given["timezone"]) if "timezone" in given else None,
            timeout=parse_duration(given["timeout"]) if "timeout" in given else None,
            retries=retry_policy(given["retries"]) if "retries" in given else None,
            notify=notify_targets(given["notify"]) if "notify" in given else None,
            history=history(given["history"]) if "history" in given else None,
            max_parallel=_int(given.get("max_parallel")),
            document=freeze(given)),
        smtp=None if smtp is None else Smtp(
            host=smtp["host"], sender=smtp["from"], port=int(smtp.get("port", Smtp.port)),
            starttls=bool(smtp.get("starttls", Smtp.starttls)), username=smtp.get("username"),
            password=None if password is None else Secret(
                "smtp.password", password.get("env"), password.get("file"))),
        secrets=secret_refs(data.get("secrets")),
    )


# -- the defaults, applied to a job --------------------------------------------------------

_KEYS = ("timeout", "retries", "notify", "history")


def apply_defaults(data: dict[str, Any], defaults: Defaults) -> dict[str, Any]:
    """A job's (valid) document with the settings' defaults where it does not set the key.

    ``timeout``, ``retries``, ``notify``, ``history``: the whole key (a job's ``notify: []``
    sends nothing). ``timezone``: every schedule entry without one (a cron or interval string
    becomes the mapping it stands for, which can hold the zone). ``max_parallel``: every
    ``for_each`` step without one. ``data`` itself is not changed.
    """
    given = defaults.document
    if not given:
        return data
    out = dict(data)
    for key in _KEYS:
        if key in given and key not in out:
            out[key] = thaw(given[key])
    tz = given.get("timezone")
    if isinstance(tz, str) and out.get("schedule") is not None:
        schedule = out["schedule"]
        out["schedule"] = ([_zoned(e, tz) for e in schedule] if isinstance(schedule, list)
                           else _zoned(schedule, tz))
    limit = given.get("max_parallel")
    if isinstance(limit, int):
        for list_name in STEP_LISTS:
            steps = out.get(list_name)
            if isinstance(steps, list) and any(
                    "for_each" in s and "max_parallel" not in s for s in steps):
                out[list_name] = [{**s, "max_parallel": limit}
                                  if "for_each" in s and "max_parallel" not in s else s
                                  for s in steps]
    return out


def _zoned(entry: Any, tz: str) -> Any:
    """A schedule entry with ``timezone: tz`` unless it has one (or is no time schedule)."""
    if isinstance(entry, dict):
        if "timezone" in entry or not entry.keys() & {"cron", "every", "at"}:
            return entry
        return {**entry, "timezone": tz}
    if not isinstance(entry, str):
        return entry
    kind, text = schedule_form(entry)
    if kind is ScheduleKind.EVERY:
        return {"every": text, "timezone": tz}
    try:
        cron.parse_cron(text)
    except ValueError:  # not a cron expression (an event alias): no zone to give
        return entry
    return {"cron": text, "timezone": tz}


# -- values jobs and settings share ----------------------------------------------------------


def _int(value: Any) -> Any:
    """JSON Schema's integers include 2.0; the model wants 2."""
    return int(value) if isinstance(value, float) else value


def retry_policy(value: Any) -> RetryPolicy:
    """A valid ``retries:`` value: a limit, or ``{limit, delay, backoff, max_delay}``."""
    if isinstance(value, int | float):
        return RetryPolicy(limit=int(value))
    max_delay = value.get("max_delay")
    return RetryPolicy(limit=int(value["limit"]),
                       delay=parse_duration(value.get("delay", RetryPolicy.delay)),
                       backoff=Backoff(value.get("backoff", RetryPolicy.backoff)),
                       max_delay=None if max_delay is None else parse_duration(max_delay))


def history(value: Mapping[str, Any]) -> History:
    """A valid ``history:`` value; ``keep_days`` may be a number of days or a duration."""
    keep_days = value.get("keep_days")
    if isinstance(keep_days, str):
        keep_days = parse_duration(keep_days) / 86400.0
    return History(_int(value.get("keep_runs")),
                   None if keep_days is None else float(keep_days))


def secret_refs(value: Mapping[str, Any] | None) -> Mapping[str, Secret]:
    """A valid ``secrets:`` mapping: name -> where its value is read from."""
    refs: Mapping[str, Secret] = freeze({name: Secret(name, ref.get("env"), ref.get("file"))
                                         for name, ref in (value or {}).items()})
    return refs


def pool(value: Any) -> Pool | None:
    """A valid ``pool:`` value (a name, or ``{name, slots}``), or None."""
    if value is None:
        return None
    if isinstance(value, str):
        return Pool(value)
    return Pool(value["name"], int(value.get("slots", Pool.slots)))


def notify_targets(value: Any) -> tuple[NotifyTarget, ...]:
    """A valid ``notify:`` list as targets, each knowing its place in the list."""
    return tuple(_target(index, entry) for index, entry in enumerate(value or ()))


def _target(index: int, entry: Mapping[str, Any]) -> NotifyTarget:
    kind = next(TargetKind(k) for k in ("webhook", "slack", "email", "ping", "command")
                if k in entry)
    when = (frozenset(NotifyEvent(e) for e in entry["when"]) if "when" in entry
            else PING_WHEN if kind is TargetKind.PING else DEFAULT_WHEN)
    common: dict[str, Any] = {
        "kind": kind, "when": when, "index": index,
        "cooldown": parse_duration(entry.get("cooldown", NotifyTarget.cooldown)),
        "timeout": parse_duration(entry.get("timeout", NotifyTarget.timeout)),
    }
    body = entry[kind.value]
    if kind is TargetKind.WEBHOOK:
        return NotifyTarget(url=body["url"], headers=freeze(dict(body.get("headers", {}))),
                            **common)
    if kind is TargetKind.SLACK:
        return NotifyTarget(url=body["webhook_url"], channel=body.get("channel"),
                            username=body.get("username"), **common)
    if kind is TargetKind.EMAIL:
        return NotifyTarget(to=tuple(body["to"]), subject=body.get("subject"), **common)
    if kind is TargetKind.PING:
        return NotifyTarget(url=body, **common)
    return NotifyTarget(command=tuple(body), **common)
