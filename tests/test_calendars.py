"""pipeline.calendars on its own: the searches over a stream of fires handed to them (a plain
function here, not an expression), and the calendar said as the job file writes it, in the
texts that show a schedule. The searches through real expressions are
tests/test_triggers_calendar.py's."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from pipeline import calendars, schedule_words, triggers
from pipeline.cron import parse_cron
from pipeline.model import Exclusion, Schedule, ScheduleKind, Window

BERLIN = ZoneInfo("Europe/Berlin")
HOUR = timedelta(hours=1)


def hourly_after(moment: datetime) -> Iterator[datetime]:
    """Every whole UTC hour strictly after ``moment``: the stream an expression would make."""
    at = moment.replace(minute=0, second=0, microsecond=0) + HOUR
    while True:
        yield at
        at += HOUR


def hourly_until(moment: datetime) -> Iterator[datetime]:
    at = moment.replace(minute=0, second=0, microsecond=0)
    while True:
        yield at
        at -= HOUR


def schedule(*, active: Window | None = None, exclude: tuple[Exclusion, ...] = ()) -> Schedule:
    return Schedule(ScheduleKind.EVERY, BERLIN, every=3600, active=active, exclude=exclude)


def weekend() -> Exclusion:
    return Exclusion("* * * * 0,6", cron=parse_cron("* * * * 0,6"))


def test_the_searches_keep_what_the_calendar_keeps_of_the_stream_they_are_given() -> None:
    friday = datetime(2026, 5, 8, 20, 30, tzinfo=UTC)  # 22:30 in Berlin
    no_weekends = schedule(exclude=(weekend(),))
    ahead = calendars.forward(no_weekends, friday, hourly_after)
    # 21:00 UTC is 23:00 Friday in Berlin; the weekend there ends at 22:00 UTC on Sunday.
    assert [next(ahead) for _ in range(3)] == [
        datetime(2026, 5, 8, 21, tzinfo=UTC), datetime(2026, 5, 10, 22, tzinfo=UTC),
        datetime(2026, 5, 10, 23, tzinfo=UTC)]
    monday = datetime(2026, 5, 11, 0, 30, tzinfo=UTC)
    assert calendars.backward(no_weekends, friday, monday, 10, hourly_until) == [
        datetime(2026, 5, 11, 0, tzinfo=UTC), datetime(2026, 5, 10, 23, tzinfo=UTC),
        datetime(2026, 5, 10, 22, tzinfo=UTC), datetime(2026, 5, 8, 21, tzinfo=UTC)]


def test_a_search_through_a_calendar_that_removes_everything_ends() -> None:
    everything = schedule(exclude=(weekend(), Exclusion("* * * * 1-5",
                                                        cron=parse_cron("* * * * 1-5"))))
    start = datetime(2026, 5, 8, tzinfo=UTC)
    assert list(calendars.forward(everything, start, hourly_after)) == []
    assert calendars.backward(everything, start, start + 30 * HOUR, 5, hourly_until) == []


def test_the_window_is_said_as_written_or_as_an_instant_in_the_zone() -> None:
    start, end = datetime(2026, 1, 1, tzinfo=BERLIN), datetime(2026, 12, 31, 23, 59,
                                                                tzinfo=BERLIN)
    assert calendars.window_texts(schedule()) == (None, None)
    written = schedule(active=Window(start, end, "2026-01-01", "2026-12-31"))
    assert calendars.window_texts(written) == ("2026-01-01", "2026-12-31")
    unwritten = schedule(active=Window(None, end))
    assert calendars.window_texts(unwritten) == (None, "2026-12-31T23:59:00+01:00")


def test_the_exclude_list_shows_five_and_counts_the_rest() -> None:
    assert calendars.exclude_text(schedule()) == ""
    days = tuple(Exclusion(f"2026-01-0{d}", date=date(2026, 1, d)) for d in range(1, 8))
    assert calendars.exclude_text(schedule(exclude=days)) == (
        ", except 2026-01-01, 2026-01-02, 2026-01-03, 2026-01-04, 2026-01-05 (+2 more)")


def test_describe_and_in_words_put_the_same_calendar_in_their_own_words() -> None:
    # One rendering of the window and the list, two ways of joining it: these texts are
    # what `pipeline list`, the API and the pages show, so they must not drift.
    end = datetime(2026, 12, 31, 23, 59, tzinfo=BERLIN)
    ends_only = schedule(active=Window(None, end, "", "2026-12-31"), exclude=(weekend(),))
    assert triggers.describe(ends_only) == (
        "every 1h, active until 2026-12-31, except * * * * 0,6")
    assert schedule_words.in_words(ends_only) == (
        "every hour until 2026-12-31, except * * * * 0,6")
    both = schedule(active=Window(datetime(2026, 1, 1, tzinfo=BERLIN), end, "2026-01-01",
                                  "2026-12-31"))
    assert triggers.describe(both) == "every 1h, active from 2026-01-01 until 2026-12-31"
    assert schedule_words.in_words(both) == "every hour, from 2026-01-01 until 2026-12-31"
