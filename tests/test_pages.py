"""What the pages draw, from plain records: schedules in words, fires across clock changes,
a run's attempts and timeline, its graph, a job's durations, its form and its file."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from pipeline import schedule_words
from pipeline.cron import parse_cron
from pipeline.errors import Problem
from pipeline.http.pages import durations, next_fires, param_fields, source_lines
from pipeline.http.rungraph import graph, step_statuses
from pipeline.http.timeline import attempt_markers, attempts, timeline
from pipeline.model import Job, RunStatus, Schedule, ScheduleKind, StepStatus, Trigger
from pipeline.runrecords import RunRecord, StepRecord

JobFrom = Callable[[str], Job]
BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# -- schedules in words -------------------------------------------------------------------

@pytest.mark.parametrize(("cron", "words"), [
    ("30 2 * * *", "02:30 every day"),
    ("0 9 * * 1-5", "09:00 on Monday to Friday"),
    ("0 9 * * MON-FRI", "09:00 on Monday to Friday"),
    ("15 3 * * MON,THU", "03:15 on Monday and Thursday"),
    ("0 0 * * 6,0", "00:00 on Saturday and Sunday"),
    ("5 4 * * 7", "04:05 on Sunday"),
    ("*/15 * * * *", "every 15 minutes"),
    ("* * * * *", "every minute"),
    ("0 * * * *", "every hour at :00"),
    ("@hourly", "every hour at :00"),
    ("0 */2 * * *", "every 2 hours at :00"),
    ("0 9-17 * * *", "every hour from 09:00 to 17:00"),
    ("*/5 9-17 * * 1-5", "every 5 minutes from 09:00 to 17:59 on Monday to Friday"),
    ("0 6,18 * * *", "06:00 and 18:00 every day"),
    ("@daily", "00:00 every day"),
    ("0 0 1 * *", "00:00 on day 1 of every month"),
    ("30 0 1,15 * *", "00:30 on days 1 and 15 of every month"),
    ("@yearly", "00:00 on 1 January"),
    ("0 0 1 1,4,7,10 *", "00:00 on day 1 of January, April, July and October"),
    ("0 12 * 6-8 *", "12:00 every day in June, July and August"),
    ("0 0 1-7 * 1", "00:00 on days 1 to 7 of every month or on Monday"),
    ("10 30 2 * * *", "02:30:10 every day"),
    # Beyond these words: the expression itself.
    ("0 0 */2 * MON", 'cron "0 0 */2 * MON"'),
    ("7,19,31 */3 * * *", 'cron "7,19,31 */3 * * *"'),
])
def test_cron_in_words(cron: str, words: str) -> None:
    schedule = Schedule(ScheduleKind.CRON, BERLIN, cron=parse_cron(cron))
    assert schedule_words.in_words(schedule) == f"{words}, Europe/Berlin"


def test_intervals_and_one_shots_in_words() -> None:
    assert schedule_words.in_words(Schedule(ScheduleKind.EVERY, BERLIN, every=900)) == \
        "every 15 minutes"
    assert schedule_words.in_words(Schedule(ScheduleKind.EVERY, BERLIN, every=5400,
                                      jitter=30)) == \
        "every 90 minutes, up to 30s later at random"
    assert schedule_words.in_words(Schedule(ScheduleKind.EVERY, BERLIN, every=86400)) == "every day"
    assert schedule_words.in_words(Schedule(ScheduleKind.AT, BERLIN, at=datetime(
        2026, 12, 1, 9, tzinfo=BERLIN))) == "once, at 2026-12-01 09:00+01:00"


# -- fires across clock changes -----------------------------------------------------------

def test_next_fires_mark_the_spring_gap(job_from: JobFrom) -> None:
    job = job_from("""
        schedule: {cron: "30 2 * * *", timezone: Europe/Berlin}
        steps: [{id: a, run: "true"}]
    """)
    fires = next_fires(job, datetime(2026, 3, 26, 12, tzinfo=UTC), 5)
    assert [f.at.isoformat() for f in fires] == [
        "2026-03-27T02:30:00+01:00", "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00"]
    notes = [f.note for f in fires]
    assert notes[0] is None and notes[1] is None and notes[3] is None
    assert notes[2] == ("clocks go forward 1h before this fire (UTC+01:00 → UTC+02:00); the "
                        "first instant after the skipped hour")


def test_next_fires_mark_the_repeated_hour(job_from: JobFrom) -> None:
    job = job_from("""
        schedule: {cron: "30 * * * *", timezone: Europe/Berlin}
        steps: [{id: a, run: "true"}]
    """)
    fires = next_fires(job, datetime(2026, 10, 24, 23, 5, tzinfo=UTC), 4)
    assert [(f.at.isoformat(), f.note) for f in fires] == [
        ("2026-10-25T01:30:00+02:00", None),
        ("2026-10-25T02:30:00+02:00", "in the repeated hour (first pass)"),
        ("2026-10-25T02:30:00+01:00", "clocks go back 1h before this fire (UTC+02:00 → "
                                      "UTC+01:00); in the repeated hour (second pass)"),
        ("2026-10-25T03:30:00+01:00", None)]


def test_a_job_without_schedule_has_no_fires(job_from: JobFrom) -> None:
    assert next_fires(job_from("steps: [{id: a, run: 'true'}]"), T0) == []


# -- a run's attempts and timeline --------------------------------------------------------

def step(sid: str, status: StepStatus, start: float | None, end: float | None,
         attempt: int = 1, item: str | None = None) -> StepRecord:
    return StepRecord("r", sid, status, attempt, started_at=None if start is None else at(start),
                      finished_at=None if end is None else at(end), log=f"{sid}.log",
                      item=item)


def test_attempts_come_from_the_log_markers() -> None:
    log = ("connecting\n[pipeline] exit status 7; retrying in 2s\n"
           f"[pipeline] attempt 2 of 3 at {at(5).isoformat()}\nagain\n"
           "[pipeline] exit status 7; retrying in 4s\n"
           f"[pipeline] attempt 3 of 3 at {at(12).isoformat()}\n"
           "a line that mentions [pipeline] attempt 9 of 9 at noon\nok\n")
    markers = attempt_markers(log)
    assert len(markers) == 4  # only whole lines that start with the marker
    found = attempts(step("ping", StepStatus.SUCCEEDED, 0, 15, attempt=3), markers)
    assert [(a.number, a.start, a.end, a.wait_before) for a in found] == [
        (1, at(0), at(3), 0.0), (2, at(5), at(8), 2.0), (3, at(12), at(15), 4.0)]


def test_attempts_without_their_times_are_one_stretch() -> None:
    # A log written before markers carried times, or whose middle was dropped.
    old = ["[pipeline] exit status 7; retrying in 2s", "[pipeline] attempt 2 of 2"]
    found = attempts(step("ping", StepStatus.FAILED, 0, 9, attempt=2), old)
    assert [(a.number, a.start, a.end) for a in found] == [(2, at(0), at(9))]
    assert attempts(step("skip", StepStatus.SKIPPED, None, None), []) == []


def run_record(status: RunStatus, steps: tuple[StepRecord, ...], *,
               finished: float | None = 20.0) -> RunRecord:
    document = {"steps": [{"id": "a"}, {"id": "fan", "needs": ["a"]},
                          {"id": "b", "needs": ["a"]}, {"id": "c", "needs": ["fan", "b"]}],
                "on_failure": [{"id": "alert"}]}
    return RunRecord("r", "job", status, Trigger.API, queued_at=at(0), started_at=at(2),
                     finished_at=None if finished is None else at(finished),
                     document=document, steps=steps)


def test_timeline_places_each_stretch_on_one_axis() -> None:
    record = run_record(RunStatus.FAILED, (
        step("a", StepStatus.SUCCEEDED, 2, 6),
        step("fan", StepStatus.FAILED, 6, 16),
        step("fan.0", StepStatus.SUCCEEDED, 6, 10, item='"eu"'),
        step("fan.1", StepStatus.FAILED, 6, 16, item='"us"'),
        step("b", StepStatus.SKIPPED, None, None),
        step("alert", StepStatus.SUCCEEDED, 16, 20)))
    drawn = timeline(record, at(100))
    assert drawn is not None and drawn.span_s == 20 and drawn.now is None
    rows = {row.label: row for row in drawn.rows}
    assert list(rows) == ["queued", "a", "fan", "b", "alert"]
    assert [(b.left, b.width, b.kind) for b in rows["queued"].bars] == [(0.0, 10.0, "queued")]
    assert [(b.left, b.width, b.kind) for b in rows["a"].bars] == [(10.0, 20.0, "succeeded")]
    assert [(i.label, [(b.left, b.width) for b in i.bars]) for i in rows["fan"].items] == [
        ('0: eu', [(30.0, 20.0)]), ('1: us', [(30.0, 50.0)])]
    assert rows["b"].bars == () and rows["b"].note == "skipped"
    assert rows["alert"].hook == "on failure"
    assert [t.label for t in drawn.ticks] == ["0", "+5 s", "+10 s", "+15 s", "+20 s"]


def test_a_live_run_reaches_now_with_its_pending_steps() -> None:
    record = run_record(RunStatus.RUNNING, (step("a", StepStatus.RUNNING, 2, None),),
                        finished=None)
    drawn = timeline(record, at(10), pending=["fan", "b", "c"])
    assert drawn is not None and drawn.now == 100.0
    running = drawn.rows[1]
    assert running.bars[0].kind == "running" and running.bars[0].title.endswith("so far")
    assert [r.label for r in drawn.rows[2:]] == ["fan", "b", "c"]
    assert all(r.note == "not started yet" for r in drawn.rows[2:])


def test_retries_are_drawn_as_failed_attempts_and_waits() -> None:
    record = run_record(RunStatus.SUCCEEDED, (step("a", StepStatus.SUCCEEDED, 0, 20,
                                                   attempt=2),), finished=20)
    markers = {"a": ["[pipeline] exit status 1; retrying in 5s",
                     f"[pipeline] attempt 2 of 2 at {at(10).isoformat()}"]}
    drawn = timeline(record, at(30), markers)
    assert drawn is not None
    assert [(b.kind, b.left, b.width) for b in drawn.rows[1].bars] == [
        ("failed", 0.0, 25.0), ("wait", 25.0, 25.0), ("succeeded", 50.0, 50.0)]


def test_pool_waits_are_drawn_before_the_step_and_so_far_while_waiting() -> None:
    waited = dataclasses.replace(step("a", StepStatus.SUCCEEDED, 10, 20), waited_from=at(0))
    waiting = dataclasses.replace(step("b", StepStatus.PENDING, None, None), waited_from=at(5),
                                  error="waiting for pool db")
    drawn = timeline(run_record(RunStatus.RUNNING, (waited, waiting), finished=None), at(20))
    assert drawn is not None
    rows = {row.label: row for row in drawn.rows}
    assert [(b.kind, b.title) for b in rows["a"].bars] == [
        ("pool", "waited 10.0 s for a pool slot"), ("succeeded", "a: 10.0 s, succeeded")]
    assert [(b.kind, b.title) for b in rows["b"].bars] == [
        ("pool", "waited 15.0 s for a pool slot so far")]
    assert rows["b"].note == "waiting for pool db"


def test_a_run_skipped_at_once_has_no_timeline() -> None:
    record = RunRecord("r", "job", RunStatus.SKIPPED, Trigger.SCHEDULE, queued_at=at(0),
                       started_at=at(0), finished_at=at(0))
    assert timeline(record, at(5)) is None


# -- a run's graph ------------------------------------------------------------------------

def test_graph_layers_follow_graphlib_and_hooks_come_after() -> None:
    record = run_record(RunStatus.RUNNING, (step("a", StepStatus.SUCCEEDED, 2, 6),
                                            step("fan.0", StepStatus.RUNNING, 6, None),
                                            step("fan.1", StepStatus.RUNNING, 6, None)),
                        finished=None)
    statuses, counts = step_statuses(record, ["b", "c"])
    drawn = graph(record.document or {}, statuses, counts)
    assert drawn is not None
    where = {n.id: (n.x, n.y, n.status, n.label) for n in drawn.nodes}
    assert where["a"][0] < where["fan"][0] == where["b"][0] < where["c"][0] < where["alert"][0]
    assert where["fan"][1] < where["b"][1]  # file order within a layer
    assert where["fan"][2:] == ("running", "fan ×2") and where["b"][2] == "pending"
    assert where["alert"][2] == "none"  # a hook that did not run
    assert [c.text for c in drawn.captions] == ["on failure"]
    solid = [e for e in drawn.edges if not e.dashed]
    dashed = [e for e in drawn.edges if e.dashed]
    assert len(solid) == 4 and len(dashed) == 1  # a->fan, a->b, fan->c, b->c; c..alert
    assert all(e.path.startswith("M") and "C" in e.path for e in drawn.edges)
    assert graph({}, {}) is None


# -- a job's durations, form and file -----------------------------------------------------

def test_durations_with_p50_and_p95() -> None:
    runs = [RunRecord(f"r{i}", "job", RunStatus.FAILED if i == 3 else RunStatus.SUCCEEDED,
                      Trigger.SCHEDULE, queued_at=at(i * 100), started_at=at(i * 100),
                      finished_at=at(i * 100 + d))
            for i, d in enumerate([10, 20, 30, 40, 50, 60, 70, 80, 90, 100])]
    skipped = RunRecord("s", "job", RunStatus.SKIPPED, Trigger.SCHEDULE)
    chart = durations([skipped, *reversed(runs)])  # newest first, as the store gives them
    assert chart is not None and chart.runs == 10
    assert (chart.p50_s, chart.p95_s) == (50, 100)
    assert [c.run_id for c in chart.columns] == [f"r{i}" for i in range(10)]  # oldest left
    assert chart.columns[3].status == "failed"
    assert chart.columns[-1].height == pytest.approx(100 / 1.1, abs=0.01)
    assert durations([skipped]) is None


def test_the_form_is_built_from_params(job_from: JobFrom) -> None:
    job = job_from("""
        params:
          keep_days: {type: integer, default: 14, description: days of dumps to keep}
          ratio: {type: number}
          target: {type: string, enum: [prod, staging], default: staging}
          level: {type: integer, enum: [1, 2, 3]}
          verify: {type: boolean, default: true}
          label: {type: string, required: true}
        steps: [{id: a, run: "true"}]
    """)
    fields = {f.name: f for f in param_fields(job)}
    assert (fields["keep_days"].kind, fields["keep_days"].value,
            fields["keep_days"].description) == ("integer", "14", "days of dumps to keep")
    assert fields["ratio"].kind == "number" and fields["ratio"].value == ""
    assert fields["target"].options == (('"prod"', "prod", False), ('"staging"', "staging", True))
    assert fields["level"].options[0] == ("", "— choose —", True)  # no default: choose one
    assert fields["level"].options[1] == ("1", "1", False)  # the value as JSON: a number
    assert fields["verify"].kind == "checkbox" and fields["verify"].checked
    assert fields["label"].required and fields["label"].kind == "text"


def test_the_file_with_its_errors_at_their_lines() -> None:
    text = "name: x\nsteps:\n  - id: a\n    timeout: soon\n"
    lines = source_lines(text, [Problem("x.yaml", 4, 14, "expected a duration"),
                                Problem("x.yaml", 99, 1, "somewhere after the end")])
    assert [line.number for line in lines] == [1, 2, 3, 4]
    assert [p.message for p in lines[3].errors] == ["expected a duration",
                                                    "somewhere after the end"]
    assert all(not line.errors for line in lines[:3])


def test_the_index_marks_paused_and_stale_jobs() -> None:
    """A job view with ``paused`` (the API's field, CONTRACT §5) is marked and counted; the
    index renders without it too (a daemon that has no pauses yet)."""
    from pipeline import page

    def view(name: str, **extra: object) -> dict[str, object]:
        return {"name": name, "file": f"{name}.yaml", "valid": True, "errors": [],
                "stale": False, "description": None, "enabled": True, "schedule": None,
                "next_fire_time": None, "last_run": None, "active_runs": 0, "queued_runs": 0,
                "circuit": "closed", **extra}

    jobs = [view("held", paused=True, paused_reason="db migration"), view("old", stale=True),
            view("plain")]
    text = page.render("index.html", {
        "jobs": jobs, "words": {}, "notes": {}, "jobs_total": 3, "jobs_shown": 3, "jobs_from": 0,
        "jobs_per_page": 50, "invalid": [], "runs": [], "total": 0, "more": False,
        "offset": 0, "limit": 25, "job_filter": None, "name_filter": "", "status": "",
        "since_filter": "", "run_statuses": [], "job_states": [], "show_nodes": False,
        "stats": {"jobs": 3, "queued": 0, "running": 0, "failed_24h": 0, "invalid": 0,
                  "circuits_open": 0, "paused": 1, "stale": 1},
        "daemon": {"started_at": T0.isoformat(), "jobs_dir": "jobs.d",
                   "journal_healthy": True, "journal_failure": None},
        "refresh": 5, "read_only": False, "offers": {}, "assets": "x"})
    assert '<span class="badge s-paused" title="db migration">paused</span>' in text
    assert text.count("s-paused") == 1 and text.count('class="badge s-stale"') == 1
    assert 'href="/?status=paused#jobs"><b>1</b><span>paused</span>' in text


def test_events_and_calendars_in_words(job_from: JobFrom) -> None:
    job = job_from("""
        schedule:
          - {file: "incoming/*.csv", settle: 10s}
          - {after: extract, status: [succeeded, failed]}
          - "@reboot"
          - cron: "0 9 * * *"
            timezone: UTC
            exclude: ["2026-12-25"]
        steps: [{id: a, run: "true"}]
    """)
    assert [schedule_words.in_words(s) for s in job.schedules] == [
        "when a file under incoming/*.csv has not changed for 10s",
        "after each run of extract that ended succeeded or failed",
        "each time a daemon starts",
        "09:00 every day, UTC, except 2026-12-25"]
    fires = next_fires(job, datetime(2026, 12, 23, 12, tzinfo=UTC), 3)  # the cron only
    assert [f.at.date().isoformat() for f in fires] == ["2026-12-24", "2026-12-26",
                                                         "2026-12-27"]
