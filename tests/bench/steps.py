"""Real steps (issue 14): fires whose step is a process, as users' steps are.

Every contender runs the same command for each fire, as ``bash -e -o pipefail -c`` (what a
``run:`` step is)::

    echo "$(date +%s.%N) $PIPELINE_FIRE_TIME" >> MARKS

so the lateness of a fire is measured by the step itself: its own clock when it ran, minus the
instant it was due. One MARKS file per contender and repetition; nothing is read from the
contenders' own records except, for pipeline, the run's start as the daemon recorded it
(``runs.started_at``, the "daemon record") and the step's (``steps.started_at``).

    real    steady load: 100 jobs every second (``every: 1s``), a window of whole seconds after
            a warm-up, cut into slices whose p50 and p99 are the samples (as the no-process
            benchmark in ``serve``). Contenders: ``pipeline serve``, a bare trio loop spawning
            the same commands at the same instants (``bare_loop.py --command``), APScheduler 3
            running them with ``subprocess.run`` in its thread pool (``aps_loop.py
            --command``), and cron(8) firing the same 100 commands on a minute (``cron``),
            once per repetition.
    burst   1,000 jobs due at one instant (pipeline: ``at:``; cron: one minute): the time from
            the instant to the last step's start, and the p50/p99, per repetition. Contenders:
            ``pipeline serve``, the bare spawn loop (``bare_loop.py --command --at``), cron.
    cpu     the daemon's CPU per fire (utime + stime from /proc/PID/stat over the window, so
            the steps' own CPU is not counted): steps that start no process (the ``firing``
            benchmark's runs) and ``run:`` steps, with 100 jobs every second and 1,000 jobs
            (every second without a process; at one instant with one), each against the bare
            trio loop doing the same. It reuses what ``firing``, ``real`` and ``burst``
            measured in the same invocation, and measures what they did not.
"""

from __future__ import annotations

import math
import shlex
import sqlite3
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tests.bench import cron as crond
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
    say,
    sleep_until_epoch,
    wait_until,
)

STEP_FACTOR = 1.25  # step start p99 (steady) and last start (burst) within this × bare loop
RECORD_TARGET = 5.0  # ms: the daemon's record of a run's start, p99, 100 jobs every second
CPU_TARGET_MS = 0.25  # ms per fire with 1,000 no-process jobs a second: 25 % of a core
BURST_MARGIN = 10.0  # s from writing the burst's jobs to their instant (start-up of the daemon)
LATE_GRACE = 3.0  # s after a window or an instant before its marks are read


def command(marks: Path) -> str:
    """The step every contender runs: append its own clock and the fire time to ``marks``."""
    return f'echo "$(date +%s.%N) $PIPELINE_FIRE_TIME" >> {shlex.quote(str(marks))}'


def yaml_quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def write_step_jobs(directory: Path, n: int, schedule: str, marks: Path) -> None:
    """``n`` job files, each with one ``run:`` step: the command above."""
    directory.mkdir(parents=True, exist_ok=True)
    run = yaml_quoted(command(marks))
    for index in range(n):
        (directory / f"step-{index:04d}.yaml").write_text(
            f"name: step-{index:04d}\n"
            "description: one run step that stamps its own start, for benchmarks\n"
            f"schedule: {schedule}\n"
            "steps:\n"
            "  - id: stamp\n"
            f"    run: {run}\n")


def read_marks(path: Path) -> list[tuple[float, float]]:
    """(fire, started) epoch seconds for every line a step appended to ``path``."""
    if not path.exists():
        return []
    marks = []
    for line in path.read_text(errors="replace").splitlines():
        clock, _, fire = line.partition(" ")
        try:
            marks.append((datetime.fromisoformat(fire.strip()).timestamp(), float(clock)))
        except ValueError:
            continue  # a line cut short by a killed step: it is counted as missing
    return marks


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(1 for _ in f)


def wait_for_marks(path: Path, count: int, *, deadline: float, what: str) -> None:
    """Wait until ``path`` holds ``count`` marks or the epoch second ``deadline`` passes; a
    short count is said, and shows in the figures as fires that never started."""
    try:
        wait_until(lambda: count_lines(path) >= count, timeout=max(0.0, deadline - time.time()),
                   what=what)
    except BenchError:
        say(f"bench: {what}: {count_lines(path)} of {count} steps started by the deadline")


def late_ms(marks: Sequence[tuple[float, float]]) -> list[float]:
    return [(started - fire) * 1000 for fire, started in marks]


def spread(values: Sequence[float]) -> str:
    if not values:
        return "no step started"
    return (f"p50 {fmt_ms(percentile(values, 0.5))}, p99 {fmt_ms(percentile(values, 0.99))}, "
            f"max {fmt_ms(max(values))}")


def fmt_ms(value: float) -> str:
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.1f} ms"


# -- steady load: N jobs every second --------------------------------------------------------


@dataclass(frozen=True)
class Steady:
    """One contender under steady load: per-slice p50 and p99 of the step's lateness (ms), the
    whole window's values, CPU per slice (% of a core), and fires that never started."""

    tool: str
    p50: tuple[float, ...]
    p99: tuple[float, ...]
    lateness: tuple[float, ...]
    cpu: tuple[float, ...]
    expected: int
    missing: int
    recorded: tuple[float, ...] = ()  # pipeline: runs.started_at − fire (ms), whole window
    recorded_p99: tuple[float, ...] = ()  # ... per slice
    stepped: tuple[float, ...] = ()  # pipeline: steps.started_at − fire (ms), whole window

    def line(self) -> str:
        started = self.expected - self.missing
        cpu = f"; its CPU {statistics.median(self.cpu):.1f} % of a core" if self.cpu else ""
        return (f"step start {spread(self.lateness)}; {started:,} of {self.expected:,} fires "
                f"started{cpu}")


def by_slice(marks: Sequence[tuple[float, float]], window: serve.Window,
             ) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Per-slice p50s and p99s (ms) of the marks for fires inside ``window``, and every
    lateness inside it. A slice without a start counts as infinitely late."""
    inside = [(f, s) for f, s in marks if window.start <= f < window.end]
    p50, p99 = [], []
    for start, end in window.slices():
        values = late_ms([(f, s) for f, s in inside if start <= f < end])
        p50.append(percentile(values, 0.5) if values else math.inf)
        p99.append(percentile(values, 0.99) if values else math.inf)
    return tuple(p50), tuple(p99), tuple(late_ms(inside))


def steady_window(ctx: Context, seconds: int | None = None) -> serve.Window:
    seconds = seconds or ctx.reps(30, 10)
    return serve.Window(math.floor(time.time()) + 4, seconds, min(seconds, ctx.reps(10, 5)))


def steady_script(ctx: Context, script: str, tool: str, jobs: int,
                  seconds: int | None = None) -> Steady:
    """``bare_loop.py`` or ``aps_loop.py`` spawning the command every second."""
    work = ctx.tmp / f"steady-{jobs}-{Path(script).stem}"
    work.mkdir(parents=True, exist_ok=True)
    marks = work / "marks"
    argv: list[str | Path] = [PYTHON, BENCH / script, "--jobs", str(jobs), "--out",
                              work / "dispatch.json", "--command", command(marks)]
    ctx.command(ctx.show(argv) + " &  # then SIGTERM")
    log = ctx.log(f"steady-{jobs}-{script}")
    with log.open("wb") as err:
        proc = ctx.children.start(argv, stdout=subprocess.PIPE, stderr=err)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise BenchError(f"{script} did not start: {log.read_text()[-2000:]}")
        window = steady_window(ctx, seconds)
        cpu, _ = serve.watch(proc.pid, window)
        sleep_until_epoch(window.end + LATE_GRACE)
    finally:
        ctx.children.end(proc, grace=serve.STOP_GRACE)
        assert proc.stdout is not None
        proc.stdout.close()
    p50, p99, lateness = by_slice(read_marks(marks), window)
    expected = jobs * window.seconds
    return Steady(tool, p50, p99, lateness, tuple(cpu), expected, expected - len(lateness))


def steady_pipeline(ctx: Context, jobs: int, seconds: int | None = None) -> Steady:
    work = ctx.tmp / f"steady-{jobs}-pipeline"
    marks = work / "marks"
    write_step_jobs(work / "jobs", jobs, "every 1s", marks)
    state = work / "state"
    with serve.open_daemon(ctx, work / "jobs", state, f"steady-{jobs}-pipeline") as daemon:
        window = steady_window(ctx, seconds)
        cpu, _ = serve.watch(daemon.pid, window)
        sleep_until_epoch(window.end + LATE_GRACE)
    p50, p99, lateness = by_slice(read_marks(marks), window)
    recorded, stepped, _ = serve.read_runs(state / "state.db", window)
    _, recorded_p99, recorded_all = by_slice(recorded, window)
    _, _, stepped_all = by_slice(stepped, window)
    expected = jobs * window.seconds
    return Steady("pipeline serve", p50, p99, lateness, tuple(cpu), expected,
                  expected - len(lateness), recorded_all, recorded_p99, stepped_all)


def cron_bursts(ctx: Context, jobs: int, reps: int, name: str) -> tuple[list[list[float]], str]:
    """cron firing ``jobs`` copies of the command on each of ``reps`` consecutive minutes:
    each burst's lateness (ms), or no bursts and why cron was not measured."""
    why = crond.unavailable()
    if why is not None:
        return [], why
    minutes = crond.next_minutes(reps)
    work = ctx.tmp / name
    work.mkdir(parents=True, exist_ok=True)
    bursts = [crond.Burst(m, jobs, command(work / f"marks-{i}"), work / f"marks-{i}")
              for i, m in enumerate(minutes)]
    say(f"bench: cron, {jobs:,} commands on each of {reps} minute(s) "
        f"(first in {minutes[0] - time.time():.0f} s)")
    try:
        with crond.open_cron(ctx, bursts, name):
            for burst in bursts:
                wait_for_marks(burst.out, jobs, deadline=burst.minute + 45,
                               what=f"cron, {jobs:,} commands on one minute")
    except crond.CronError as exc:
        return [], str(exc)
    found = []
    for burst in bursts:
        marks = [(f, s) for f, s in read_marks(burst.out) if f == burst.minute]
        found.append(late_ms(marks) + [math.inf] * (jobs - len(marks)))
    return found, ""


def real(ctx: Context, *, jobs: int = 100, seconds: int | None = None, aps: bool = True,
         cron: bool = True) -> list[Row]:
    """Steady load with real steps: pipeline against the bare spawn loop, APScheduler 3 and
    cron (a minute's burst of the same commands)."""
    window = seconds or ctx.reps(30, 10)
    say(f"bench: real steps, {jobs:,} jobs every second: bare trio loop, "
        + ("APScheduler 3, " if aps else "") + f"pipeline serve ({window} s each)"
        + (", then cron" if cron else ""))
    bare = ctx.once(f"steady-{jobs}-bare", lambda: steady_script(
        ctx, "bare_loop.py", "bare trio loop", jobs, seconds))
    peer = steady_script(ctx, "aps_loop.py", "APScheduler 3", jobs, seconds) if aps else None
    ours = ctx.once(f"steady-{jobs}-pipeline", lambda: steady_pipeline(ctx, jobs, seconds))
    bursts, why = cron_bursts(ctx, jobs, ctx.reps(3, 1), f"cron-{jobs}") if cron else ([], "")
    label = f"real steps, {jobs:,} jobs/s"
    rows: list[Row] = []
    for name, pick in (("p50", lambda s: s.p50), ("p99", lambda s: s.p99)):
        base = Stats(pick(bare))
        rows.append(Row(f"{label}, step start {name}: bare trio loop", "ms", base,
                        target="baseline"))
        if peer is not None:
            rows.append(Row(f"{label}, step start {name}: APScheduler 3", "ms",
                            Stats(pick(peer)), "bare trio loop", base, "(peer)"))
        mine = Stats(pick(ours))
        if name == "p99":
            rows.append(Row(f"{label}, step start p99: pipeline serve", "ms", mine,
                            "bare trio loop", base, f"≤ {STEP_FACTOR:g}× bare",
                            mine.median <= STEP_FACTOR * base.median and not ours.missing,
                            _missing(ours)))
        else:
            rows.append(Row(f"{label}, step start p50: pipeline serve", "ms", mine,
                            "bare trio loop", base, "(reference)"))
        if bursts:
            q = 0.5 if name == "p50" else 0.99
            rows.append(Row(f"{jobs:,} at one minute, step start {name}: cron", "ms",
                            Stats(tuple(percentile(b, q) for b in bursts)), "bare trio loop",
                            base, "(peer)"))
    record = Stats(ours.recorded_p99)
    rows.append(Row(f"{label}, daemon record p99 (runs.started_at): pipeline serve", "ms",
                    record, target=f"≤ {RECORD_TARGET:g} ms",
                    met=record.median <= RECORD_TARGET and not ours.missing,
                    note=_missing(ours)))
    rows.append(Row(f"daemon CPU, real steps, {jobs:,} jobs/s: pipeline serve", "%",
                    Stats(ours.cpu), "bare trio loop", Stats(bare.cpu), "(reference)"))
    for steady in (bare, peer, ours):
        if steady is not None:
            ctx.details.append(f"**Real steps, {jobs:,} jobs/s, {steady.tool}** — whole "
                               f"window: {steady.line()}.")
    ctx.details.append(
        f"**Real steps, {jobs:,} jobs/s, where pipeline's time goes** — cumulative from the "
        f"fire: the run's start as recorded {spread(ours.recorded)}; its step's start as "
        f"recorded {spread(ours.stepped)}; the step's own clock {spread(ours.lateness)}.")
    if bursts:
        pooled = [v for b in bursts for v in b]
        ctx.details.append(
            f"**{jobs:,} at one minute, cron** — {len(bursts)} minute(s), all commands: "
            f"{spread(pooled)}. cron wakes 1–2 s after the minute by design (it sleeps whole "
            "seconds to one second past it), then forks each job in turn; each opens a PAM "
            "session before its shell starts.")
    elif cron:
        ctx.details.append(f"**cron** — not measured: {why}.")
    return rows


def _missing(result: Steady) -> str:
    return (f"{result.missing:,} of {result.expected:,} fires never started"
            if result.missing else "")


# -- a burst: N jobs due at one instant -------------------------------------------------------


@dataclass(frozen=True)
class BurstResult:
    """One contender's bursts: per repetition, the p50, p99 and last start (s after the
    instant), the daemon's CPU per fire (ms), and the steps that never started."""

    tool: str
    p50: tuple[float, ...]
    p99: tuple[float, ...]
    last: tuple[float, ...]
    cpu_ms: tuple[float, ...]
    missing: int
    pooled: tuple[float, ...]  # every step's lateness (ms), all repetitions


def burst_figures(tool: str, runs: Sequence[Sequence[float]], jobs: int,
                  cpu_ms: Sequence[float] = ()) -> BurstResult:
    """From each repetition's lateness values (ms; inf for a step that never started)."""
    p50, p99, last = [], [], []
    missing = 0
    for values in runs:
        full = list(values) + [math.inf] * (jobs - len(values))
        missing += sum(1 for v in full if math.isinf(v))
        p50.append(percentile(full, 0.5) / 1000)
        p99.append(percentile(full, 0.99) / 1000)
        last.append(max(full) / 1000)
    pooled = tuple(v for values in runs for v in values if not math.isinf(v))
    return BurstResult(tool, tuple(p50), tuple(p99), tuple(last), tuple(cpu_ms), missing,
                       pooled)


def burst_bare(ctx: Context, jobs: int, reps: int) -> BurstResult:
    runs, cpu = [], []
    for rep in range(reps):
        work = ctx.tmp / f"burst-{jobs}-bare-rep{rep}"
        work.mkdir(parents=True)
        marks = work / "marks"
        at = math.ceil(time.time()) + 3
        argv: list[str | Path] = [PYTHON, BENCH / "bare_loop.py", "--jobs", str(jobs), "--out",
                                  work / "dispatch.json", "--command", command(marks),
                                  "--at", str(at)]
        ctx.command(ctx.show(argv).replace(str(at), "EPOCH") + " &  # then SIGTERM")
        log = ctx.log(f"burst-{jobs}-bare")
        with log.open("wb") as err:
            proc = ctx.children.start(argv, stdout=subprocess.PIPE, stderr=err)
        try:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"ready":
                raise BenchError(f"bare_loop.py did not start: {log.read_text()[-2000:]}")
            sleep_until_epoch(at - 0.5)
            before = cpu_seconds(proc.pid)
            wait_for_marks(marks, jobs, deadline=at + 60, what="bare spawn loop burst")
            time.sleep(1.0)  # the last processes are reaped
            cpu.append(1000 * (cpu_seconds(proc.pid) - before) / jobs)
        finally:
            ctx.children.end(proc, grace=serve.STOP_GRACE)
            assert proc.stdout is not None
            proc.stdout.close()
        runs.append(late_ms([(f, s) for f, s in read_marks(marks) if f == at]))
    return burst_figures("bare trio loop", runs, jobs, cpu)


def burst_pipeline(ctx: Context, jobs: int, reps: int, margin: float = BURST_MARGIN,
                   ) -> BurstResult:
    runs, cpu, startup = [], [], []
    for rep in range(reps):
        work = ctx.tmp / f"burst-{jobs}-pipeline-rep{rep}"
        marks = work / "marks"
        at = math.ceil(time.time() + margin)
        instant = datetime.fromtimestamp(at, UTC).isoformat()
        write_step_jobs(work / "jobs", jobs, f"{{at: '{instant}'}}", marks)
        state = work / "state"
        began = time.monotonic()
        with serve.open_daemon(ctx, work / "jobs", state, f"burst-{jobs}-pipeline") as daemon:
            startup.append(time.monotonic() - began)
            if time.time() > at - 1:
                raise BenchError(f"pipeline serve took {startup[-1]:.1f} s to start with "
                                 f"{jobs:,} jobs, past the burst's instant {margin:g} s away")
            sleep_until_epoch(at - 0.5)
            before = cpu_seconds(daemon.pid)
            wait_for_marks(marks, jobs, deadline=at + 60, what="pipeline serve burst")
            db = state / "state.db"
            wait_until(lambda db=db: finished_runs(db) >= jobs, timeout=60,
                       what=f"{jobs:,} runs of the burst finished", proc=daemon)
            cpu.append(1000 * (cpu_seconds(daemon.pid) - before) / jobs)
        runs.append(late_ms([(f, s) for f, s in read_marks(marks) if f == at]))
    ctx.details.append(f"**Burst, pipeline serve start-up** — `pipeline serve` with {jobs:,} "
                       f"jobs was up {statistics.median(startup):.1f} s (median) after its "
                       f"start; the instant was {margin:g} s after the jobs were written.")
    return burst_figures("pipeline serve", runs, jobs, cpu)


def finished_runs(db: Path) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        found: int = conn.execute(
            "SELECT count(*) FROM runs WHERE finished_at IS NOT NULL").fetchone()[0]
        return found
    except sqlite3.OperationalError:  # the daemon has not made its tables yet
        return 0
    finally:
        conn.close()


def burst(ctx: Context, *, jobs: int = 1000, reps: int | None = None, cron: bool = True,
          margin: float = BURST_MARGIN) -> list[Row]:
    """``jobs`` real steps due at one instant: pipeline against the bare spawn loop and cron."""
    reps = reps or ctx.reps(3, 1)
    say(f"bench: burst of {jobs:,} real steps at one instant: bare trio loop, pipeline serve "
        f"({reps} each)" + (", then cron" if cron else ""))
    bare = ctx.once(f"burst-{jobs}-bare", lambda: burst_bare(ctx, jobs, reps))
    ours = ctx.once(f"burst-{jobs}-pipeline", lambda: burst_pipeline(ctx, jobs, reps, margin))
    theirs, why = None, ""
    if cron:
        bursts, why = cron_bursts(ctx, jobs, reps, f"cron-{jobs}")
        if bursts:
            theirs = burst_figures("cron", bursts, jobs)
    label = f"burst, {jobs:,} jobs at one instant"
    rows: list[Row] = []
    for name, pick in (("last step start", lambda b: b.last), ("step start p50", lambda b: b.p50),
                       ("step start p99", lambda b: b.p99)):
        base = Stats(pick(bare))
        mine = Stats(pick(ours))
        rows.append(Row(f"{label}, {name}: bare trio loop", "s", base, target="baseline"))
        if name == "last step start":
            complete = not ours.missing
            note = f"{ours.missing:,} steps never started" if ours.missing else ""
            rows.append(Row(f"{label}, {name}: pipeline serve", "s", mine, "bare trio loop",
                            base, f"≤ {STEP_FACTOR:g}× bare",
                            mine.median <= STEP_FACTOR * base.median and complete, note))
            if theirs is not None:
                cron_stats = Stats(pick(theirs))
                rows.append(Row(f"{label}, {name}: pipeline serve, vs cron", "s", mine, "cron",
                                cron_stats, "≤ cron", mine.median <= cron_stats.median
                                and complete, note))
        else:
            rows.append(Row(f"{label}, {name}: pipeline serve", "s", mine, "bare trio loop",
                            base, "(reference)"))
        if theirs is not None:
            rows.append(Row(f"{label}, {name}: cron (one minute)", "s", Stats(pick(theirs)),
                            "bare trio loop", base, "(peer)"))
    for result in (bare, ours, theirs):
        if result is not None:
            cpu = (f"; its CPU {statistics.median(result.cpu_ms):.2f} ms a fire"
                   if result.cpu_ms else "")
            ctx.details.append(
                f"**Burst of {jobs:,}, {result.tool}** — {len(result.last)} repetition(s), all "
                f"steps: {spread(result.pooled)}; {result.missing:,} never started{cpu}.")
    if cron and theirs is None:
        ctx.details.append(f"**cron** — not measured: {why}.")
    return rows


# -- CPU per fire ------------------------------------------------------------------------------


def cpu(ctx: Context) -> list[Row]:
    """The daemon's CPU per fire, from the runs ``firing``, ``real`` and ``burst`` make (run
    here if they were not)."""
    say("bench: CPU per fire (reusing the firing, real-step and burst runs of this invocation)")
    rows: list[Row] = []

    def per_fire(percent: Sequence[float], jobs: int) -> Stats:
        # % of a core with `jobs` fires a second: 10 × % / jobs ms a fire.
        return Stats(tuple(10 * p / jobs for p in percent))

    for jobs in (100, 1000):
        bare = ctx.once(f"firing-{jobs}-bare", lambda j=jobs: serve.fire_script(
            ctx, j, "bare_loop.py", "bare trio loop"))
        ours, _ = ctx.once(f"firing-{jobs}-pipeline",
                           lambda j=jobs: serve.fire_pipeline(ctx, j))
        base, mine = per_fire(bare.slice_cpu, jobs), per_fire(ours.slice_cpu, jobs)
        label = f"CPU per fire, no-process step, {jobs:,} jobs/s"
        rows.append(Row(f"{label}: bare trio loop", "ms", base, target="baseline"))
        if jobs == 1000:
            rows.append(Row(f"{label}: pipeline serve", "ms", mine, "bare trio loop", base,
                            f"≤ {CPU_TARGET_MS:g} ms (25 % of a core)",
                            mine.median <= CPU_TARGET_MS))
        else:
            rows.append(Row(f"{label}: pipeline serve", "ms", mine, "bare trio loop", base,
                            "(reference)"))
    steady_bare: Steady = ctx.once("steady-100-bare", lambda: steady_script(
        ctx, "bare_loop.py", "bare trio loop", 100))
    steady_ours: Steady = ctx.once("steady-100-pipeline", lambda: steady_pipeline(ctx, 100))
    base, mine = per_fire(steady_bare.cpu, 100), per_fire(steady_ours.cpu, 100)
    rows += [Row("CPU per fire, run: step, 100 jobs/s: bare trio loop", "ms", base,
                 target="baseline"),
             Row("CPU per fire, run: step, 100 jobs/s: pipeline serve", "ms", mine,
                 "bare trio loop", base, "(reference)")]
    reps = ctx.reps(3, 1)
    burst_bare_: BurstResult = ctx.once("burst-1000-bare", lambda: burst_bare(ctx, 1000, reps))
    burst_ours: BurstResult = ctx.once("burst-1000-pipeline",
                                       lambda: burst_pipeline(ctx, 1000, reps))
    base, mine = Stats(burst_bare_.cpu_ms), Stats(burst_ours.cpu_ms)
    rows += [Row("CPU per fire, run: step, 1,000 at one instant: bare trio loop", "ms", base,
                 target="baseline"),
             Row("CPU per fire, run: step, 1,000 at one instant: pipeline serve", "ms", mine,
                 "bare trio loop", base, "(reference)")]
    ctx.details.append(
        "**CPU per fire** — the process's own utime + stime (/proc/PID/stat) over the window "
        "(steady load: per slice, whole seconds of fires; a burst: from half a second before "
        "the instant until every run has finished), divided by the fires in it. A step's own "
        "process is not counted; forking it is.")
    return rows

