"""Cron expressions: cronie's grammar, the wall times they match, and the instants those wall
times stand for under the contract's daylight-saving rule.

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

``to_instant`` reads any wall time by the fixed-time half of that rule (an ``at:`` written
without an offset, a calendar window's bounds), and ``matches`` tests a wall time against an
expression directly (an ``exclude:`` entry).

Bounds: parsing is linear in the text, which is at most ``MAX_EXPRESSION`` characters. Every
expression ``parse_cron`` accepts fires at least once in 40 years (the longest wait is for a
29 February on a given weekday), and a walk stops after ``SEARCH_YEARS`` without a fire.
"""

from __future__ import annotations

import functools
import heapq
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

SEARCH_YEARS = 50  # no cron fire within this many years of the last one: there are no more
MAX_EXPRESSION = 1000  # characters; keeps parsing bounded whatever the input

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
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
SECOND_SPAN, MINUTE_SPAN, HOUR_SPAN, DAY_SPAN, MONTH_SPAN, ALL_TIME = range(6)


@dataclass(frozen=True)
class Cron:
    expression: str  # normalised, as parse_cron returns it
    walker: str  # the same in numbers only, for cronsim
    real_time: bool  # hour field has `*` or a step: fires follow real time across DST
    # The values each field selects (seconds first when there are six fields), Sunday as 0
    # only, to test a wall time directly (`exclude:`); `day_and`: cronie's rule that a `*`
    # in either day field makes a day match only if both fields do.
    fields: tuple[frozenset[int], ...] = ()
    day_and: bool = True
    span: int = SECOND_SPAN


def parse_cron(text: str) -> str:
    """Validate a cron expression and return it normalised.

    Five fields (minute hour day-of-month month day-of-week) or six with seconds first; an
    ``@alias`` is expanded to its five fields; fields are joined by single spaces and names
    upper-cased. Raises ``ValueError`` with a message naming the field and the bad value, for
    an unsupported alias (``@reboot``), for syntax that is not crontab(5)'s, and for an
    expression that can never fire (``0 0 31 2 *``).
    """
    return compiled(text).expression


@functools.lru_cache(maxsize=1024)
def compiled(text: str) -> Cron:
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
    return Cron(expression=" ".join(part.upper() for part in parts), walker=walker,
                 real_time="*" in hour_text or "/" in hour_text, fields=tuple(sets),
                 day_and=day_and, span=_span(sets, day_and))


def _span(sets: list[frozenset[int]], day_and: bool) -> int:
    """The span of wall time around any match that the expression matches entirely."""
    *clock, doms, months, dows = sets
    full = [len(values) == 60 for values in clock[:-1]] + [len(clock[-1]) == 24]
    if not all(full):
        # five fields: a match covers its whole minute (the seconds are not looked at)
        return full.index(False) + (0 if len(clock) == 3 else MINUTE_SPAN)
    every_dom, every_dow = len(doms) == 31, len(dows) == 7
    if not ((every_dom and every_dow) if day_and else (every_dom or every_dow)):
        return DAY_SPAN
    return MONTH_SPAN if len(months) < 12 else ALL_TIME


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


def matches(cron: Cron, wall: datetime) -> bool:
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


# --- walking: cronsim walks wall-clock times; each wall time is mapped to the instants it means ---

def forward(cron: Cron, tz: ZoneInfo, after: datetime) -> Iterator[datetime]:
    """UTC instants strictly after ``after``, ascending, each once.

    Wall times come in wall-clock order, which is not instant order inside a repeated hour
    (the second 02:00 comes after the first 02:59). So instants wait in a heap until the next
    wall time proves no smaller instant can still come: every later wall time maps at or after
    its own earliest instant (``floor``).
    """
    try:
        # Any wall time up to `start` maps at or before `after`, whichever offset applies.
        lowest = min(offset(tz, after), offset(tz, after + _DAY))
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


def backward(cron: Cron, tz: ZoneInfo, until: datetime) -> Iterator[datetime]:
    """UTC instants at or before ``until``, descending, each once: ``forward`` mirrored,
    with the heap keyed on negative microseconds and ``ceiling`` as the bound."""
    try:
        highest = max(offset(tz, until), offset(tz, until - _DAY))
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
    end = gap_end(second, first, tz)
    return (() if real_time else (end,)), end, end


def gap_end(before: datetime, after: datetime, tz: ZoneInfo) -> datetime:
    """The first instant in (``before``, ``after``] whose offset differs from ``before``'s."""
    # Offsets change on whole seconds, so bisecting on whole seconds from a whole second ends
    # with `after` on the change itself.
    before = before.replace(microsecond=0)
    old = offset(tz, before)
    while after - before > _SECOND:
        middle = before + _SECOND * (((after - before) // _SECOND) // 2)
        if offset(tz, middle) == old:
            before = middle
        else:
            after = middle
    return after


def offset(tz: ZoneInfo, instant: datetime) -> timedelta:
    return instant.astimezone(tz).utcoffset() or timedelta(0)


def to_instant(moment: datetime, tz: ZoneInfo) -> datetime:
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


# --- spans: the wall time around a match that an expression matches entirely ---

def local_time(instant: datetime, tz: ZoneInfo) -> datetime:
    """``instant`` in zone ``tz``, with the offset it has there as a fixed tzinfo."""
    return instant.astimezone(timezone(offset(tz, instant)))


def wall_time(instant: datetime, tz: ZoneInfo) -> datetime:
    """The naive wall time of ``instant`` in ``tz``."""
    return instant.astimezone(tz).replace(tzinfo=None)


def _span_bounds(wall: datetime, span: int) -> tuple[datetime, datetime]:
    """The wall-time span of kind ``span`` that holds ``wall``: [start, end)."""
    if span == SECOND_SPAN:
        start = wall.replace(microsecond=0)
        return start, start + _SECOND
    if span == MINUTE_SPAN:
        start = wall.replace(second=0, microsecond=0)
        return start, start + timedelta(minutes=1)
    if span == HOUR_SPAN:
        start = wall.replace(minute=0, second=0, microsecond=0)
        return start, start + timedelta(hours=1)
    start = wall.replace(hour=0, minute=0, second=0, microsecond=0)
    if span == DAY_SPAN:
        return start, start + _DAY
    start = start.replace(day=1)
    following = (start + timedelta(days=32)).replace(day=1)
    return start, following


def span_end(instant: datetime, span: int, tz: ZoneInfo) -> datetime | None:
    """The first instant after ``instant`` whose wall time may be outside its ``span``.

    The wall-clock distance to the span's end is real time only while the offset stays the
    same, so a jump never crosses an offset change (it stops there and looks again), and
    never goes further than a day (a zone changes its offset at most once in a day).
    """
    if span == ALL_TIME:
        return None
    wall = wall_time(instant, tz)
    try:
        target = instant + min(_span_bounds(wall, span)[1] - wall, _DAY)
    except OverflowError:
        return None
    if offset(tz, target) != offset(tz, instant):
        target = gap_end(instant, target, tz)
    return target


def span_start(instant: datetime, span: int, tz: ZoneInfo) -> datetime:
    """The earliest instant up to ``instant`` from which on every wall time is in its
    ``span``: ``span_end`` mirrored."""
    wall = wall_time(instant, tz)
    target = instant - min(wall - _span_bounds(wall, span)[0], _DAY)
    if offset(tz, target) != offset(tz, instant):
        target = gap_end(target, instant, tz)
    return target
