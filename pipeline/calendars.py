"""A schedule's calendar: its ``active: {from, until}`` window and its ``exclude:`` list
(dates, cron expressions), which remove fires from what its expression makes and never add
any.

A fire is judged by its wall time in the schedule's zone: a date excludes the fires on that
day, a cron expression the fires at wall times it matches (five fields: any second of a
matching minute). Excluded fires come in runs (``* * * * 0,6`` excludes whole weekends of an
every-second schedule), so the searches here jump over the span an exclusion covers instead of
asking the expression for each fire in it. Each search gives up after ``MAX_REMOVED`` jumps or
removed fires in a row: an exclude list that removes every fire (``0-29 * * * *`` with
``30-59 * * * *``) ends a search in milliseconds, and ``pipeline validate`` refuses it.

The searches walk a stream of the fires the expression itself makes, which ``triggers`` (where
cron, interval and one-shot schedules are told apart) hands them as a function; every instant
here is UTC. The window's ends and the exclude list are also said here as the job file writes
them, for the texts that show a schedule (``triggers.describe``, ``schedule_words.in_words``)
and that say why a fire was removed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

from pipeline import cron
from pipeline.cron import SEARCH_YEARS
from pipeline.model import Exclusion, Schedule

# A search for the next fire through a calendar gives up after this many exclusion spans (or
# removed fires) in a row: an exclude list that removes every fire must not spin (Temporal
# #7793). Spans are whole minutes, hours, days... so no useful calendar comes near it.
MAX_REMOVED = 10_000
_SEARCH_SPAN = timedelta(days=366 * SEARCH_YEARS)  # a calendar search looks no further

_MICROSECOND = timedelta(microseconds=1)

# The instants a schedule's expression makes, its calendar aside: strictly after a moment,
# ascending (for ``forward``), or at or before one, descending (for ``backward``).
Stream = Callable[[datetime], Iterator[datetime]]


def active_bounds(schedule: Schedule) -> tuple[datetime | None, datetime | None]:
    """The ``active`` window's bounds as UTC instants (inclusive), None where open."""
    window = schedule.active
    if window is None:
        return None, None
    return (None if window.start is None else cron.to_instant(window.start, schedule.timezone),
            None if window.end is None else cron.to_instant(window.end, schedule.timezone))


def exclusion_of(schedule: Schedule, instant: datetime) -> Exclusion | None:
    """The first exclusion (in the order written) that matches ``instant``."""
    wall = cron.wall_time(instant, schedule.timezone)
    for exclusion in schedule.exclude:
        if exclusion.date is not None:
            if wall.date() == exclusion.date:
                return exclusion
        elif cron.matches(_expression(exclusion), wall):
            return exclusion
    return None


def forward(schedule: Schedule, after: datetime, made_after: Stream) -> Iterator[datetime]:
    """The instants of ``made_after(after)`` that the calendar keeps, ascending; restarted
    past each excluded span, bounded by the window's end and ``SEARCH_YEARS``."""
    tz = schedule.timezone
    low, high = active_bounds(schedule)
    if low is not None and low - _MICROSECOND > after:
        after = low - _MICROSECOND
    # Restarting the expression after each jump would reset its own horizon: keep one.
    horizon = _shifted(after, _SEARCH_SPAN)
    if high is None or (horizon is not None and horizon < high):
        high = horizon
    stream = made_after(after)
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
            moment = cron.span_end(moment, span, tz)
        if moment is None:
            return  # an exclusion that matches all time
        if moment == candidate:
            budget = MAX_REMOVED
            yield candidate
            continue
        if high is not None and moment > high:
            return
        stream = made_after(moment - _MICROSECOND)


def backward(schedule: Schedule, after: datetime, until: datetime, limit: int,
             made_until: Stream) -> list[datetime]:
    """The latest ``limit`` instants in (``after``, ``until``] of ``made_until`` that the
    calendar keeps, the latest first; fewer when a search in between gives up (see above) or
    after ``MAX_REMOVED × 10`` jumps in all, so the work stays bounded whatever the span."""
    tz = schedule.timezone
    low, high = active_bounds(schedule)
    if high is not None and high < until:
        until = high
    if low is not None and low - _MICROSECOND > after:
        after = low - _MICROSECOND
    horizon = _shifted(until, -_SEARCH_SPAN)
    if horizon is not None and horizon > after:
        after = horizon
    found: list[datetime] = []
    stream = made_until(until)
    budget, total = MAX_REMOVED, MAX_REMOVED * 10
    while len(found) < limit:
        candidate = next(stream, None)
        if candidate is None or candidate <= after:
            break
        moment = candidate
        while (span := _excluded_span(schedule, moment)) is not None:
            budget -= 1
            total -= 1
            if budget <= 0 or total <= 0 or span == cron.ALL_TIME:
                return found
            moment = cron.span_start(moment, span, tz) - _MICROSECOND
        if moment == candidate:
            budget = MAX_REMOVED
            found.append(candidate)
        elif moment <= after:
            break
        else:
            stream = made_until(moment)
    return found


def window_texts(schedule: Schedule) -> tuple[str | None, str | None]:
    """The ``active`` window's ``from`` and ``until`` as the job file writes them (as an
    instant in the schedule's zone when there is no text), None where the window is open."""
    window = schedule.active
    if window is None:
        return None, None
    low, high = active_bounds(schedule)
    tz = schedule.timezone
    return (None if low is None else window.from_text or cron.local_time(low, tz).isoformat(),
            None if high is None else window.until_text or cron.local_time(high, tz).isoformat())


def exclude_text(schedule: Schedule) -> str:
    """``, except 2026-12-25, 0 12 * * *``: the first five exclusions as written, then how
    many more (``(+3 more)``); empty without an exclude list."""
    if not schedule.exclude:
        return ""
    shown = [exclusion.text for exclusion in schedule.exclude[:5]]
    more = len(schedule.exclude) - len(shown)
    return ", except " + ", ".join(shown) + (f" (+{more} more)" if more else "")


def _shifted(moment: datetime, by: timedelta) -> datetime | None:
    """``moment + by``, or None past the ends of datetime's range."""
    try:
        return moment + by
    except OverflowError:
        return None


def _excluded_span(schedule: Schedule, instant: datetime) -> int | None:
    """The widest span an exclusion matching ``instant`` covers, or None if none matches."""
    wall = cron.wall_time(instant, schedule.timezone)
    widest: int | None = None
    for exclusion in schedule.exclude:
        if exclusion.date is not None:
            span = cron.DAY_SPAN if wall.date() == exclusion.date else None
        else:
            expression = _expression(exclusion)
            span = expression.span if cron.matches(expression, wall) else None
        if span is not None and (widest is None or span > widest):
            widest = span
    return widest


def _expression(exclusion: Exclusion) -> cron.Cron:
    if exclusion.cron is None:
        raise ValueError("a exclude schedule without its exclude value")
    return cron.compiled(exclusion.cron)
