"""Pool hand-over (issue 13 §4): from a slot freed to the next waiter's step started.

A pool of one slot (``pools: {handover: 1}`` in the settings file) and N jobs due at one
instant, each with one short ``run:`` step that writes its own clock as it starts and just
before it ends::

    echo "start $(date +%s.%N) $PIPELINE_JOB" >> MARKS; sleep 0.05;
    echo "end $(date +%s.%N) $PIPELINE_JOB" >> MARKS

With one slot the steps run one after another, so each hand-over is a step's start mark minus
the end mark of the step before it (a start while another step holds the slot would be a
broken pool, and fails the benchmark). Measured under a real ``pipeline serve``, twice: the
pool on the step (the slot is given back when the step ends) and on the job (the whole run
holds it, and gives it back when the run ends). The baseline, in the same invocation:
``bare_pool.py``, a ``trio.Semaphore(1)`` handing the same commands from process to process
with ``trio.run_process``. Samples are each repetition's p50 and p99 of its N − 1 hand-overs.
"""

from __future__ import annotations

import math
import shlex
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tests.bench import serve
from tests.bench.harness import (
    BENCH,
    PYTHON,
    BenchError,
    Context,
    Row,
    Stats,
    cpu_seconds,
    percentile,
    run_timed,
    say,
    sleep_until_epoch,
    wait_until,
)
from tests.bench.steps import count_lines, fmt_ms, yaml_quoted

JOBS = 100
HOLD = 0.05  # s each step holds the slot
MARGIN = 8.0  # s from writing the jobs to their instant (the daemon's start-up)
PLACES = {"step": "pool on the step", "job": "pool on the job (the run holds it)"}


def command(marks: Path) -> str:
    """What every step runs: its own clock as it starts and as it is about to end."""
    out = shlex.quote(str(marks))
    return (f'echo "start $(date +%s.%N) $PIPELINE_JOB" >> {out}; sleep {HOLD:g}; '
            f'echo "end $(date +%s.%N) $PIPELINE_JOB" >> {out}')


def handovers(marks: Path, jobs: int) -> list[float]:
    """Milliseconds from each step's end mark to the next step's start mark. Raises
    BenchError when a step started while another held the one slot, or marks are missing."""
    events = []
    for line in marks.read_text().splitlines():
        kind, clock, job = line.split()
        events.append((float(clock), kind, job))
    events.sort()
    if len(events) != 2 * jobs:
        raise BenchError(f"{len(events)} marks in {marks}, not {2 * jobs}")
    gaps: list[float] = []
    holder: str | None = None
    ended: float | None = None
    for clock, kind, job in events:
        if kind == "start":
            if holder is not None:
                raise BenchError(f"{job} started while {holder} held the pool's one slot")
            holder = job
            if ended is not None:
                gaps.append((clock - ended) * 1000)
        else:
            if holder != job:
                raise BenchError(f"{job} ended without holding the slot ({holder} held it)")
            holder, ended = None, clock
    return gaps


def write_jobs(directory: Path, jobs: int, marks: Path, instant: str, place: str) -> None:
    directory.mkdir(parents=True)
    (directory / "settings.yaml").write_text("kind: settings\npools: {handover: 1}\n")
    run = yaml_quoted(command(marks))
    for index in range(jobs):
        (directory / f"hand-{index:04d}.yaml").write_text(
            f"name: hand-{index:04d}\n"
            "description: holds the pool's one slot for a moment, for benchmarks\n"
            f"schedule: {{at: '{instant}'}}\n"
            + ("pool: handover\n" if place == "job" else "")
            + "steps:\n"
            "  - id: hold\n"
            f"    run: {run}\n"
            + ("    pool: handover\n" if place == "step" else ""))


@dataclass(frozen=True)
class Handed:
    """One repetition: the hand-overs (ms), the whole time (s), and the CPU of the process
    that handed the slot over (s; pipeline's daemon, not its steps)."""

    gaps: list[float]
    seconds: float
    cpu: float | None


def pipeline_once(ctx: Context, jobs: int, place: str, rep: int) -> Handed:
    work = ctx.tmp / f"pools-{place}-rep{rep}"
    marks = work / "marks"
    at = math.ceil(time.time() + MARGIN)
    write_jobs(work / "jobs", jobs, marks, datetime.fromtimestamp(at, UTC).isoformat(), place)
    with serve.open_daemon(ctx, work / "jobs", work / "state", f"pools-{place}") as daemon:
        if time.time() > at - 1:
            raise BenchError(f"pipeline serve took more than {MARGIN:g} s to start with "
                             f"{jobs} jobs")
        sleep_until_epoch(at - 0.5)
        before, began = cpu_seconds(daemon.pid), time.monotonic()
        wait_until(lambda: count_lines(marks) >= 2 * jobs, timeout=60 + 3 * jobs,
                   what=f"{jobs} steps through a pool of one slot ({place})", proc=daemon)
        took, cpu = time.monotonic() - began, cpu_seconds(daemon.pid) - before
    return Handed(handovers(marks, jobs), took, cpu)


def bare_once(ctx: Context, jobs: int, rep: int) -> Handed:
    work = ctx.tmp / f"pools-bare-rep{rep}"
    work.mkdir(parents=True)
    marks = work / "marks"
    argv = [PYTHON, BENCH / "bare_pool.py", "--jobs", str(jobs), "--command", command(marks)]
    ctx.command(ctx.show(argv))
    timed = run_timed(ctx.children, argv, log=ctx.log("pools-bare"))
    return Handed(handovers(marks, jobs), timed.seconds, None)


def run(ctx: Context) -> list[Row]:
    jobs, reps = ctx.reps(JOBS, 20), ctx.reps(3, 1)
    say(f"bench: pool hand-over, {jobs} steps through one slot: a bare trio.Semaphore, "
        f"pipeline serve with the pool on the step and on the job ({reps} each)")
    found: dict[str, list[Handed]] = {"bare": [], "step": [], "job": []}
    for rep in range(reps):  # interleaved, so that a change in load touches every contender
        found["bare"].append(bare_once(ctx, jobs, rep))
        for place in PLACES:
            found[place].append(pipeline_once(ctx, jobs, place, rep))
    label = f"pool hand-over, 1 slot, {jobs} steps"
    rows: list[Row] = []
    for name, fraction in (("p50", 0.5), ("p99", 0.99)):
        base = Stats(tuple(percentile(h.gaps, fraction) for h in found["bare"]))
        rows.append(Row(f"{label}, {name}: bare trio.Semaphore", "ms", base,
                        target="baseline"))
        for place, words in PLACES.items():
            rows.append(Row(f"{label}, {name}: pipeline serve, {words}", "ms",
                            Stats(tuple(percentile(h.gaps, fraction) for h in found[place])),
                            "bare trio.Semaphore", base, "(reference)"))
    for contender, words in (("bare", "bare trio.Semaphore"),
                             *((p, f"pipeline serve, {w}") for p, w in PLACES.items())):
        runs = found[contender]
        gaps = [g for h in runs for g in h.gaps]
        cpu = ("" if runs[0].cpu is None else
               f"; the daemon's CPU {1000 * statistics.median(h.cpu or 0 for h in runs) / jobs:.1f}"
               " ms a step")
        ctx.details.append(
            f"**Pool hand-over, {words}** — {len(gaps)} hand-overs in {len(runs)} "
            f"repetition(s): p50 {fmt_ms(percentile(gaps, 0.5))}, p99 "
            f"{fmt_ms(percentile(gaps, 0.99))}, max {fmt_ms(max(gaps))}; all {jobs} steps "
            f"in {statistics.median(h.seconds for h in runs):.2f} s (median){cpu}.")
    ctx.details.append(
        f"**Pool hand-over** — each step holds the slot for `sleep {HOLD:g}` between its two "
        "marks; a hand-over is the next step's start mark minus the previous step's end mark "
        "(both `date +%s.%N` in the step), so it counts the step's exit, its reaping, the "
        "slot's release and grant, and the next process's start, for every contender alike. "
        "Every run kept the pool to one step at a time.")
    return rows
