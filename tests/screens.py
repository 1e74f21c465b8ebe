"""The status pages with real runs behind them: the scenario the browser test checks, and the
screenshots in docs/screenshots/ (``python -m tests.screens docs/screenshots``).

A real daemon (``tests.test_http.open_daemon``) loads a handful of job files and runs them for
real: a nightly backup whose last run retried a step and fanned out over three regions, a
failing job, a long report still running while the pictures are taken, a job whose file broke
after it loaded (its last good version runs) and a file that never was valid. The backup's
earlier nights are recorded history (events written to the store before the daemon starts),
so its strip of runs and duration chart have weeks to show.
"""

from __future__ import annotations

import random
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import trio

from pipeline.daemon import Daemon
from pipeline.events import (
    Event,
    RunFinished,
    RunQueued,
    RunStarted,
    StepFinished,
    StepStarted,
    WatermarkMoved,
)
from pipeline.model import RunStatus, StepStatus, Trigger
from pipeline.statedir import new_run_id
from pipeline.store.sqlite import SqliteStore
from tests.browser import Tab
from tests.test_http import first_output, open_daemon, wait_run

BACKUP = r"""
name: nightly-backup
description: Dump, compress and ship the database
schedule:
  cron: "30 2 * * *"
  timezone: Europe/Berlin
retries: {limit: 2, delay: 1s}
deadline: 2h
params:
  keep_days: {type: integer, default: 14, description: days of dumps to keep}
  target: {type: string, enum: [prod, staging], default: prod}
  verify: {type: boolean, default: true, description: read the dump back}
steps:
  - id: dump
    run: |
      printf '\033[1mpg_dump\033[0m mydb (%s)\n' "${{ params.target }}"
      for table in users orders invoices events; do
        sleep 0.15; printf '  \033[32m✔\033[0m %-10s %6d rows\n' "$table" $((RANDOM * 3))
      done
  - id: compress
    needs: [dump]
    run: sleep 0.4; echo "db.sql.gz  48.2 MiB (ratio 5.3)"
  - id: upload
    needs: [compress]
    for_each: [eu-west, us-east, ap-south]
    max_parallel: 2
    run: sleep 0.${{ item | length }}; echo "uploaded to s3://backups-${{ item }}/"
  - id: verify
    needs: [compress]
    if: ${{ params.verify }}
    run: sleep 0.3; printf '\033[33mwarning:\033[0m 2 tables without primary key\n'
  - id: ping
    needs: [upload, verify]
    run: |
      if [ "$PIPELINE_ATTEMPT" -lt 2 ]; then
        printf '\033[31merror:\033[0m status.internal: connection refused\n' >&2; exit 7
      fi
      echo "pinged status.internal"
  - id: prune
    needs: [ping]
    run: echo "removed 3 dumps older than ${{ params.keep_days }} days"
on_failure:
  - {id: alert, run: 'echo "backup ${{ run.id }} failed"'}
"""

REPORT = """
name: weekly-report
description: Crunch the week's numbers (slow)
schedule: {cron: "0 7 * * MON", timezone: Europe/Berlin}
steps:
  - id: extract
    run: for i in $(seq 1 3); do echo "extract batch $i"; sleep 0.2; done
  - id: crunch
    needs: [extract]
    run: for i in $(seq 1 200); do echo "crunching chunk $i of 200"; sleep 0.3; done
  - id: publish
    needs: [crunch]
    run: echo published
"""

FAILS = """
name: sync-crm
description: Pull contacts from the CRM
schedule: every 15m
steps:
  - id: fetch
    run: 'echo "GET /contacts"; printf "\\033[31mHTTP 503\\033[0m Service Unavailable\\n"; exit 3'
  - id: merge
    needs: [fetch]
    run: echo merged
"""

CLEANUP = """
name: tmp-cleanup
description: Remove old files from /tmp
schedule: "@daily"
steps:
  - id: sweep
    run: echo swept
"""

# What the cleanup file becomes once it has loaded: its last good version keeps running.
CLEANUP_BROKEN = """name: tmp-cleanup
description: Remove old files from /tmp
schedule: "@daily"
steps:
  - id: sweep
    run: echo swept
    timeout: soon
"""

BROKEN = ("name: half-done\nschedule: every 1 hour\nsteps:\n  - id: a\n    run: echo hi\n"
          "    needs: [b]\n")

JOBS = {"backup.yaml": BACKUP, "report.yaml": REPORT, "sync.yaml": FAILS,
        "cleanup.yaml": CLEANUP, "half-done.yaml": BROKEN}


def seed_history(state_dir: Path, job: str, now: datetime, nights: int = 49) -> str:
    """``nights`` earlier scheduled runs of ``job`` (one a night at 02:30 Berlin time), most
    succeeded, a few failed, with the steps they ran; the last failed one missed its deadline
    (2 h), judged as the daemon judges one. Returns that late run's id."""
    rng = random.Random(7)
    events: list[Event] = []
    late: tuple[str, datetime] | None = None
    steps = ("dump", "compress", "upload", "verify", "ping", "prune")
    for night in range(nights, 0, -1):
        fire = (now - timedelta(days=night)).replace(hour=0, minute=30, second=0,
                                                     microsecond=0)
        run_id = new_run_id(fire)
        took = rng.uniform(35, 70) + (40 if night % 9 == 0 else 0)
        failed = night in (31, 30, 12)
        if night == 12:
            late = run_id, fire
        events += [RunQueued(run_id, job, Trigger.SCHEDULE, fire, fire_time=fire),
                   RunStarted(run_id, fire + timedelta(milliseconds=4))]
        at = fire + timedelta(milliseconds=5)
        for index, step in enumerate(steps):
            length = took / len(steps)
            bad = failed and index == 4
            events += [StepStarted(run_id, step, 1, at, ""),
                       StepFinished(run_id, step, StepStatus.FAILED if bad else
                                    StepStatus.SUCCEEDED, at + timedelta(seconds=length),
                                    attempt=1, exit_code=7 if bad else 0, no_log=True)]
            at += timedelta(seconds=length)
            if bad:
                break
        events.append(RunFinished(run_id, RunStatus.FAILED if failed else RunStatus.SUCCEEDED,
                                  at, reason="step failed: ping" if failed else None))
    events.append(WatermarkMoved(job, now))
    assert late is not None
    store = SqliteStore.open(state_dir)
    try:
        store.record(events)
        store.miss_deadline(job, late[1], deadline=late[1] + timedelta(hours=2), node=None)
    finally:
        store.close()
    return late[0]


@dataclass
class Staged:
    daemon: Daemon
    base: str
    backup: str  # the backup's run: retried, fanned out, succeeded
    failed: str  # a failed run of sync-crm
    live: str  # the report, still running
    late: str  # a backup of weeks ago that failed and missed its deadline
    rerun: str  # the failed sync-crm's failed steps run again (failed again)


@asynccontextmanager
async def staged(root: Path, *, token: str | None = None) -> AsyncIterator[Staged]:
    """The daemon with the scenario's runs made; the live run is running throughout."""
    late = seed_history(root / "state", "nightly-backup", datetime.now(UTC))
    async with open_daemon(root, jobs=JOBS, token=token) as daemon:
        assert daemon.listen is not None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(base_url=daemon.listen, timeout=20,
                                     headers=headers) as http:
            # The cleanup job's file breaks after it loaded, as an edit would break it.
            (root / "jobs.d" / "cleanup.yaml").write_text(CLEANUP_BROKEN)
            await trio.to_thread.run_sync(daemon.catalog.scan)
            await daemon.scheduler.load(daemon.catalog.jobs)
            for _ in range(2):
                await wait_run(http, (await http.post("/api/v1/jobs/tmp-cleanup/runs")
                                      ).json()["run_id"])
            backup = (await http.post("/api/v1/jobs/nightly-backup/runs")).json()["run_id"]
            failed = (await http.post("/api/v1/jobs/sync-crm/runs")).json()["run_id"]
            await wait_run(http, failed)
            rerun = (await http.post(f"/api/v1/runs/{failed}/rerun", json={"failed": True})
                     ).json()["run_id"]
            await wait_run(http, rerun)
            assert (await wait_run(http, backup))["status"] == "succeeded"
            live = (await http.post("/api/v1/jobs/weekly-report/runs")).json()["run_id"]
            await first_output(daemon, f"/api/v1/runs/{live}/steps/crunch/log")
        yield Staged(daemon, daemon.listen, backup, failed, live, late, rerun)


SIZES = {"desktop": (1280, 900, False), "phone": (390, 844, True)}


def pages(stage: Staged) -> dict[str, str]:
    return {"index": "/", "job": "/jobs/nightly-backup", "run": f"/runs/{stage.backup}",
            "run-live": f"/runs/{stage.live}", "run-failed": f"/runs/{stage.failed}",
            "run-late": f"/runs/{stage.late}", "run-rerun": f"/runs/{stage.rerun}"}


async def shoot(tab: Tab, stage: Staged, out: Path,
                names: tuple[str, ...] = ("index", "job", "run")) -> list[Path]:
    """Screenshots of ``names`` at each width, light and dark: ``out/NAME-SIZE-SCHEME.png``."""
    taken = []
    for size, (width, height, mobile) in SIZES.items():
        await tab.size(width, height, mobile=mobile)
        for dark in (False, True):
            await tab.scheme(dark)
            for name in names:
                await tab.goto(stage.base + pages(stage)[name], settle=0.3)
                path = out / f"{name}-{size}-{'dark' if dark else 'light'}.png"
                # The whole page, down to where the index's list of runs gets repetitive.
                await tab.screenshot(path, max_height=1800)
                taken.append(path)
    return taken


async def main(out: Path) -> None:
    import tempfile

    from tests.browser import open_browser

    await trio.Path(out).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pipeline-screens-") as tmp:
        async with staged(Path(tmp)) as stage, open_browser(Path(tmp) / "profile") as tab:
            for path in await shoot(tab, stage, out):
                print(path)
            stage.daemon.worker.kill_all()


if __name__ == "__main__":
    from loguru import logger

    logger.remove()
    trio.run(main, Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots"))
