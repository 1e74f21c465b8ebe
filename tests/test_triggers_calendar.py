"""Calendars on schedules (issue 12 §5): `active` windows and `exclude` lists, as
pipeline.triggers applies them (pipeline.calendars searches past them): next fires, fires in a
span, what was removed and why, and a search that always ends.

Expected fire times in the tables are written by hand from the contract's rules; the
randomised test compares the searches (which jump over excluded spans) with the plain fires
filtered one by one by a predicate written here.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from pipeline.calendars import MAX_REMOVED
from pipeline.cron import parse_cron
from pipeline.model import Exclusion, RunStatus, Schedule, ScheduleKind, Window
from pipeline.triggers import (
    CalendarReason,
    Removed,
    calendar_verdict,
    describe,
    fires_between,
    first_fire,
    next_fire,
    next_fires,
    removed_after,
    removed_between,
)

BERLIN = ZoneInfo("Europe/Berlin")


def excluding(*texts: str) -> tuple[Exclusion, ...]:
    found = []
    for text in texts:
        try:
            found.append(Exclusion(text, date=date.fromisoformat(text)))
        except ValueError:
            found.append(Exclusion(text, cron=parse_cron(text)))
    return tuple(found)


def cron(text: str, *, tz: ZoneInfo = BERLIN, exclude: tuple[str, ...] = (),
         active: Window | None = None) -> Schedule:
    return Schedule(ScheduleKind.CRON, tz, cron=parse_cron(text), text=text,
                    exclude=excluding(*exclude), active=active)


def every(seconds: float, *, tz: ZoneInfo = BERLIN, exclude: tuple[str, ...] = (),
          active: Window | None = None) -> Schedule:
    return Schedule(ScheduleKind.EVERY, tz, every=seconds, exclude=excluding(*exclude),
                    active=active)


def window(start: str | None, end: str | None) -> Window:
    return Window(None if start is None else datetime.fromisoformat(start),
                  None if end is None else datetime.fromisoformat(end),
                  start or "", end or "")


def iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


def isos(moments: list[datetime]) -> list[str]:
    return [moment.isoformat() for moment in moments]


# -- by hand ---------------------------------------------------------------------------------


def test_dates_and_weekdays_are_left_out() -> None:
    backup = cron("30 2 * * *", exclude=("2026-12-25", "* * * * 0,6", "2027-01-01"))
    assert isos(next_fires([backup], iso("2026-12-23T00:00:00+01:00"), 6)) == [
        "2026-12-23T02:30:00+01:00", "2026-12-24T02:30:00+01:00",
        # 25th excluded by date, 26th/27th a weekend
        "2026-12-28T02:30:00+01:00", "2026-12-29T02:30:00+01:00",
        "2026-12-30T02:30:00+01:00", "2026-12-31T02:30:00+01:00",
    ]
    # 1 January by date, 2 and 3 January a weekend
    assert next_fire(backup, iso("2026-12-31T03:00:00+01:00")) == iso(
        "2027-01-04T02:30:00+01:00")


def test_a_date_is_a_day_in_the_schedules_zone() -> None:
    # 23:30 UTC on the 24th is already the 25th in Berlin, and 23:30 on the 25th is the 26th.
    nightly = cron("30 23 * * *", tz=ZoneInfo("UTC"))
    in_berlin = cron("30 0 * * *", exclude=("2026-12-25",))
    assert isos(next_fires([in_berlin], iso("2026-12-24T00:00:00+01:00"), 2)) == [
        "2026-12-24T00:30:00+01:00", "2026-12-26T00:30:00+01:00"]
    assert next_fires([nightly], iso("2026-12-24T00:00:00Z"), 1) == [
        iso("2026-12-24T23:30:00+00:00")]


def test_a_five_field_exclusion_covers_its_whole_minute() -> None:
    fast = Schedule(ScheduleKind.CRON, ZoneInfo("UTC"), cron=parse_cron("*/20 * * * * *"),
                    exclude=excluding("0 12 * * *"))
    assert isos(next_fires([fast], iso("2026-05-04T11:59:30Z"), 3)) == [
        "2026-05-04T11:59:40+00:00", "2026-05-04T12:01:00+00:00",
        "2026-05-04T12:01:20+00:00"]


def test_an_exclusion_that_restricts_both_day_fields_reads_them_as_cron_does() -> None:
    # 13th of the month OR a Friday (both restricted: either matches), as crontab(5) says
    daily = cron("0 9 * * *", exclude=("* * 13 * 5",))
    assert isos(next_fires([daily], iso("2026-11-10T00:00:00+01:00"), 4)) == [
        "2026-11-10T09:00:00+01:00", "2026-11-11T09:00:00+01:00",
        "2026-11-12T09:00:00+01:00",  # 13th (a Friday) out
        "2026-11-14T09:00:00+01:00"]
    assert isos(next_fires([daily], iso("2026-11-19T00:00:00+01:00"), 2)) == [
        "2026-11-19T09:00:00+01:00", "2026-11-21T09:00:00+01:00"]  # Friday 20th out


def test_the_window_holds_whole_days_and_exact_times() -> None:
    december = cron("30 2 * * *", active=Window(
        datetime(2026, 12, 24, tzinfo=BERLIN),
        datetime(2026, 12, 26, 23, 59, 59, 999999, tzinfo=BERLIN), "2026-12-24", "2026-12-26"))
    assert isos(next_fires([december], iso("2026-12-01T00:00:00+01:00"), 5)) == [
        "2026-12-24T02:30:00+01:00", "2026-12-25T02:30:00+01:00",
        "2026-12-26T02:30:00+01:00"]
    # Both bounds are inclusive.
    exact = every(3600, tz=ZoneInfo("UTC"), active=window("2026-01-01T10:00:00+00:00",
                                                          "2026-01-01T12:00:00+00:00"))
    assert isos(next_fires([exact], iso("2026-01-01T00:00:00Z"), 5)) == [
        "2026-01-01T10:00:00+00:00", "2026-01-01T11:00:00+00:00",
        "2026-01-01T12:00:00+00:00"]
    fires, truncated = fires_between([exact], iso("2026-01-01T00:00:00Z"),
                                     iso("2026-01-02T00:00:00Z"))
    assert (isos(fires), truncated) == (["2026-01-01T10:00:00+00:00",
                                         "2026-01-01T11:00:00+00:00",
                                         "2026-01-01T12:00:00+00:00"], False)


def test_exclusions_across_a_fall_back_judge_each_pass_by_its_wall_time() -> None:
    # Berlin, 25 October 2026: 02:00-02:59 happens twice. 02:00-02:50 is excluded in both
    # passes, 02:55 is kept in both.
    five = every(300, exclude=("0-50 2 * * *",))
    expected = ["2026-10-25T01:55:00+02:00", "2026-10-25T02:55:00+02:00",
                "2026-10-25T02:55:00+01:00", "2026-10-25T03:00:00+01:00"]
    assert isos(next_fires([five], iso("2026-10-25T01:50:00+02:00"), 4)) == expected
    fires, _ = fires_between([five], iso("2026-10-25T01:50:00+02:00"),
                             iso("2026-10-25T03:00:00+01:00"))
    assert isos(fires) == expected


def test_exclusions_across_a_spring_forward() -> None:
    # Berlin, 29 March 2026: 02:00 jumps to 03:00. Hour 1 and 03:00-03:29 are excluded.
    quarter = every(900, exclude=("* 1 * * *", "0-29 3 * * *"))
    expected = ["2026-03-29T00:45:00+01:00", "2026-03-29T03:30:00+02:00",
                "2026-03-29T03:45:00+02:00"]
    assert isos(next_fires([quarter], iso("2026-03-29T00:30:00+01:00"), 3)) == expected
    fires, _ = fires_between([quarter], iso("2026-03-29T00:30:00+01:00"),
                             iso("2026-03-29T03:45:00+02:00"))
    assert isos(fires) == expected


def test_an_excluded_span_is_jumped_over_not_walked() -> None:
    # Every second, weekdays excluded: the next fire is Saturday 00:00:00, found by jumping
    # day by day, not by looking at 400,000 seconds.
    weekends = every(1, tz=ZoneInfo("UTC"), exclude=("* * * * 1-5",))
    started = time.process_time()
    assert isos(next_fires([weekends], iso("2026-11-02T08:00:00Z"), 2)) == [
        "2026-11-07T00:00:00+00:00", "2026-11-07T00:00:01+00:00"]
    fires, truncated = fires_between([weekends], iso("2026-11-06T23:59:00Z"),
                                     iso("2026-11-09T00:00:30Z"), limit=3)
    assert (isos(fires), truncated) == (["2026-11-08T23:59:57+00:00",
                                         "2026-11-08T23:59:58+00:00",
                                         "2026-11-08T23:59:59+00:00"], True)
    assert time.process_time() - started < 0.5


# -- searches that end -----------------------------------------------------------------------

NEVER = [
    pytest.param(cron("* * * * *", exclude=("0-29 * * * *", "30-59 * * * *")),
                 id="two-halves-of-every-hour"),
    pytest.param(cron("* * * * *", exclude=("* 0-11 * * *", "* 12-23 * * *")),
                 id="two-halves-of-every-day"),
    pytest.param(every(1, exclude=("* * * * *",)), id="all-of-time"),
    pytest.param(cron("0 0 29 2 *", exclude=("* * 29 * *",)), id="leap-day-excluded"),
    pytest.param(Schedule(ScheduleKind.CRON, ZoneInfo("UTC"), cron=parse_cron("* * * * * *"),
                          exclude=excluding("0-29 * * * * *", "30-59 * * * * *")),
                 id="every-second-halves"),
]


@pytest.mark.parametrize("schedule", NEVER)
def test_a_calendar_that_removes_every_fire_ends_the_search_quickly(
        schedule: Schedule) -> None:
    after = iso("2026-06-01T00:00:00Z")
    started = time.process_time()
    assert next_fires([schedule], after, 3) == []
    assert next_fire(schedule, after) is None
    assert first_fire(schedule, after) is None
    assert fires_between([schedule], after, after + timedelta(days=3650)) == ([], False)
    # the work is bounded by MAX_REMOVED jumps and SEARCH_YEARS, whatever the expression:
    # a few tenths of a second of CPU (CPU time: other processes on the machine do not count)
    assert time.process_time() - started < 2.0
    assert MAX_REMOVED <= 10_000


def test_a_never_firing_schedule_does_not_hide_the_others() -> None:
    daily = cron("0 6 * * *")
    never = cron("* * * * *", exclude=("0-29 * * * *", "30-59 * * * *"))
    assert isos(next_fires([never, daily], iso("2026-06-01T00:00:00+02:00"), 2)) == [
        "2026-06-01T06:00:00+02:00", "2026-06-02T06:00:00+02:00"]


def test_first_fire_looks_where_the_schedule_can_fire() -> None:
    now = iso("2026-06-01T00:00:00Z")
    past = cron("0 0 * * *", active=window("2020-03-01T00:00:00+01:00",
                                           "2020-04-01T00:00:00+02:00"))
    assert first_fire(past, now) == iso("2020-03-01T00:00:00+01:00")
    assert next_fire(past, now) is None
    until_only = cron("0 0 1 1 *", active=window(None, "2021-06-01T00:00:00+02:00"))
    assert first_fire(until_only, now) == iso("2021-01-01T00:00:00+01:00")
    empty = cron("0 0 1 1 *", active=window("2026-03-01T00:00:00+01:00",
                                            "2026-11-30T00:00:00+01:00"))
    assert first_fire(empty, now) is None
    at_excluded = Schedule(ScheduleKind.AT, BERLIN, at=datetime(2030, 1, 1, 9, tzinfo=BERLIN),
                           exclude=excluding("2030-01-01"))
    assert first_fire(at_excluded, now) is None
    events = Schedule(ScheduleKind.FILE, BERLIN, file="/srv/in/*.csv")
    assert first_fire(events, now) is None and next_fires([events], now, 3) == []


# -- what was removed, and why ---------------------------------------------------------------


def test_removed_between_names_each_removed_fire_and_its_rule() -> None:
    backup = cron("30 2 * * *", exclude=("2026-12-25", "* * * * 0,6"), active=Window(
        None, datetime(2027, 1, 1, 23, 59, 59, 999999, tzinfo=BERLIN), "", "2027-01-01"))
    after, until = iso("2026-12-23T00:00:00+01:00"), iso("2027-01-03T00:00:00+01:00")
    removed, truncated = removed_between([backup], after, until)
    assert truncated is False
    assert [(r.fire.isoformat(), str(r.reason), r.rule) for r in removed] == [
        ("2026-12-25T02:30:00+01:00", "excluded", "exclude 2026-12-25"),
        ("2026-12-26T02:30:00+01:00", "excluded", "exclude * * * * 0,6"),
        ("2026-12-27T02:30:00+01:00", "excluded", "exclude * * * * 0,6"),
        ("2027-01-02T02:30:00+01:00", "outside active window", "active until 2027-01-01"),
    ]
    made, _ = fires_between([backup], after, until)
    plain, _ = fires_between([cron("30 2 * * *")], after, until)
    assert sorted(made + [r.fire for r in removed]) == plain


def test_removed_between_keeps_the_latest_within_its_limit() -> None:
    paused = every(60, tz=ZoneInfo("UTC"), active=window("2026-07-01T00:00:00+00:00", None))
    removed, truncated = removed_between([paused], iso("2026-06-30T00:00:00Z"),
                                         iso("2026-07-01T00:00:00Z"), limit=2)
    assert truncated is True
    assert [(r.fire.isoformat(), r.reason) for r in removed] == [
        ("2026-06-30T23:58:00+00:00", CalendarReason.OUTSIDE_WINDOW),
        ("2026-06-30T23:59:00+00:00", CalendarReason.OUTSIDE_WINDOW)]


def test_a_fire_another_schedule_makes_is_not_removed() -> None:
    weekdays = cron("0 9 * * *", exclude=("* * * * 0,6",))
    saturday = cron("0 9 * * 6")
    saturday_nine = iso("2026-11-07T09:00:00+01:00")
    removed, _ = removed_between([weekdays, saturday], iso("2026-11-06T10:00:00+01:00"),
                                 iso("2026-11-08T10:00:00+01:00"))
    assert [r.fire.isoformat() for r in removed] == ["2026-11-08T09:00:00+01:00"]
    assert calendar_verdict([weekdays, saturday], saturday_nine) is None
    assert calendar_verdict([weekdays], saturday_nine) == Removed(
        saturday_nine, CalendarReason.EXCLUDED, "exclude * * * * 0,6")


def test_removed_after_is_where_a_stretch_of_removed_fires_begins() -> None:
    weekdays = cron("0 9 * * *", exclude=("* * * * 0,6",))
    friday = iso("2026-11-06T09:00:00+01:00")
    assert removed_after([weekdays], friday) == Removed(  # Saturday's: the stretch begins
        iso("2026-11-07T09:00:00+01:00"), CalendarReason.EXCLUDED, "exclude * * * * 0,6")
    assert removed_after([weekdays], friday - timedelta(days=1)) is None  # Friday's is made
    # Another schedule's made fire comes first: no stretch begins.
    assert removed_after([weekdays, cron("0 20 * * *")], friday) is None
    ended = every(60, tz=ZoneInfo("UTC"), active=window(None, "2026-07-01T00:00:00+00:00"))
    assert removed_after([ended], iso("2026-07-01T00:00:00Z")) == Removed(
        iso("2026-07-01T00:01:00Z"), CalendarReason.OUTSIDE_WINDOW,
        "active until 2026-07-01T00:00:00+00:00")
    assert removed_after([cron("0 9 * * *")], friday) is None  # no calendar: all made
    with pytest.raises(ValueError, match="aware"):
        removed_after([weekdays], datetime(2026, 11, 6, 9))


def test_calendar_verdict_says_why_an_instant_is_not_made() -> None:
    backup = cron("30 2 * * *", exclude=("2026-12-25",), active=window(
        "2026-12-01T00:00:00+01:00", None))
    verdict = calendar_verdict([backup], iso("2026-12-25T01:30:00Z"))
    assert verdict == Removed(iso("2026-12-25T02:30:00+01:00"), CalendarReason.EXCLUDED,
                              "exclude 2026-12-25")
    assert verdict is not None and verdict.fire.utcoffset() == timedelta(hours=1)
    before = calendar_verdict([backup], iso("2026-11-30T02:30:00+01:00"))
    assert before is not None and (before.reason, before.rule) == (
        CalendarReason.OUTSIDE_WINDOW, "active from 2026-12-01T00:00:00+01:00")
    assert calendar_verdict([backup], iso("2026-12-24T02:30:00+01:00")) is None  # made
    assert calendar_verdict([backup], iso("2026-12-25T03:30:00+01:00")) is None  # no fire
    with pytest.raises(ValueError, match="aware"):
        calendar_verdict([backup], datetime(2026, 12, 25, 2, 30))


def test_describe_shows_the_calendar_and_events() -> None:
    backup = cron("30 2 * * *", exclude=("2026-12-25", "* * * * 0,6"), active=window(
        "2026-01-01", "2026-12-31"))
    assert describe(backup) == ('cron "30 2 * * *" Europe/Berlin, active from 2026-01-01 '
                                'until 2026-12-31, except 2026-12-25, * * * * 0,6')
    many = every(3600, exclude=tuple(f"2026-01-0{d}" for d in range(1, 8)))
    assert describe(many).endswith("except 2026-01-01, 2026-01-02, 2026-01-03, 2026-01-04, "
                                   "2026-01-05 (+2 more)")
    assert describe(Schedule(ScheduleKind.FILE, BERLIN, file="/jobs/incoming/*.csv",
                             text="incoming/*.csv", settle=10.0)) == (
        "file incoming/*.csv, settle 10s")
    assert describe(Schedule(ScheduleKind.AFTER, BERLIN, after="extract",
                             status=(RunStatus.SUCCEEDED, RunStatus.FAILED))) == (
        "after extract (succeeded, failed)")
    assert describe(Schedule(ScheduleKind.REBOOT, BERLIN)) == "@reboot"


# -- the searches agree with a plain filter --------------------------------------------------

EXCLUDES = ["* * * * 0,6", "* 12-13 * * *", "0-29 * * * *", "*/15 * * * *", "2026-03-29",
            "2026-10-25", "* * 1 * *", "* 2 * * *", "0 9 * * *", "* * * 3 *", "45 * * * *"]
BASES = ["*/7 * * * *", "0 */3 * * *", "30 2 * * *", "15,45 1-3 * * *", "0 0 * * 1"]


def _kept(schedule: Schedule, instant: datetime) -> bool:
    """The calendar's rule, written out plainly for one fire."""
    wall = instant.astimezone(schedule.timezone)
    window_ = schedule.active
    if window_ is not None:
        if window_.start is not None and instant < window_.start:
            return False
        if window_.end is not None and instant > window_.end:
            return False
    for exclusion in schedule.exclude:
        if exclusion.date is not None and wall.date() == exclusion.date:
            return False
        if exclusion.cron is not None:
            minute, hour, dom, month, dow = exclusion.cron.split()
            if all(_field_has(text, value) for text, value in (
                    (minute, wall.minute), (hour, wall.hour), (dom, wall.day),
                    (month, wall.month), (dow, wall.isoweekday() % 7))):
                return False
    return True


def _field_has(text: str, value: int) -> bool:
    for item in text.split(","):
        body, _, step = item.partition("/")
        if body == "*":
            if value % int(step or 1) == 0:
                return True
            continue
        low, _, high = body.partition("-")
        if int(low) <= value <= int(high or low) and (value - int(low)) % int(step or 1) == 0:
            return True
    return False


@pytest.mark.parametrize("seed", range(12))
def test_the_searches_agree_with_filtering_every_plain_fire(seed: int) -> None:
    rng = random.Random(seed)
    tz = rng.choice([BERLIN, ZoneInfo("UTC"), ZoneInfo("America/New_York")])
    base = rng.choice(BASES)
    start = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=rng.randrange(0, 24 * 330))
    active = None
    if rng.random() < 0.5:
        low = start + timedelta(hours=rng.randrange(0, 72))
        active = Window(low, low + timedelta(hours=rng.randrange(24, 24 * 20)))
    schedule = Schedule(ScheduleKind.CRON, tz, cron=parse_cron(base),
                        exclude=excluding(*rng.sample(EXCLUDES, rng.randrange(1, 4))),
                        active=active)
    plain = Schedule(ScheduleKind.CRON, tz, cron=parse_cron(base))
    end = start + timedelta(days=30)
    every_fire, _ = fires_between([plain], start, end, limit=100_000)
    expected = [f for f in every_fire if _kept(schedule, f)]
    made, truncated = fires_between([schedule], start, end, limit=100_000)
    assert (isos(made), truncated) == (isos(expected), False)
    forward = next_fires([schedule], start, len(expected) + 1)
    assert isos([f for f in forward if f <= end]) == isos(expected)
    removed, _ = removed_between([schedule], start, end, limit=100_000)
    assert isos([r.fire for r in removed]) == isos(
        [f for f in every_fire if not _kept(schedule, f)])
