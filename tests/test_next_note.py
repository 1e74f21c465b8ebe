"""What a job's next fire time leaves unsaid: a job fired only by events, or whose timed
fires are over, says so wherever its next fire is shown: ``pipeline next``, ``why``,
``list`` (table and JSON), the API's job, the jobs page and a job's page."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline import page, schedule_words
from pipeline.cli import main
from pipeline.model import Job
from pipeline.schedule_words import NextNote, NoteKind

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
STEP = 'steps: [{id: a, run: "true"}]\n'
EVENTS = ("fires on events: when a file under incoming/*.csv has not changed for 10s; "
          "after each run of extract that ended succeeded")
JOBS = {
    "watcher.yaml": textwrap.dedent("""\
        schedule:
          - {file: "incoming/*.csv", settle: 10s}
          - {after: extract}
        """) + STEP,
    "extract.yaml": 'schedule: {cron: "0 2 * * *", timezone: UTC, active: {until: '
                    "2026-06-30}}\n" + STEP,
    "mixed.yaml": 'schedule: [{cron: "@daily", timezone: UTC}, "@reboot"]\n' + STEP,
    "plain.yaml": 'schedule: {cron: "@daily", timezone: UTC}\n' + STEP,
}


def note(job: Job, fire: datetime | None, now: datetime = NOW) -> NextNote | None:
    return schedule_words.next_note(job.schedules, fire, now, enabled=job.enabled)


def test_the_note_says_what_fires_a_job_without_a_fire_time(
        job_from: Callable[[str], Job]) -> None:
    events = job_from(JOBS["watcher.yaml"])
    assert note(events, None) == NextNote(NoteKind.EVENTS, EVENTS)
    reboot = job_from('schedule: "@reboot"\n' + STEP)
    assert note(reboot, None) == NextNote(NoteKind.EVENTS,
                                          "fires on events: each time a daemon starts")
    # A time, and events besides.
    mixed = job_from(JOBS["mixed.yaml"])
    assert note(mixed, NOW) == NextNote(NoteKind.ALSO_EVENTS,
                                        "also fires on events: each time a daemon starts")
    assert note(job_from(JOBS["plain.yaml"]), NOW) is None  # the time says it all
    assert note(job_from(STEP), None) == NextNote(
        NoteKind.TRIGGERED, "no schedule: it runs only when triggered")
    assert note(job_from("enabled: false\n" + JOBS["plain.yaml"]), None) == NextNote(
        NoteKind.DISABLED, "enabled: false: it runs only when triggered")


def test_the_note_says_why_timed_fires_are_over(job_from: Callable[[str], Job]) -> None:
    ended = job_from(JOBS["extract.yaml"])
    assert note(ended, None) == NextNote(
        NoteKind.OVER, "no more fires: its active window ended at 2026-06-30")
    ending = job_from('schedule: {every: 1d, start: "2026-12-01T00:00:00Z", timezone: UTC, '
                      'active: {until: "2026-12-01T18:00:00Z"}}\n' + STEP)
    assert note(ending, None) == NextNote(
        NoteKind.OVER, "no more fires: no fire is left before its active window ends at "
                       "2026-12-01T18:00:00Z")
    once = job_from('schedule: {at: "2026-11-30T09:00:00+01:00", timezone: Europe/Berlin}\n'
                    + STEP)
    assert note(once, None) == NextNote(
        NoteKind.OVER, "no more fires: its one fire, at 2026-11-30 09:00+01:00, has passed")
    both = job_from(textwrap.dedent("""\
        schedule:
          - {at: "2026-11-30T09:00:00Z", timezone: UTC}
          - {cron: "0 2 * * *", timezone: UTC, active: {until: 2026-06-30}}
          - {after: extract, status: [failed]}
        """) + STEP)
    assert note(both, None) == NextNote(
        NoteKind.EVENTS,
        "fires on events: after each run of extract that ended failed; no more timed fires: "
        "at 2026-11-30T09:00:00+00:00: its one fire, at 2026-11-30 09:00+00:00, has passed; "
        'cron "0 2 * * *" UTC, active until 2026-06-30: its active window ended at '
        "2026-06-30")


def write_jobs(root: Path) -> Path:
    folder = root / "jobs.d"
    folder.mkdir()
    (folder / "incoming").mkdir()
    for name, text in JOBS.items():
        (folder / name).write_text(text)
    return folder


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_next_says_what_fires_the_job_when_it_has_no_times(tmp_path: Path) -> None:
    jobs = str(write_jobs(tmp_path))
    code, out, err = cli("next", "watcher", "--jobs-dir", jobs)
    assert (code, out, err) == (0, "", f"pipeline: job watcher: {EVENTS}\n")
    code, out, err = cli("next", "extract", "--jobs-dir", jobs, "--after", "2026-12-01")
    assert (code, out) == (0, "")
    assert err == "pipeline: job extract: no more fires: its active window ended at 2026-06-30\n"
    # Before its window ends it has times, and no note.
    code, out, err = cli("next", "extract", "-n", "2", "--jobs-dir", jobs, "--after",
                         "2026-06-28T12:00:00Z")
    assert (code, err) == (0, "")
    assert out.splitlines() == ["2026-06-29T02:00:00+00:00", "2026-06-30T02:00:00+00:00"]
    # Times on stdout, one a line, as ever; the events on stderr.
    code, out, err = cli("next", "mixed", "-n", "1", "--jobs-dir", jobs, "--after",
                         "2026-12-01T12:00:00Z")
    assert (code, out) == (0, "2026-12-02T00:00:00+00:00\n")
    assert "also fires on events: each time a daemon starts" in err


def test_why_ends_with_what_fires_the_job(tmp_path: Path) -> None:
    args = ["--jobs-dir", str(write_jobs(tmp_path)), "--state-dir", str(tmp_path / "state")]
    assert cli("why", "watcher", *args)[1].splitlines()[-1] == EVENTS
    assert cli("why", "extract", *args)[1].splitlines()[-1] == \
        "no more fires: its active window ended at 2026-06-30"
    last = cli("why", "mixed", *args)[1].splitlines()[-1]
    assert last.startswith("next ") and last.endswith(
        "; also fires on events: each time a daemon starts")
    assert not (tmp_path / "state").exists()  # why only looks


def test_list_shows_the_note_where_there_is_no_time(tmp_path: Path) -> None:
    args = ["--jobs-dir", str(write_jobs(tmp_path)), "--state-dir", str(tmp_path / "state")]
    code, out, _ = cli("list", *args)
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert code == 0 and "on events" in rows["watcher"] and "no more fires" in rows["extract"]
    code, out, _ = cli("list", "--json", *args)
    by_name = {row["name"]: row for row in json.loads(out)}
    assert by_name["watcher"]["next_fire_time"] is None
    assert by_name["watcher"]["next_fire_note"] == EVENTS
    assert by_name["extract"]["next_fire_note"] == \
        "no more fires: its active window ended at 2026-06-30"
    assert by_name["mixed"]["next_fire_time"] is not None
    assert by_name["mixed"]["next_fire_note"] == \
        "also fires on events: each time a daemon starts"
    assert by_name["plain"]["next_fire_note"] is None


def index_page(jobs: list[dict[str, object]], notes: dict[str, NextNote]) -> str:
    return page.render("index.html", {
        "jobs": jobs, "words": {}, "notes": notes, "jobs_total": len(jobs),
        "jobs_shown": len(jobs), "jobs_from": 0, "jobs_per_page": 50, "invalid": [],
        "runs": [], "total": 0, "more": False, "offset": 0, "limit": 25, "job_filter": None,
        "name_filter": "", "status": "", "since_filter": "", "run_statuses": [],
        "job_states": [], "show_nodes": False,
        "stats": {"jobs": 2, "queued": 0, "running": 0, "failed_24h": 0, "invalid": 0,
                  "circuits_open": 0, "paused": 0, "stale": 0},
        "daemon": {"started_at": NOW.isoformat(), "jobs_dir": "jobs.d",
                   "journal_healthy": True, "journal_failure": None},
        "refresh": 5, "read_only": False, "offers": {}, "assets": "x"})


def test_the_jobs_page_shows_the_note_in_the_next_fire_column() -> None:
    def view(name: str, fire: str | None) -> dict[str, object]:
        return {"name": name, "file": f"{name}.yaml", "valid": True, "errors": [],
                "stale": False, "description": None, "enabled": True, "schedule": None,
                "next_fire_time": fire, "last_run": None, "active_runs": 0,
                "queued_runs": 0, "circuit": "closed"}

    text = index_page([view("watcher", None), view("mixed", NOW.isoformat())], {
        "watcher": NextNote(NoteKind.EVENTS, EVENTS),
        "mixed": NextNote(NoteKind.ALSO_EVENTS, "also fires on events: each time a daemon "
                                                "starts")})
    assert f'<span class="muted" title="{EVENTS}">on events</span>' in text
    assert '<span class="sub" title="also fires on events: each time a daemon starts">' \
           "and on events</span>" in text


@pytest.mark.slow
async def test_the_api_and_the_pages_say_it_too(tmp_path: Path) -> None:
    from tests.test_http import client, open_daemon

    async with open_daemon(tmp_path, jobs=JOBS) as daemon, client(daemon) as http:
        job = (await http.get("/api/v1/jobs/watcher")).json()
        assert (job["next_fire_time"], job["next_fire_note"]) == (None, EVENTS)
        jobs = {j["name"]: j for j in (await http.get("/api/v1/jobs")).json()["jobs"]}
        assert jobs["extract"]["next_fire_note"] == \
            "no more fires: its active window ended at 2026-06-30"
        assert jobs["mixed"]["next_fire_note"] == \
            "also fires on events: each time a daemon starts"
        assert jobs["plain"]["next_fire_note"] is None
        index = (await http.get("/")).text
        assert f'<span class="muted" title="{EVENTS}">on events</span>' in index
        watcher = (await http.get("/jobs/watcher")).text
        assert f'<p class="pad muted next-note" style="margin: 0">F{EVENTS[1:]}.</p>' in watcher
        assert 'class="fires"' not in watcher  # no empty list of times
        extract = (await http.get("/jobs/extract")).text
        assert "No more fires: its active window ended at 2026-06-30." in extract
