"""Jobs as the API and `pipeline list` show them: one row builder, the same row for the same
facts."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline import jobset, triggers
from pipeline.cli.jobs import list_rows
from pipeline.model import RunStatus, Trigger
from pipeline.policy import circuit_open
from pipeline.runrecords import RunRecord
from pipeline.store.records import JobState
from pipeline.views import CatalogFiles, job_views

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def test_list_shows_each_job_as_the_api_does(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.d"
    write(jobs / "nightly.yaml", """
        description: the nightly backup
        schedule: {cron: "30 2 * * *", timezone: Europe/Berlin}
        concurrency: queue
        circuit_breaker: {after: 2, cooldown: 1h}
        params:
          keep: {type: integer, default: 3}
        steps:
          - {id: a, run: "true"}
    """)
    write(jobs / "manual.yaml", "steps:\n  - {id: a, run: 'true'}\n")
    write(jobs / "broken.yaml", "steps: [\n")
    loaded = jobset.load_jobs([jobs], now=NOW)
    states = {
        "nightly": JobState("nightly", watermark=NOW + timedelta(days=3), failures=2,
                            circuit_opened_at=NOW - timedelta(minutes=5)),
        "manual": JobState("manual", paused_at=NOW, paused_by="ops", paused_reason="disk"),
    }
    last = {"nightly": RunRecord("20260302T110000-00000001", "nightly", RunStatus.FAILED,
                                 Trigger.SCHEDULE, started_at=NOW - timedelta(hours=1),
                                 finished_at=NOW - timedelta(minutes=59))}
    active = [RunRecord("20260302T115900-00000002", "nightly", RunStatus.QUEUED, Trigger.API),
              RunRecord("20260302T115900-00000003", "manual", RunStatus.RUNNING, Trigger.API)]

    listed = list_rows(loaded, None, last=last, active=active, states=states, now=NOW)

    # What the daemon would know of the same jobs: their next fire, their circuit, pauses.
    nightly = loaded.jobs["nightly"]
    fire = triggers.next_fires(nightly.schedules, NOW + timedelta(days=3), 1)[0]
    live = {"nightly": (fire, circuit_open(nightly.circuit_breaker, 2, NOW - timedelta(minutes=5),
                                           NOW)),
            "manual": (None, False)}
    api = job_views(CatalogFiles(loaded.jobs, loaded.problems, loaded.files, {}), live, last,
                    active, {"manual": (NOW, "ops", "disk")}, now=NOW)
    assert [row.pop("daemon") for row in listed] == [None, None, None]  # no daemon runs
    # Of a file no version of which ever loaded, list says the circuit is not known; the API
    # says `closed`, as the contract wants one of the two.
    assert [(row["file"], row["circuit"]) for row in api if not row["valid"]] == [
        (str(jobs / "broken.yaml"), "closed")]
    assert listed == [row | {"circuit": None} if not row["valid"] else row for row in api]
    by_name = {row["name"]: row for row in listed}
    assert by_name["nightly"]["circuit"] == "open" and by_name["nightly"]["queued_runs"] == 1
    assert by_name["nightly"]["next_fire_time"] == "2026-03-06T02:30:00+01:00"
    assert by_name["manual"]["paused"] and by_name["manual"]["active_runs"] == 1
    assert by_name[None]["valid"] is False and by_name[None]["circuit"] is None


def test_a_file_that_no_longer_loads_shows_the_version_the_daemon_runs(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.d"
    write(jobs / "b.yaml", "schedule: every 1s\nsteps: [\n")
    loaded = jobset.load_jobs([jobs], now=NOW)
    file = str(jobs / "b.yaml")
    daemon = {"jobs": {"b": {"file": file, "path": file, "stale": True, "enabled": True,
                             "schedule": "every 1s", "sha256": "ab" * 32,
                             "circuit_breaker": {"after": 1, "cooldown": 60}}}}
    states = {"b": JobState("b", failures=1, circuit_opened_at=NOW - timedelta(seconds=30))}
    [row] = list_rows(loaded, daemon, last={}, active=[], states=states, now=NOW)
    assert (row["name"], row["valid"], row["stale"], row["daemon"]) == (
        "b", False, True, "running last good version")
    assert (row["enabled"], row["schedule"], row["version"], row["circuit"]) == (
        True, "every 1s", "ab" * 32, "open")
