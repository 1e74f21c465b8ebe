"""When schedules fire: cron expressions, fixed intervals and one-shot times, and the
calendars that remove some of their fires.

Pure arithmetic on aware datetimes: no trio, and no I/O. Every instant is computed in UTC. Fire
times are handed out in the schedule's zone but with a fixed offset (``datetime.timezone``) as
their tzinfo, not the ``ZoneInfo``: Python compares and hashes two datetimes of the same
``ZoneInfo`` by wall time, ignoring ``fold``, so 02:30 of the second pass through a repeated
hour would equal 02:30 of the first and sort before 02:45 of the first. With fixed offsets,
equality, hashing and ordering are by instant, and ``isoformat()`` shows the offset the zone
had at that instant.

What a cron expression means, daylight-saving time included, is ``pipeline.cron``'s; an
``every`` schedule fires on whole multiples of its interval from its ``start`` (the Unix epoch
by default), counted in elapsed time; an ``at`` schedule once.

A schedule's calendar (``active: {from, until}``, ``exclude: [dates, cron expressions]``)
removes fires from what its expression makes; how, and how its searches are bounded, is
``pipeline.calendars``'. Every function here honours it; ``removed_between`` and
``calendar_verdict`` say which fires it removed and why. Event schedules (file, after,
@reboot) have no fire times.

Bounds: a search stops after ``cron.SEARCH_YEARS`` without a fire, or, through a calendar,
after ``calendars.MAX_REMOVED`` excluded spans in a row: an exclude list that removes every
fire ends a search in a fraction of a second (``pipeline validate`` refuses it).
``fires_between`` does work in proportion to its ``limit``, never to the length of the span.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import partial
from typing import TypeVar
from zoneinfo import ZoneInfo

from pipeline import calendars, cron
from pipeline.cron import EPOCH
from pipeline.model import Schedule, ScheduleKind
from pipeline.notation import format_duration

_T = TypeVar("_T")

_MICROSECOND = timedelta(microseconds=1)


def next_fire(schedule: Schedule, after: datetime) -> datetime | None:
    """The first fire of ``schedule`` strictly after ``after``, in the schedule's zone (as a
    fixed offset, see the module docstring).

    None when there is none: an ``at`` time not after ``after``, or a cron expression with no
    fire in the next ``SEARCH_YEARS`` years. Raises ``ValueError`` for a naive ``after`` or an
    invalid schedule.
    """
    for instant in _forward(schedule, _utc(after)):
        return cron.local_time(instant, schedule.timezone)
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
    low, high = calendars.active_bounds(schedule)
    if schedule.kind is ScheduleKind.AT:
        after = cron.to_instant(_required(schedule.at, "at"), schedule.timezone) - _MICROSECOND
    elif low is not None:
        after = low - _MICROSECOND
    elif high is not None:
        last = _backward(schedule, datetime(1, 1, 2, tzinfo=UTC), high, 1)
        return cron.local_time(last[0], schedule.timezone) if last else None
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
            fires.append(cron.local_time(instant, schedules[index].timezone))
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
    return [cron.local_time(instant, zones[instant]) for instant in kept], truncated


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
    ``limit`` plus ``calendars.MAX_REMOVED``: a span holding more fires than that (an
    every-second schedule excluded for a weekend) reports its latest ones and True. Raises
    ``ValueError`` as ``fires_between`` does.
    """
    if limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")
    start, end = _utc(after), _utc(until)
    found: dict[datetime, Removed] = {}
    truncated = False
    for schedule in schedules:
        if not (schedule.calendar and schedule.kind.timed) or end <= start:
            continue
        budget, kept = limit + calendars.MAX_REMOVED, 0
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


def removed_after(schedules: Sequence[Schedule], after: datetime) -> Removed | None:
    """The first fire that the schedules' expressions make strictly after ``after``, if their
    calendars remove it; None when that fire is made (or there is none). After a made fire,
    this is where a stretch of removed fires begins: what the scheduler records as a "not
    made" decision, once a stretch. Bounded like ``next_fire``; raises ``ValueError`` for a
    naive ``after``."""
    moment = _utc(after)
    firsts = [instant for schedule in schedules if schedule.kind.timed
              for instant in [next(_plain_forward(schedule, moment), None)]
              if instant is not None]
    return calendar_verdict(schedules, min(firsts)) if firsts else None


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
    fire = cron.local_time(instant, schedule.timezone)
    low, high = calendars.active_bounds(schedule)
    if low is not None and instant < low:
        return Removed(fire, CalendarReason.OUTSIDE_WINDOW,
                       f"active from {calendars.window_texts(schedule)[0]}")
    if high is not None and instant > high:
        return Removed(fire, CalendarReason.OUTSIDE_WINDOW,
                       f"active until {calendars.window_texts(schedule)[1]}")
    exclusion = calendars.exclusion_of(schedule, instant)
    if exclusion is not None:
        return Removed(fire, CalendarReason.EXCLUDED, f"exclude {exclusion.text}")
    return None


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
            start = cron.to_instant(schedule.start, schedule.timezone)
            text += f" from {cron.local_time(start, schedule.timezone).isoformat()}"
    else:
        moment = cron.to_instant(schedule.at, schedule.timezone) if schedule.at else None
        text = f"at {cron.local_time(moment, schedule.timezone).isoformat() if moment else '?'}"
    if schedule.jitter > 0:
        text += f", jitter {format_duration(schedule.jitter)}"
    if schedule.active is not None:
        since, until = calendars.window_texts(schedule)
        text += ", active"
        if since is not None:
            text += f" from {since}"
        if until is not None:
            text += f" until {until}"
    return text + calendars.exclude_text(schedule)


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
        return calendars.forward(schedule, after, partial(_plain_forward, schedule))
    return _plain_forward(schedule, after)


def _plain_forward(schedule: Schedule, after: datetime) -> Iterator[datetime]:
    """``_forward`` without the calendar: every instant the expression itself makes."""
    if not schedule.kind.timed:
        return iter(())
    if schedule.kind is ScheduleKind.CRON:
        return cron.forward(cron.compiled(_required(schedule.cron, "cron")), schedule.timezone,
                             after)
    if schedule.kind is ScheduleKind.EVERY:
        origin, step = _grid(schedule)
        return _every_forward(origin, step, after)
    moment = cron.to_instant(_required(schedule.at, "at"), schedule.timezone)
    return iter([moment] if moment > after else [])


def _plain_backward(schedule: Schedule, until: datetime) -> Iterator[datetime]:
    """UTC instants the expression makes at or before ``until``, descending, each once."""
    if schedule.kind is ScheduleKind.CRON:
        yield from cron.backward(cron.compiled(_required(schedule.cron, "cron")),
                                  schedule.timezone, until)
    elif schedule.kind is ScheduleKind.EVERY:
        origin, step = _grid(schedule)
        for index in range(_index(origin, step, until), -1, -1):
            yield origin + _MICROSECOND * (step * index)
    elif schedule.kind is ScheduleKind.AT:
        moment = cron.to_instant(_required(schedule.at, "at"), schedule.timezone)
        if moment <= until:
            yield moment


def _backward(schedule: Schedule, after: datetime, until: datetime,
              limit: int) -> list[datetime]:
    """The latest ``limit`` UTC instants of ``schedule`` in (``after``, ``until``]."""
    if until <= after or limit <= 0 or not schedule.kind.timed:
        return []
    if schedule.calendar:
        return calendars.backward(schedule, after, until, limit,
                                  partial(_plain_backward, schedule))
    if schedule.kind is ScheduleKind.CRON:
        found: list[datetime] = []
        expression = cron.compiled(_required(schedule.cron, "cron"))
        for instant in cron.backward(expression, schedule.timezone, until):
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
    moment = cron.to_instant(_required(schedule.at, "at"), schedule.timezone)
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
    return cron.to_instant(schedule.start, schedule.timezone), step


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

