"""Schedules: cron as crontab(5) and cronie mean it, intervals, one-shot times, time zones.

Pure arithmetic: no sleeps, no clocks. Expected fire times in the tables are written by hand
from the contract's rules, not produced by running the code.
"""

from __future__ import annotations

import random
import re
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from pipeline.cron import parse_cron
from pipeline.model import Schedule, ScheduleKind
from pipeline.notation import local_zone, zone
from pipeline.spec import load_job
from pipeline.triggers import describe, fires_between, next_fire, next_fires


def cron(text: str, tz: str = "UTC", jitter: float = 0.0) -> Schedule:
    return Schedule(ScheduleKind.CRON, ZoneInfo(tz), cron=parse_cron(text), jitter=jitter,
                    text=text)


def every(seconds: float, tz: str = "UTC", start: datetime | None = None) -> Schedule:
    return Schedule(ScheduleKind.EVERY, ZoneInfo(tz), every=seconds, start=start)


def at(moment: datetime, tz: str = "UTC") -> Schedule:
    return Schedule(ScheduleKind.AT, ZoneInfo(tz), at=moment)


def iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


def isos(moments: list[datetime]) -> list[str]:
    return [moment.isoformat() for moment in moments]


# --- crontab(5) meaning, checked against croniter in UTC ---

FIELD_RANGES = [(0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]  # second first
FIELD_NAMES = {4: ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV",
                   "DEC"),
               5: ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")}


def random_value(rng: random.Random, index: int, value: int) -> str:
    low = FIELD_RANGES[index][0]
    names = FIELD_NAMES.get(index, ())
    if names and value - low < len(names) and rng.random() < 0.3:
        name = names[value - low]
        return name.lower() if rng.random() < 0.5 else name
    return str(value)


def random_item(rng: random.Random, index: int) -> str:
    low, high = FIELD_RANGES[index]
    kind = rng.random()
    if kind < 0.25:
        return "*"
    if kind < 0.4:
        return f"*/{rng.randint(1, high - low + 2)}"
    if kind < 0.7:
        return random_value(rng, index, rng.randint(low, high))
    first = rng.randint(low, high)
    last = rng.randint(first, high)
    item = f"{random_value(rng, index, first)}-{random_value(rng, index, last)}"
    if rng.random() < 0.4:
        item += f"/{rng.randint(1, high - low + 1)}"
    return item


def random_field(rng: random.Random, index: int) -> str:
    items = [random_item(rng, index) for _ in range(1 if rng.random() < 0.7 else 3)]
    # croniter treats a field holding a bare `*` anywhere as unrestricted for the
    # day-of-month/day-of-week rule; cronie looks only at the first character. Such lists
    # ("5,*") mean nothing a user would write, so a bare `*` is generated only first.
    return ",".join([items[0], *(item for item in items[1:] if item != "*")])


def number(token: str) -> int:
    for names in FIELD_NAMES.values():
        if token.upper() in names:
            return names.index(token.upper()) + (1 if len(names) == 12 else 0)
    return int(token)


def one_value_ranges_collapsed(text: str) -> str:
    # croniter reads a one-value range ("6-6", "6-SAT", "6-6/4") as the whole field; crontab(5)
    # reads it as that one value. Writing the value alone keeps the comparison about the rest.
    def collapse(found: re.Match[str]) -> str:
        first, last = found.group(1), found.group(2)
        return first if number(first) == number(last) else found.group(0)

    return re.sub(r"\b(\w+)-(\w+)(?:/\d+)?", collapse, text)


def croniter_fires(text: str, start: datetime, count: int) -> list[datetime]:
    fields = text.split()
    # croniter takes the day-of-month/day-of-week rule as a flag; cronie ANDs the two fields
    # when either starts with `*` (even "*/2") and ORs them otherwise.
    day_or = not (fields[-3].startswith("*") or fields[-1].startswith("*"))
    walker = croniter(one_value_ranges_collapsed(text), start, day_or=day_or,
                      second_at_beginning=len(fields) == 6)
    return [walker.get_next(datetime) for _ in range(count)]


@pytest.mark.slow
def test_fires_agree_with_croniter_on_random_expressions() -> None:
    rng = random.Random(20260501)
    compared = 0
    began = time.perf_counter()
    for _ in range(1000):
        six = rng.random() < 0.2
        text = " ".join(random_field(rng, index) for index in range(0 if six else 1, 6))
        try:
            normalised = parse_cron(text)
        except ValueError as error:  # e.g. "* * 31 9-11/9 *": 31 September
            assert "never fires" in str(error)
            continue
        start = datetime(2000, 1, 1, tzinfo=UTC) + timedelta(
            seconds=rng.randrange(30 * 365 * 86400))
        ours = next_fires([cron(normalised)], start, 8)
        assert ours == croniter_fires(text, start, 8), text
        compared += 1
    assert compared > 950
    assert time.perf_counter() - began < 5


def test_sunday_is_both_0_and_7_and_names_mean_numbers() -> None:
    after = iso("2026-05-01T12:00:00+00:00")  # a Friday
    sundays = ["2026-05-03T00:00:00+00:00", "2026-05-10T00:00:00+00:00"]
    for text in ("0 0 * * 0", "0 0 * * 7", "0 0 * * SUN", "0 0 * * sun", "@weekly"):
        assert isos(next_fires([cron(text)], after, 2)) == sundays, text
    weekdays = next_fires([cron("0 9 * JAN-MAR MON-FRI")], iso("2026-03-27T12:00:00+00:00"), 3)
    assert isos(weekdays) == ["2026-03-30T09:00:00+00:00", "2026-03-31T09:00:00+00:00",
                              "2027-01-01T09:00:00+00:00"]
    assert parse_cron("0 9 * jan-Mar mon-fri") == "0 9 * JAN-MAR MON-FRI"
    assert isos(next_fires([cron("0 0 * * 5-7")], after, 3)) == [
        "2026-05-02T00:00:00+00:00", "2026-05-03T00:00:00+00:00", "2026-05-08T00:00:00+00:00"]


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    after = iso("2026-02-01T00:00:00+00:00")
    # The 13th or any Friday.
    assert isos(next_fires([cron("0 0 13 * FRI")], after, 4)) == [
        "2026-02-06T00:00:00+00:00", "2026-02-13T00:00:00+00:00",
        "2026-02-20T00:00:00+00:00", "2026-02-27T00:00:00+00:00"]
    # A field that starts with `*` counts as unrestricted (cronie's DOM_STAR/DOW_STAR), so
    # "*/2" ANDs: odd days that are Mondays.
    assert isos(next_fires([cron("0 0 */2 * MON")], after, 3)) == [
        "2026-02-09T00:00:00+00:00", "2026-02-23T00:00:00+00:00", "2026-03-09T00:00:00+00:00"]
    assert isos(next_fires([cron("0 0 1,15 * */7")], after, 2)) == [
        "2026-02-15T00:00:00+00:00", "2026-03-01T00:00:00+00:00"]


def test_ranges_and_steps_mean_what_cronie_means() -> None:
    after = iso("2026-01-01T00:00:00+00:00")
    # A one-value range with a step is that one value (cronsim alone would read 5, 15, 25...).
    assert isos(next_fires([cron("5-5/10 0 * * *")], after, 2)) == [
        "2026-01-01T00:05:00+00:00", "2026-01-02T00:05:00+00:00"]
    assert isos(next_fires([cron("10-40/15 0 1 1 *")], after, 3)) == [
        "2026-01-01T00:10:00+00:00", "2026-01-01T00:25:00+00:00", "2026-01-01T00:40:00+00:00"]
    # A step past the range picks the first value only.
    assert isos(next_fires([cron("*/61 0 1 1 *")], after, 1)) == ["2027-01-01T00:00:00+00:00"]


def test_six_fields_put_seconds_first() -> None:
    after = iso("2026-01-01T10:00:00+00:00")
    assert isos(next_fires([cron("*/20 * * * * *")], after, 3)) == [
        "2026-01-01T10:00:20+00:00", "2026-01-01T10:00:40+00:00", "2026-01-01T10:01:00+00:00"]
    assert isos(next_fires([cron("15 30 9 * * *")], after, 1)) == ["2026-01-02T09:30:15+00:00"]


@pytest.mark.parametrize(("alias", "expanded"), [
    ("@yearly", "0 0 1 1 *"), ("@annually", "0 0 1 1 *"), ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"), ("@daily", "0 0 * * *"), ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"), ("  @Daily ", "0 0 * * *"),
])
def test_aliases_expand_to_five_fields(alias: str, expanded: str) -> None:
    assert parse_cron(alias) == expanded


def test_normalised_expressions_are_stable() -> None:
    assert parse_cron("  0\t9  *  *   mon-fri ") == "0 9 * * MON-FRI"
    for text in ("0 9 * * MON-FRI", "*/5 * * * *", "0 30 2 * * *", "0 0 29 2 *"):
        assert parse_cron(parse_cron(text)) == parse_cron(text)


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty cron expression"),
    ("   ", "empty cron expression"),
    ("* * * *", "expected 5 or 6 fields, got 4"),
    ("* * * * * * *", "expected 5 or 6 fields, got 7"),
    ("@reboot", "@reboot is an event, not a time: write it as the schedule itself"),
    ("@fortnightly", "unknown alias '@fortnightly'"),
    ("61 * * * *", "minute field: 61 is out of range 0-59"),
    ("* 24 * * *", "hour field: 24 is out of range 0-23"),
    ("* * 0 * *", "day-of-month field: 0 is out of range 1-31"),
    ("* * 32 * *", "day-of-month field: 32 is out of range 1-31"),
    ("* * * 13 *", "month field: 13 is out of range 1-12"),
    ("* * * * 8", "day-of-week field: 8 is out of range 0-7"),
    ("60 * * * * *", "second field: 60 is out of range 0-59"),
    ("99999999999999999999999 * * * *", "minute field: 99999999999999999999... is out of range"),
    ("5-2 * * * *", "minute field: range 5-2 runs backwards"),
    ("* * * * FRI-MON", "day-of-week field: range FRI-MON runs backwards"),
    ("*/0 * * * *", "minute field: step 0 in '*/0'; a step must be at least 1"),
    ("*/x * * * *", "minute field: step 'x' in '*/x' is not a number"),
    ("5/15 * * * *", "minute field: '5/15' is not crontab(5) syntax: a step needs * or a range "
                     "(write 5-59/15)"),
    ("1,,2 * * * *", "minute field: empty list item in '1,,2'"),
    ("-5 * * * *", "minute field: missing number in '-5'"),
    ("*5 * * * *", "minute field: '*5' is not a number"),
    ("MON * * * *", "minute field: 'MON' is not a number"),
    ("* * * FOO *", "month field: 'FOO' is neither a number nor a name (JAN/FEB/"),
    ("* * * * MONDAY", "day-of-week field: 'MONDAY' is neither a number nor a name (SUN/MON/"),
    ("* * L * *", "day-of-month field: 'L' is not crontab(5) syntax"),
    ("* * LW * *", "day-of-month field: 'LW' is not crontab(5) syntax"),
    ("* * 15W * *", "day-of-month field: '15W' is not crontab(5) syntax"),
    ("* * * * 5L", "day-of-week field: '5L' is not crontab(5) syntax"),
    ("* * * * MON#2", "day-of-week field: 'MON#2' is not crontab(5) syntax"),
    ("* * ? * MON", "day-of-month field: '?' is not crontab(5) syntax"),
    ("0 0 31 2 *", "this expression never fires: day-of-month 31 does not occur in month 2"),
    ("0 0 30 2 *", "this expression never fires: day-of-month 30 does not occur in month 2"),
    ("0 0 31 4,6,9,11 *",
     "this expression never fires: day-of-month 31 does not occur in month 4,6,9,11"),
    ("0 0 30,31 feb */2",
     "this expression never fires: day-of-month 30,31 does not occur in month FEB"),
    ("*" * 2000, "cron expression is too long (2000 characters)"),
])
def test_bad_expressions_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_cron(text)
    assert str(raised.value).startswith(message), str(raised.value)


def test_rare_dates_fire_and_the_search_is_bounded() -> None:
    after = iso("2026-01-01T00:00:00+00:00")
    assert isos(next_fires([cron("0 0 29 2 *")], after, 2)) == [
        "2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"]
    # A 29 February that is a Sunday: the longest wait any expression has (40 years at most).
    began = time.perf_counter()
    assert isos(next_fires([cron("0 0 29 2 */7")], after, 4)) == [
        "2032-02-29T00:00:00+00:00", "2060-02-29T00:00:00+00:00",
        "2088-02-29T00:00:00+00:00", "2128-02-29T00:00:00+00:00"]
    # 31 December 9999 is the last day a datetime has; after it there is nothing to find.
    assert next_fire(cron("0 0 29 2 */7"), iso("9990-01-01T00:00:00+00:00")) is None
    assert next_fire(cron("0 0 1 1 *"), iso("9999-06-01T00:00:00+00:00")) is None
    assert next_fire(cron("* * * * *"), iso("9999-12-31T23:59:00+00:00")) is None
    assert isos(next_fires([cron("* * * * *")], iso("0001-01-01T00:00:00+00:00"), 1)) == [
        "0001-01-01T00:01:00+00:00"]
    assert time.perf_counter() - began < 2
    # A schedule built without parse_cron is still checked, never searched forever.
    never = Schedule(ScheduleKind.CRON, ZoneInfo("UTC"), cron="0 0 31 2 *")
    with pytest.raises(ValueError, match="never fires"):
        next_fire(never, after)


# --- daylight saving time: hand-written tables ---
#
# 2026 transitions used below:
#   Europe/Berlin        29 Mar 02:00 +01 -> 03:00 +02      25 Oct 03:00 +02 -> 02:00 +01
#   America/New_York      8 Mar 02:00 -05 -> 03:00 -04       1 Nov 02:00 -04 -> 01:00 -05
#   Australia/Lord_Howe   5 Apr 02:00 +11 -> 01:30 +10:30    4 Oct 02:00 +10:30 -> 02:30 +11
#   Antarctica/Troll     29 Mar 01:00 +00 -> 03:00 +02      25 Oct 03:00 +02 -> 01:00 +00
#
# Hour field fixed: a skipped wall time fires once at the end of the gap; a repeated one fires
# once, at its first pass. Hour field `*` or a step: only instants that exist, in both passes.

DST_TABLE = [
    # Europe/Berlin, spring forward
    ("Europe/Berlin", "30 2 * * *", "2026-03-28T12:00:00+01:00",
     ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]),
    ("Europe/Berlin", "0,30 2 * * *", "2026-03-28T12:00:00+01:00",
     ["2026-03-29T03:00:00+02:00", "2026-03-30T02:00:00+02:00"]),
    ("Europe/Berlin", "30 * * * *", "2026-03-29T00:00:00+01:00",
     ["2026-03-29T00:30:00+01:00", "2026-03-29T01:30:00+01:00", "2026-03-29T03:30:00+02:00"]),
    ("Europe/Berlin", "0 */2 * * *", "2026-03-29T00:00:00+01:00",
     ["2026-03-29T04:00:00+02:00", "2026-03-29T06:00:00+02:00"]),
    # a step in the hour field that does not start with `*` is still a step: real time
    # (cronie and cronsim look at the first character only and would fire at 03:00)
    ("Europe/Berlin", "0 0-23/2 * * *", "2026-03-29T00:00:00+01:00",
     ["2026-03-29T04:00:00+02:00"]),
    # a `*` minute with a fixed hour is fixed-time: the whole skipped hour fires once
    # (cronie and cronsim treat a `*` minute as real time and would not fire that day)
    ("Europe/Berlin", "*/15 2 * * *", "2026-03-28T12:00:00+01:00",
     ["2026-03-29T03:00:00+02:00", "2026-03-30T02:00:00+02:00"]),
    # six fields with a fixed hour follow the same rule (cronsim would skip the day)
    ("Europe/Berlin", "0 30 2 * * *", "2026-03-28T12:00:00+01:00",
     ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]),
    # Europe/Berlin, fall back
    ("Europe/Berlin", "30 2 * * *", "2026-10-24T12:00:00+02:00",
     ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]),
    ("Europe/Berlin", "30 * * * *", "2026-10-25T00:00:00+02:00",
     ["2026-10-25T00:30:00+02:00", "2026-10-25T01:30:00+02:00", "2026-10-25T02:30:00+02:00",
      "2026-10-25T02:30:00+01:00", "2026-10-25T03:30:00+01:00"]),
    ("Europe/Berlin", "0 */2 * * *", "2026-10-25T01:00:00+02:00",
     ["2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00", "2026-10-25T04:00:00+01:00"]),
    ("Europe/Berlin", "*/15 2 * * *", "2026-10-25T00:00:00+02:00",
     ["2026-10-25T02:00:00+02:00", "2026-10-25T02:15:00+02:00", "2026-10-25T02:30:00+02:00",
      "2026-10-25T02:45:00+02:00", "2026-10-26T02:00:00+01:00"]),
    # started inside the second pass, the first pass is already over (cronsim alone answers
    # 02:30+02:00, an instant before the one it was given)
    ("Europe/Berlin", "30 2 * * *", "2026-10-25T02:10:00+01:00",
     ["2026-10-26T02:30:00+01:00"]),
    ("Europe/Berlin", "30 2 * * *", "2026-10-25T02:10:00+02:00",
     ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]),
    ("Europe/Berlin", "30 * * * *", "2026-10-25T02:40:00+02:00",
     ["2026-10-25T02:30:00+01:00", "2026-10-25T03:30:00+01:00"]),
    # America/New_York
    ("America/New_York", "30 2 * * *", "2026-03-07T12:00:00-05:00",
     ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]),
    ("America/New_York", "30 * * * *", "2026-03-08T00:00:00-05:00",
     ["2026-03-08T00:30:00-05:00", "2026-03-08T01:30:00-05:00", "2026-03-08T03:30:00-04:00"]),
    ("America/New_York", "30 1 * * *", "2026-10-31T12:00:00-04:00",
     ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]),
    ("America/New_York", "30 * * * *", "2026-11-01T00:00:00-04:00",
     ["2026-11-01T00:30:00-04:00", "2026-11-01T01:30:00-04:00", "2026-11-01T01:30:00-05:00",
      "2026-11-01T02:30:00-05:00"]),
    ("America/New_York", "0 0 * * *", "2026-03-07T12:00:00-05:00",
     ["2026-03-08T00:00:00-05:00", "2026-03-09T00:00:00-04:00"]),
    # Australia/Lord_Howe: half-hour shifts
    ("Australia/Lord_Howe", "45 1 * * *", "2026-04-04T12:00:00+11:00",
     ["2026-04-05T01:45:00+11:00", "2026-04-06T01:45:00+10:30"]),
    ("Australia/Lord_Howe", "45 * * * *", "2026-04-05T00:00:00+11:00",
     ["2026-04-05T00:45:00+11:00", "2026-04-05T01:45:00+11:00", "2026-04-05T01:45:00+10:30",
      "2026-04-05T02:45:00+10:30"]),
    ("Australia/Lord_Howe", "15 2 * * *", "2026-10-03T12:00:00+10:30",
     ["2026-10-04T02:30:00+11:00", "2026-10-05T02:15:00+11:00"]),
    ("Australia/Lord_Howe", "*/10 2 * * *", "2026-10-03T12:00:00+10:30",
     ["2026-10-04T02:30:00+11:00", "2026-10-04T02:40:00+11:00", "2026-10-04T02:50:00+11:00",
      "2026-10-05T02:00:00+11:00"]),
    ("Australia/Lord_Howe", "15 * * * *", "2026-10-04T00:00:00+10:30",
     ["2026-10-04T00:15:00+10:30", "2026-10-04T01:15:00+10:30", "2026-10-04T03:15:00+11:00"]),
    # Antarctica/Troll: two-hour shifts
    ("Antarctica/Troll", "30 1 * * *", "2026-03-28T12:00:00+00:00",
     ["2026-03-29T03:00:00+02:00", "2026-03-30T01:30:00+02:00"]),
    ("Antarctica/Troll", "30 1,2 * * *", "2026-03-28T12:00:00+00:00",
     ["2026-03-29T03:00:00+02:00", "2026-03-30T01:30:00+02:00", "2026-03-30T02:30:00+02:00"]),
    ("Antarctica/Troll", "30 * * * *", "2026-03-29T00:00:00+00:00",
     ["2026-03-29T00:30:00+00:00", "2026-03-29T03:30:00+02:00", "2026-03-29T04:30:00+02:00"]),
    ("Antarctica/Troll", "30 1 * * *", "2026-10-24T12:00:00+02:00",
     ["2026-10-25T01:30:00+02:00", "2026-10-26T01:30:00+00:00"]),
    ("Antarctica/Troll", "30 * * * *", "2026-10-25T00:00:00+02:00",
     ["2026-10-25T00:30:00+02:00", "2026-10-25T01:30:00+02:00", "2026-10-25T02:30:00+02:00",
      "2026-10-25T01:30:00+00:00", "2026-10-25T02:30:00+00:00", "2026-10-25T03:30:00+00:00"]),
]


@pytest.mark.parametrize(("tz", "text", "after", "expected"), DST_TABLE)
def test_daylight_saving_follows_the_contract(tz: str, text: str, after: str,
                                              expected: list[str]) -> None:
    schedule = cron(text, tz)
    assert isos(next_fires([schedule], iso(after), len(expected))) == expected
    first = next_fire(schedule, iso(after))
    assert first is not None and first.isoformat() == expected[0]
    # The same fires found walking backwards from the last one.
    found, truncated = fires_between([schedule], iso(after), iso(expected[-1]))
    assert (isos(found), truncated) == (expected, False)


def test_fire_times_compare_and_hash_by_instant_inside_a_repeated_hour() -> None:
    fires = next_fires([cron("*/30 * * * *", "Europe/Berlin")],
                       iso("2026-10-25T02:15:00+02:00"), 4)
    assert isos(fires) == ["2026-10-25T02:30:00+02:00", "2026-10-25T02:00:00+01:00",
                           "2026-10-25T02:30:00+01:00", "2026-10-25T03:00:00+01:00"]
    # Two datetimes of one ZoneInfo compare by wall time (the first 02:30 would sort after the
    # second 02:00, and equal the second 02:30); fixed offsets compare by instant.
    assert sorted(fires) == fires
    assert len(set(fires)) == 4
    assert fires[0] != fires[2]


# Independent reference: the rule applied minute by minute, with the matching minutes and
# hours written out by hand (every other field is `*`).
REFERENCE_CASES = [
    ("30 2 * * *", {30}, {2}, False),
    ("*/20 1-3 * * *", {0, 20, 40}, {1, 2, 3}, False),
    ("0,45 1,2 * * *", {0, 45}, {1, 2}, False),
    ("*/15 2 * * *", {0, 15, 30, 45}, {2}, False),
    ("15 * * * *", {15}, set(range(24)), True),
    ("*/30 */2 * * *", {0, 30}, set(range(0, 24, 2)), True),
    ("0 1-23/3 * * *", {0}, {1, 4, 7, 10, 13, 16, 19, 22}, True),
]
TRANSITIONS = [
    ("Europe/Berlin", "2026-03-29T01:00:00+00:00"), ("Europe/Berlin", "2026-10-25T01:00:00+00:00"),
    ("America/New_York", "2026-03-08T07:00:00+00:00"),
    ("America/New_York", "2026-11-01T06:00:00+00:00"),
    ("Australia/Lord_Howe", "2026-04-04T15:00:00+00:00"),
    ("Australia/Lord_Howe", "2026-10-03T15:30:00+00:00"),
    ("Antarctica/Troll", "2026-03-29T01:00:00+00:00"),
    ("Antarctica/Troll", "2026-10-25T01:00:00+00:00"),
]


def reference_fires(tz: ZoneInfo, minutes: set[int], hours: set[int], real_time: bool,
                    start: datetime, end: datetime) -> list[datetime]:
    step = timedelta(minutes=1)
    fires: set[datetime] = set()
    if real_time:
        moment = start + step
        while moment <= end:
            local = moment.astimezone(tz)
            if local.minute in minutes and local.hour in hours:
                fires.add(moment)
            moment += step
        return sorted(fires)
    wall = start.astimezone(tz).replace(tzinfo=None, minute=0) - timedelta(hours=4)
    while wall <= end.astimezone(tz).replace(tzinfo=None) + timedelta(hours=4):
        if wall.minute in minutes and wall.hour in hours:
            first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
            second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
            if first <= second:
                instant = first
            else:  # skipped: walk to the first minute with the new offset
                instant = second
                while instant.astimezone(tz).utcoffset() == second.astimezone(tz).utcoffset():
                    instant += step
            if start < instant <= end:
                fires.add(instant)
        wall += step
    return sorted(fires)


@pytest.mark.parametrize(("tz", "transition"), TRANSITIONS)
def test_daylight_saving_matches_a_minute_by_minute_reference(tz: str, transition: str) -> None:
    start = iso(transition) - timedelta(hours=5)
    end = iso(transition) + timedelta(hours=5)
    for text, minutes, hours, real_time in REFERENCE_CASES:
        expected = reference_fires(ZoneInfo(tz), minutes, hours, real_time, start, end)
        schedule = cron(text, tz)
        forward = [f for f in next_fires([schedule], start, len(expected) + 1) if f <= end]
        assert [f.timestamp() for f in forward] == [f.timestamp() for f in expected], text
        backward, _ = fires_between([schedule], start, end)
        assert [f.timestamp() for f in backward] == [f.timestamp() for f in expected], text
        # Fire times carry the zone's offset at that instant, as a fixed offset.
        assert all(f.utcoffset() == f.astimezone(ZoneInfo(tz)).utcoffset()
                   for f in forward + backward)


def test_walking_backwards_finds_what_walking_forwards_finds() -> None:
    rng = random.Random(7)
    texts = ["*/7 * * * *", "0 1-3 * * *", "13 */3 * * SAT", "0,30 2 * * *", "*/20 * * * * *",
             "0 0 1,15 * FRI", "5 4 * * 0"]
    for tz in ("Europe/Berlin", "Australia/Lord_Howe", "Antarctica/Troll", "America/Santiago"):
        for text in texts:
            schedule = cron(text, tz)
            start = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randrange(525600))
            forward = next_fires([schedule], start, 40)
            backward, truncated = fires_between([schedule], start, forward[-1], limit=40)
            assert not truncated
            assert [f.timestamp() for f in backward] == [f.timestamp() for f in forward]


# --- every and at ---


def test_every_is_aligned_to_the_epoch_by_default() -> None:
    schedule = every(900)
    assert isos(next_fires([schedule], iso("2026-01-01T10:07:00+00:00"), 2)) == [
        "2026-01-01T10:15:00+00:00", "2026-01-01T10:30:00+00:00"]
    on_a_fire = next_fire(schedule, iso("2026-01-01T10:15:00+00:00"))
    assert on_a_fire is not None and on_a_fire.isoformat() == "2026-01-01T10:30:00+00:00"


def test_every_is_aligned_to_its_start_and_restarts_do_not_drift() -> None:
    start = iso("2026-01-01T00:05:00+01:00")
    schedule = every(3600, "Europe/Berlin", start=start)
    fire = next_fire(schedule, iso("2026-03-01T12:00:00+00:00"))
    assert fire is not None and fire.isoformat() == "2026-03-01T13:05:00+01:00"
    rng = random.Random(3)
    for _ in range(200):
        restart = start + timedelta(seconds=rng.uniform(0, 10**8))
        fire = next_fire(schedule, restart)
        assert fire is not None
        assert (fire - start) % timedelta(hours=1) == timedelta(0)
        assert timedelta(0) < fire - restart <= timedelta(hours=1)
    # `start` is the first fire; there are none before it.
    first = next_fire(schedule, iso("2025-06-01T00:00:00+00:00"))
    assert first is not None and first.isoformat() == "2026-01-01T00:05:00+01:00"


def test_every_counts_elapsed_time_across_daylight_saving() -> None:
    schedule = every(1800, "Europe/Berlin")
    assert isos(next_fires([schedule], iso("2026-03-29T01:00:00+01:00"), 3)) == [
        "2026-03-29T01:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T03:30:00+02:00"]
    assert isos(next_fires([schedule], iso("2026-10-25T02:30:00+02:00"), 3)) == [
        "2026-10-25T02:00:00+01:00", "2026-10-25T02:30:00+01:00", "2026-10-25T03:00:00+01:00"]


def test_every_with_sub_second_intervals() -> None:
    assert isos(next_fires([every(0.25)], iso("2026-01-01T00:00:00.100000+00:00"), 2)) == [
        "2026-01-01T00:00:00.250000+00:00", "2026-01-01T00:00:00.500000+00:00"]


def test_at_fires_once_when_in_the_future() -> None:
    moment = iso("2026-12-01T09:00:00+01:00")
    schedule = at(moment, "Europe/Berlin")
    fire = next_fire(schedule, iso("2026-06-01T00:00:00+00:00"))
    assert fire is not None and fire.isoformat() == "2026-12-01T09:00:00+01:00"
    assert next_fire(schedule, moment) is None
    assert next_fire(schedule, iso("2027-01-01T00:00:00+00:00")) is None
    assert next_fires([schedule], iso("2026-06-01T00:00:00+00:00"), 5) == [moment]
    # A time without an offset is a wall time in the schedule's zone.
    naive = next_fire(at(datetime(2026, 7, 1, 9, 0), "Europe/Berlin"), moment - timedelta(days=300))
    assert naive is not None and naive.isoformat() == "2026-07-01T09:00:00+02:00"


def test_an_at_time_in_a_dst_gap_fires_at_the_end_of_the_gap_as_cron_does(
        tmp_path: Path) -> None:
    # Europe/Berlin skips 02:00-03:00 on 2026-03-29. "30 2 * * *" fires at 03:00 that day
    # (cron's rule, CONTRACT §2); an `at:` of 02:30 without an offset must fire there too,
    # not at 03:30 (02:30 read with the winter offset). A repeated time is its first pass.
    path = tmp_path / "gap.yaml"
    path.write_text("schedule:\n"
                    "  - {at: '2026-03-29T02:30:00', timezone: Europe/Berlin}\n"
                    "  - {at: '2026-10-25T02:30:00', timezone: Europe/Berlin}\n"
                    "  - {cron: '30 2 29 3 *', timezone: Europe/Berlin}\n"
                    "steps:\n  - {id: a, run: 'true'}\n")
    gap, repeated, daily = load_job(path).schedules
    after = iso("2026-03-01T00:00:00+00:00")
    assert isos([next_fire(gap, after)]) == ["2026-03-29T03:00:00+02:00"]  # type: ignore[list-item]
    assert next_fire(gap, after) == next_fire(daily, after)
    assert isos([next_fire(repeated, after)]) == ["2026-10-25T02:30:00+02:00"]  # type: ignore[list-item]
    assert describe(gap) == "at 2026-03-29T03:00:00+02:00"
    found, _ = fires_between([gap], after, iso("2026-04-01T00:00:00+00:00"))
    assert isos(found) == ["2026-03-29T03:00:00+02:00"]
    # With an offset, a time is an instant, whatever the zone does.
    assert isos(next_fires([at(iso("2026-03-29T02:30:00+01:00"), "Europe/Berlin")], after, 1)) \
        == ["2026-03-29T03:30:00+02:00"]


def test_merged_schedules_are_sorted_with_shared_instants_once() -> None:
    quarter = cron("*/15 * * * *")
    half = every(1800)
    late = at(iso("2026-01-01T10:20:00+00:00"))
    fires = next_fires([quarter, half, late], iso("2026-01-01T10:00:00+00:00"), 5)
    assert isos(fires) == ["2026-01-01T10:15:00+00:00", "2026-01-01T10:20:00+00:00",
                           "2026-01-01T10:30:00+00:00", "2026-01-01T10:45:00+00:00",
                           "2026-01-01T11:00:00+00:00"]
    # The same instant in two zones counts once, shown in the zone of the first schedule.
    berlin = cron("0 10 * * *", "Europe/Berlin")
    utc = cron("0 9 * * *")
    fires = next_fires([berlin, utc], iso("2026-01-01T00:00:00+00:00"), 2)
    assert isos(fires) == ["2026-01-01T10:00:00+01:00", "2026-01-02T10:00:00+01:00"]
    assert next_fires([], iso("2026-01-01T00:00:00+00:00"), 3) == []
    assert next_fires([quarter], iso("2026-01-01T00:00:00+00:00"), 0) == []


# --- catch-up spans ---


def test_fires_between_returns_every_fire_in_the_span() -> None:
    after, until = iso("2026-01-01T10:00:00+00:00"), iso("2026-01-01T11:00:00+00:00")
    found, truncated = fires_between([cron("*/15 * * * *"), every(1800)], after, until)
    assert not truncated
    assert isos(found) == ["2026-01-01T10:15:00+00:00", "2026-01-01T10:30:00+00:00",
                           "2026-01-01T10:45:00+00:00", "2026-01-01T11:00:00+00:00"]
    assert fires_between([cron("*/15 * * * *")], until, after) == ([], False)
    moment = iso("2026-01-01T10:20:00+00:00")
    assert fires_between([at(moment)], after, until) == ([moment], False)
    assert fires_between([at(moment)], moment, until) == ([], False)


def test_fires_between_after_a_long_outage_is_fast_and_keeps_the_latest() -> None:
    after, until = iso("2023-01-01T00:00:00+00:00"), iso("2026-01-01T00:00:00+00:00")
    began = time.perf_counter()
    for schedule in (every(1), cron("* * * * * *"), cron("* * * * * *", "Europe/Berlin")):
        found, truncated = fires_between([schedule], after, until, limit=1000)
        assert truncated
        assert len(found) == 1000
        assert found[-1] == until
        assert found[0] == until - timedelta(seconds=999)
    found, truncated = fires_between([every(1), cron("* * * * * *")], after, until, limit=3)
    assert (isos(found), truncated) == (["2025-12-31T23:59:58+00:00", "2025-12-31T23:59:59+00:00",
                                         "2026-01-01T00:00:00+00:00"], True)
    assert fires_between([every(1)], after, until, limit=0) == ([], True)
    assert time.perf_counter() - began < 1


def test_fires_between_exactly_at_the_limit_is_not_truncated() -> None:
    after, until = iso("2026-01-01T00:00:00+00:00"), iso("2026-01-01T00:10:00+00:00")
    found, truncated = fires_between([cron("* * * * *")], after, until, limit=10)
    assert (len(found), truncated) == (10, False)
    found, truncated = fires_between([cron("* * * * *")], after, until, limit=9)
    assert (len(found), truncated) == (9, True)
    assert found[0].isoformat() == "2026-01-01T00:02:00+00:00"


def test_naive_times_and_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_fire(cron("* * * * *"), datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="negative"):
        fires_between([cron("* * * * *")], iso("2026-01-01T00:00:00+00:00"),
                      iso("2026-01-02T00:00:00+00:00"), limit=-1)
    with pytest.raises(ValueError, match="positive"):
        next_fire(every(0), iso("2026-01-01T00:00:00+00:00"))


# --- zones ---


def test_zone_names() -> None:
    assert zone("Europe/Berlin") == ZoneInfo("Europe/Berlin")
    assert zone("UTC").key == "UTC"
    with pytest.raises(ValueError) as raised:
        zone("Mars/Base")
    assert str(raised.value) == "unknown time zone 'Mars/Base'"


@pytest.mark.parametrize("name", [
    "", "Europe", "europe/berlin", "../etc/passwd", "/etc/localtime", "/usr/share/zoneinfo/UTC",
    "Europe/../Europe/Berlin", "Europe/Berlin\x00", "localtime", " UTC", "Europe\\Berlin",
    "A" * 300,
])
def test_zone_refuses_what_is_not_a_zone_name(name: str) -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        zone(name)


def test_local_zone_reads_tz(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TZ", "Europe/Berlin")
    assert local_zone().key == "Europe/Berlin"
    monkeypatch.setenv("TZ", ":America/New_York")
    assert local_zone().key == "America/New_York"
    monkeypatch.setenv("TZ", "/usr/share/zoneinfo/Asia/Tokyo")
    assert local_zone().key == "Asia/Tokyo"
    monkeypatch.setenv("TZ", "")
    assert local_zone().key == "UTC"
    # A POSIX rule names no IANA zone: the machine's files decide.
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "timezone").write_text("Australia/Lord_Howe\n")
    monkeypatch.setenv("TZ", "CET-1CEST,M3.5.0,M10.5.0/3")
    assert local_zone(root=tmp_path).key == "Australia/Lord_Howe"


def test_local_zone_reads_the_machine_files(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    assert local_zone(environ={}, root=tmp_path).key == "UTC"  # nothing to go by
    (etc / "timezone").write_text("America/New_York\n")
    assert local_zone(environ={}, root=tmp_path).key == "America/New_York"
    (etc / "localtime").symlink_to("../usr/share/zoneinfo/posix/Europe/Paris")
    assert local_zone(environ={}, root=tmp_path).key == "Europe/Paris"


def test_local_zone_recognises_a_copied_zone_file(tmp_path: Path) -> None:
    source = Path("/usr/share/zoneinfo/Asia/Kolkata")
    if not source.is_file():
        pytest.skip("no system zoneinfo tree")
    (tmp_path / "etc").mkdir()
    shutil.copyfile(source, tmp_path / "etc" / "localtime")
    found = local_zone(environ={}, root=tmp_path)
    assert found.key in {"Asia/Kolkata", "Asia/Calcutta"}


# --- jitter, descriptions, durations ---


def test_describe() -> None:
    assert describe(cron("30 2 * * *", "Europe/Berlin")) == 'cron "30 2 * * *" Europe/Berlin'
    assert describe(every(900)) == "every 15m"
    assert describe(every(90, start=iso("2026-01-01T00:00:00+00:00"))) == (
        "every 1m30s from 2026-01-01T00:00:00+00:00")
    assert describe(at(iso("2026-12-01T09:00:00+01:00"), "Europe/Berlin")) == (
        "at 2026-12-01T09:00:00+01:00")
    assert describe(cron("@daily", jitter=30)) == 'cron "0 0 * * *" UTC, jitter 30s'
