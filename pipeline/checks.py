"""The checks a JSON Schema cannot express, run on a document whether or not it is valid.

Needs that name unknown steps or form cycles (``dag.check``), duplicate step ids across the
step lists, cron expressions that never fire, unknown time zones, durations out of range,
``${{ }}`` templates and expressions that do not parse, shell words that do not split, and
parameter defaults that do not fit their type. A schema-invalid document is checked too, so
that one run of ``pipeline validate`` reports everything; the checks therefore look at the
type of every value before using it, and skip the paths the schema already complained about
(one message per place is enough).

Expressions are also read for what they look up, because a lookup that can never succeed
would otherwise fail only when the run gets there: ``steps.nope`` (no such step), a step
this one does not need (directly or through others: its values are never there when this
step runs; hooks and the job's ``outputs:`` may read every step of the DAG), ``params.x`` or
``secrets.X`` not declared, ``env.X`` not set by the job or the step, ``item`` outside a
``for_each`` step, ``succes()`` (an unknown function); ``pipeline.lookups`` has the rules.
The same lookup under ``| default`` or an ``is defined`` test does not fail, so there it is a
warning. Each is reported where it is written inside its string (``Document`` marks point at
the string's start; the file's text gives the column of the lookup itself).

Notifications (``notify:``) are templates rendered when one is sent, with ``secrets``,
``params``, ``job`` and ``run`` (no step is there for them); an ``email`` target needs the
settings file's ``smtp:``. A ``pool:`` must name a pool of the settings file, asking for no
more slots than it has. Both are judged only when the settings are known (``settings``): a
single file checked on its own does not know them. ``check_settings`` checks the settings
file itself (its defaults' durations and notify templates).

Warnings are for what loads and runs but is likely a mistake: an ``at:`` in the past (it
never fires), a ``jitter`` longer than its ``every:`` interval. ``every:`` below one second
and retry delays over a day are errors (retry limits over 100 the schema refuses).

Each ``schedule:`` entry is checked by ``pipeline.schedule_checks`` (cron, zones, calendars,
``file:`` globs, event keys), and the step lists by ``pipeline.step_checks`` (unique ids,
needs, each step's templates, expressions, shell and durations), both reporting through the
same ``Checks``, which keeps the checks of values found in many places (durations, templates,
expressions and their lookups, retries, pools, notify targets).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipeline import expr, params
from pipeline.errors import did_you_mean
from pipeline.lookups import NO_ITEM, Names, Scope
from pipeline.model import JOB_NAME, Settings
from pipeline.notation import (
    parse_duration,
    unwrap,
    zone,
)
from pipeline.schedule_checks import check_schedule
from pipeline.schema import PATTERN_WORDS, dotted
from pipeline.step_checks import check_steps
from pipeline.yamlsafe import Document, JsonPath, Mark, show

NOTIFY_KINDS = frozenset({"webhook", "slack", "email", "ping", "command"})
MIN_INTERVAL = 1.0  # seconds; a shorter every: is a typo (250ms for 250s), and a busy loop
MAX_RETRY_DELAY = 86400.0  # a step that waits over a day to retry holds its run for that long


@dataclass(frozen=True)
class Findings:
    """What the checks found: errors (the file is invalid) and warnings (it loads, but...)."""

    errors: list[tuple[Mark, str]] = field(default_factory=list)
    warnings: list[tuple[Mark, str]] = field(default_factory=list)


def check(document: Document, reported: Iterable[JsonPath], file_stem: str, *,
          text: str = "", now: datetime | None = None,
          settings: Settings | None = None, folder: str | None = None) -> Findings:
    """Every problem in ``document.data`` the schema cannot see, located, with its message.

    Paths in ``reported`` already have a message (from YAML or the schema) and get no other;
    ``file_stem`` is the job's name when the document sets none. ``text`` is the file's text
    (what ``document`` was parsed from), to place a message on an expression inside a string;
    without it a message points at the string. ``now``: what "in the past" is measured from
    (None: no such warning). ``settings``: the jobs directory's settings, against which pools,
    email targets and notify secrets are judged (None: not known, not judged). ``folder``: the
    job file's folder, which ``file:`` globs are read against and looked for (None: only their
    syntax is checked).
    """
    checks = Checks(document, reported, text, now, settings, folder)
    checks.run(document.data, file_stem)
    return Findings(checks.found, checks.warned)


def check_settings(document: Document, reported: Iterable[JsonPath], *,
                   text: str = "") -> Findings:
    """What the settings file's schema cannot see: its defaults' zone and durations, and the
    templates of its default notify targets, which may read the secrets it declares (and
    ``params``, ``job``, ``run``: not judged here, a job's params vary)."""
    checks = Checks(document, reported, text, None, None)
    checks.names.params = None
    checks.names.declarer = "the settings file"
    data = document.data
    defaults = data.get("defaults")
    if isinstance(defaults, dict):
        zone_name = defaults.get("timezone")
        if isinstance(zone_name, str):
            try:
                zone(zone_name)
            except ValueError as exc:
                checks.report(("defaults", "timezone"), str(exc))
        checks.duration(defaults.get("timeout"), ("defaults", "timeout"), positive=True)
        checks.retries(defaults.get("retries"), ("defaults", "retries"))
        checks.history(defaults.get("history"), ("defaults", "history"))
        smtp = data.get("smtp")
        checks.notify(defaults.get("notify"), ("defaults", "notify"),
                      smtp=isinstance(smtp, dict))
    return Findings(checks.found, checks.warned)


class Checks:
    """One document's checks; ``found`` and ``warned`` collect their problems, at most one per
    path (and one per lookup inside an expression)."""

    def __init__(self, document: Document, reported: Iterable[JsonPath], text: str,
                 now: datetime | None, settings: Settings | None,
                 folder: str | None = None) -> None:
        self.doc = document
        self.reported = set(reported)
        self.text = text
        self.now = now
        self.settings = settings
        self.folder = folder
        self.job_name: str | None = None
        self.found: list[tuple[Mark, str]] = []
        self.warned: list[tuple[Mark, str]] = []
        self.names = Names(document.data)

    def report(self, path: JsonPath, message: str) -> None:
        if path in self.reported:
            return
        self.reported.add(path)
        self.found.append((self.doc.where(path), f"{dotted(path)}: {message}"))

    def warn(self, path: JsonPath, message: str) -> None:
        if path not in self.reported:
            self.warned.append((self.doc.where(path), f"{dotted(path)}: {message}"))

    def duration(self, value: Any, path: JsonPath, *, positive: bool = False) -> float | None:
        """The seconds ``value`` stands for, or None (reported) if it is no duration."""
        if value is None:
            return None
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.report(path, str(exc))
            return None
        if positive and seconds <= 0:
            self.report(path, "must be longer than 0")
        return seconds

    def interval(self, value: Any, path: JsonPath) -> float | None:
        seconds = self.duration(value, path, positive=True)
        if seconds is not None and 0 < seconds < MIN_INTERVAL:
            self.report(path, f"{show(value)} is shorter than {MIN_INTERVAL:g}s, the shortest "
                        "interval (did you mean seconds, not milliseconds?)")
        return seconds

    def template(self, value: Any, path: JsonPath, scope: Scope | None = None) -> None:
        if isinstance(value, str):
            if "${{" in value:
                message = expr.check_template(value)
                if message:
                    self.report(path, message)
                elif scope is not None:
                    self.lookups(value, path, scope)
        elif isinstance(value, dict):
            for key, item in value.items():
                self.template(item, (*path, key), scope)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self.template(item, (*path, index), scope)

    def expression(self, value: Any, path: JsonPath, scope: Scope) -> None:
        if isinstance(value, str):
            try:
                bare = unwrap(value)
            except ValueError as exc:
                self.report(path, str(exc))
                return
            message = expr.check_expression(bare)
            if message:
                self.report(path, message)
            else:
                self.lookups(value, path, scope, bare=True)

    def lookups(self, value: str, path: JsonPath, scope: Scope, *, bare: bool = False) -> None:
        """Report each lookup in ``value`` that cannot succeed where it is (see the module)."""
        if path in self.reported:
            return
        for ref in expr.references(value, bare=bare):
            message = self.names.judge(ref, scope)
            if message is None:
                continue
            if ref.guarded:
                message += "; the default (or the `is defined` test) always decides"
            found = (self.mark_in(path, value, ref.offset), f"{dotted(path)}: {message}")
            into = self.warned if ref.guarded else self.found
            if found not in into:
                into.append(found)

    def mark_in(self, path: JsonPath, value: str, offset: int) -> Mark:
        """Where ``value[offset]`` is written, ``value`` being the string at ``path``.

        The scalar's source text is searched for the characters from ``offset`` up to the
        first one that quoting or folding may have written differently; if they are written
        as often there as in the value, the same occurrence is the one. Otherwise (escapes,
        folded lines) the mark of the string itself.
        """
        node = self.doc.node(path)
        start_mark = getattr(node, "start_mark", None)
        end_mark = getattr(node, "end_mark", None)
        if self.text and start_mark is not None and end_mark is not None:
            start = start_mark.index
            source = self.text[start:end_mark.index]
            needle = _plain_run(value, offset)
            if needle:
                in_value = _occurrences(value, needle)
                in_source = _occurrences(source, needle)
                if len(in_value) == len(in_source) and offset in in_value:
                    at = start + in_source[in_value.index(offset)]
                    return (self.text.count("\n", 0, at) + 1,
                            at - self.text.rfind("\n", 0, at))
        return self.doc.where(path)

    def run(self, data: dict[str, Any], file_stem: str) -> None:
        if "name" not in data and not JOB_NAME.match(file_stem):
            self.found.append(((1, 1), f"the job name {file_stem!r} comes from the file name "
                               f"and is not {PATTERN_WORDS[JOB_NAME.pattern]}; rename the "
                               "file or set `name:`"))
        name = data.get("name", file_stem)
        self.job_name = name if isinstance(name, str) else None
        schedule = data.get("schedule")
        if isinstance(schedule, list):
            for index, entry in enumerate(schedule):
                check_schedule(self, entry, ("schedule", index))
        elif schedule is not None:
            check_schedule(self, schedule, ("schedule",))
        self.duration(data.get("timeout"), ("timeout",), positive=True)
        self.duration(data.get("deadline"), ("deadline",), positive=True)
        self.retries(data.get("retries"), ("retries",))
        breaker = data.get("circuit_breaker")
        if isinstance(breaker, dict):
            self.duration(breaker.get("cooldown"), ("circuit_breaker", "cooldown"))
        self.history(data.get("history"), ("history",))
        if "notify" in data:
            settings = self.settings
            declared = self.names.secrets
            if settings is not None and declared is not None:
                # A job's own targets may read the settings file's secrets too (its steps
                # may not: they get only the job's).
                self.names.secrets = declared | frozenset(settings.secrets)
            self.notify(data["notify"], ("notify",),
                        smtp=None if settings is None else settings.smtp is not None)
            self.names.secrets = declared
        if "pool" in data:
            self.pool(data["pool"], ("pool",))
        # The job's env is rendered before any step runs, with an empty env.
        self.env(data.get("env"), ("env",), Scope(
            "env", item=NO_ITEM, env=frozenset(),
            env_words="nothing while the job's own env: is evaluated"))
        outputs = data.get("outputs")
        if isinstance(outputs, dict):
            for key, value in outputs.items():
                self.template(value, ("outputs", key), Scope("outputs", item=NO_ITEM))
        declarations = data.get("params")
        if isinstance(declarations, dict):
            for name, declaration in declarations.items():
                for where, message in params.problems(declaration):
                    self.report(("params", name, *where), message)
        check_steps(self, data)

    def history(self, value: Any, path: JsonPath) -> None:
        if isinstance(value, dict):
            days = value.get("keep_days")
            if isinstance(days, int | float) and not isinstance(days, bool):
                try:
                    days = float(days) * 86400.0  # a number is days; check it as seconds
                except OverflowError:
                    days = math.inf
            self.duration(days, (*path, "keep_days"), positive=True)

    def notify(self, value: Any, path: JsonPath, *, smtp: bool | None) -> None:
        """A notify: list. ``smtp``: whether the settings have an SMTP server (None: the
        settings are not known)."""
        if not isinstance(value, list):
            return
        scope = Scope("notify", item=NO_ITEM)
        for index, target in enumerate(value):
            if not isinstance(target, dict):
                continue
            at = (*path, index)
            self.duration(target.get("cooldown"), (*at, "cooldown"))
            self.duration(target.get("timeout"), (*at, "timeout"), positive=True)
            for key in target.keys() & NOTIFY_KINDS:
                self.template(target[key], (*at, key), scope)
            if "email" in target and smtp is False:
                self.report((*at, "email"), "email needs an SMTP server: set smtp: in the "
                            "settings file (kind: settings) of the jobs directory")

    def pool(self, value: Any, path: JsonPath) -> None:
        """A ``pool:``, against the settings' pools (not judged when they are not known)."""
        if self.settings is None:
            return
        if isinstance(value, dict):
            name, slots, at = value.get("name"), value.get("slots", 1), (*path, "name")
        else:
            name, slots, at = value, 1, path
        if not isinstance(name, str):
            return
        pools = self.settings.pools
        size = pools.get(name)
        if size is None:
            known = (f"pools: {', '.join(sorted(pools))}" if pools
                     else "the jobs directory has no settings file with pools:" if not
                     self.settings.file else f"{self.settings.file} defines no pools")
            self.report(at, f"there is no pool {name!r}{did_you_mean(name, pools)} "
                        f"({known})")
        elif isinstance(slots, int) and slots > size:
            self.report((*path, "slots") if isinstance(value, dict) else path,
                        f"asks for {slots} slots of pool {name!r}, which has {size}")

    def retries(self, value: Any, path: JsonPath) -> None:
        if isinstance(value, dict):
            for key in ("delay", "max_delay"):
                seconds = self.duration(value.get(key), (*path, key))
                if seconds is not None and seconds > MAX_RETRY_DELAY:
                    self.report((*path, key), f"{show(value[key])} is longer than a day, the "
                                "longest wait before a retry")

    def env(self, value: Any, path: JsonPath, scope: Scope) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                self.template(item, (*path, key), scope)


def _plain_run(value: str, offset: int) -> str:
    """The characters of ``value`` from ``offset`` that a YAML scalar writes as they are: up to
    a quote, a backslash, a line break or any other control character (at most 60)."""
    end = offset
    while end < len(value) and end - offset < 60:
        char = value[end]
        if char in "'\"\\" or not char.isprintable():
            break
        end += 1
    return value[offset:end]


def _occurrences(text: str, needle: str) -> list[int]:
    found = []
    at = text.find(needle)
    while at != -1:
        found.append(at)
        at = text.find(needle, at + 1)
    return found

