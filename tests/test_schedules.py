"""Schedule entries beyond time (issues 12 §5 and 13): calendars, `file:`, `after:` and
`@reboot` in job files — what the model holds, what `validate` says where, `after:` across a
jobs directory, and `pipeline next` honouring the calendar."""

from __future__ import annotations

import os
import textwrap
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from pipeline import jobset, spec
from pipeline.cli import main
from pipeline.errors import JobInvalid, Problem
from pipeline.model import Exclusion, RunStatus, Schedule, ScheduleKind
from pipeline.watch import Catalog

NOW = datetime(2026, 6, 1, tzinfo=UTC)
STEP = "steps:\n  - {id: a, run: \"true\"}\n"


def write(path: Path, text: str) -> Path:
    """A job file: ``text`` (dedented) and one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n") + STEP, encoding="utf-8")
    return path


def found(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) of one file as `pipeline validate FILE` prints them, less the path."""
    loaded = jobset.load_jobs([path], now=NOW)
    def strip(problems: tuple[Problem, ...]) -> list[str]:
        return [str(p).removeprefix(f"{path}:") for p in problems]
    return strip(loaded.problems.get(str(path), ())), strip(loaded.warnings.get(str(path), ()))


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


# -- the model ---------------------------------------------------------------------------------


def test_calendars_and_events_build_into_the_model(tmp_path: Path) -> None:
    path = write(tmp_path / "jobs" / "etl.yaml", """
        schedule:
          - cron: "30 2 * * *"
            timezone: Europe/Berlin
            active: {from: 2026-01-01, until: "2026-12-31"}
            exclude: [2026-12-25, "* * * * sat,sun"]
          - {file: "incoming/*.csv", settle: 10s}
          - {file: /srv/drop/**/*.json, existing: true}
          - {after: extract, status: [succeeded, failed]}
          - {after: load}
          - "@reboot"
        """)
    job = spec.load_job(path)
    timed, local_glob, absolute, after, after_default, reboot = job.schedules
    berlin = ZoneInfo("Europe/Berlin")
    assert timed.active is not None
    assert timed.active.start == datetime(2026, 1, 1, tzinfo=berlin)
    assert timed.active.end == datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=berlin)
    assert (timed.active.from_text, timed.active.until_text) == ("2026-01-01", "2026-12-31")
    assert timed.exclude == (Exclusion("2026-12-25", date=date(2026, 12, 25)),
                             Exclusion("* * * * sat,sun", cron="* * * * SAT,SUN"))
    assert (local_glob.kind, local_glob.file, local_glob.settle, local_glob.existing,
            local_glob.text) == (ScheduleKind.FILE, str(tmp_path / "jobs" / "incoming" /
                                                        "*.csv"), 10.0, False, "incoming/*.csv")
    assert (absolute.file, absolute.settle, absolute.existing) == (
        "/srv/drop/**/*.json", Schedule.settle, True)
    assert (after.kind, after.after, after.status) == (
        ScheduleKind.AFTER, "extract", (RunStatus.SUCCEEDED, RunStatus.FAILED))
    assert after_default.status == (RunStatus.SUCCEEDED,)
    assert reboot.kind is ScheduleKind.REBOOT
    assert [s.kind.timed for s in job.schedules] == [True, False, False, False, False, False]


def test_a_relative_glob_is_read_against_the_job_files_folder(tmp_path: Path) -> None:
    write(tmp_path / "jobs" / "team" / "drop.yaml", "schedule: {file: '../in/*.csv'}\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    before = os.getcwd()
    os.chdir(elsewhere)
    try:
        job = spec.load_job(Path(os.path.relpath(tmp_path / "jobs" / "team" / "drop.yaml")))
    finally:
        os.chdir(before)
    assert job.schedules[0].file == str(tmp_path / "jobs" / "in" / "*.csv")


# -- located problems ------------------------------------------------------------------------


def test_calendar_problems_are_located(tmp_path: Path) -> None:
    errors, warnings = found(write(tmp_path / "job.yaml", """
        schedule:
          - cron: "0 9 * * *"
            exclude: [2026-13-01, "* * 32 * *", "2026-01-01"]
          - cron: "0 9 * * *"
            active: {from: "2026-05-01T10:00:00+02:00", until: "2026-05-01T09:00:00+02:00"}
          - cron: "0 9 * * *"
            timezone: Europe/Berlin
            active: {from: "2026-05-01T09:30:00+02:00", until: "2026-05-02T08:00:00+02:00"}
          - at: 2027-01-01T09:00:00+01:00
            exclude: ["* * 1 1 *"]
          - at: 2027-01-01T09:00:00+01:00
            active: {until: 2026-12-31}
          - every: 1h
            active: {until: "2026-05-01"}
        """))
    assert errors == [
        "3:15: error: schedule[0].exclude[0]: '2026-13-01' is not a real date",
        "3:27: error: schedule[0].exclude[1]: '* * 32 * *' is neither a date (YYYY-MM-DD) nor "
        "a cron expression: day-of-month field: 32 is out of range 1-31",
        "5:56: error: schedule[1].active.until: '2026-05-01T09:00:00+02:00' is before from "
        "('2026-05-01T10:00:00+02:00'): the window holds no time",
        "8:13: error: schedule[2].active: no fire of this schedule falls in the window: it "
        "never fires",
        "10:14: error: schedule[3].exclude: excludes '2027-01-01T09:00:00+01:00', the one fire "
        "of this schedule: it never fires",
        "12:13: error: schedule[4].active: '2027-01-01T09:00:00+01:00' is outside this "
        "window: the schedule never fires",
    ]
    assert warnings == ["14:21: warning: schedule[5].active.until: '2026-05-01' leaves no fire "
                        "after now: this schedule fires no more"]


def test_a_window_that_ended_is_a_warning_not_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "job.yaml", """
        schedule:
          every: 1h
          active: {until: "2026-05-01"}
        """)
    errors, warnings = found(path)
    assert errors == []
    assert warnings == ["3:19: warning: schedule.active.until: '2026-05-01' leaves no fire "
                        "after now: this schedule fires no more"]
    spec.load_job(path)  # valid


def test_event_entries_are_checked(tmp_path: Path) -> None:
    (tmp_path / "ready").mkdir()
    (tmp_path / "locked").mkdir()
    (tmp_path / "a-file").write_text("")
    errors, _ = found(write(tmp_path / "job.yaml", """
        name: watcher
        schedule:
          - {file: "in/[a-z.csv"}
          - {file: "in/", settle: 5s}
          - {file: "**", existing: maybe}
          - {file: "ready/*.csv", timezone: UTC, exclude: [2026-01-01]}
          - {after: watcher}
          - {after: "bad name!"}
          - {every: 1h, status: [failed]}
        """))
    assert errors == [
        "3:12: error: schedule[0].file: '[a-z.csv' has a [ without its closing ]",
        "4:12: error: schedule[1].file: 'in/' names a folder, not files; add a file pattern "
        "such as in/*",
        "5:12: error: schedule[2].file: '**' ends with **, which matches folders; add a file "
        "pattern such as **/*",
        "5:28: error: schedule[2].existing: expected true or false, got 'maybe'",
        "6:37: error: schedule[3].timezone: applies to time schedules (cron, every, at), not to "
        "a file schedule",
        "6:51: error: schedule[3].exclude: applies to time schedules (cron, every, at), not to "
        "a file schedule",
        "7:13: error: schedule[4].after: a job cannot fire after itself ('watcher')",
        "8:13: error: schedule[5].after: 'bad name!' is not a valid job name (a letter or "
        "digit, then letters, digits, '_', '.' or '-'; at most 64 characters)",
        "9:17: error: schedule[6]: 'status' only applies together with 'after', which is "
        "missing",
    ]


def test_folders_a_glob_cannot_use_are_warnings(tmp_path: Path) -> None:
    (tmp_path / "ready").mkdir()
    (tmp_path / "a-file").write_text("")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        path = write(tmp_path / "job.yaml", """
            schedule:
              - {file: "ready/*.csv"}
              - {file: "later/sub/**/*.csv"}
              - {file: "a-file/*.csv"}
              - {file: "locked/*.csv"}
            """)
        errors, warnings = found(path)
        readable = os.access(locked, os.R_OK)  # root reads anything
    finally:
        locked.chmod(0o755)
    assert errors == []
    assert warnings[:2] == [
        f"3:12: warning: schedule[1].file: the folder {tmp_path}/later/sub does not exist "
        f"({tmp_path} is the nearest that does): nothing fires until it is created",
        f"4:12: warning: schedule[2].file: {tmp_path}/a-file is not a folder: nothing fires",
    ]
    if not readable:
        assert warnings[2:] == [f"5:12: warning: schedule[3].file: the folder {locked} cannot "
                                "be read: nothing fires until it can"]
    spec.load_job(path)  # the disk's state never makes a file invalid


def test_reboot_is_a_schedule_but_not_a_cron_expression(tmp_path: Path) -> None:
    job = spec.load_job(write(tmp_path / "a.yaml", "schedule: '@REBOOT'\n"))
    assert job.schedules[0].kind is ScheduleKind.REBOOT
    with pytest.raises(JobInvalid) as raised:
        spec.load_job(write(tmp_path / "b.yaml", "schedule: {cron: '@reboot'}\n"))
    assert "@reboot is an event, not a time" in str(raised.value)


# -- after: across the jobs directory --------------------------------------------------------


def test_after_must_name_a_job_and_close_no_ring(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    write(jobs / "extract.yaml", "schedule: '@daily'\n")
    write(jobs / "load.yaml", "schedule: [{after: transform}]\n")
    write(jobs / "transform.yaml", """
        schedule:
          - {after: extract}
          - {after: load}
        """)
    write(jobs / "report.yaml", "schedule: {after: lod}\n")
    write(jobs / "audit.yaml", "schedule: {after: extract, status: [failed]}\n")
    loaded = jobset.load_jobs([jobs], now=NOW)
    assert sorted(loaded.jobs) == ["audit", "extract"]
    assert {Path(f).name: [str(p).removeprefix(f"{f}:") for p in found]
            for f, found in loaded.problems.items()} == {
        "load.yaml": ["1:20: error: schedule[0].after: jobs would fire each other in a ring: "
                      "transform after load after transform"],
        "transform.yaml": ["3:13: error: schedule[1].after: jobs would fire each other in a "
                           "ring: transform after load after transform"],
        "report.yaml": ["1:19: error: schedule.after: there is no job 'lod' in the jobs "
                        "directory (did you mean 'load'?)"],
    }
    # Given single files, a name outside them is not judged; a ring among them is.
    alone = jobset.load_jobs([jobs / "report.yaml"], now=NOW)
    assert list(alone.jobs) == ["report"]
    pair = jobset.load_jobs([jobs / "load.yaml", jobs / "transform.yaml"], now=NOW)
    assert sorted(Path(f).name for f in pair.problems) == ["load.yaml", "transform.yaml"]


def test_the_daemons_catalog_refuses_a_ring_too(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "schedule: {after: b}\n")
    write(tmp_path / "b.yaml", "schedule: {after: a}\n")
    write(tmp_path / "c.yaml", "schedule: {after: a}\n")
    catalog = Catalog(tmp_path)
    catalog.scan()
    assert sorted(Path(f).name for f in catalog.problems) == ["a.yaml", "b.yaml"]
    assert "ring: " in str(catalog.problems[str(tmp_path / "a.yaml")][0])


# -- pipeline next ---------------------------------------------------------------------------


def test_next_honours_the_calendar(tmp_path: Path) -> None:
    path = write(tmp_path / "backup.yaml", """
        schedule:
          cron: "30 2 * * *"
          timezone: Europe/Berlin
          exclude: [2026-12-25, "* * * * 0,6"]
        """)
    code, out, _ = cli("next", str(path), "-n", "3", "--after", "2026-12-24T03:00:00+01:00")
    assert (code, out.split()) == (0, ["2026-12-28T02:30:00+01:00",
                                       "2026-12-29T02:30:00+01:00",
                                       "2026-12-30T02:30:00+01:00"])


def test_next_says_a_schedule_never_fires(tmp_path: Path) -> None:
    path = write(tmp_path / "never.yaml", """
        schedule:
          cron: "* * * * *"
          exclude: ["0-29 * * * *", "30-59 * * * *"]
        """)
    code, out, err = cli("next", str(path))
    assert code == 2 and out == ""
    assert f"{path}:3:12: error: schedule.exclude: removes every fire of this schedule: it " \
           "never fires" in err
    feb = write(tmp_path / "feb.yaml", "schedule: '0 0 30 2 *'\n")
    code, _, err = cli("next", str(feb))
    assert code == 2 and "this expression never fires" in err
