"""The checks of one ``schedule:`` entry that its schema cannot express (``pipeline.checks``
runs them, with its reporting).

A cron expression must read; an interval must be at least a second, and a ``jitter`` longer
than it is a warning; a zone must be one; an ``at:`` in the past is a warning (it never
fires). A calendar's dates and cron expressions must read, its window must not end before it
begins, and a calendar under which the schedule can never fire (an exclude list that removes
every fire, a window that holds none) is an error; one that has only run out (a window that
ended) is a warning. A ``file:`` glob must be one (``pipeline.globs``); a folder it names that
is missing or unreadable is a warning, because that is the machine's state, not the file's.
Keys of time schedules (``jitter``, ``exclude``...) on an event entry are errors, as is an
``after:`` naming its own job (other jobs are judged across files, by ``jobset``).
"""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from pipeline import cron, globs, schedules, triggers
from pipeline.model import ScheduleKind
from pipeline.notation import local_zone, parse_time, schedule_form, zone
from pipeline.yamlsafe import JsonPath, show

if TYPE_CHECKING:
    from pipeline.checks import Checks


def check_schedule(checks: Checks, entry: Any, path: JsonPath) -> None:
    """Report what is wrong with one schedule entry (a string or a mapping) at ``path``."""
    if isinstance(entry, str):
        kind, text = schedule_form(entry)
        if kind is ScheduleKind.EVERY:
            checks.interval(text, path)
        elif kind is not ScheduleKind.REBOOT:
            _cron(checks, text, path)
        return
    if not isinstance(entry, dict):
        return
    kinds = [k for k in ("cron", "every", "at", "file", "after") if k in entry]
    if kinds in (["file"], ["after"]):
        _event(checks, entry, path, kinds[0])
        return
    errors = len(checks.found)
    if isinstance(entry.get("cron"), str):
        _cron(checks, entry["cron"], (*path, "cron"))
    every = checks.interval(entry.get("every"), (*path, "every"))
    jitter = checks.duration(entry.get("jitter"), (*path, "jitter"))
    if every and jitter and jitter > every:
        checks.warn((*path, "jitter"), f"{show(entry['jitter'])} is longer than the interval "
                    f"({show(entry['every'])}): a fire can start after the next one")
    default = checks.settings.defaults.timezone if checks.settings is not None else None
    tz: ZoneInfo | None = default or local_zone()
    zone_name = entry.get("timezone")
    if isinstance(zone_name, str):
        try:
            tz = zone(zone_name)
        except ValueError as exc:
            checks.report((*path, "timezone"), str(exc))
            tz = None
    for key in ("at", "start"):
        if isinstance(entry.get(key), str):
            try:
                moment = parse_time(entry[key], tz or ZoneInfo("UTC"))
            except ValueError as exc:
                checks.report((*path, key), str(exc))
                continue
            if key == "at" and tz is not None and checks.now is not None \
                    and moment < checks.now:
                checks.warn((*path, key), f"{show(entry[key])} is in the past: this "
                            "schedule never fires")
    if tz is not None:
        _active(checks, entry.get("active"), (*path, "active"), tz)
    _exclude(checks, entry.get("exclude"), (*path, "exclude"))
    if len(kinds) == 1 and len(checks.found) == errors and ("active" in entry
                                                            or "exclude" in entry):
        _calendar(checks, entry, path)


def _active(checks: Checks, value: Any, path: JsonPath, tz: ZoneInfo) -> None:
    if not isinstance(value, dict):
        return
    bounds: dict[str, datetime] = {}
    for key in ("from", "until"):
        if isinstance(value.get(key), str):
            try:
                bounds[key] = schedules.bound(value[key], tz, end=key == "until")
            except ValueError as exc:
                checks.report((*path, key), str(exc))
    if len(bounds) == 2 and bounds["until"] < bounds["from"]:
        checks.report((*path, "until"), f"{show(value['until'])} is before from "
                      f"({show(value['from'])}): the window holds no time")


def _exclude(checks: Checks, value: Any, path: JsonPath) -> None:
    if not isinstance(value, list):
        return
    for index, item in enumerate(value):
        if isinstance(item, str):
            try:
                schedules.exclusion(item)
            except ValueError as exc:
                checks.report((*path, index), str(exc))


def _calendar(checks: Checks, entry: dict[str, Any], path: JsonPath) -> None:
    """A calendar under which the schedule never fires is an error; one under which it
    fires no more (a window that has ended) is a warning."""
    try:
        schedule = schedules.build(entry)
    except ValueError:  # reported where it is written
        return
    now = checks.now or datetime.now(UTC)
    if triggers.first_fire(schedule, now) is None:
        plain = triggers.first_fire(dataclasses.replace(schedule, exclude=()), now)
        if schedule.kind is ScheduleKind.AT and plain is not None:
            checks.report((*path, "exclude"), f"excludes {show(entry['at'])}, the one fire "
                          "of this schedule: it never fires")
        elif plain is not None or schedule.active is None:
            checks.report((*path, "exclude"), "removes every fire of this schedule: it "
                          "never fires")
        elif schedule.kind is ScheduleKind.AT:
            checks.report((*path, "active"), f"{show(entry['at'])} is outside this "
                          "window: the schedule never fires")
        else:
            checks.report((*path, "active"), "no fire of this schedule falls in the "
                          "window: it never fires")
        return
    if checks.now is None or triggers.next_fire(schedule, now) is not None:
        return
    if schedule.kind is ScheduleKind.AT and isinstance(entry.get("at"), str):
        return  # the `at` in the past is warned about already
    until = entry.get("active", {}).get("until")
    if isinstance(until, str):
        checks.warn((*path, "active", "until"), f"{show(until)} leaves no fire after now: "
                    "this schedule fires no more")
    else:
        checks.warn((*path, "exclude"), "removes every fire after now: this schedule "
                    "fires no more")


def _event(checks: Checks, entry: dict[str, Any], path: JsonPath, kind: str) -> None:
    for key in schedules.TIMED_ONLY:
        if key in entry:
            checks.report((*path, key), f"applies to time schedules (cron, every, at), not "
                          f"to a {kind} schedule")
    if kind == "file":
        checks.duration(entry.get("settle"), (*path, "settle"))
        if isinstance(entry.get("file"), str):
            _glob(checks, entry["file"], (*path, "file"))
    elif entry.get("after") == checks.job_name and checks.job_name is not None:
        checks.report((*path, "after"), f"a job cannot fire after itself "
                      f"({checks.job_name!r})")


def _glob(checks: Checks, pattern: str, path: JsonPath) -> None:
    """A bad glob is an error; a folder it names that is not there or cannot be read is
    a warning, because that depends on the machine, not on the file."""
    absolute = schedules.glob_path(pattern, checks.folder or os.sep)
    try:
        glob = globs.parse(absolute)
    except ValueError as exc:
        # in the words the user wrote, not the path it was made into
        checks.report(path, str(exc).replace(absolute.rstrip(os.sep), pattern.rstrip(os.sep)))
        return
    if checks.folder is None:
        return
    root = glob.root
    if not os.path.exists(root):
        existing = root
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        checks.warn(path, f"the folder {root} does not exist ({existing} is the nearest "
                    "that does): nothing fires until it is created")
    elif not os.path.isdir(root):
        checks.warn(path, f"{root} is not a folder: nothing fires")
    elif not os.access(root, os.R_OK | os.X_OK):
        checks.warn(path, f"the folder {root} cannot be read: nothing fires until it can")


def _cron(checks: Checks, text: str, path: JsonPath) -> None:
    try:
        cron.parse_cron(text)
    except ValueError as exc:
        checks.report(path, f"invalid cron expression {text!r}: {exc}")
