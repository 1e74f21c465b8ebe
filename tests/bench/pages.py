"""The status pages with a big history (issue 15): each page's server time with 1,000 jobs and
100,000 runs in the store.

The store is seeded through the ``Store`` itself (the same events a daemon records): 1,000
generated job files, 100 runs each over the last 80 days (most succeeded, some failed, a few
cancelled, skipped or interrupted), three steps a run. One recent run of one job gets real
log files (coloured output, a step retried twice) so its page does all of its work. Then a
real ``pipeline serve`` serves them, and each page is asked for again and again over HTTP,
one request at a time; the figure is the server's own time for the answer (the
``Server-Timing`` header: from the route's start to its rendered body), the client's whole
round trip is in the details. Jobs are scheduled for New Year's midnight, so none fires while
measured.
"""

from __future__ import annotations

import random
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline.events import (
    Event,
    RunFinished,
    RunQueued,
    RunSkipped,
    RunStarted,
    StepFinished,
    StepRetrying,
    StepStarted,
)
from pipeline.model import RunStatus, StepStatus, Trigger
from pipeline.statedir import log_relpath, new_run_id
from pipeline.store.sqlite import SqliteStore
from tests.bench.gen_jobs import write_jobs
from tests.bench.harness import Context, Row, Stats, cpu_seconds, percentile, say, wait_until
from tests.bench.peers import free_port
from tests.bench.serve import NEVER_FIRES, _answers, open_daemon

JOBS = 1000
RUNS_PER_JOB = 100
TARGET_MS = 50.0
SAMPLE_JOB = "job-00500"
STEPS = ("prepare", "work_0", "work_1")
# (status, share of runs), the rest succeeded
OUTCOMES = ((RunStatus.FAILED, 0.05), (RunStatus.CANCELLED, 0.01), (RunStatus.SKIPPED, 0.01),
            (RunStatus.INTERRUPTED, 0.005))


def _outcome(rng: random.Random) -> RunStatus:
    draw = rng.random()
    for status, share in OUTCOMES:
        if draw < share:
            return status
        draw -= share
    return RunStatus.SUCCEEDED


def seed(state: Path, now: datetime, jobs: int = JOBS, per_job: int = RUNS_PER_JOB) -> int:
    """``jobs`` × ``per_job`` finished runs, one every 0.8 days per job; how many the store
    holds then."""
    rng = random.Random(15)
    store = SqliteStore.open(state)
    try:
        for first in range(0, jobs, 50):
            events: list[Event] = []
            for index in range(first, min(first + 50, jobs)):
                name = f"job-{index:05d}"
                minute = rng.randrange(24 * 60)
                for back in range(per_job, 0, -1):
                    # Within the last 80 days: the daemon's retention (90 days by default)
                    # must not be deleting runs while the pages are measured.
                    fire = now.replace(second=0, microsecond=0) - timedelta(
                        days=back * 0.8, minutes=minute)
                    run_id = new_run_id(fire)
                    status = _outcome(rng)
                    if status is RunStatus.SKIPPED:
                        events.append(RunSkipped(run_id, name, Trigger.SCHEDULE, fire, fire,
                                                 "overlap"))
                        continue
                    events += [RunQueued(run_id, name, Trigger.SCHEDULE, fire, fire_time=fire),
                               RunStarted(run_id, fire + timedelta(milliseconds=3))]
                    at = fire + timedelta(milliseconds=4)
                    for number, step in enumerate(STEPS):
                        took = timedelta(seconds=rng.uniform(0.5, 30))
                        bad = status is not RunStatus.SUCCEEDED and number == len(STEPS) - 1
                        events += [StepStarted(run_id, step, 1, at, ""),
                                   StepFinished(run_id, step, StepStatus.FAILED if bad
                                                else StepStatus.SUCCEEDED, at + took, attempt=1,
                                                exit_code=1 if bad else 0, no_log=True)]
                        at += took
                    events.append(RunFinished(run_id, status, at, reason=None if status is
                                              RunStatus.SUCCEEDED else "step failed: work_1"))
            refused = store.record(events)
            if refused:
                raise ValueError(f"the store refused {len(refused)} seeded runs")
        return store.count_runs()
    finally:
        store.close()


def sample_run(state: Path, now: datetime) -> str:
    """A run of ``SAMPLE_JOB`` an hour ago with real logs: ~40 KiB of coloured output a step,
    its second step retried twice (attempt markers with their times), its last step failed
    (the run people open most: its failed step's log opens with the page)."""
    run_id = new_run_id(now - timedelta(hours=1))
    start = now - timedelta(hours=1)
    events: list[Event] = [RunQueued(run_id, SAMPLE_JOB, Trigger.SCHEDULE, start,
                                     fire_time=start),
                           RunStarted(run_id, start + timedelta(milliseconds=5))]
    at = start + timedelta(milliseconds=6)
    for step in STEPS:
        relpath = log_relpath(SAMPLE_JOB, run_id, step)
        path = state / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"\x1b[32m✔\x1b[0m {step}: processed batch {i} of 800, "
                 f"\x1b[1m{i * 37 % 1000}\x1b[0m rows" for i in range(800)]
        events.append(StepStarted(run_id, step, 1, at, relpath))
        attempt = 1
        if step == "work_0":
            for failed in (1, 2):
                lines += [f"\x1b[31merror:\x1b[0m connection reset (attempt {failed})",
                          "[pipeline] exit status 7; retrying in 10s"]
                at += timedelta(seconds=20)
                events.append(StepRetrying(run_id, step, failed, 10.0, "exit status 7"))
                at += timedelta(seconds=10)
                attempt = failed + 1
                lines.append(f"[pipeline] attempt {attempt} of 3 at "
                             f"{at.isoformat(timespec='milliseconds')}")
        last = step == STEPS[-1]
        if last:
            lines.append("\x1b[31merror:\x1b[0m the target refused the batch")
        path.write_text("\n".join(lines) + "\n")
        at += timedelta(seconds=25)
        events.append(StepFinished(run_id, step, StepStatus.FAILED if last
                                   else StepStatus.SUCCEEDED, at, attempt=attempt,
                                   exit_code=1 if last else 0))
    events.append(RunFinished(run_id, RunStatus.FAILED, at, reason="step failed: work_1"))
    store = SqliteStore.open(state)
    try:
        store.record(events)
    finally:
        store.close()
    return run_id


def _settle(pid: int, *, quiet: float = 5.0, timeout: float = 120.0) -> float:
    """Wait until the daemon is done starting (it reads each job's git version in the
    background): below ``quiet`` % of a core for a whole second. Seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before, at = cpu_seconds(pid), time.monotonic()
        time.sleep(1.0)
        if 100 * (cpu_seconds(pid) - before) / (time.monotonic() - at) < quiet:
            break
    return time.monotonic() - started


def _server_ms(url: str) -> tuple[float, float]:
    """(the server's time, the whole round trip) of one GET, in ms."""
    started = time.perf_counter()
    # As a browser asks: the page comes gzipped (packing it is part of the server's time).
    asking = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(asking, timeout=30) as answer:
        answer.read()
        timing = answer.headers.get("Server-Timing", "")
    took = (time.perf_counter() - started) * 1000
    server = float(timing.partition("dur=")[2] or "nan")
    return server, took


def run(ctx: Context) -> list[Row]:
    say(f"bench: status pages over {JOBS:,} jobs and {JOBS * RUNS_PER_JOB:,} runs")
    work = ctx.tmp / "pages"
    jobs_dir, state = work / "jobs", work / "state"
    write_jobs(jobs_dir, JOBS, schedule=NEVER_FIRES)
    now = datetime.now(UTC)
    started = time.monotonic()
    written = seed(state, now)
    run_id = sample_run(state, now)
    seeded = time.monotonic() - started
    ctx.command(f"python: tests.bench.pages.seed($BENCH_TMP/pages/state)  # {written:,} runs")
    pages = {
        "index": "/",
        "index, runs failed": "/?status=failed",
        "index, runs interrupted (0.5 %)": "/?status=interrupted",
        "index, name filter": "/?q=job-0042",
        "job": f"/jobs/{SAMPLE_JOB}",
        "run (3 logs of 40 KiB, a retried step, the last failed)": f"/runs/{run_id}",
        "run, live update": f"/runs/{run_id}?live=1",
        "log lines": f"/runs/{run_id}/log/work_0?offset=0",
    }
    listen = f"127.0.0.1:{free_port()}"
    base = f"http://{listen}"
    reps = ctx.reps(40, 10)
    server: dict[str, list[float]] = {name: [] for name in pages}
    trip: dict[str, list[float]] = {name: [] for name in pages}
    cold: dict[str, float] = {}
    with open_daemon(ctx, jobs_dir, state, "pages", listen) as daemon:
        wait_until(lambda: _answers(f"{base}/healthz"), timeout=60, what="the HTTP API")
        settled = _settle(daemon.pid)
        for name, path in pages.items():
            cold[name] = _server_ms(base + path)[0]
        for _ in range(reps):  # interleaved, so a change in load touches every page alike
            for name, path in pages.items():
                ms, whole = _server_ms(base + path)
                server[name].append(ms)
                trip[name].append(whole)
    rows = []
    for name in pages:
        p95 = percentile(server[name], 0.95)
        rows.append(Row(f"page {name}: server time", "ms", Stats(tuple(server[name])),
                        target=f"≤ {TARGET_MS:g} ms (p95)", met=p95 <= TARGET_MS,
                        note=f"p95 {p95:.1f} ms"))
    ctx.details.append(
        f"**Status pages** — {written:,} runs of {JOBS:,} jobs seeded through the store in "
        f"{seeded:.0f} s; once the daemon had settled ({settled:.0f} s after it answered), "
        f"each page asked for {reps} times, one request at a time, over "
        "HTTP, gzip accepted as browsers do; the figure is the answer's `Server-Timing` "
        "(the route's own time, store reads, rendering and packing included). p95 / first "
        "request after start (lists not yet built) / median round trip: " + "; ".join(
            f"{name} {percentile(server[name], 0.95):.1f} / {cold[name]:.1f} / "
            f"{sorted(trip[name])[len(trip[name]) // 2]:.1f} ms" for name in pages) + ".")
    for name, path in pages.items():
        ctx.command(f"curl -s -H 'Accept-Encoding: gzip' -o /dev/null -D - "
                    f"'{base}{path}'  # {name}".replace(listen, "127.0.0.1:PORT")
                    .replace(run_id, "RUN_ID"))
    return rows
