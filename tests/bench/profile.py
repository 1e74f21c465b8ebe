"""Profile the daemon under the real-step loads, and summarise where the time and the CPU go.

    .venv/bin/pip install py-spy        # once; it is not a dependency of the project
    .venv/bin/python -m tests.bench.profile [--out DIR] [--seconds 20] [--only real,burst]

Two scenarios, each a real ``pipeline serve --no-http`` on jobs made as ``bin/bench`` makes
them (``steps.write_step_jobs``), then the bare trio spawn loop (``bare_loop.py --command``)
under the same load:

    real    100 jobs every second with a ``run:`` step, watched for ``--seconds`` after a
            warm-up;
    burst   1,000 jobs with a ``run:`` step due at one ``at:`` instant, watched until every
            run has finished.

What is recorded while they run:

1. Where the time between a fire and its step goes: ``perf record -a`` of the kernel's
   ``sched_process_fork`` and ``sched_process_exec`` tracepoints (no stops, no ptrace: the
   processes run as they would), on CLOCK_MONOTONIC, mapped to wall-clock time. Each step's
   process is tied to its run by the pid the daemon records (``steps.pid``), so each fire is a
   timeline: due → the run recorded as started → its step recorded as started → the daemon
   forks the step → bash is exec'd → bash forks for ``$(date)`` and ``date`` is exec'd. The
   bare loop has the last four (its fires are the whole second before the fork in ``real``,
   the instant in ``burst``). (``strace -f`` was tried first: its stops slowed a burst's
   spawns two to three times, for every contender.)
2. Where the trio thread's time goes: py-spy ``--idle`` samples it whether it runs or is
   blocked (in a system call, say), so its samples split the thread's wall-clock time.
3. Where the daemon's CPU goes: its user and system time (/proc/PID/stat); py-spy sampling at
   ``--rate`` Hz (default 100) without pausing it (``--nonblocking``), only the thread holding
   the GIL (``--gil``: py-spy's idle detection misses threads waiting in C here), which splits
   its Python CPU by thread and code; and ``perf record -g`` of its threads, which says which
   system calls the system time goes to.

DIR gets, per scenario: ``SCENARIO.txt`` (py-spy's raw collapsed stacks, one line per stack:
feed it to flamegraph.pl or speedscope), ``SCENARIO-wall.txt`` (the same, wall clock),
``SCENARIO.perf.data`` and ``SCENARIO.sched.data``,
``SCENARIO-bare.sched.data`` (``perf report -i`` / ``perf script -i``), and
``SCENARIO.summary.md``. Needs root (perf -a, ptrace of the daemon) and perf (Debian:
``linux-perf``).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tests.bench import serve, steps
from tests.bench.harness import (
    BENCH,
    PYTHON,
    VENV,
    BenchError,
    Children,
    Context,
    percentile,
    say,
    sleep_until_epoch,
    wait_until,
)

PY_SPY = VENV / "bin" / "py-spy"
RATE = 100  # py-spy samples a second

# What a frame belongs to, first match wins, tried from the innermost frame outwards: the
# sample is charged to the innermost frame that belongs to one of these.
CATEGORIES: tuple[tuple[str, Callable[[str, str], bool]], ...] = (
    ("fork/exec of a step (subprocess, _posixsubprocess)",
     lambda f, p: "subprocess.py" in p and ("_execute_child" in f or "fork_exec" in f)),
    ("SQLite (store)", lambda f, p: p.endswith("pipeline/store.py") or "sqlite3/" in p),
    ("scan of /proc for a group's members (process.group_members)",
     lambda f, p: p.endswith("pipeline/process.py") and f == "group_members"),
    ("logging (loguru)", lambda f, p: "/loguru/" in p),
    ("metrics (prometheus_client, pipeline.metrics)",
     lambda f, p: "prometheus_client" in p or p.endswith("pipeline/metrics.py")),
    ("expressions (pipeline.expr, jinja2)",
     lambda f, p: p.endswith("pipeline/expr.py") or "/jinja2/" in p),
    ("step log and outputs (pipeline.steplog, redact)",
     lambda f, p: p.endswith(("pipeline/steplog.py", "pipeline/redact.py"))),
    ("process groups (pipeline.process)", lambda f, p: p.endswith("pipeline/process.py")),
    ("run directory (tempfile.mkdtemp, shutil.rmtree)",
     lambda f, p: p.endswith(("tempfile.py", "shutil.py")) and f != "which"),
    ("run engine (pipeline.engine, dag)",
     lambda f, p: p.endswith(("pipeline/engine.py", "pipeline/dag.py"))),
    ("events and journal (pipeline.journal, events)",
     lambda f, p: p.endswith(("pipeline/journal.py", "pipeline/events.py"))),
    ("scheduler (pipeline.scheduler, triggers, calendars)",
     lambda f, p: p.endswith(("pipeline/scheduler.py", "pipeline/triggers.py",
                              "pipeline/calendars.py"))),
    ("other pipeline code", lambda f, p: _ours(p)),
    ("trio: subprocess and threads (open_process, to_thread)",
     lambda f, p: "/trio/" in p and ("_subprocess" in p or "_threads" in p
                                     or "_thread_cache" in p)),
    ("trio: run loop and I/O", lambda f, p: "/trio/" in p),
)
def _ours(path: str) -> bool:
    """A frame of the project's own code (py-spy shortens paths to ``pipeline/x.py``)."""
    return (path.startswith("pipeline/") or "/pipeline/" in path) and "site-packages" not in path


FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>.*?)(?::(?P<line>\d+))?\)$")


def parse(raw: Path) -> list[tuple[list[tuple[str, str]], int]]:
    """py-spy's raw output: (frames root → leaf as (function, file), count) per line. With
    --threads the root frame names the thread."""
    stacks = []
    for line in raw.read_text(errors="replace").splitlines():
        text, _, count = line.rpartition(" ")
        if not text or not count.isdigit():
            continue
        frames = []
        for part in text.split(";"):
            match = FRAME.match(part)
            frames.append((match["func"], match["path"]) if match else (part, ""))
        stacks.append((frames, int(count)))
    return stacks


def thread_kind(frames: Sequence[tuple[str, str]]) -> str:
    paths = " ".join(p for _, p in frames)
    funcs = " ".join(f for f, _ in frames)
    if "_thread_cache" in paths or "_threads.py" in paths:
        if "subprocess.py" in paths or "_subprocess" in paths:
            return "worker threads: starting processes"
        if "store.py" in paths or "journal" in funcs or "sqlite3" in paths:
            return "worker threads: SQLite commits"
        return "worker threads: other"
    if "trio/_core/_run.py" in paths:
        return "trio thread"
    return "other threads"


def category(frames: Sequence[tuple[str, str]]) -> str:
    for func, path in reversed(frames):
        for name, test in CATEGORIES:
            if test(func, path):
                return name
    return "Python interpreter and libraries outside the above"


def short(func: str, path: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", "/work/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{func} ({path})" if path else func


def table(counter: Counter[str], total: int, limit: int = 15) -> list[str]:
    lines = ["| | samples | share |", "| --- | --- | --- |"]
    for name, count in counter.most_common(limit):
        lines.append(f"| {name} | {count:,} | {100 * count / total:.1f} % |")
    return lines


def wall_table(raw: Path) -> list[str]:
    """Where the trio thread (the main thread) spends its wall-clock time: each sample's
    innermost frame, with the project's frame nearest to it."""
    where: Counter[str] = Counter()
    for frames, count in parse(raw):
        if not frames or "MainThread" not in frames[0][0]:
            continue
        leaf = short(*frames[-1])
        near = next((short(f, p) for f, p in reversed(frames) if _ours(p)), "")
        where[f"{leaf} ← {near}" if near and near != leaf else leaf] += count
    total = sum(where.values()) or 1
    return [f"{total:,} samples of the trio thread, on a CPU or blocked:", "",
            *table(where, total, 12)]


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a live process (all its threads)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def summarise(raw: Path, title: str, seconds: float, fires: int, cpu: tuple[float, float],
              stages: Sequence[str], kernel: Sequence[str], wall: Sequence[str]) -> str:
    stacks = parse(raw)
    total = sum(count for _, count in stacks) or 1
    threads: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        threads[thread_kind(frames)] += count
        kinds[category(frames)] += count
        if frames:
            own[short(*frames[-1])] += count
        seen = set()
        for func, path in frames:
            if _ours(path):
                name = short(func, path)
                if name not in seen:
                    seen.add(name)
                    inclusive[name] += count
    user, system = cpu
    per_fire = 1000 / max(fires, 1)
    return "\n".join([
        f"# {title}",
        "",
        "## Where the time between a fire and its step goes (perf sched tracepoints; ms)",
        "",
        *stages,
        "",
        "## Where the trio thread's time goes (py-spy --idle: wall clock)",
        "",
        *wall,
        "",
        "## Where the daemon's CPU goes (py-spy)",
        "",
        f"Over {seconds:.1f} s and {fires:,} fires the daemon used {user + system:.2f} s of "
        f"CPU ({per_fire * (user + system):.2f} ms a fire: user {per_fire * user:.2f} ms, "
        f"system {per_fire * system:.2f} ms; /proc/PID/stat). py-spy saw {total:,} samples "
        "of the thread holding the GIL.",
        "",
        *kernel,
        "",
        "### By thread", "", *table(threads, total), "",
        "### By what the innermost frame belongs to", "", *table(kinds, total, 20), "",
        "### Heaviest functions, own time", "", *table(own, total, 25), "",
        "### Heaviest pipeline functions, total time (with what they call)", "",
        *table(inclusive, total, 25), "",
    ])


KERNEL_ENTRY = re.compile(r"^\s*(?P<total>[\d.]+)%\s+(?P<self>[\d.]+)%\s+\[k\]\s+"
                          r"(?P<sym>__(?:x64|se|ia32)_sys_\w+|do_exit|ret_from_fork\w*|"
                          r"asm_exc_page_fault|exc_page_fault|schedule)\s*$")
SHARE = re.compile(r"^\s*(?P<self>[\d.]+)%\s+\[(?P<kind>[k.])\]\s+(?P<sym>\S+)")
INCLUSIVE = re.compile(r"^\s*(?P<total>[\d.]+)%\s+(?P<self>[\d.]+)%\s+\[k\]\s+"
                       r"(?P<sym>[A-Za-z_]\w*)")
GLUE = ("do_syscall_64", "entry_SYSCALL_64_after_hwframe", "x64_sys_call")


def perf_summary(data: Path) -> list[str]:
    """The kernel's share of the daemon's samples, and the system calls (and faults) that
    cost it, inclusive of what they call."""
    if not data.exists():
        return ["perf was not available: no kernel split."]
    def report(*args: str) -> list[str]:
        done = subprocess.run(["perf", "report", "-i", str(data), "--stdio", *args],
                              capture_output=True, text=True, check=False)
        return done.stdout.splitlines()

    kernel = user = 0.0
    for line in report("--no-children", "--sort", "sym", "-g", "none"):
        if match := SHARE.match(line):
            if match["kind"] == "k":
                kernel += float(match["self"])
            else:
                user += float(match["self"])
    entries, inside = [], []
    for line in report("--children", "--sort", "sym", "-g", "none"):
        if match := KERNEL_ENTRY.match(line):
            entries.append((float(match["total"]), match["sym"]))
        elif (match := INCLUSIVE.match(line)) and match["sym"] not in GLUE:
            inside.append((float(match["total"]), match["sym"]))
    lines = [f"perf: {kernel:.1f} % of the daemon's samples in the kernel, {user:.1f} % in user "
             "space. Kernel entry points, and the heaviest kernel functions under them, by "
             "their share of all samples (inclusive):", "",
             "| kernel entry | share | | kernel function | share |",
             "| --- | --- | --- | --- | --- |"]
    top = sorted(entries, reverse=True)[:12]
    deep = sorted(inside, reverse=True)[:12]
    for (total, sym), (deep_total, deep_sym) in zip(top, deep, strict=False):
        lines.append(f"| {sym} | {total:.1f} % | | {deep_sym} | {deep_total:.1f} % |")
    return lines


def py_spy(ctx: Context, pid: int, out: Path, *, duration: float, wall: bool = False,
           ) -> subprocess.Popen[bytes]:
    # --gil: only the thread holding the GIL is sampled, i.e. the daemon's Python CPU (idle
    # threads waiting in C, which py-spy's idle detection misses here, are left out);
    # --idle (``wall``): every sample of every thread, on a CPU or blocked, i.e. wall-clock
    # time; --nonblocking: the daemon is not paused to be sampled, so its lateness stays its
    # own.
    argv: list[str | Path] = [PY_SPY, "record", "--pid", str(pid), "--rate", str(RATE),
                              "--duration", str(math.ceil(duration)), "--format", "raw",
                              "--threads", "--idle" if wall else "--gil", "--nonblocking",
                              "--output", out]
    say("profile: " + ctx.show(argv))
    with ctx.log(f"py-spy-{out.stem}").open("wb") as log:
        return ctx.children.start(argv, stdout=subprocess.DEVNULL, stderr=log)


def perf_cpu(ctx: Context, pid: int, out: Path) -> subprocess.Popen[bytes]:
    """``perf record`` of the daemon's threads, kernel stacks included, until SIGINT."""
    argv: list[str | Path] = ["perf", "record", "-e", "cpu-clock", "-F", "499", "-g", "-p",
                              str(pid), "-o", out]
    return _start(ctx, argv, out)


def perf_sched(ctx: Context, out: Path) -> tuple[subprocess.Popen[bytes], float]:
    """``perf record -a`` of every fork and exec on the machine, until SIGINT; and what to add
    to its (CLOCK_MONOTONIC) timestamps to make them wall-clock time."""
    argv: list[str | Path] = ["perf", "record", "-a", "-k", "monotonic", "-e",
                              "sched:sched_process_fork", "-e", "sched:sched_process_exec",
                              "-o", out]
    offset = time.time() - time.monotonic()
    proc = _start(ctx, argv, out)
    time.sleep(1.0)  # perf is recording before anything is measured
    return proc, offset


def _start(ctx: Context, argv: Sequence[str | Path], out: Path) -> subprocess.Popen[bytes]:
    say("profile: " + ctx.show(argv))
    with ctx.log(out.name).open("wb") as log:
        return ctx.children.start(argv, stdout=subprocess.DEVNULL, stderr=log)


def stop(ctx: Context, proc: subprocess.Popen[bytes]) -> None:
    ctx.children.end(proc, sig=signal.SIGINT, grace=120)  # SIGINT: it writes what it has


@dataclass(frozen=True)
class Spawn:
    """One step's process: when it was forked, bash exec'd, ``date`` exec'd (wall clock)."""

    pid: int
    fork: float
    shell: float
    command: float | None


SCHED = re.compile(r"^\s*(?P<pid>\d+)/(?P<tid>\d+)\s+(?P<ts>\d+\.\d+):\s+"
                   r"sched:(?P<event>sched_process_\w+):\s+(?P<trace>.*)$")


def spawns(data: Path, parent: int, offset: float) -> list[Spawn]:
    """Every process ``parent`` forked that exec'd bash, with the times of its fork, its exec
    and its child's exec of ``date``."""
    done = subprocess.run(["perf", "script", "-i", str(data), "-F", "pid,tid,time,event,trace",
                           "--ns"], capture_output=True, text=True, check=False)
    forked: dict[int, tuple[int, float]] = {}  # child -> (parent, when)
    execs: dict[int, tuple[float, str]] = {}  # pid -> (when, program)
    for line in done.stdout.splitlines():
        match = SCHED.match(line)
        if match is None:
            continue
        when = float(match["ts"]) + offset
        fields = dict(f.split("=", 1) for f in match["trace"].split() if "=" in f)
        if match["event"] == "sched_process_fork":
            forked[int(fields["child_pid"])] = (int(match["pid"]), when)
        elif match["event"] == "sched_process_exec":
            execs.setdefault(int(fields["pid"]), (when, fields.get("filename", "")))
    commands = {forked[pid][0]: when for pid, (when, program) in execs.items()
                if program.endswith("/date") and pid in forked}
    found = []
    for child, (by, when) in forked.items():
        if by != parent:
            continue
        shell = execs.get(child)
        if shell is None or not shell[1].endswith("/bash"):
            continue  # a thread (clone fires the same tracepoint), or not a step
        found.append(Spawn(child, when, shell[0], commands.get(child)))
    return found


def recorded(db: Path) -> dict[int, tuple[float, float, float]]:
    """A step's pid -> (its fire, its run started as recorded, it started as recorded)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT steps.pid, runs.fire_time, runs.started_at, steps.started_at FROM steps "
            "JOIN runs ON runs.id = steps.run_id WHERE steps.pid IS NOT NULL "
            "AND runs.fire_time IS NOT NULL")
        return {pid: (_epoch(fire), _epoch(run), _epoch(step)) for pid, fire, run, step in rows}
    finally:
        conn.close()


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@dataclass(frozen=True)
class Timeline:
    """One step from due to ``date``: every time is wall clock, None where not known."""

    fire: float
    run: float | None
    step: float | None
    fork: float
    shell: float | None
    command: float | None


def ours(found: Sequence[Spawn], records: dict[int, tuple[float, float, float]],
         ) -> list[Timeline]:
    return [Timeline(*records[s.pid], s.fork, s.shell, s.command)
            for s in found if s.pid in records]


def theirs(found: Sequence[Spawn], fire: Callable[[float], float]) -> list[Timeline]:
    return [Timeline(fire(s.fork), None, None, s.fork, s.shell, s.command) for s in found]


STAGES: tuple[tuple[str, Callable[[Timeline], float | None]], ...] = (
    ("due → run recorded as started", lambda t: _gap(t.fire, t.run)),
    ("run recorded → its step recorded as started", lambda t: _gap(t.run, t.step)),
    ("step recorded → the daemon forks it (a worker thread takes the spawn, Popen prepares)",
     lambda t: _gap(t.step, t.fork)),
    ("**due → forked**", lambda t: _gap(t.fire, t.fork)),
    ("forked → bash exec'd", lambda t: _gap(t.fork, t.shell)),
    ("bash exec'd → date exec'd (bash starts, forks for $(date))",
     lambda t: _gap(t.shell, t.command)),
    ("**due → date exec'd, in all**", lambda t: _gap(t.fire, t.command)),
)


def _gap(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else 1000 * (b - a)


def stage_table(contenders: Sequence[tuple[str, Sequence[Timeline]]]) -> list[str]:
    """p50 / p99 of each stage (ms), per contender."""
    lines = ["| stage | " + " | ".join(f"{name} p50 / p99" for name, _ in contenders) + " |",
             "|" + " --- |" * (len(contenders) + 1)]
    for label, stage in STAGES:
        cells = []
        for _, timelines in contenders:
            values = [v for t in timelines if (v := stage(t)) is not None]
            cells.append(f"{percentile(values, 0.5):.1f} / {percentile(values, 0.99):.1f}"
                         if values else "—")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    counts = ", ".join(f"{name} {len(timelines):,}" for name, timelines in contenders)
    return [*lines, "", f"Steps: {counts}."]


@contextmanager
def bare(ctx: Context, work: Path, jobs: int, at: int | None) -> Iterator[int]:
    """The bare spawn loop under the same load; yields its pid."""
    argv: list[str | Path] = [PYTHON, BENCH / "bare_loop.py", "--jobs", str(jobs), "--out",
                              work / "bare.json", "--command",
                              steps.command(work / "bare-marks"),
                              *(["--at", str(at)] if at else [])]
    with ctx.log("bare").open("wb") as err:
        proc = ctx.children.start(argv, stdout=subprocess.PIPE, stderr=err)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise BenchError(f"bare_loop.py did not start ({ctx.log('bare')})")
        yield proc.pid
    finally:
        ctx.children.end(proc, grace=30)
        assert proc.stdout is not None
        proc.stdout.close()


# -- the scenarios ---------------------------------------------------------------------------


def profile_real(ctx: Context, out: Path, seconds: int, jobs: int) -> None:
    work = ctx.tmp / "real"
    steps.write_step_jobs(work / "jobs", jobs, "every 1s", work / "marks")
    state = work / "state"
    with serve.open_daemon(ctx, work / "jobs", state, "profile-real") as daemon:
        start = math.floor(time.time()) + 3
        sched, offset = perf_sched(ctx, out / "real.sched.data")
        sleep_until_epoch(start - 0.5)
        before = cpu_split(daemon.pid)
        spy = py_spy(ctx, daemon.pid, out / "real.txt", duration=seconds)
        clock = py_spy(ctx, daemon.pid, out / "real-wall.txt", duration=seconds, wall=True)
        kernel = perf_cpu(ctx, daemon.pid, out / "real.perf.data")
        spy.wait(timeout=seconds + 60)
        clock.wait(timeout=60)
        after = cpu_split(daemon.pid)
        took = time.time() - (start - 0.5)
        stop(ctx, kernel)
        sleep_until_epoch(start + seconds + steps.LATE_GRACE)
        stop(ctx, sched)
    mine = [t for t in ours(spawns(out / "real.sched.data", daemon.pid, offset),
                            recorded(state / "state.db")) if start <= t.fire < start + seconds]
    with bare(ctx, work, jobs, None) as pid:
        bare_start = math.floor(time.time()) + 3
        sched, bare_offset = perf_sched(ctx, out / "real-bare.sched.data")
        sleep_until_epoch(bare_start + seconds + steps.LATE_GRACE)
        stop(ctx, sched)
    loop = [t for t in theirs(spawns(out / "real-bare.sched.data", pid, bare_offset),
                              math.floor) if bare_start <= t.fire < bare_start + seconds]
    (out / "real.summary.md").write_text(summarise(
        out / "real.txt", f"{jobs} jobs every second, a run: step each", took,
        round(jobs * took), (after[0] - before[0], after[1] - before[1]),
        stage_table([("pipeline serve", mine), ("bare trio loop", loop)]),
        perf_summary(out / "real.perf.data"), wall_table(out / "real-wall.txt")))


def profile_burst(ctx: Context, out: Path, jobs: int) -> None:
    work = ctx.tmp / "burst"
    at = math.ceil(time.time() + steps.BURST_MARGIN)
    instant = datetime.fromtimestamp(at, UTC).isoformat()
    steps.write_step_jobs(work / "jobs", jobs, f"{{at: '{instant}'}}", work / "marks")
    state = work / "state"
    with serve.open_daemon(ctx, work / "jobs", state, "profile-burst") as daemon:
        if time.time() > at - 2:
            raise BenchError("the daemon started too late for the burst's instant")
        sched, offset = perf_sched(ctx, out / "burst.sched.data")
        sleep_until_epoch(at - 0.5)
        before = cpu_split(daemon.pid)
        spy = py_spy(ctx, daemon.pid, out / "burst.txt", duration=600)
        clock = py_spy(ctx, daemon.pid, out / "burst-wall.txt", duration=600, wall=True)
        kernel = perf_cpu(ctx, daemon.pid, out / "burst.perf.data")
        db = state / "state.db"
        wait_until(lambda: steps.finished_runs(db) >= jobs, timeout=120,
                   what=f"{jobs:,} runs finished", proc=daemon)
        after = cpu_split(daemon.pid)
        took = time.time() - (at - 0.5)
        for proc in (spy, clock, kernel, sched):
            stop(ctx, proc)
    mine = ours(spawns(out / "burst.sched.data", daemon.pid, offset), recorded(db))
    bare_at = math.ceil(time.time()) + 4
    with bare(ctx, work, jobs, bare_at) as pid:
        sched, bare_offset = perf_sched(ctx, out / "burst-bare.sched.data")
        steps.wait_for_marks(work / "bare-marks", jobs, deadline=bare_at + 60,
                             what="bare burst")
        time.sleep(1)
        stop(ctx, sched)
    loop = theirs(spawns(out / "burst-bare.sched.data", pid, bare_offset),
                  lambda _: float(bare_at))
    (out / "burst.summary.md").write_text(summarise(
        out / "burst.txt", f"{jobs:,} jobs due at one instant, a run: step each", took, jobs,
        (after[0] - before[0], after[1] - before[1]),
        stage_table([("pipeline serve", mine), ("bare trio loop", loop)]),
        perf_summary(out / "burst.perf.data"), wall_table(out / "burst-wall.txt")))


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.profile",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("profile"))
    parser.add_argument("--seconds", type=int, default=20, help="the window (real)")
    parser.add_argument("--only", default="real,burst")
    parser.add_argument("--jobs", type=int, default=100, help="jobs every second (real)")
    parser.add_argument("--burst", type=int, default=1000, help="jobs at the instant (burst)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    missing = [] if PY_SPY.exists() else [str(PY_SPY)]
    missing += [] if shutil.which("perf") else ["perf"]
    if missing:
        say(f"profile: missing {', '.join(missing)}: {VENV}/bin/pip install py-spy; "
            "apt-get install linux-perf")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="pipeline-profile-"))
    (tmp / "logs").mkdir()
    ctx = Context(quick=False, tmp=tmp, children=Children())
    try:
        for scenario in args.only.split(","):
            say(f"profile: {scenario}")
            if scenario == "real":
                profile_real(ctx, args.out, args.seconds, args.jobs)
            elif scenario == "burst":
                profile_burst(ctx, args.out, args.burst)
            else:
                parser.error(f"unknown scenario {scenario!r}")
            say(f"profile: wrote {args.out / scenario}.summary.md")
    except BenchError as exc:
        say(f"profile: {exc}")
        return 1
    finally:
        ctx.children.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
