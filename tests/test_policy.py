"""The scheduler's policy as a table: one row per case (after arq's cron test and Kubernetes'
CronJob controller table). Each row is the situation a run meets and what must become of it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pipeline.cron import parse_cron
from pipeline.model import (
    Catchup,
    CircuitBreaker,
    Concurrency,
    Exclusion,
    Policy,
    Schedule,
    ScheduleKind,
    Trigger,
)
from pipeline.policy import (
    CatchUp,
    Decision,
    Missed,
    Reason,
    Situation,
    Verdict,
    catch_up,
    circuit_open,
    decide,
    fits,
    has_calendar,
    stretch_detail,
    stretch_starts,
)

NOW = datetime(2026, 12, 7, 2, 30, tzinfo=UTC)
FORBID = Concurrency(Policy.FORBID)
ALLOW = Concurrency(Policy.ALLOW)
ALLOW_2 = Concurrency(Policy.ALLOW, max_active=2)
REPLACE = Concurrency(Policy.REPLACE)
QUEUE_2 = Concurrency(Policy.QUEUE, max_queued=2)
BREAKER = CircuitBreaker(after=3, cooldown=3600)
OPEN = Situation(failures=3, circuit_opened_at=NOW - timedelta(minutes=10))
COOLED = Situation(failures=3, circuit_opened_at=NOW - timedelta(hours=2))
S, C, API, PARENT, MANUAL = (Trigger.SCHEDULE, Trigger.CATCHUP, Trigger.API, Trigger.PARENT,
                             Trigger.MANUAL)
START, QUEUE, REPL, SKIP, NOT = (Verdict.START, Verdict.QUEUE, Verdict.REPLACE, Verdict.SKIP,
                                 Verdict.NOT_MADE)


def idle(**kw: object) -> Situation:
    return Situation(**kw)  # type: ignore[arg-type]


# (case, trigger, concurrency, situation, options, verdict, reason)
CASES: list[tuple[str, Trigger, Concurrency, Situation, dict[str, object], Verdict,
                  Reason | None]] = [
    ("idle forbid starts", S, FORBID, idle(), {}, START, None),
    ("idle allow starts", S, ALLOW, idle(), {}, START, None),
    ("idle replace starts", S, REPLACE, idle(), {}, START, None),
    ("idle queue starts", S, QUEUE_2, idle(), {}, START, None),
    ("forbid skips over an active run", S, FORBID, idle(active=1), {}, SKIP, Reason.OVERLAP),
    ("forbid skips a trigger too", API, FORBID, idle(active=1), {}, SKIP, Reason.OVERLAP),
    ("forbid skips a child run too", PARENT, FORBID, idle(active=1), {}, SKIP, Reason.OVERLAP),
    ("forbid skips a catch-up over an active run", C, FORBID, idle(active=1), {}, SKIP,
     Reason.OVERLAP),
    ("forbid skips while a backlog waits", S, FORBID, idle(waiting=1), {}, SKIP,
     Reason.OVERLAP),
    ("allow without a limit starts beside many", S, ALLOW, idle(active=50), {}, START, None),
    ("allow under max_active starts", S, ALLOW_2, idle(active=1), {}, START, None),
    ("allow at max_active skips", S, ALLOW_2, idle(active=2), {}, SKIP, Reason.MAX_ACTIVE),
    ("allow above max_active skips", API, ALLOW_2, idle(active=3), {}, SKIP,
     Reason.MAX_ACTIVE),
    ("allow ignores a backlog queue", S, ALLOW_2, idle(waiting=3), {}, START, None),
    ("replace replaces an active run", S, REPLACE, idle(active=1), {}, REPL, None),
    ("replace replaces several", API, REPLACE, idle(active=3), {}, REPL, None),
    ("replace queues behind waiting runs", S, REPLACE, idle(waiting=1), {}, QUEUE, None),
    ("queue queues behind an active run", S, QUEUE_2, idle(active=1), {}, QUEUE, None),
    ("queue queues behind a waiting run", S, QUEUE_2, idle(waiting=1), {}, QUEUE, None),
    ("queue with room queues", API, QUEUE_2, idle(active=1, waiting=1), {}, QUEUE, None),
    ("queue full skips", S, QUEUE_2, idle(active=1, waiting=2), {}, SKIP, Reason.QUEUE_FULL),
    ("queue full skips a trigger", API, QUEUE_2, idle(active=1, waiting=5), {}, SKIP,
     Reason.QUEUE_FULL),
    ("a waiting run starts when nothing is active", S, QUEUE_2, idle(), {"waiting": True},
     START, None),
    ("a waiting run waits for the active run", S, QUEUE_2, idle(active=1), {"waiting": True},
     QUEUE, None),
    ("a waiting run waits for those ahead of it", S, QUEUE_2, idle(waiting=1),
     {"waiting": True}, QUEUE, None),
    ("a waiting run is never skipped for a full queue", S, QUEUE_2, idle(active=1, waiting=9),
     {"waiting": True}, QUEUE, None),
    ("a replacement starts once the old run is gone", S, REPLACE, idle(), {"waiting": True},
     START, None),
    ("a replacement waits while the old run stops", S, REPLACE, idle(active=1),
     {"waiting": True}, QUEUE, None),
    ("a waiting run passes a pause", S, QUEUE_2, idle(paused=True), {"waiting": True}, START,
     None),
    # Under allow only a run retried after its node was lost waits (it was admitted once).
    ("a retried allow run starts beside others", S, ALLOW_2, idle(active=1),
     {"waiting": True}, START, None),
    ("a retried allow run without a limit starts", S, ALLOW, idle(active=9, waiting=2),
     {"waiting": True}, START, None),
    ("a retried allow run waits at max_active", S, ALLOW_2, idle(active=2), {"waiting": True},
     QUEUE, None),
    ("a backlog fire under forbid queues", C, FORBID, idle(active=1), {"backlog": True},
     QUEUE, None),
    ("a backlog fire starts when idle", C, FORBID, idle(), {"backlog": True}, START, None),
    ("a backlog fire queues behind earlier ones", C, FORBID, idle(waiting=3),
     {"backlog": True}, QUEUE, None),
    ("a backlog fire ignores max_queued", C, QUEUE_2, idle(active=1, waiting=7),
     {"backlog": True}, QUEUE, None),
    ("paused: a scheduled fire is not made", S, FORBID, idle(paused=True), {}, NOT,
     Reason.PAUSED),
    ("paused: a catch-up is not made", C, ALLOW, idle(paused=True), {}, NOT, Reason.PAUSED),
    ("paused: a trigger still runs", API, FORBID, idle(paused=True), {}, START, None),
    ("paused: a manual run still runs", MANUAL, FORBID, idle(paused=True), {}, START, None),
    ("paused: a child run still runs", PARENT, FORBID, idle(paused=True), {}, START, None),
    ("paused beats an open circuit", S, FORBID, Situation(paused=True, failures=3,
     circuit_opened_at=NOW), {"breaker": BREAKER}, NOT, Reason.PAUSED),
    ("disabled: a fire is not made", S, FORBID, idle(), {"enabled": False}, NOT,
     Reason.DISABLED),
    ("disabled beats a pause", S, FORBID, idle(paused=True), {"enabled": False}, NOT,
     Reason.DISABLED),
    ("disabled: a trigger still runs", API, FORBID, idle(), {"enabled": False}, START, None),
    ("open circuit skips a scheduled fire", S, FORBID, OPEN, {"breaker": BREAKER}, SKIP,
     Reason.CIRCUIT_OPEN),
    ("open circuit skips a catch-up", C, ALLOW, OPEN, {"breaker": BREAKER}, SKIP,
     Reason.CIRCUIT_OPEN),
    ("open circuit lets a trigger run", API, FORBID, OPEN, {"breaker": BREAKER}, START, None),
    ("open circuit lets a child run", PARENT, FORBID, OPEN, {"breaker": BREAKER}, START, None),
    ("a cooled-down circuit lets a fire try", S, FORBID, COOLED, {"breaker": BREAKER}, START,
     None),
    ("failures below the threshold: closed", S, FORBID,
     Situation(failures=2, circuit_opened_at=NOW), {"breaker": BREAKER}, START, None),
    ("no breaker: failures do not matter", S, FORBID, OPEN, {}, START, None),
    ("open circuit beats an overlap", S, FORBID, Situation(active=1, failures=3,
     circuit_opened_at=NOW), {"breaker": BREAKER}, SKIP, Reason.CIRCUIT_OPEN),
    ("forced: starts beside an active run", MANUAL, FORBID, idle(active=1), {"force": True},
     START, None),
    ("forced: starts past a full queue", MANUAL, QUEUE_2, idle(active=1, waiting=2),
     {"force": True}, START, None),
    ("shutting down skips a fire", S, FORBID, idle(), {"stopping": True}, SKIP,
     Reason.SHUTTING_DOWN),
    ("shutting down skips a trigger", API, ALLOW, idle(), {"stopping": True}, SKIP,
     Reason.SHUTTING_DOWN),
    ("shutting down skips a waiting run", S, QUEUE_2, idle(),
     {"stopping": True, "waiting": True}, SKIP, Reason.SHUTTING_DOWN),
]


@pytest.mark.parametrize(("trigger", "concurrency", "situation", "options", "verdict",
                          "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide(trigger: Trigger, concurrency: Concurrency, situation: Situation,
                options: dict[str, object], verdict: Verdict, reason: Reason | None) -> None:
    decision = decide(trigger=trigger, concurrency=concurrency, situation=situation, now=NOW,
                      **options)  # type: ignore[arg-type]
    assert (decision.verdict, decision.reason) == (verdict, reason)
    assert decision.runs == (verdict in (START, QUEUE, REPL))
    if verdict in (SKIP, NOT):
        assert decision.detail  # a person is told why


def test_the_sentences_people_read() -> None:
    assert decide(trigger=S, concurrency=FORBID, situation=idle(active=1), now=NOW) == \
        Decision(SKIP, Reason.OVERLAP, "a previous run is still active (concurrency: forbid)")
    assert decide(trigger=S, concurrency=QUEUE_2, situation=idle(active=1, waiting=2),
                  now=NOW).detail == "queue full (2 waiting)"
    assert decide(trigger=S, concurrency=ALLOW_2, situation=idle(active=2),
                  now=NOW).detail == "2 runs already active (max_active)"


@pytest.mark.parametrize(("failures", "ago", "expected"), [
    (0, None, False), (2, 60, False), (3, 60, True), (9, 60, True), (3, 3599, True),
    (3, 3600, False), (3, 7200, False), (3, None, False)])
def test_circuit_open(failures: int, ago: float | None, expected: bool) -> None:
    opened = None if ago is None else NOW - timedelta(seconds=ago)
    assert circuit_open(BREAKER, failures, opened, NOW) is expected
    assert circuit_open(None, failures, opened, NOW) is False


@pytest.mark.parametrize(("runs_on", "labels", "expected"), [
    ({}, {}, True), ({}, {"zone": "a"}, True), ({"zone": "a"}, {"zone": "a", "gpu": "1"}, True),
    ({"zone": "a"}, {"zone": "b"}, False), ({"zone": "a"}, {}, False),
    ({"zone": "a", "gpu": "1"}, {"zone": "a"}, False)])
def test_fits(runs_on: dict[str, str], labels: dict[str, str], expected: bool) -> None:
    assert fits(runs_on, labels) is expected


def t(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def ups(fires: list[float], *, now: float, started: float, catchup: Catchup,
        grace: float = 60.0) -> CatchUp:
    return catch_up([t(f) for f in fires], now=t(now), started=t(started), catchup=catchup,
                    misfire_grace=grace)


# (case, fires, now, started, catchup, grace, on_time, caught up, not made, backlog)
CATCHUP_CASES: list[tuple[str, list[float], float, float, Catchup, float, list[float],
                          list[float], list[tuple[float, Reason]], bool]] = [
    ("nothing due", [], 0, -100, Catchup.LATEST, 60, [], [], [], False),
    ("a coming fire is on time", [0.2], 0, -100, Catchup.NONE, 60, [0.2], [], [], False),
    ("a fire due now is on time", [0], 0, -100, Catchup.NONE, 60, [0], [], [], False),
    ("a fire 30 s late while running is on time", [-30], 0, -100, Catchup.NONE, 60, [-30],
     [], [], False),
    ("a fire 90 s late while running: none", [-90], 0, -100, Catchup.NONE, 60, [],
     [], [(-90, Reason.MISSED_WHILE_STALLED)], False),
    ("a fire 90 s late while running: latest", [-90], 0, -100, Catchup.LATEST, 60, [],
     [-90], [], False),
    ("a fire 90 s late while running: all", [-90], 0, -100, Catchup.ALL, 60, [], [-90], [],
     True),
    ("a grace of 5 s", [-7], 0, -100, Catchup.NONE, 5, [],
     [], [(-7, Reason.MISSED_WHILE_STALLED)], False),
    ("down across one fire, back 5 s later: none", [-5], 0, 0, Catchup.NONE, 60, [], [],
     [(-5, Reason.MISSED_WHILE_DOWN)], False),
    ("down across one fire, back 5 s later: latest", [-5], 0, 0, Catchup.LATEST, 60, [],
     [-5], [], False),
    ("down across one fire, back 5 s later: all", [-5], 0, 0, Catchup.ALL, 60, [], [-5], [],
     True),
    ("a fire at the very instant of the start is on time", [0], 0, 0, Catchup.NONE, 60, [0],
     [], [], False),
    ("down across three: latest runs the newest", [-30, -20, -10], 0, 0, Catchup.LATEST, 60,
     [], [-10], [(-30, Reason.SUPERSEDED), (-20, Reason.SUPERSEDED)], False),
    ("down across three: none makes none", [-30, -20, -10], 0, 0, Catchup.NONE, 60, [], [],
     [(-30, Reason.MISSED_WHILE_DOWN), (-20, Reason.MISSED_WHILE_DOWN),
      (-10, Reason.MISSED_WHILE_DOWN)], False),
    ("down across three: all runs all", [-30, -20, -10], 0, 0, Catchup.ALL, 60, [],
     [-30, -20, -10], [], True),
    ("down, with a fire coming: latest still catches up", [-30, -20, 0.1], 0, 0,
     Catchup.LATEST, 60, [0.1], [-20], [(-30, Reason.SUPERSEDED)], False),
    ("stalled across two: the newest is on time", [-20, -10], 0, -100, Catchup.NONE, 60,
     [-10], [], [(-20, Reason.MISSED_WHILE_STALLED)], False),
    ("stalled across two: latest supersedes the older", [-20, -10], 0, -100, Catchup.LATEST,
     60, [-10], [], [(-20, Reason.SUPERSEDED)], False),
    ("stalled across two: all runs both, in order", [-20, -10], 0, -100, Catchup.ALL, 60,
     [-10], [-20], [], True),
    ("down, then up, then stalled", [-50, -20, -10], 0, -30, Catchup.NONE, 60, [-10], [],
     [(-50, Reason.MISSED_WHILE_DOWN), (-20, Reason.MISSED_WHILE_STALLED)], False),
]


@pytest.mark.parametrize(("fires", "now", "started", "catchup", "grace", "on_time", "caught",
                          "not_made", "backlog"), [c[1:] for c in CATCHUP_CASES],
                         ids=[c[0] for c in CATCHUP_CASES])
def test_catch_up(fires: list[float], now: float, started: float, catchup: Catchup,
                  grace: float, on_time: list[float], caught: list[float],
                  not_made: list[tuple[float, Reason]], backlog: bool) -> None:
    plan = ups(fires, now=now, started=started, catchup=catchup, grace=grace)
    assert list(plan.on_time) == [t(f) for f in on_time]
    assert [m.fire for m in plan.missed if m.caught_up] == [t(f) for f in caught]
    assert [(m.fire, m.reason) for m in plan.missed if not m.caught_up] == [
        (t(f), r) for f, r in not_made]
    assert all(m.detail for m in plan.missed if not m.caught_up)
    assert plan.backlog is backlog
    assert sorted([*plan.on_time, *(m.fire for m in plan.missed)]) == [t(f) for f in fires]


def test_missed_is_a_plain_record() -> None:
    assert Missed(NOW, True) == Missed(NOW, True, None, None)


# Hourly on the hour, UTC, but not at 02:00, 03:00 or 04:00: from 00:00, made fires at 00:00,
# 01:00, 05:00, 06:00, ...; one stretch of removed fires a day, beginning at 02:00.
HOURLY = Schedule(ScheduleKind.CRON, UTC, cron=parse_cron("0 * * * *"), text="0 * * * *")
NIGHTS_OFF = Schedule(ScheduleKind.CRON, UTC, cron=parse_cron("0 * * * *"), text="0 * * * *",
                      exclude=(Exclusion("* 2-4 * * *", cron=parse_cron("* 2-4 * * *")),))


def h(hours: float) -> datetime:
    return datetime(2026, 12, 7, tzinfo=UTC) + timedelta(hours=hours)


@pytest.mark.parametrize(("schedule", "after", "in_stretch", "fires", "horizon", "starts",
                          "ends_in_stretch"), [
    (HOURLY, 0.5, False, [1, 2, 3], 3.5, [], False),  # no calendar: nothing is removed
    (NIGHTS_OFF, 0.5, False, [1], 1.5, [], False),  # the next removed fire is past the horizon
    (NIGHTS_OFF, 0.5, False, [1], 2.5, [2], True),  # a stretch begins after the made fire
    (NIGHTS_OFF, 0.5, False, [1, 5, 6], 6.5, [2], False),  # begins, and a made fire ends it
    (NIGHTS_OFF, 2.5, True, [], 3.5, [], True),  # under way: its first is recorded already
    (NIGHTS_OFF, 2.5, False, [], 3.5, [3], True),  # first seen here: its first seen is recorded
    (NIGHTS_OFF, 3.5, True, [5], 5.5, [], False),  # a made fire ends the one under way
    (NIGHTS_OFF, 0.5, False, [1, 5, 24 + 1, 24 + 5], 24 + 5.5, [2, 24 + 2], False),  # two days
])
def test_stretch_starts(schedule: Schedule, after: float, in_stretch: bool, fires: list[float],
                        horizon: float, starts: list[float], ends_in_stretch: bool) -> None:
    found, still = stretch_starts([schedule], [h(f) for f in fires], after=h(after),
                                  in_stretch=in_stretch, horizon=h(horizon))
    assert [r.fire for r in found] == [h(s) for s in starts]
    assert still is ends_in_stretch
    assert has_calendar([schedule]) is (schedule is NIGHTS_OFF)


def test_a_stretch_says_until_when_no_fire_is_made() -> None:
    [first], _ = stretch_starts([NIGHTS_OFF], [h(1)], after=h(0.5), in_stretch=False,
                                horizon=h(2.5))
    assert stretch_detail([NIGHTS_OFF], first) == (
        "exclude * 2-4 * * *; no fire is made after it until 2026-12-07 05:00:00+00:00")
