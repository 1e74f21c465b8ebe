"""The notations inside a job file's strings, read directly: durations, times, schedule strings,
time zones and ``${{ }}`` unwrapping. (``test_spec`` reads the common durations through the
loader; these are the edges.)"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from pipeline import cron
from pipeline.model import ScheduleKind
from pipeline.notation import (
    AT_PATTERN,
    DURATION_PATTERN,
    MAX_DURATION,
    format_duration,
    local_zone,
    parse_duration,
    parse_time,
    schedule_form,
    short_duration,
    unwrap,
    zone,
)

BERLIN = ZoneInfo("Europe/Berlin")

# -- durations ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("0", 0.0), ("0s", 0.0), ("0ms", 0.0),
    ("1ms", 0.001), ("0.001ms", 0.000001),
    ("1ms1ms", 0.002),                          # a unit may repeat: the parts add up
    ("30s1m", 90.0),                            # in any order
    ("1w1d1h1m1s1ms", 604800 + 86400 + 3600 + 60 + 1 + 0.001),
    ("\t15m\n", 900.0),                         # surrounding white space is fine
    ("3155760000", MAX_DURATION),               # 100 years exactly, as a number of seconds
    ("3155760000s", MAX_DURATION),
    (3155760000, MAX_DURATION),
])
def test_durations_at_the_edges(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [
    ".5s", "5.s", "1.5.5s",                     # a number has digits on both sides of its dot
    "5S", "5M", "1H",                           # units are lower case (m is minutes, not M)
    "5m 30s", "5m30",                           # no spaces inside; the last part needs a unit
    "ms", "s5", "5sec", "5mins", "PT5M",        # no other spellings, not ISO 8601 either
    "+5s", "0x10", "1_000",
])
def test_durations_that_are_not_durations_say_what_one_looks_like(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(text)
    assert str(caught.value) == (f"{text!r} is not a duration such as 30s, 5m, 1h30m, 2d or "
                                 "250ms, or a number of seconds")


@pytest.mark.parametrize("value", ["3155760001", "3155760000.5s", "5218w", "36525d1ms",
                                   3155760001, 1e300, -0.5, -1])
def test_durations_beyond_a_hundred_years_or_below_zero_are_refused_with_the_range(
        value: str | float) -> None:
    with pytest.raises(ValueError, match="must be between 0 seconds and 100 years"):
        parse_duration(value)


def test_a_text_duration_is_read_once_and_answers_the_same_after() -> None:
    # _duration_text is cached: a refused text must be refused again, not cached as a value.
    for _ in range(2):
        assert parse_duration("1h30m") == 5400.0
        with pytest.raises(ValueError):
            parse_duration("1h30")


@pytest.mark.parametrize("text", ["30s", "1h30m", "250ms", "2.5", "1w1d", "0"])
def test_every_duration_read_matches_the_schemas_pattern(text: str) -> None:
    assert re.match(DURATION_PATTERN, text)
    parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [
    (900, "15m"), (5400, "1h30m"), (0.25, "250ms"), (0, "0s"), (30, "30s"), (172800, "2d"),
    (90061.5, "1d1h1m1s500ms"), (-60, "-1m"),
])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_short_durations_say_one_unit() -> None:
    assert [short_duration(s) for s in (300, 3600, 90, 0.25, 86400 * 2)] == [
        "5m", "1h", "90s", "0.25s", "2d"]


# -- times ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-12-01T09:00:00+01:00", datetime(2026, 12, 1, 9, tzinfo=timezone(timedelta(hours=1)))),
    ("2026-12-01T09:00:00Z", datetime(2026, 12, 1, 9, tzinfo=UTC)),
    ("2026-12-01t09:00:00z", datetime(2026, 12, 1, 9, tzinfo=UTC)),     # lower case T and Z
    ("2026-12-01 09:00:00Z", datetime(2026, 12, 1, 9, tzinfo=UTC)),     # a space for the T
    ("2026-12-01T09:00Z", datetime(2026, 12, 1, 9, tzinfo=UTC)),        # no seconds
    ("2026-12-01T09:00:00.5Z", datetime(2026, 12, 1, 9, 0, 0, 500000, tzinfo=UTC)),
    ("2026-12-01T09:00:00,25Z", datetime(2026, 12, 1, 9, 0, 0, 250000, tzinfo=UTC)),  # comma
    ("2026-12-01T09:00:00+0530", datetime(2026, 12, 1, 9,
                                          tzinfo=timezone(timedelta(hours=5, minutes=30)))),
    ("2026-12-01T09:00:00-08", datetime(2026, 12, 1, 9, tzinfo=timezone(timedelta(hours=-8)))),
    ("  2026-12-01T09:00:00Z  ", datetime(2026, 12, 1, 9, tzinfo=UTC)),
])
def test_times_with_an_offset_keep_it(text: str, expected: datetime) -> None:
    moment = parse_time(text, BERLIN)
    assert moment == expected
    assert moment.utcoffset() == expected.utcoffset()


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-12-01T09:00:00", datetime(2026, 12, 1, 9, tzinfo=BERLIN)),   # winter: +01:00
    ("2026-07-01T09:00", datetime(2026, 7, 1, 9, tzinfo=BERLIN)),       # summer: +02:00
    ("2026-12-01", datetime(2026, 12, 1, tzinfo=BERLIN)),               # a date is midnight
])
def test_times_without_an_offset_are_read_in_the_given_zone(text: str,
                                                            expected: datetime) -> None:
    moment = parse_time(text, BERLIN)
    assert moment == expected and moment.tzinfo is BERLIN
    assert parse_time(text, UTC) - moment == moment.utcoffset()


@pytest.mark.parametrize("text", [
    "12/01/2026", "2026-12-01T9:00Z", "2026-12-01T09", "2026-12-01T09:00:00+01:00:30",
    "2026-1-01", "tomorrow", "", "2026-12-01T09:00:00 +01:00", "2026-12-01T09:00:00UTC",
])
def test_times_that_are_not_iso_8601_say_what_one_looks_like(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_time(text, BERLIN)
    assert str(caught.value) == (f"{text!r} is not an ISO 8601 time such as "
                                 "2026-12-01T09:00:00+01:00")
    assert not re.match(AT_PATTERN, text.strip())


@pytest.mark.parametrize("text", [
    "2026-02-30T09:00:00Z", "2026-02-29", "2026-13-01", "2026-12-01T24:00:00Z",
    "2026-12-01T09:60:00Z", "2026-12-01T09:00:61Z", "2026-12-01T09:00:00+25:00",
])
def test_times_of_the_right_shape_that_do_not_exist_are_told_apart(text: str) -> None:
    assert re.match(AT_PATTERN, text)  # the schema lets them through: this is the one check
    with pytest.raises(ValueError, match=re.escape(
            f"{text!r} is not a real time (check the day, hour and offset)")):
        parse_time(text, BERLIN)


def test_a_leap_day_exists_in_a_leap_year() -> None:
    assert parse_time("2028-02-29", UTC) == datetime(2028, 2, 29, tzinfo=UTC)


# -- schedule strings -----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "form"), [
    ("every 15m", (ScheduleKind.EVERY, "15m")),
    ("@every 15m", (ScheduleKind.EVERY, "15m")),
    ("every\t1h30m ", (ScheduleKind.EVERY, "1h30m")),
    ("every   2d", (ScheduleKind.EVERY, "2d")),
    ("*/5 * * * *", (ScheduleKind.CRON, "*/5 * * * *")),
    ("  @daily ", (ScheduleKind.CRON, "@daily")),
    ("0 9 * * MON-FRI", (ScheduleKind.CRON, "0 9 * * MON-FRI")),
    # Not the interval form: read as cron, which then refuses them with its own message.
    ("every", (ScheduleKind.CRON, "every")),
    ("@every", (ScheduleKind.CRON, "@every")),
    ("Every 5m", (ScheduleKind.CRON, "Every 5m")),
    ("every5m", (ScheduleKind.CRON, "every5m")),
])
def test_a_schedule_string_is_an_interval_only_after_every(
        text: str, form: tuple[ScheduleKind, str]) -> None:
    assert schedule_form(text) == form


@pytest.mark.parametrize(("text", "valid"), [
    ("every 15m", True), ("every 1s", True), ("@every 250ms", True), ("0 9 * * 1-5", True),
    ("@hourly", True), ("*/15 9-17 * * *", True),
    ("every 15", True),                  # a bare number of seconds
    ("every soon", False), ("every 5 m", False), ("every -5s", False),
    ("Every 5m", False), ("every", False), ("61 * * * *", False), ("* * *", False), ("", False),
])
def test_a_schedule_string_reads_as_its_form_says(text: str, valid: bool) -> None:
    """What the checks do with a string schedule: the interval as a duration, else cron."""
    kind, rest = schedule_form(text)
    try:
        if kind is ScheduleKind.EVERY:
            parse_duration(rest)
        else:
            cron.parse_cron(rest)
    except ValueError:
        assert not valid, text
    else:
        assert valid, text


# -- time zones -----------------------------------------------------------------------------------


def test_a_zone_is_found_by_its_iana_name() -> None:
    assert zone("Europe/Berlin") == BERLIN
    assert zone("UTC") == ZoneInfo("UTC")


@pytest.mark.parametrize(("name", "message"), [
    ("Europe/Berln", "unknown time zone 'Europe/Berln' (did you mean 'Europe/Berlin'?)"),
    ("europe/berlin", "unknown time zone 'europe/berlin' (did you mean 'Europe/Berlin'?)"),
    ("Mars/Base", "unknown time zone 'Mars/Base'"),
    ("", "unknown time zone ''"),
    ("../../etc/passwd", "unknown time zone '../../etc/passwd'"),
])
def test_an_unknown_zone_is_named_with_a_suggestion_when_one_is_close(name: str,
                                                                       message: str) -> None:
    with pytest.raises(ValueError) as caught:
        zone(name)
    assert str(caught.value) == message


def test_the_local_zone_follows_tz(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    assert local_zone() == ZoneInfo("Asia/Tokyo")
    monkeypatch.setenv("TZ", ":America/New_York")
    assert local_zone() == ZoneInfo("America/New_York")
    monkeypatch.setenv("TZ", "")  # empty means UTC, as in POSIX
    assert local_zone() == ZoneInfo("UTC")


# -- ${{ }} ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "bare"), [
    ("${{ always() }}", "always()"),
    ("  ${{failure()}}  ", "failure()"),
    ("success()", "success()"),
    ("  steps.a.outputs.n > 1 ", "steps.a.outputs.n > 1"),
    ("${{ {'a': 1}['a'] == 1 }}", "{'a': 1}['a'] == 1"),
])
def test_unwrap_takes_one_expression_bare_or_wrapped(text: str, bare: str) -> None:
    assert unwrap(text) == bare


@pytest.mark.parametrize("text", ["${{ a }} and ${{ b }}", "x ${{ a }}", "${{ a }} x",
                                  "${{ a }}${{ b }}", "${{ a"])
def test_unwrap_refuses_an_expression_inside_other_text(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape("takes one expression: write it bare, or "
                                                   "wrap all of it in one ${{ }}")):
        unwrap(text)
