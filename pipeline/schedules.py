"""A schedule entry of a job file, read into a ``Schedule``: the one reader that both the
checks (to try a calendar before the file is accepted) and ``spec`` (to build the model) use.

An entry is a string (a cron expression, an ``@alias``, ``every 15m`` or ``@reboot``) or a
mapping with one of ``cron``, ``every``, ``at`` (the timed kinds, which may carry a calendar:
``active: {from, until}`` and ``exclude: [...]``), ``file`` or ``after`` (events, CONTRACT
§11). Each reader raises ``ValueError`` with the message a user sees; ``build`` expects an
entry that passed the schema and the checks.
"""

from __future__ import annotations

import os
import re
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pipeline import cron
from pipeline.model import Catchup, Exclusion, RunStatus, Schedule, ScheduleKind, Window
from pipeline.notation import local_zone, parse_duration, parse_time, schedule_form, zone

DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
TIMED_ONLY = ("timezone", "jitter", "catchup", "misfire_grace", "active", "exclude")

_DATE = re.compile(DATE_PATTERN)


def build(entry: Any, *, folder: str | None = None) -> Schedule:
    """The ``Schedule`` an entry stands for. ``folder`` is the job file's folder, which a
    relative ``file:`` glob is read against (None: the glob is kept as written)."""
    if isinstance(entry, str):
        kind, text = schedule_form(entry)
        if kind is ScheduleKind.EVERY:
            return Schedule(kind, local_zone(), every=parse_duration(text), text=entry)
        if kind is ScheduleKind.REBOOT:
            return Schedule(kind, local_zone(), text=text)
        return Schedule(kind, local_zone(), cron=cron.parse_cron(text), text=entry)
    tz = zone(entry["timezone"]) if "timezone" in entry else local_zone()
    if "file" in entry:
        return Schedule(ScheduleKind.FILE, tz, file=glob_path(entry["file"], folder),
                        settle=parse_duration(entry.get("settle", Schedule.settle)),
                        existing=bool(entry.get("existing", Schedule.existing)),
                        text=entry["file"])
    if "after" in entry:
        return Schedule(ScheduleKind.AFTER, tz, after=entry["after"],
                        status=tuple(RunStatus(s) for s in entry.get("status", Schedule.status)),
                        text=f"after {entry['after']}")
    common: dict[str, Any] = {
        "jitter": parse_duration(entry.get("jitter", Schedule.jitter)),
        "catchup": Catchup(entry.get("catchup", Schedule.catchup)),
        "misfire_grace": parse_duration(entry.get("misfire_grace", Schedule.misfire_grace)),
        "active": window(entry["active"], tz) if "active" in entry else None,
        "exclude": tuple(exclusion(text) for text in entry.get("exclude", ())),
    }
    if "cron" in entry:
        return Schedule(ScheduleKind.CRON, tz, cron=cron.parse_cron(entry["cron"]),
                        text=entry["cron"], **common)
    if "every" in entry:
        start = parse_time(entry["start"], tz) if "start" in entry else None
        return Schedule(ScheduleKind.EVERY, tz, every=parse_duration(entry["every"]),
                        start=start, text=f"every {entry['every']}", **common)
    return Schedule(ScheduleKind.AT, tz, at=parse_time(entry["at"], tz),
                    text=f"at {entry['at']}", **common)


def window(value: dict[str, Any], tz: ZoneInfo) -> Window:
    """``active: {from, until}``; ValueError for a bad time or an empty window."""
    start = bound(value["from"], tz) if "from" in value else None
    end = bound(value["until"], tz, end=True) if "until" in value else None
    if start is not None and end is not None and end < start:
        raise ValueError(f"until ({value['until']}) is before from ({value['from']}): the "
                         "window holds no time")
    return Window(start, end, value.get("from", ""), value.get("until", ""))


def bound(text: str, tz: ZoneInfo, *, end: bool = False) -> datetime:
    """A window bound: an ISO 8601 time, or a date alone: the start of that day for
    ``from``, its last microsecond for ``until`` (``end``), so the whole day is inside."""
    moment = parse_time(text, tz)
    if end and _DATE.match(text.strip()):
        moment = moment + timedelta(days=1) - timedelta(microseconds=1)
    return moment


def exclusion(text: str) -> Exclusion:
    """An ``exclude:`` entry: a date ``YYYY-MM-DD`` or a cron expression."""
    stripped = text.strip()
    if _DATE.match(stripped):
        try:
            return Exclusion(text, date=date.fromisoformat(stripped))
        except ValueError:
            raise ValueError(f"{text!r} is not a real date") from None
    try:
        return Exclusion(text, cron=cron.parse_cron(stripped))
    except ValueError as exc:
        raise ValueError(f"{text!r} is neither a date (YYYY-MM-DD) nor a cron expression: "
                         f"{exc}") from None


def glob_path(pattern: str, folder: str | None) -> str:
    """A ``file:`` glob made absolute: ``~`` expanded, a relative one joined to ``folder``."""
    expanded = os.path.expanduser(pattern)
    if folder is None and not os.path.isabs(expanded):
        return expanded
    joined = os.path.normpath(os.path.join(folder or os.sep, expanded))
    # normpath drops a trailing slash, which says the glob names a folder: a mistake the
    # checks report, so it is kept.
    return joined + os.sep if expanded.endswith(os.sep) and joined != os.sep else joined
