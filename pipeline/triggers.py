"""When schedules fire: cron expressions, fixed intervals and one-shot times.

Pure arithmetic on aware datetimes: no trio, and no I/O beyond finding the machine's zone.
Every instant is computed in UTC. Fire times are handed out in the schedule's zone but with a
fixed offset (``datetime.timezone``) as their tzinfo, not the ``ZoneInfo``: Python compares
and hashes two datetimes of the same ``ZoneInfo`` by wall time, ignoring ``fold``, so 02:30 of
the second pass through a repeated hour would equal 02:30 of the first and sort before 02:45
of the first. With fixed offsets, equality, hashing and ordering are by instant, and
``isoformat()`` shows the offset the zone had at that instant.

Cron has the meaning of crontab(5) as cronie parses it: ``parse_cron`` accepts exactly cronie's
grammar (``*``, numbers, three-letter month and day names, ``a-b`` ranges, ``*/n`` and ``a-b/n``
steps, comma lists, 0 and 7 for Sunday) and rejects the extensions of cronsim, croniter and
Quartz (``L``, ``W``, ``#``, ``?``, ``5/15``). When day-of-month and day-of-week are both
restricted a day matches if either does; a field that starts with ``*`` (``*/2`` too) counts as
unrestricted, so ``0 0 */2 * MON`` means odd days that are Mondays, as in cronie.

cronsim is used only to walk local wall-clock times, given a naive datetime; which instants a
wall-clock time stands for is decided here, by the contract's daylight-saving rule:

* hour field fixed (a number, range or list, no ``*`` and no step): a wall time skipped by a
  gap fires once at the first instant after the gap; a repeated wall time fires once, at its
  first occurrence.
* hour field with ``*`` or a step: real time; every matching instant that exists fires, in both
  passes through a repeated hour, and nothing fires in a skipped one.

cronsim's own zone handling is not used: it applies the fixed-time treatment when neither the
minute nor the hour field starts with ``*`` (cronie's MIN_STAR/HR_STAR test, so ``*/15 2 * * *``
gets real time and ``0 1-23/2 * * *`` fixed time, where the contract's hour-field rule says the
opposite), never to six-field expressions, and started inside the second pass through a
repeated hour it can return an instant before the one it was given. Nor does cronsim see the
user's text: it reads a one-value range with a step (``5-5/10``) as ``5/10`` (5, 15, 25, ...),
so it is handed every field in plain numbers.

A schedule's calendar (``active: {from, until}``, ``exclude: [dates, cron expressions]``)
removes fires from what its expression makes, judged by each fire's wall time in the
schedule's zone; every function here honours it, ``removed_between`` and ``calendar_verdict``
say which fires it removed and why. Event schedules (file, after, @reboot) have no fire times.

Bounds: parsing is linear in the text, which is at most ``MAX_EXPRESSION`` characters. Every
expression ``parse_cron`` accepts fires at least once in 40 years (the longest wait is for a
29 February on a given weekday), and a search stops after ``SEARCH_YEARS`` without a fire, or,
through a calendar, after ``MAX_REMOVED`` excluded spans in a row: an exclude list that
removes every fire ends a search in a fraction of a second (``pipeline validate`` refuses it).
``fires_between`` does work in proportion to its ``limit``, never to the length of the span.
"""

from __future__ import annotations

import functools
import heapq
import os
import random
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from pathlib import Path
from typing import TypeVar
from zoneinfo import TZPATH, ZoneInfo, ZoneInfoNotFoundError, available_timezones

from cronsim import CronSim, CronSimError

from pipeline.model import Exclusion, Schedule, ScheduleKind

_T = TypeVar("_T")

SEARCH_YEARS = 50  # no cron fire within this many years of the last one: there are no more
MAX_EXPRESSION = 1000  # characters; keeps parsing bounded whatever the input
# A search for the next fire through a calendar gives up after this many exclusion spans (or
# removed fires) in a row: an exclude list that removes every fire must not spin (Temporal
# #7793). Spans are whole minutes, hours, days... so no useful calendar comes near it.
MAX_REMOVED = 10_000
_SEARCH_SPAN = timedelta(days=366 * SEARCH_YEARS)  # a calendar search looks no further

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RANDOM = random.Random()
_MICROSECOND = timedelta(microseconds=1)
_SECOND = timedelta(seconds=1)
_DAY = timedelta(days=1)

ALIASES: Mapping[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN",
                "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_DAYS_IN_MONTH = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February: leap years
_NUMBER = re.compile(r"[0-9]+")
# Quartz and cronsim extensions; each changes what an expression means, so none is accepted.
_EXTENSION = re.compile(r"[0-9]*L|LW|L-[0-9]+|[0-9]+W")
_ZONE_NAME = re.compile(r"[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+)*")


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] stands for low + i


_SECONDS = _Field("second", 0, 59)
_MINUTES = _Field("minute", 0, 59)
_HOURS = _Field("hour", 0, 23)
_DOMS = _Field("day-of-month", 1, 31)
_MONTHS = _Field("month", 1, 12, _MONTH_NAMES)
_DOWS = _Field("day-of-week", 0, 7, _DAY_NAMES)


# How much wall time around a match an `exclude:` cron expression covers entirely: the finest
# field that does not select every value decides (`* * * * 0,6` covers whole days, `* 12 * * *`
# whole hours). The search for the next fire jumps over such spans instead of walking them.
_SECOND_SPAN, _MINUTE_SPAN, _HOUR_SPAN, _DAY_SPAN, _MONTH_SPAN, _ALL_TIME = range(6)


@dataclass(frozen=True)
class _Cron:
    expression: str  # normalised, as parse_cron returns it
    walker: str  # the same in numbers only, for cronsim
    real_time: bool  # hour field has `*` or a step: fires follow real time across DST
    # The values each field selects (seconds first when there are six fields), Sunday as 0
    # only, to test a wall time directly (`exclude:`); `day_and`: cronie's rule that a `*`
    # in either day field makes a day match only if both fields do.
    fields: tuple[frozenset[int], ...] = ()
    day_and: bool = True
    span: int = _SECOND_SPAN


def parse_cron(text: str) -> str:
    """Validate a cron expression and return it normalised.

    Five fields (minute hour day-of-month month day-of-week) or six with seconds first; an
    ``@alias`` is expanded to its five fields; fields are joined by single spaces and names
    upper-cased. Raises ``ValueError`` with a message naming the field and the bad value, for
    an unsupported alias (``@reboot``), for syntax that is not crontab(5)'s, and for an
    expression that can never fire (``0 0 31 2 *``).
    """
    return _compile(text).expression


@functools.lru_cache(maxsize=1024)
def _compile(text: str) -> _Cron:
    if len(text) > MAX_EXPRESSION:
        raise ValueError(f"cron expression is too long ({len(text)} characters)")
    stripped = text.strip()
    if not stripped:
        raise ValueError("empty cron expression")
    if stripped.startswith("@"):
        alias = stripped.lower()
        if alias == "@reboot":
            raise ValueError("@reboot is an event, not a time: write it as the schedule "
                             "itself (schedule: \"@reboot\", or an item of its list)")
        if alias not in ALIASES:
            raise ValueError(f"unknown alias {stripped!r}; expected one of {', '.join(ALIASES)}")
        stripped = ALIASES[alias]
    parts = stripped.split()
    if len(parts) not in (5, 6):
        raise ValueError(f"expected 5 or 6 fields, got {len(parts)}")
    fields: tuple[_Field, ...] = (_MINUTES, _HOURS, _DOMS, _MONTHS, _DOWS)
    if len(parts) == 6:
        fields = (_SECONDS, *fields)
    parsed = [_parse_field(field, part) for field, part in zip(fields, parts, strict=True)]
    dom_text, month_text, dow_text = parts[-3], parts[-2], parts[-1]
    days, months = parsed[-3][0], parsed[-2][0]
    # Both fields restricted: a day matches if either does, and every month has every weekday.
    # A `*` day-of-month always holds the 1st. Only a `*` day-of-week with listed days can miss.
    longest = max(_DAYS_IN_MONTH[month] for month in months)
    if dow_text.startswith("*") and not dom_text.startswith("*") and min(days) > longest:
        raise ValueError(f"this expression never fires: day-of-month {dom_text} does not "
                         f"occur in month {month_text.upper()}")
    # cronsim gets every field in numbers (names resolved, one-value ranges collapsed) so that
    # none of its extensions or quirks can change a meaning; a field keeps its leading `*`,
    # on which the day-of-month/day-of-week rule depends.
    walker = " ".join(canonical for _, canonical in parsed)
    try:
        CronSim(walker, datetime(2000, 1, 1))
    except CronSimError as error:  # cannot happen while our grammar is a subset of cronsim's
        raise ValueError(f"cron expression {stripped!r} is not understood: {error}") from None
    hour_text = parts[-4]
    sets = [values for values, _ in parsed]
    sets[-1] = frozenset(day % 7 for day in sets[-1])
    day_and = dom_text.startswith("*") or dow_text.startswith("*")
    return _Cron(expression=" ".join(part.upper() for part in parts), walker=walker,
                 real_time="*" in hour_text or "/" in hour_text, fields=tuple(sets),
                 day_and=day_and, span=_span(sets, day_and))


def _span(sets: list[frozenset[int]], day_and: bool) -> int:
    """The span of wall time around any match that the expression matches entirely."""
    *clock, doms, months, dows = sets
    full = [len(values) == 60 for values in clock[:-1]] + [len(clock[-1]) == 24]
    if not all(full):
        # five fields: a match covers its whole minute (the seconds are not looked at)
        return full.index(False) + (0 if len(clock) == 3 else _MINUTE_SPAN)
    every_dom, every_dow = len(doms) == 31, len(dows) == 7
    if not ((every_dom and every_dow) if day_and else (every_dom or every_dow)):
        return _DAY_SPAN
    return _MONTH_SPAN if len(months) < 12 else _ALL_TIME


def _parse_field(field: _Field, text: str) -> tuple[frozenset[int], str]:
    """The values a field selects, and the field rewritten for cronsim in numbers."""
    values: set[int] = set()
    items: list[str] = []
    for item in text.split(","):
        selected, canonical = _parse_item(field, item, text)
        values.update(selected)
        items.append(canonical)
    return frozenset(values), ",".join(items)


def _parse_item(field: _Field, item: str, text: str) -> tuple[range, str]:
    where = f"{field.name} field"
    if not item:
        raise ValueError(f"{where}: empty list item in {text!r}")
    if _EXTENSION.fullmatch(item.upper()) or "#" in item or "?" in item:
        raise ValueError(f"{where}: {item!r} is not crontab(5) syntax "
                         "(L, W, # and ? are Quartz extensions)")
    body, slash, step_text = item.partition("/")
    step = _parse_step(field, step_text, item) if slash else 1
    if body == "*":
        return range(field.low, field.high + 1, step), f"*/{step}" if slash else "*"
    first_text, dash, last_text = body.partition("-")
    first = _parse_value(field, first_text, item)
    if not dash:
        if slash:
            raise ValueError(f"{where}: {item!r} is not crontab(5) syntax: a step needs * or a "
                             f"range (write {first_text}-{field.high}/{step_text})")
        return range(first, first + 1), str(first)
    last = _parse_value(field, last_text, item)
    if last < first:
        raise ValueError(f"{where}: range {body} runs backwards (cron ranges do not wrap)")
    if first == last:
        # cronsim reads a one-value range with a step, "5-5/10", as "5/10" (5, 15, 25...).
        return range(first, first + 1), str(first)
    return range(first, last + 1, step), f"{first}-{last}/{step}"


def _parse_value(field: _Field, token: str, item: str) -> int:
    where = f"{field.name} field"
    if _NUMBER.fullmatch(token):
        value = int(token) if len(token) <= 6 else field.high + 1  # long digit runs: too big
        if not field.low <= value <= field.high:
            shown = token if len(token) <= 20 else token[:20] + "..."
            raise ValueError(f"{where}: {shown} is out of range {field.low}-{field.high}")
        return value
    if token.upper() in field.names:
        return field.names.index(token.upper()) + field.low
    if not token:
        raise ValueError(f"{where}: missing number in {item!r}")
    if field.names:
        raise ValueError(f"{where}: {token!r} is neither a number nor a name "
                         f"({'/'.join(field.names)})")
    raise ValueError(f"{where}: {token!r} is not a number")


def _parse_step(field: _Field, token: str, item: str) -> int:
    where = f"{field.name} field"
    if not _NUMBER.fullmatch(token):
        raise ValueError(f"{where}: step {token!r} in {item!r} is not a number")
    step = int(token) if len(token) <= 6 else 10**6  # any step past the range picks one value
    if step == 0:
        raise ValueError(f"{where}: step 0 in {item!r}; a step must be at least 1")
    return step


def local_zone(*, environ: Mapping[str, str] | None = None,
               root: str | os.PathLike[str] = "/") -> ZoneInfo:
    """The machine's IANA time zone; never a fixed offset.

    In order: the ``TZ`` variable (a zone name or a zoneinfo path, with or without a leading
    ``:``; empty means UTC, as in POSIX); the target of the ``/etc/localtime`` symlink;
    ``/etc/timezone``; a zone whose file equals a copied ``/etc/localtime``; else UTC. A ``TZ``
    that names no IANA zone (a POSIX rule such as ``CET-1CEST``) is passed over for the files.
    ``environ`` and ``root`` exist for tests. Raises nothing.
    """
    env = os.environ if environ is None else environ
    setting = env.get("TZ")
    if setting is not None:
        setting = setting.removeprefix(":")
        if not setting:
            return ZoneInfo("UTC")
        name = _name_from_path(setting) if setting.startswith("/") else setting
        found = _known_zone(name)
        if found is not None:
            return found
    etc = Path(root, "etc")
    link = etc / "localtime"
    try:
        target = os.readlink(link)
    except OSError:
        target = None
    if target is not None:
        found = _known_zone(_name_from_path(target) or _name_from_path(os.path.realpath(link)))
        if found is not None:
            return found
    try:
        lines = (etc / "timezone").read_text().split()
    except (OSError, UnicodeDecodeError):
        lines = []
    found = _known_zone(lines[0] if lines else None)
    if found is not None:
        return found
    try:
        data = link.read_bytes()
    except OSError:
        return ZoneInfo("UTC")
    return _known_zone(_name_of_zone_file(data)) or ZoneInfo("UTC")


def _known_zone(name: str | None) -> ZoneInfo | None:
    if name is None:
        return None
    try:
        return zone(name)
    except ValueError:
        return None


def _name_from_path(path: str) -> str | None:
    _, marker, name = path.rpartition("zoneinfo/")
    if not marker:
        return None
    # "right/" zones count leap seconds; the offsets they give on POSIX time are the same.
    for prefix in ("posix/", "right/"):
        name = name.removeprefix(prefix)
    return name


@functools.lru_cache(maxsize=4)
def _name_of_zone_file(data: bytes) -> str | None:
    # A copied /etc/localtime names no zone: find a zone file with the same bytes. Region/City
    # names come before legacy ones (CET, EST5EDT, Etc/...); equal files mean equal rules.
    names = sorted(_zone_names(), key=lambda name: ("/" not in name or name.startswith("Etc/"),
                                                    name))
    for name in names:
        for directory in TZPATH:
            try:
                if Path(directory, name).read_bytes() == data:
                    return name
            except OSError:
                continue
    return None


@functools.lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    # "localtime" is a link some systems put in the zoneinfo tree; it is not a zone name.
    return frozenset(available_timezones() - {"localtime"})


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``.

    Raises ``ValueError("unknown time zone 'Mars/Base'")`` for anything that is not the name of
    a zone in the tz database: unknown names, empty strings, paths, directories.
    """
    if (not isinstance(name, str) or len(name) > 255 or not _ZONE_NAME.fullmatch(name)
            or name not in _zone_names()):
        raise ValueError(f"unknown time zone {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r}") from None


def next_fire(schedule: Schedule, after: datetime) -> datetime | None:
    """The first fire of ``schedule`` strictly after ``after``, in the schedule's zone (as a
    fixed offset, see the module docstring).

    None when there is none: an ``at`` time not after ``after``, or a cron expression with no
    fire in the next ``SEARCH_YEARS`` years. Raises ``ValueError`` for a naive ``after`` or an
    invalid schedule.
    """
    for instant in _forward(schedule, _utc(after)):
        return _local(instant, schedule.timezone)
    return None


def first_fire(schedule: Schedule, now: datetime) -> datetime | None:
    """Some fire of ``schedule`` if it has any at all, else None: what ``pipeline validate``
    refuses as "never fires" (an exclude list that removes every fire, a window that holds
    none). Searched from the start of its ``active`` window, or its ``at``; with a window that
    only ends, the last fire up to its end; otherwise (a repeating expression, whose calendar
    repeats too, dates aside) from ``now``. Bounded like ``next_fire``; events have no fire
    times, so None. Raises ``ValueError`` for a naive ``now``.
    """
    if not schedule.kind.timed:
        return None
    after = _utc(now)
    low, high = _window(schedule)
    if schedule.kind is ScheduleKind.AT:
        after = _to_instant(_required(schedule.at, "at"), schedule.timezone) - _MICROSECOND
    elif low is not None:
        after = low - _MICROSECOND
    elif high is not None:
        last = _backward(schedule, datetime(1, 1, 2, tzinfo=UTC), high, 1)
        return _local(last[0], schedule.timezone) if last else None
    return next_fire(schedule, after)


def next_fires(schedules: Sequence[Schedule], after: datetime, n: int) -> list[datetime]:
    """The next ``n`` fires of all ``schedules`` together, strictly after ``after``, ascending.

    Fires of several schedules at the same instant count once, in the zone of the first of
    those schedules. Fewer than ``n`` when the schedules run out. Raises ``ValueError`` as
    ``next_fire`` does.
    """
    start = _utc(after)
    if n <= 0:
        return []
    streams = [_tagged(_forward(schedule, start), index)
               for index, schedule in enumerate(schedules)]
    fires: list[datetime] = []
    last: datetime | None = None
    for instant, index in heapq.merge(*streams):
        if instant != last:
            fires.append(_local(instant, schedules[index].timezone))
            last = instant
            if len(fires) == n:
                break
    return fires


def fires_between(schedules: Sequence[Schedule], after: datetime, until: datetime,
                  limit: int = 1000) -> tuple[list[datetime], bool]:
    """Every fire of ``schedules`` in (``after``, ``until``], merged, ascending.

    At most ``limit`` fires: when there are more, the *most recent* ``limit`` and True (for
    catch-up after an outage the latest fires matter). The work is proportional to ``limit``,
    not to the length of the outage: intervals are counted by arithmetic, and cron expressions
    are walked backwards from ``until``. Instants shared by several schedules count once.
    Raises ``ValueError`` for naive times, a negative limit or an invalid schedule.
    """
    if limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")
    start, end = _utc(after), _utc(until)
    zones: dict[datetime, ZoneInfo] = {}
    for schedule in schedules:
        for instant in _backward(schedule, start, end, limit + 1):
            zones.setdefault(instant, schedule.timezone)
    instants = sorted(zones)
    truncated = len(instants) > limit
    kept = instants[len(instants) - limit:] if truncated else instants
    return [_local(instant, zones[instant]) for instant in kept], truncated


class CalendarReason(StrEnum):
    """Why the calendar removed a fire: the reasons of a "not made" decision (CONTRACT §6)."""

    EXCLUDED = "excluded"
    OUTSIDE_WINDOW = "outside active window"


@dataclass(frozen=True)
class Removed:
    """A fire the schedule's expression makes and its calendar removes.

    ``fire`` is in the schedule's zone (a fixed offset, as every fire here); ``rule`` says
    which part of the calendar removed it, as the job file writes it: ``exclude 2026-12-25``,
    ``exclude 0 12 * * *``, ``active from 2026-01-01``, ``active until 2026-12-31``.
    """

    fire: datetime
    reason: CalendarReason
    rule: str


def removed_between(schedules: Sequence[Schedule], after: datetime, until: datetime,
                    limit: int = 1000) -> tuple[list[Removed], bool]:
    """The fires in (``after``, ``until``] that the schedules' expressions make but their
    calendars remove, ascending: what the scheduler records as "not made" decisions.

    ``fires_between`` over the same span gives the fires that are made; together they are
    every fire of the plain expressions. An instant that another of the schedules makes is
    not removed. At most ``limit``: when there are more, the most recent ``limit`` and True.
    Each removed fire is looked at (no jumping over spans), so the work is proportional to
    ``limit`` plus ``MAX_REMOVED``: a span holding more fires than that (an every-second
    schedule excluded for a weekend) reports its latest ones and True. Raises ``ValueError``
    as ``fires_between`` does.
    """
    if limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")
    start, end = _utc(after), _utc(until)
    found: dict[datetime, Removed] = {}
    truncated = False
    for schedule in schedules:
        if not (schedule.calendar and schedule.kind.timed) or end <= start:
            continue
        budget, kept = limit + MAX_REMOVED, 0
        for instant in _plain_backward(schedule, end):
            if instant <= start:
                break
            budget -= 1
            if budget < 0 or kept > limit:
                truncated = True
                break
            removed = _removal(schedule, instant)
            if removed is None or instant in found or any(
                    _makes(other, instant) for other in schedules if other is not schedule):
                continue
            found[instant] = removed
            kept += 1
    instants = sorted(found)
    truncated = truncated or len(instants) > limit
    kept_instants = instants[len(instants) - limit:] if len(instants) > limit else instants
    return [found[instant] for instant in kept_instants], truncated


def calendar_verdict(schedules: Sequence[Schedule], instant: datetime) -> Removed | None:
    """Why the fire at ``instant`` is not made, when one of ``schedules`` makes it without
    its calendar and none makes it with its calendar; None otherwise (the fire is made, or
    no schedule's expression makes ``instant`` at all). For ``pipeline why --at``.

    The verdict is the first schedule's (in the order given), and within it the window's
    before the first matching exclusion's. Raises ``ValueError`` for a naive ``instant``.
    """
    moment = _utc(instant)
    verdict: Removed | None = None
    for schedule in schedules:
        if not _plainly_makes(schedule, moment):
            continue
        removed = _removal(schedule, moment) if schedule.calendar else None
        if removed is None:
            return None
        verdict = verdict or removed
    return verdict


def _plainly_makes(schedule: Schedule, instant: datetime) -> bool:
    return next(_plain_forward(schedule, instant - _MICROSECOND), None) == instant


def _makes(schedule: Schedule, instant: datetime) -> bool:
    return (_plainly_makes(schedule, instant)
            and (not schedule.calendar or _removal(schedule, instant) is None))


def _removal(schedule: Schedule, instant: datetime) -> Removed | None:
    """Why ``schedule``'s calendar removes ``instant`` (UTC), or None if it keeps it."""
    tz = schedule.timezone
    fire = _local(instant, tz)
    low, high = _window(schedule)
    window = schedule.active
    if window is not None and low is not None and instant < low:
        return Removed(fire, CalendarReason.OUTSIDE_WINDOW,
                       f"active from {window.from_text or _local(low, tz).isoformat()}")
    if window is not None and high is not None and instant > high:
        return Removed(fire, CalendarReason.OUTSIDE_WINDOW,
                       f"active until {window.until_text or _local(high, tz).isoformat()}")
    exclusion = _exclusion_of(schedule, instant)
    if exclusion is not None:
        return Removed(fire, CalendarReason.EXCLUDED, f"exclude {exclusion.text}")
    return None


def jitter_delay(schedule: Schedule, rng: random.Random | None = None) -> float:
    """A random delay in [0, ``schedule.jitter``] seconds; 0.0 when the schedule has none."""
    if schedule.jitter <= 0:
        return 0.0
    return (rng if rng is not None else _RANDOM).uniform(0.0, schedule.jitter)


def describe(schedule: Schedule) -> str:
    """Short text for listings: ``cron "30 2 * * *" Europe/Berlin``, ``every 15m``,
    ``at 2026-12-01T09:00:00+01:00``, with ``, jitter 30s`` when there is jitter, and the
    calendar: ``, active from 2026-01-01 until 2026-12-31, except 2026-12-25, 0 12 * * *``.
    Events: ``file incoming/*.csv, settle 10s``, ``after extract (succeeded)``, ``@reboot``.
    """
    if schedule.kind is ScheduleKind.FILE:
        text = f"file {schedule.text or schedule.file}, settle {format_duration(schedule.settle)}"
        return text + (", existing files too" if schedule.existing else "")
    if schedule.kind is ScheduleKind.AFTER:
        return f"after {schedule.after} ({', '.join(map(str, schedule.status))})"
    if schedule.kind is ScheduleKind.REBOOT:
        return "@reboot"
    if schedule.kind is ScheduleKind.CRON:
        text = f'cron "{schedule.cron}" {schedule.timezone}'
    elif schedule.kind is ScheduleKind.EVERY:
        text = f"every {format_duration(schedule.every or 0.0)}"
        if schedule.start is not None:
            start = _to_instant(schedule.start, schedule.timezone)
            text += f" from {_local(start, schedule.timezone).isoformat()}"
    else:
        moment = _to_instant(schedule.at, schedule.timezone) if schedule.at else None
        text = f"at {_local(moment, schedule.timezone).isoformat() if moment else '?'}"
    if schedule.jitter > 0:
        text += f", jitter {format_duration(schedule.jitter)}"
    window = schedule.active
    if window is not None:
        low, high = _window(schedule)
        text += ", active"
        if low is not None:
            text += f" from {window.from_text or _local(low, schedule.timezone).isoformat()}"
        if high is not None:
            text += f" until {window.until_text or _local(high, schedule.timezone).isoformat()}"
    if schedule.exclude:
        shown = [exclusion.text for exclusion in schedule.exclude[:5]]
        more = len(schedule.exclude) - len(shown)
        text += ", except " + ", ".join(shown) + (f" (+{more} more)" if more else "")
    return text


def format_duration(seconds: float) -> str:
    """Seconds as the job file writes durations: 900 -> "15m", 5400 -> "1h30m",
    0.25 -> "250ms", 0 -> "0s". Rounded to the millisecond."""
    millis = round(seconds * 1000)
    sign = "-" if millis < 0 else ""
    millis = abs(millis)
    text = ""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000),
                       ("ms", 1)):
        count, millis = divmod(millis, size)
        if count:
            text += f"{count}{unit}"
    return sign + (text or "0s")


def _local(instant: datetime, tz: ZoneInfo) -> datetime:
    """``instant`` in zone ``tz``, with the offset it has there as a fixed tzinfo."""
    return instant.astimezone(timezone(_offset(tz, instant)))


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"expected an aware datetime, got {moment.isoformat()}")
    return moment.astimezone(UTC)


def _tagged(instants: Iterable[datetime], index: int) -> Iterator[tuple[datetime, int]]:
    for instant in instants:
        yield instant, index


def _forward(schedule: Schedule, after: datetime) -> Iterator[datetime]:
    """UTC instants of ``schedule`` strictly after ``after`` (UTC), ascending, each once,
    the calendar (``active``, ``exclude``) applied."""
    if schedule.calendar and schedule.kind.timed:
        return _calendar_forward(schedule, after)
    return _plain_forward(schedule, after)


def _plain_forward(schedule: Schedule, after: datetime) -> Iterator[datetime]:
    """``_forward`` without the calendar: every instant the expression itself makes."""
    if not schedule.kind.timed:
        return iter(())
    if schedule.kind is ScheduleKind.CRON:
        return _cron_forward(_compile(_required(schedule.cron, "cron")), schedule.timezone,
                             after)
    if schedule.kind is ScheduleKind.EVERY:
        origin, step = _grid(schedule)
        return _every_forward(origin, step, after)
    moment = _to_instant(_required(schedule.at, "at"), schedule.timezone)
    return iter([moment] if moment > after else [])


def _backward(schedule: Schedule, after: datetime, until: datetime,
              limit: int) -> list[datetime]:
    """The latest ``limit`` UTC instants of ``schedule`` in (``after``, ``until``]."""
    if until <= after or limit <= 0 or not schedule.kind.timed:
        return []
    if schedule.calendar:
        return _calendar_backward(schedule, after, until, limit)
    if schedule.kind is ScheduleKind.CRON:
        found: list[datetime] = []
        cron = _compile(_required(schedule.cron, "cron"))
        for instant in _cron_backward(cron, schedule.timezone, until):
            if instant <= after or len(found) >= limit:
                break
            found.append(instant)
        return found
    if schedule.kind is ScheduleKind.EVERY:
        origin, step = _grid(schedule)
        first = max(0, _index(origin, step, after) + 1)
        last = _index(origin, step, until)
        return [origin + _MICROSECOND * (step * index)
                for index in range(last, max(first, last - limit + 1) - 1, -1)]
    moment = _to_instant(_required(schedule.at, "at"), schedule.timezone)
    return [moment] if after < moment <= until else []


def _required(value: _T | None, what: str) -> _T:
    if value is None:
        raise ValueError(f"a {what} schedule without its {what} value")
    return value


# --- every: whole multiples of the interval from `start`, counted in elapsed microseconds ---

def _grid(schedule: Schedule) -> tuple[datetime, int]:
    step = round(_required(schedule.every, "every") * 1_000_000)
    if step <= 0:
        raise ValueError(f"every: the interval must be positive, got {schedule.every}")
    if schedule.start is None:
        return EPOCH, step
    return _to_instant(schedule.start, schedule.timezone), step


def _index(origin: datetime, step: int, moment: datetime) -> int:
    """The number of the last grid point at or before ``moment`` (negative before origin)."""
    return ((moment - origin) // _MICROSECOND) // step


def _every_forward(origin: datetime, step: int, after: datetime) -> Iterator[datetime]:
    # `start` is the first fire: an interval does not fire before it begins.
    index = max(0, _index(origin, step, after) + 1)
    while True:
        try:
            fire = origin + _MICROSECOND * (step * index)
        except OverflowError:  # past year 9999
            return
        yield fire
        index += 1


# --- cron: cronsim walks wall-clock times; each wall time is mapped to the instants it means ---

def _cron_forward(cron: _Cron, tz: ZoneInfo, after: datetime) -> Iterator[datetime]:
    """UTC instants strictly after ``after``, ascending, each once.

    Wall times come in wall-clock order, which is not instant order inside a repeated hour
    (the second 02:00 comes after the first 02:59). So instants wait in a heap until the next
    wall time proves no smaller instant can still come: every later wall time maps at or after
    its own earliest instant (``floor``).
    """
    try:
        # Any wall time up to `start` maps at or before `after`, whichever offset applies.
        lowest = min(_offset(tz, after), _offset(tz, after + _DAY))
        start = (after + lowest).replace(tzinfo=None)
    except OverflowError:
        return
    horizon = start.year + SEARCH_YEARS
    pending: list[datetime] = []
    last = after
    for wall in _walls(cron.walker, start, reverse=False):
        if wall.year > horizon:
            break
        instants, floor, _ = _instants(wall, tz, cron.real_time)
        if instants:
            horizon = wall.year + SEARCH_YEARS
        while pending and pending[0] <= floor:
            instant = heapq.heappop(pending)
            if instant > last:
                yield instant
                last = instant
        for instant in instants:
            heapq.heappush(pending, instant)
    for instant in sorted(pending):
        if instant > last:
            yield instant
            last = instant


def _cron_backward(cron: _Cron, tz: ZoneInfo, until: datetime) -> Iterator[datetime]:
    """UTC instants at or before ``until``, descending, each once: ``_cron_forward`` mirrored,
    with the heap keyed on negative microseconds and ``ceiling`` as the bound."""
    try:
        highest = max(_offset(tz, until), _offset(tz, until - _DAY))
        # cronsim's reverse walk yields wall times strictly before the one it is given.
        start = (until + highest).replace(tzinfo=None) + _MICROSECOND
    except OverflowError:
        return
    horizon = start.year - SEARCH_YEARS
    pending: list[tuple[int, datetime]] = []
    last = until + _MICROSECOND
    for wall in _walls(cron.walker, start, reverse=True):
        if wall.year < horizon:
            break
        instants, _, ceiling = _instants(wall, tz, cron.real_time)
        if instants:
            horizon = wall.year - SEARCH_YEARS
        while pending and pending[0][1] >= ceiling:
            instant = heapq.heappop(pending)[1]
            if instant < last:
                yield instant
                last = instant
        for instant in instants:
            heapq.heappush(pending, (-((instant - EPOCH) // _MICROSECOND), instant))
    for _, instant in sorted(pending):
        if instant < last:
            yield instant
            last = instant


def _walls(expression: str, start: datetime, *, reverse: bool) -> Iterator[datetime]:
    """Naive wall times matching ``expression``, strictly after (before) ``start``."""
    try:
        # cronsim gives up by itself after 50 years without a match.
        yield from CronSim(expression, start, reverse=reverse)
    except OverflowError:  # walked off datetime's range (year 1 or 9999)
        return


def _instants(wall: datetime, tz: ZoneInfo,
              real_time: bool) -> tuple[tuple[datetime, ...], datetime, datetime]:
    """The UTC instants a wall time stands for, with bounds for its neighbours.

    Returns (instants, floor, ceiling): every later wall time maps at or after ``floor`` and
    every earlier one at or before ``ceiling``.
    """
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if first == second:
        return (first,), first, first
    if first < second:  # repeated by a fall-back: fold=0 is the first pass
        if real_time:
            return (first, second), first, second
        return (first,), first, first
    # Skipped by a gap: fold=0 reads the wall time with the offset before the gap, which lands
    # after it, and fold=1 with the offset after it, which lands before; the gap ends between.
    end = _gap_end(second, first, tz)
    return (() if real_time else (end,)), end, end


def _gap_end(before: datetime, after: datetime, tz: ZoneInfo) -> datetime:
    """The first instant in (``before``, ``after``] whose offset differs from ``before``'s."""
    # Offsets change on whole seconds, so bisecting on whole seconds from a whole second ends
    # with `after` on the change itself.
    before = before.replace(microsecond=0)
    old = _offset(tz, before)
    while after - before > _SECOND:
        middle = before + _SECOND * (((after - before) // _SECOND) // 2)
        if _offset(tz, middle) == old:
            before = middle
        else:
            after = middle
    return after


def _offset(tz: ZoneInfo, instant: datetime) -> timedelta:
    return instant.astimezone(tz).utcoffset() or timedelta(0)


def _to_instant(moment: datetime, tz: ZoneInfo) -> datetime:
    """A UTC instant; a naive ``moment`` is a wall time in ``tz``, read as a fixed-time cron
    fire is (a skipped time moves to the end of the gap; a repeated one is its first pass).

    So is a ``moment`` whose tzinfo is a zone (an ``at:`` written without an offset, read in
    its ``timezone``) when that wall time falls in a gap: Python would read it with the offset
    before the gap (02:30 in Berlin's spring-forward as 03:30), cron's rule gives 03:00. Only
    a fixed offset (``+01:00``) makes a moment an instant whatever the zone does.
    """
    zone = moment.tzinfo
    if isinstance(zone, ZoneInfo):
        instants, _, _ = _instants(moment.replace(tzinfo=None), zone, real_time=True)
        if not instants:  # skipped by a gap
            return _instants(moment.replace(tzinfo=None), zone, real_time=False)[0][0]
    if zone is not None and moment.utcoffset() is not None:
        return moment.astimezone(UTC)
    instants, _, _ = _instants(moment.replace(tzinfo=None), tz, real_time=False)
    return instants[0]


# --- the calendar: `active` windows and `exclude` lists ---
#
# A calendar removes fires from what the expression makes; it never adds any. A fire is judged
# by its wall time in the schedule's zone: a date excludes the fires on that day, a cron
# expression the fires at wall times it matches (five fields: any second of a matching minute).
# Excluded fires come in runs (`* * * * 0,6` excludes whole weekends of an every-second
# schedule), so the searches jump over the span an exclusion covers (_span) instead of asking
# the expression for each fire in it. Each search gives up after MAX_REMOVED jumps or removed
# fires in a row: an exclude list that removes every fire (`0-29 * * * *` with
# `30-59 * * * *`) ends a search in milliseconds, and `pipeline validate` refuses it.


def _calendar_forward(schedule: Schedule, after: datetime) -> Iterator[datetime]:
    tz = schedule.timezone
    low, high = _window(schedule)
    if low is not None and low - _MICROSECOND > after:
        after = low - _MICROSECOND
    # Restarting the expression after each jump would reset its own horizon: keep one.
    horizon = _shifted(after, _SEARCH_SPAN)
    if high is None or (horizon is not None and horizon < high):
        high = horizon
    stream = _plain_forward(schedule, after)
    budget = MAX_REMOVED
    while True:
        candidate = next(stream, None)
        if candidate is None or (high is not None and candidate > high):
            return
        moment: datetime | None = candidate
        while moment is not None and (span := _excluded_span(schedule, moment)) is not None:
            budget -= 1
            if budget <= 0:
                return
            moment = _span_end(moment, span, tz)
        if moment is None:
            return  # an exclusion that matches all time
        if moment == candidate:
            budget = MAX_REMOVED
            yield candidate
            continue
        if high is not None and moment > high:
            return
        stream = _plain_forward(schedule, moment - _MICROSECOND)


def _calendar_backward(schedule: Schedule, after: datetime, until: datetime,
                       limit: int) -> list[datetime]:
    """``_backward`` with the calendar: at most ``limit`` instants, the latest first; fewer
    when a search in between gives up (see above) or after ``MAX_REMOVED × 10`` jumps in
    all, so the work stays bounded whatever the span."""
    tz = schedule.timezone
    low, high = _window(schedule)
    if high is not None and high < until:
        until = high
    if low is not None and low - _MICROSECOND > after:
        after = low - _MICROSECOND
    horizon = _shifted(until, -_SEARCH_SPAN)
    if horizon is not None and horizon > after:
        after = horizon
    found: list[datetime] = []
    stream = _plain_backward(schedule, until)
    budget, total = MAX_REMOVED, MAX_REMOVED * 10
    while len(found) < limit:
        candidate = next(stream, None)
        if candidate is None or candidate <= after:
            break
        moment = candidate
        while (span := _excluded_span(schedule, moment)) is not None:
            budget -= 1
            total -= 1
            if budget <= 0 or total <= 0 or span == _ALL_TIME:
                return found
            moment = _span_start(moment, span, tz) - _MICROSECOND
        if moment == candidate:
            budget = MAX_REMOVED
            found.append(candidate)
        elif moment <= after:
            break
        else:
            stream = _plain_backward(schedule, moment)
    return found


def _shifted(moment: datetime, by: timedelta) -> datetime | None:
    """``moment + by``, or None past the ends of datetime's range."""
    try:
        return moment + by
    except OverflowError:
        return None


def _plain_backward(schedule: Schedule, until: datetime) -> Iterator[datetime]:
    """UTC instants the expression makes at or before ``until``, descending, each once."""
    if schedule.kind is ScheduleKind.CRON:
        yield from _cron_backward(_compile(_required(schedule.cron, "cron")),
                                  schedule.timezone, until)
    elif schedule.kind is ScheduleKind.EVERY:
        origin, step = _grid(schedule)
        for index in range(_index(origin, step, until), -1, -1):
            yield origin + _MICROSECOND * (step * index)
    elif schedule.kind is ScheduleKind.AT:
        moment = _to_instant(_required(schedule.at, "at"), schedule.timezone)
        if moment <= until:
            yield moment


def _window(schedule: Schedule) -> tuple[datetime | None, datetime | None]:
    """The ``active`` window's bounds as UTC instants (inclusive), None where open."""
    window = schedule.active
    if window is None:
        return None, None
    return (None if window.start is None else _to_instant(window.start, schedule.timezone),
            None if window.end is None else _to_instant(window.end, schedule.timezone))


def _wall(instant: datetime, tz: ZoneInfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None)


def _excluded_span(schedule: Schedule, instant: datetime) -> int | None:
    """The widest span an exclusion matching ``instant`` covers, or None if none matches."""
    wall = _wall(instant, schedule.timezone)
    widest: int | None = None
    for exclusion in schedule.exclude:
        if exclusion.date is not None:
            span = _DAY_SPAN if wall.date() == exclusion.date else None
        else:
            cron = _compile(_required(exclusion.cron, "exclude"))
            span = cron.span if _matches(cron, wall) else None
        if span is not None and (widest is None or span > widest):
            widest = span
    return widest


def _exclusion_of(schedule: Schedule, instant: datetime) -> Exclusion | None:
    """The first exclusion (in the order written) that matches ``instant``."""
    wall = _wall(instant, schedule.timezone)
    for exclusion in schedule.exclude:
        if exclusion.date is not None:
            if wall.date() == exclusion.date:
                return exclusion
        elif _matches(_compile(_required(exclusion.cron, "exclude")), wall):
            return exclusion
    return None


def _matches(cron: _Cron, wall: datetime) -> bool:
    """Whether cron matches the wall time (a five-field one: any second of the minute)."""
    fields = cron.fields
    if len(fields) == 6:
        if wall.second not in fields[0]:
            return False
        fields = fields[1:]
    minutes, hours, doms, months, dows = fields
    if wall.minute not in minutes or wall.hour not in hours or wall.month not in months:
        return False
    dom, dow = wall.day in doms, wall.isoweekday() % 7 in dows
    return (dom and dow) if cron.day_and else (dom or dow)


def _span_bounds(wall: datetime, span: int) -> tuple[datetime, datetime]:
    """The wall-time span of kind ``span`` that holds ``wall``: [start, end)."""
    if span == _SECOND_SPAN:
        start = wall.replace(microsecond=0)
        return start, start + _SECOND
    if span == _MINUTE_SPAN:
        start = wall.replace(second=0, microsecond=0)
        return start, start + timedelta(minutes=1)
    if span == _HOUR_SPAN:
        start = wall.replace(minute=0, second=0, microsecond=0)
        return start, start + timedelta(hours=1)
    start = wall.replace(hour=0, minute=0, second=0, microsecond=0)
    if span == _DAY_SPAN:
        return start, start + _DAY
    start = start.replace(day=1)
    following = (start + timedelta(days=32)).replace(day=1)
    return start, following


def _span_end(instant: datetime, span: int, tz: ZoneInfo) -> datetime | None:
    """The first instant after ``instant`` whose wall time may be outside its ``span``.

    The wall-clock distance to the span's end is real time only while the offset stays the
    same, so a jump never crosses an offset change (it stops there and looks again), and
    never goes further than a day (a zone changes its offset at most once in a day).
    """
    if span == _ALL_TIME:
        return None
    wall = _wall(instant, tz)
    try:
        target = instant + min(_span_bounds(wall, span)[1] - wall, _DAY)
    except OverflowError:
        return None
    if _offset(tz, target) != _offset(tz, instant):
        target = _gap_end(instant, target, tz)
    return target


def _span_start(instant: datetime, span: int, tz: ZoneInfo) -> datetime:
    """The earliest instant up to ``instant`` from which on every wall time is in its
    ``span``: ``_span_end`` mirrored."""
    wall = _wall(instant, tz)
    target = instant - min(wall - _span_bounds(wall, span)[0], _DAY)
    if _offset(tz, target) != _offset(tz, instant):
        target = _gap_end(target, instant, tz)
    return target


# -- schedules in words, and the clock changes between fires -----------------------------------

_WEEKDAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_MONTHS_LONG = ("January", "February", "March", "April", "May", "June", "July", "August",
                "September", "October", "November", "December")


def _plain_values(field: str, high: int) -> list[int] | None:
    """The values of a cron field made of numbers and ranges only (no step, no ``*``)."""
    values: list[int] = []
    for item in field.split(","):
        # The walker writes a range as `a-b/1`.
        low_text, dash, high_text = item.removesuffix("/1").partition("-")
        if not low_text.isdigit() or (dash and not high_text.isdigit()):
            return None
        low = int(low_text)
        values.extend(range(low, int(high_text) + 1) if dash else [low])
    return sorted({min(v, high) for v in values})


def _step_of(field: str) -> int | None:
    """``n`` for a field ``*/n`` (1 for ``*``); None for anything else."""
    if field == "*":
        return 1
    if field.startswith("*/") and field[2:].isdigit():
        return int(field[2:])
    return None


def _join(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _spans(values: Sequence[int]) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for value in values:
        if spans and value == spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], value)
        else:
            spans.append((value, value))
    return spans


def _days_words(dom: str, month: str, dow: str) -> str | None:
    """``every day``, ``on Monday to Friday``, ``on day 1 of every month``...; None when the
    fields are beyond these words."""
    days = _plain_values(dom, 31) if dom != "*" else None
    months = _plain_values(month, 12) if month != "*" else None
    weekdays = _plain_values(dow, 7) if dow != "*" else None
    if (dom != "*" and days is None) or (month != "*" and months is None) or (
            dow != "*" and weekdays is None):
        return None
    if weekdays is not None:
        weekdays = sorted({d % 7 for d in weekdays})
    of_months = ("every month" if months is None else
                 _join([_MONTHS_LONG[m - 1] for m in months]))
    parts: list[str] = []
    if days is not None:
        numbers = _join([f"{a}" if a == b else f"{a} to {b}" for a, b in _spans(days)])
        if months is not None and len(days) == 1 and len(months) == 1:
            parts.append(f"on {days[0]} {_MONTHS_LONG[months[0] - 1]}")
        else:
            parts.append(f"on day{'s' if len(days) > 1 else ''} {numbers} of {of_months}")
    if weekdays is not None:
        if weekdays == [1, 2, 3, 4, 5]:
            names = "Monday to Friday"
        elif weekdays == [0, 6]:
            names = "Saturday and Sunday"
        else:
            names = _join([_WEEKDAYS[a] if a == b else f"{_WEEKDAYS[a]} to {_WEEKDAYS[b]}"
                           for a, b in _spans(weekdays)])
        where = "" if months is None or days is not None else f" in {of_months}"
        parts.append(f"on {names}{where}")
    if not parts:
        return "every day" if months is None else f"every day in {of_months}"
    # crontab(5): both restricted, a day matches if either does.
    return " or ".join(parts)


def _cron_words(expression: str) -> str | None:
    fields = expression.split()
    second = "0"
    if len(fields) == 6:
        second, fields = fields[0], fields[1:]
    minute, hour, dom, month, dow = fields
    days = _days_words(dom, month, dow)
    if days is None or not second.isdigit():
        return None
    sec = f":{int(second):02d}" if int(second) else ""
    minutes = _plain_values(minute, 59)
    hours = _plain_values(hour, 23)
    minute_step, hour_step = _step_of(minute), _step_of(hour)
    when: str | None = None
    if minutes is not None and hours is not None and len(minutes) * len(hours) <= 4:
        when = _join([f"{h:02d}:{m:02d}{sec}" for h in hours for m in minutes])
    elif minutes is not None and len(minutes) == 1 and hour_step is not None:
        when = (f"every hour at :{minutes[0]:02d}{sec}" if hour_step == 1 else
                f"every {hour_step} hours at :{minutes[0]:02d}{sec}")
    elif minutes is not None and len(minutes) == 1 and hours is not None and len(
            _spans(hours)) == 1:
        when = f"every hour from {hours[0]:02d}:{minutes[0]:02d} to {hours[-1]:02d}:" \
               f"{minutes[0]:02d}{sec}"
    elif minute_step is not None and hour == "*":
        when = "every minute" if minute_step == 1 else f"every {minute_step} minutes"
    elif minute_step is not None and hours is not None and len(_spans(hours)) == 1:
        every = "every minute" if minute_step == 1 else f"every {minute_step} minutes"
        when = f"{every} from {hours[0]:02d}:00 to {hours[-1]:02d}:59"
    if when is None:
        return None
    if days == "every day" and when.startswith("every "):
        return when  # "every 15 minutes", not "every 15 minutes every day"
    return f"{when} {days}"


def _duration_words(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"every {unit}" if count == 1 else f"every {count} {unit}s"
    return f"every {format_duration(seconds)}"


def in_words(schedule: Schedule) -> str:
    """The schedule as a person says it: ``02:30 every day, Europe/Berlin``, ``every 15
    minutes``, ``09:00 on Monday to Friday, UTC``, ``once, at 2026-12-01 09:00+01:00``,
    ``after each run of extract that ended succeeded``; with its calendar (``, from ...
    until ..., except ...``).

    Cron expressions beyond these words keep their text: ``cron "0 0 */2 * MON", UTC``.
    """
    if schedule.kind is ScheduleKind.FILE:
        return (f"when a file under {schedule.text or schedule.file} has not changed for "
                f"{format_duration(schedule.settle)}"
                + (", files already there too" if schedule.existing else ""))
    if schedule.kind is ScheduleKind.AFTER:
        ended = " or ".join(map(str, schedule.status))
        return f"after each run of {schedule.after} that ended {ended}"
    if schedule.kind is ScheduleKind.REBOOT:
        return "each time a daemon starts"
    zone = str(schedule.timezone)
    if schedule.kind is ScheduleKind.CRON:
        expression = schedule.cron or ""
        try:
            words = _cron_words(_compile(expression).walker)
        except ValueError:
            words = None
        text = f"{words or f'cron {expression!r}'.replace(chr(39), chr(34))}, {zone}"
    elif schedule.kind is ScheduleKind.EVERY:
        text = _duration_words(schedule.every or 0.0)
        if schedule.start is not None:
            start = _local(_to_instant(schedule.start, schedule.timezone), schedule.timezone)
            text += f", counted from {start.isoformat(sep=' ', timespec='minutes')}"
    else:
        moment = _to_instant(schedule.at, schedule.timezone) if schedule.at else None
        text = ("once, at " + _local(moment, schedule.timezone).isoformat(
            sep=" ", timespec="minutes") if moment else "once")
    if schedule.jitter > 0:
        text += f", up to {format_duration(schedule.jitter)} later at random"
    window = schedule.active
    if window is not None:
        low, high = _window(schedule)
        if low is not None:
            text += f", from {window.from_text or _local(low, schedule.timezone).isoformat()}"
        if high is not None:
            text += f" until {window.until_text or _local(high, schedule.timezone).isoformat()}"
    if schedule.exclude:
        shown = [exclusion.text for exclusion in schedule.exclude[:5]]
        more = len(schedule.exclude) - len(shown)
        text += ", except " + ", ".join(shown) + (f" (+{more} more)" if more else "")
    return text


def clock_change(fire: datetime, previous: datetime, tz: ZoneInfo) -> str | None:
    """What the zone's clocks did between ``previous`` and ``fire`` (a fire time), in words;
    None when nothing happened. Also says so of a fire in a repeated hour, and of one at the
    first instant after a skipped hour (where a fixed-hour cron fire moves to)."""
    before, after = _offset(tz, previous), _offset(tz, fire)
    notes = []
    if before != after:
        shift = after - before
        sign = "forward" if shift > timedelta(0) else "back"
        notes.append(f"clocks go {sign} {format_duration(abs(shift.total_seconds()))} "
                     f"before this fire (UTC{_offset_text(before)} → UTC{_offset_text(after)})")
    wall = fire.astimezone(tz).replace(tzinfo=None)
    first = wall.replace(tzinfo=tz, fold=0).utcoffset()
    second = wall.replace(tzinfo=tz, fold=1).utcoffset()
    if first != second:
        which = "first" if fire.astimezone(UTC) == wall.replace(
            tzinfo=tz, fold=0).astimezone(UTC) else "second"
        notes.append(f"in the repeated hour ({which} pass)")
    elif _offset(tz, fire - _SECOND) != after:
        notes.append("the first instant after the skipped hour")
    return "; ".join(notes) or None


def _offset_text(offset: timedelta) -> str:
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    hours, mins = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{mins:02d}"
