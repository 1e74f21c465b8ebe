"""The checks a JSON Schema cannot express, run on a document whether or not it is valid.

Needs that name unknown steps or form cycles (``dag.check``), duplicate step ids across the
step lists, cron expressions that never fire, unknown time zones, durations out of range,
``${{ }}`` templates and expressions that do not parse, shell words that do not split, and
parameter defaults that do not fit their type. A schema-invalid document is checked too, so
that one run of ``pipeline validate`` reports everything; the checks therefore look at the
type of every value before using it, and skip the paths the schema already complained about
(one message per place is enough).
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Iterable
from typing import Any
from zoneinfo import ZoneInfo

from pipeline import dag, expr, params, triggers
from pipeline.model import JOB_NAME, ScheduleKind
from pipeline.notation import parse_duration, parse_time, schedule_form, unwrap, zone
from pipeline.schema import PATTERN_WORDS, dotted
from pipeline.yamlsafe import Document, JsonPath, Mark

_STEP_TEMPLATES = frozenset({"run", "exec", "with", "cwd"})
_STEP_LISTS = ("steps", *dag.HOOK_LISTS)


def check(document: Document, reported: Iterable[JsonPath], file_stem: str
          ) -> list[tuple[Mark, str]]:
    """Every problem in ``document.data`` the schema cannot see, located, with its message.

    Paths in ``reported`` already have a message (from YAML or the schema) and get no other;
    ``file_stem`` is the job's name when the document sets none.
    """
    checks = _Checks(document, reported)
    checks.run(document.data, file_stem)
    return checks.found


class _Checks:
    """One document's checks; ``found`` collects their problems, at most one per path."""

    def __init__(self, document: Document, reported: Iterable[JsonPath]) -> None:
        self.doc = document
        self.reported = set(reported)
        self.found: list[tuple[Mark, str]] = []

    def report(self, path: JsonPath, message: str) -> None:
        if path in self.reported:
            return
        self.reported.add(path)
        self.found.append((self.doc.where(path), f"{dotted(path)}: {message}"))

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
        self.env(data.get("outputs"), ("outputs",))  # templates, checked as env values are
        declarations = data.get("params")
        if isinstance(declarations, dict):
            for name, declaration in declarations.items():
                for where, message in params.problems(declaration):
                    self.report(("params", name, *where), message)
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
                zone(zone_name)
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

