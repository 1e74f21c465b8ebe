"""Schedules and clock changes in words, for people reading a job's page or ``pipeline next``.

``in_words`` says a schedule as a person would (``09:00 on Monday to Friday, UTC``);
``clock_change`` says what a zone's clocks did between two fires (a DST shift, a fire in the
repeated hour); ``next_note`` what a job's next fire time leaves unsaid (it fires on events,
its active window has ended). All are read-only views of what ``triggers`` and
``calendars`` compute.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from pipeline import calendars, cron
from pipeline.model import Schedule, ScheduleKind
from pipeline.notation import format_duration
from pipeline.triggers import describe

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
            words = _cron_words(cron.compiled(expression).walker)
        except ValueError:
            words = None
        text = f"{words or f'cron {expression!r}'.replace(chr(39), chr(34))}, {zone}"
    elif schedule.kind is ScheduleKind.EVERY:
        text = _duration_words(schedule.every or 0.0)
        if schedule.start is not None:
            tz = schedule.timezone
            start = cron.local_time(cron.to_instant(schedule.start, tz), tz)
            text += f", counted from {start.isoformat(sep=' ', timespec='minutes')}"
    else:
        moment = cron.to_instant(schedule.at, schedule.timezone) if schedule.at else None
        text = ("once, at " + cron.local_time(moment, schedule.timezone).isoformat(
            sep=" ", timespec="minutes") if moment else "once")
    if schedule.jitter > 0:
        text += f", up to {format_duration(schedule.jitter)} later at random"
    since, until = calendars.window_texts(schedule)
    if since is not None:
        text += f", from {since}"
    if until is not None:
        text += f" until {until}"
    return text + calendars.exclude_text(schedule)


class NoteKind(StrEnum):
    """What a note beside a job's next fire says, in a few words that fit a column."""

    TRIGGERED = "when triggered"  # no schedule
    DISABLED = "disabled"
    EVENTS = "on events"  # no fire time, but events fire it
    ALSO_EVENTS = "and on events"  # a fire time, and events fire it too
    OVER = "no more fires"


@dataclass(frozen=True)
class NextNote:
    """What a job's next fire time does not say: why it has none, or what fires it besides;
    ``words`` is the sentence."""

    kind: NoteKind
    words: str


def next_note(schedules: Sequence[Schedule], next_fire: datetime | None, now: datetime, *,
              enabled: bool = True) -> NextNote | None:
    """The note beside a job's next fire (``next_fire``, None when it has none after
    ``now``): that it runs only when triggered, is disabled, fires on events (``fires on
    events: when a file under incoming/*.csv has not changed for 10s; after each run of
    extract that ended succeeded``), also fires on events, or fires no more and why (``no
    more fires: its active window ended at 2026-06-30``). None when the time says it all.
    """
    if not schedules:
        return NextNote(NoteKind.TRIGGERED, "no schedule: it runs only when triggered")
    if not enabled:
        return NextNote(NoteKind.DISABLED, "enabled: false: it runs only when triggered")
    events = "; ".join(in_words(s) for s in schedules if not s.kind.timed)
    timed = [s for s in schedules if s.kind.timed]
    if next_fire is not None:
        return NextNote(NoteKind.ALSO_EVENTS, f"also fires on events: {events}") if events else None
    if not timed:
        return NextNote(NoteKind.EVENTS, f"fires on events: {events}")
    over = "; ".join(_over(s, now) if len(timed) == 1 else f"{describe(s)}: {_over(s, now)}"
                     for s in timed)
    if events:
        return NextNote(NoteKind.EVENTS, f"fires on events: {events}; no more timed fires: {over}")
    return NextNote(NoteKind.OVER, f"no more fires: {over}")


def _over(schedule: Schedule, now: datetime) -> str:
    """Why a timed schedule has no fire after ``now``."""
    tz = schedule.timezone
    if schedule.kind is ScheduleKind.AT and schedule.at is not None:
        moment = cron.to_instant(schedule.at, tz)
        if moment <= now:
            shown = cron.local_time(moment, tz).isoformat(sep=" ", timespec="minutes")
            return f"its one fire, at {shown}, has passed"
    _, high = calendars.active_bounds(schedule)
    if high is not None:
        until = calendars.window_texts(schedule)[1]
        if high <= now:
            return f"its active window ended at {until}"
        return f"no fire is left before its active window ends at {until}"
    if schedule.exclude:
        return "its exclude list removes every fire left"
    return f"no fire within {cron.SEARCH_YEARS} years"


def clock_change(fire: datetime, previous: datetime, tz: ZoneInfo) -> str | None:
    """What the zone's clocks did between ``previous`` and ``fire`` (a fire time), in words;
    None when nothing happened. Also says so of a fire in a repeated hour, and of one at the
    first instant after a skipped hour (where a fixed-hour cron fire moves to)."""
    before, after = cron.offset(tz, previous), cron.offset(tz, fire)
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
    elif cron.offset(tz, fire - timedelta(seconds=1)) != after:
        notes.append("the first instant after the skipped hour")
    return "; ".join(notes) or None


def _offset_text(offset: timedelta) -> str:
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    hours, mins = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{mins:02d}"
