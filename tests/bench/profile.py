"""Profile what issue 14's benchmarks measure, and summarise where the time, CPU and memory go.

    .venv/bin/pip install py-spy        # once; it is not a dependency of the project
    .venv/bin/python -m tests.bench.profile [--out DIR] [--only real,burst] [--seconds 20]
        [--rate 100] [--reps N]

Six scenarios (``--only``, comma-separated; ``real,burst`` by default). Three put a real
``pipeline serve --no-http`` under a load made as ``bin/bench`` makes it:

    real     100 jobs every second with a ``run:`` step (``steps.write_step_jobs``), watched
             for ``--seconds`` after a warm-up, then the bare trio spawn loop
             (``bare_loop.py --command``) under the same load;
    burst    1,000 such jobs due at one ``at:`` instant, watched until every run has
             finished, then the bare loop; ``--reps`` times (files ``burst-repN.*``), the
             summary adding the repetitions up;
    firing   1,000 jobs every second whose step starts no process (``serve.TICK_JOB``, the
             ``firing`` and ``cpu`` benchmarks' load): ``--reps`` windows of ``--seconds``.

Three run whole short processes, need neither root nor perf, and measure from inside fresh
processes with ``tests/bench/probes.py`` (CPU time, which a shared machine moves much less
than wall-clock time):

    startup  ``pipeline run`` of a one-step job, the 100-step fan-out and the 50-step chain
             against the bare trio runner (``bare_dag.py``) and ``python -c 'import trio'``:
             each command's median wall and CPU (``--reps`` interleaved runs); the CPU of every
             import, by the dependency the project imports and by its own modules (with the
             dataclasses they build); the parts of each command after its imports (loading
             the job, logging set-up, the store's open and close, the run itself); py-spy of
             20 fan-out runs in one process;
    validate ``pipeline validate`` of 1,000 generated files against the libyaml parse floor:
             the commands, the imports, the stages of ``jobset.load_jobs`` (parse, schema,
             checks, build) and py-spy of it in a loop;
    memory   RSS of the daemon with 1,000 jobs loaded: what each import adds, the daemon
             settled with none and with 1,000 (pymalloc's arenas), what the loaded jobs hold
             (tracemalloc, and a walk over their objects: strings and their equal copies,
             the ``document`` trees, the lru caches), and the RSS each what-if change
             (``probes.WHAT_IF``, patched in the probe's memory only) would save.

What is recorded while the daemon scenarios run:

1. Where the time between a fire and its step goes (real, burst): ``perf record -a`` of the
   kernel's ``sched_process_fork`` and ``sched_process_exec`` tracepoints (no stops, no
   ptrace: the processes run as they would), on CLOCK_MONOTONIC, mapped to wall-clock time.
   Each step's process is tied to its run by the pid the daemon records (``steps.pid``), so
   each fire is a timeline: due → the run recorded as started → its step recorded as started
   → the daemon forks the step → bash is exec'd → bash forks for ``$(date)`` and ``date`` is
   exec'd. The bare loop has the last four (its fires are the whole second before the fork in
   ``real``, the instant in ``burst``). (``strace -f`` was tried first: its stops slowed a
   burst's spawns two to three times, for every contender.)
2. Where the trio thread's time goes (real, burst): py-spy ``--idle`` samples it whether it
   runs or is blocked (in a system call, say), so its samples split the thread's wall-clock
   time.
3. Where the daemon's CPU goes: its user and system time (/proc/PID/stat); py-spy sampling at
   ``--rate`` Hz without pausing it (``--nonblocking``), only the thread holding the GIL
   (``--gil``: py-spy's idle detection misses threads waiting in C here), which splits its
   Python CPU by thread, by kind of code, by module and by function; and ``perf record -g``
   of its threads, which says which system calls the system time goes to.

DIR gets, per scenario: ``SCENARIO.summary.md``; py-spy's raw collapsed stacks, one line per
stack (``SCENARIO.txt``, ``SCENARIO-wall.txt``, ``burst-repN.txt``, ``firing-repN.txt``,
``startup-run.txt``, ``validate.txt``: feed them to flamegraph.pl or speedscope); and the
perf files (``SCENARIO.perf.data``, ``SCENARIO.sched.data``, ``SCENARIO-bare.sched.data``:
``perf report -i`` / ``perf script -i``). real, burst and firing need root (ptrace of the
daemon; perf -a) and perf (Debian: ``linux-perf``) for real and burst.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shutil
import signal
import sqlite3
import statistics
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
from typing import Any

from tests.bench import dags, probes, serve, steps
from tests.bench.gen_jobs import write_jobs
from tests.bench.harness import (
    BENCH,
    CHILD_ENV,
    PIPELINE,
    PYTHON,
    ROOT,
    VENV,
    BenchError,
    Children,
    Context,
    load_average,
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
    ("store and SQLite (pipeline.store, sqlite3)",
     lambda f, p: "pipeline/store/" in p or p.endswith("pipeline/store.py") or "sqlite3/" in p),
    ("scan of /proc for a group's members (process.group_members)",
     lambda f, p: p.endswith("pipeline/process.py") and f == "group_members"),
    ("logging (loguru)", lambda f, p: "/loguru/" in p),
    ("metrics (prometheus_client, pipeline.metrics)",
     lambda f, p: "prometheus_client" in p or p.endswith("pipeline/metrics.py")),
    ("expressions (pipeline.expr, sandbox, jinja2)",
     lambda f, p: p.endswith(("pipeline/expr.py", "pipeline/sandbox.py")) or "/jinja2/" in p),
    ("step log and outputs (pipeline.steplog, scratch, redact)",
     lambda f, p: p.endswith(("pipeline/steplog.py", "pipeline/redact.py",
                              "pipeline/scratch.py"))),
    ("process groups (pipeline.process)", lambda f, p: p.endswith("pipeline/process.py")),
    ("run directory (tempfile.mkdtemp, shutil.rmtree)",
     lambda f, p: p.endswith(("tempfile.py", "shutil.py")) and f != "which"),
    ("run engine (pipeline.engine, steps, dag)",
     lambda f, p: p.endswith(("pipeline/engine.py", "pipeline/steps.py", "pipeline/dag.py"))),
    ("events and journal (pipeline.journal, events)",
     lambda f, p: p.endswith(("pipeline/journal.py", "pipeline/events.py"))),
    ("worker and local runs (pipeline.worker, held, localruns)",
     lambda f, p: p.endswith(("pipeline/worker.py", "pipeline/held.py",
                              "pipeline/localruns.py"))),
    ("scheduler (pipeline.scheduler, triggers, calendars, cron)",
     lambda f, p: p.endswith(("pipeline/scheduler.py", "pipeline/triggers.py",
                              "pipeline/calendars.py", "pipeline/cron.py"))),
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


def spy_tables(raw: Path | Sequence[Path], keep: Callable[[Sequence[tuple[str, str]]], bool]
               = lambda frames: True) -> tuple[int, list[str]]:
    """py-spy's samples (of one file or several, added up; only the stacks ``keep`` keeps),
    split by thread, by what the innermost frame belongs to, by the innermost module of the
    project, and by function (own time, and the project's functions with what they call)."""
    stacks = [(frames, count)
              for one in ([raw] if isinstance(raw, Path) else raw) for frames, count in parse(one)
              if keep(frames)]
    total = sum(count for _, count in stacks) or 1
    threads: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    for frames, count in stacks:
        threads[thread_kind(frames)] += count
        kinds[category(frames)] += count
        if frames:
            own[short(*frames[-1])] += count
        innermost = next((p for _, p in reversed(frames) if _ours(p)), None)
        modules[innermost.rpartition("pipeline/")[2] if innermost else
                "(no pipeline frame: trio's loop, threads' own code)"] += count
        seen = set()
        for func, path in frames:
            if _ours(path):
                name = short(func, path)
                if name not in seen:
                    seen.add(name)
                    inclusive[name] += count
    return total, [
        "### By thread", "", *table(threads, total), "",
        "### By what the innermost frame belongs to", "", *table(kinds, total, 20), "",
        "### By the innermost module of the project", "", *table(modules, total, 20), "",
        "### Heaviest functions, own time", "", *table(own, total, 25), "",
        "### Heaviest pipeline functions, total time (with what they call)", "",
        *table(inclusive, total, 30), ""]


def summarise(raw: Path | Sequence[Path], title: str, seconds: float, fires: int,
              cpu: tuple[float, float], stages: Sequence[str], kernel: Sequence[str],
              wall: Sequence[str]) -> str:
    """The summary of one scenario; ``raw`` may be several py-spy files (repetitions), whose
    samples are added up. ``stages`` and ``wall`` may be empty (no process, no timeline)."""
    total, tables = spy_tables(raw)
    user, system = cpu
    per_fire = 1000 / max(fires, 1)
    timeline = ["## Where the time between a fire and its step goes (perf sched tracepoints; "
                "ms)", "", *stages, ""] if stages else []
    clock = ["## Where the trio thread's time goes (py-spy --idle: wall clock)", "", *wall,
             ""] if wall else []
    return "\n".join([
        f"# {title}",
        "",
        *timeline,
        *clock,
        "## Where the daemon's CPU goes (py-spy)",
        "",
        f"Over {seconds:.1f} s and {fires:,} fires the daemon used {user + system:.2f} s of "
        f"CPU ({per_fire * (user + system):.3f} ms a fire: user {per_fire * user:.3f} ms, "
        f"system {per_fire * system:.3f} ms; /proc/PID/stat). py-spy saw {total:,} samples "
        f"of the thread holding the GIL. Load average at the end: {load_average()}.",
        "",
        *kernel,
        "",
        *tables,
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
           rate: int = RATE) -> subprocess.Popen[bytes]:
    # --gil: only the thread holding the GIL is sampled, i.e. the daemon's Python CPU (idle
    # threads waiting in C, which py-spy's idle detection misses here, are left out);
    # --idle (``wall``): every sample of every thread, on a CPU or blocked, i.e. wall-clock
    # time; --nonblocking: the daemon is not paused to be sampled, so its lateness stays its
    # own.
    argv: list[str | Path] = [PY_SPY, "record", "--pid", str(pid), "--rate", str(rate),
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


def profile_real(ctx: Context, out: Path, seconds: int, jobs: int, rate: int) -> None:
    work = ctx.tmp / "real"
    steps.write_step_jobs(work / "jobs", jobs, "every 1s", work / "marks")
    state = work / "state"
    with serve.open_daemon(ctx, work / "jobs", state, "profile-real") as daemon:
        start = math.floor(time.time()) + 3
        sched, offset = perf_sched(ctx, out / "real.sched.data")
        sleep_until_epoch(start - 0.5)
        before = cpu_split(daemon.pid)
        spy = py_spy(ctx, daemon.pid, out / "real.txt", duration=seconds, rate=rate)
        clock = py_spy(ctx, daemon.pid, out / "real-wall.txt", duration=seconds, wall=True,
                       rate=rate)
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


def profile_burst(ctx: Context, out: Path, jobs: int, rate: int, reps: int) -> None:
    """The burst ``reps`` times (a daemon of its own each, then the bare loop); the summary
    adds up the repetitions' samples and timelines (files ``burst-repN.*``)."""
    mine: list[Timeline] = []
    loop: list[Timeline] = []
    spent = [0.0, 0.0, 0.0]  # user, system, wall
    raws, walls = [], []
    for rep in range(reps):
        name = f"burst-rep{rep}"
        work = ctx.tmp / name
        at = math.ceil(time.time() + steps.BURST_MARGIN)
        instant = datetime.fromtimestamp(at, UTC).isoformat()
        steps.write_step_jobs(work / "jobs", jobs, f"{{at: '{instant}'}}", work / "marks")
        state = work / "state"
        raws.append(out / f"{name}.txt")
        walls.append(out / f"{name}-wall.txt")
        with serve.open_daemon(ctx, work / "jobs", state, f"profile-{name}") as daemon:
            if time.time() > at - 2:
                raise BenchError("the daemon started too late for the burst's instant")
            sched, offset = perf_sched(ctx, out / f"{name}.sched.data")
            sleep_until_epoch(at - 0.5)
            before = cpu_split(daemon.pid)
            spy = py_spy(ctx, daemon.pid, raws[-1], duration=600, rate=rate)
            clock = py_spy(ctx, daemon.pid, walls[-1], duration=600, wall=True, rate=rate)
            kernel = perf_cpu(ctx, daemon.pid, out / f"{name}.perf.data")
            db = state / "state.db"
            wait_until(lambda db=db: steps.finished_runs(db) >= jobs, timeout=120,  # type: ignore[misc]
                       what=f"{jobs:,} runs finished", proc=daemon)
            after = cpu_split(daemon.pid)
            spent[0] += after[0] - before[0]
            spent[1] += after[1] - before[1]
            spent[2] += time.time() - (at - 0.5)
            for proc in (spy, clock, kernel, sched):
                stop(ctx, proc)
        mine += ours(spawns(out / f"{name}.sched.data", daemon.pid, offset), recorded(db))
        bare_at = math.ceil(time.time()) + 4
        with bare(ctx, work, jobs, bare_at) as pid:
            sched, bare_offset = perf_sched(ctx, out / f"{name}-bare.sched.data")
            steps.wait_for_marks(work / "bare-marks", jobs, deadline=bare_at + 60,
                                 what="bare burst")
            time.sleep(1)
            stop(ctx, sched)
        loop += theirs(spawns(out / f"{name}-bare.sched.data", pid, bare_offset),
                       lambda _, at=bare_at: float(at))  # type: ignore[misc]
    wall = [line for one in walls for line in [one.read_text()]]
    merged = out / "burst-wall.txt"
    merged.write_text("".join(wall))
    (out / "burst.summary.md").write_text(summarise(
        raws, f"{jobs:,} jobs due at one instant, a run: step each ({reps} repetition(s))",
        spent[2], jobs * reps, (spent[0], spent[1]),
        stage_table([("pipeline serve", mine), ("bare trio loop", loop)]),
        perf_summary(out / "burst-rep0.perf.data"), wall_table(merged)))


def profile_firing(ctx: Context, out: Path, seconds: int, jobs: int, rate: int,
                   reps: int) -> None:
    """``jobs`` jobs every second whose one step starts no process (the ``firing`` and
    ``cpu`` benchmarks' load): where the daemon's CPU goes, per fire; ``reps`` windows of
    ``seconds`` one after the other (``firing-repN.txt``), their samples added up."""
    work = ctx.tmp / "firing"
    serve.write_tick_jobs(work / "jobs", jobs)
    state = work / "state"
    raws: list[Path] = []
    per_fire: list[str] = []
    spent = [0.0, 0.0, 0.0]
    with serve.open_daemon(ctx, work / "jobs", state, "profile-firing") as daemon:
        # A warm-up: the first fires make each job's metric children and fill the caches.
        start = math.floor(time.time()) + 6
        for rep in range(reps):
            raws.append(out / f"firing-rep{rep}.txt")
            sleep_until_epoch(start - 0.5)
            before = cpu_split(daemon.pid)
            spy = py_spy(ctx, daemon.pid, raws[-1], duration=seconds, rate=rate)
            kernel = perf_cpu(ctx, daemon.pid, out / "firing.perf.data") if (
                rep == 0 and shutil.which("perf")) else None
            spy.wait(timeout=seconds + 60)
            after = cpu_split(daemon.pid)
            took = time.time() - (start - 0.5)
            if kernel is not None:
                stop(ctx, kernel)
            used = (after[0] - before[0], after[1] - before[1])
            spent = [spent[0] + used[0], spent[1] + used[1], spent[2] + took]
            per_fire.append(f"{1000 * sum(used) / (jobs * took):.3f}")
            start = math.floor(time.time()) + 2
    (out / "firing.summary.md").write_text(summarise(
        raws, f"{jobs:,} jobs every second, a step that starts no process ({reps} window(s) "
        f"of {seconds} s; CPU per fire in each: {', '.join(per_fire)} ms)", spent[2],
        round(jobs * spent[2]), (spent[0], spent[1]), [],
        perf_summary(out / "firing.perf.data"), []))


# -- whole short processes: start-up, validation, memory ------------------------------------
#
# These scenarios need neither root nor perf: they run ``tests/bench/probes.py`` in fresh
# processes (CPU time, RSS, tracemalloc from inside) and time whole commands from outside,
# interleaved, wall clock and CPU (the children's rusage) both.


def probe(*args: str | Path) -> Any:
    """One probe in a fresh process (``python -m tests.bench.probes ARGS``): its JSON."""
    done = subprocess.run([str(PYTHON), "-m", "tests.bench.probes", *map(str, args)],
                          capture_output=True, text=True, env=CHILD_ENV, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise BenchError(f"probe {args[0]} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def whole(ctx: Context, commands: Sequence[tuple[str, Sequence[str | Path]]], reps: int,
          ) -> dict[str, tuple[float, float]]:
    """Median wall and CPU (user + system, with the children it waited for) of each command,
    run ``reps`` times interleaved after one warm-up each."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in commands}
    for rep in range(-1, reps):
        for name, argv in commands:
            if rep == -1:
                ctx.command(ctx.show(argv))
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run([str(a) for a in argv], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=CHILD_ENV, check=False)
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if rep >= 0:
                samples[name].append((wall, after.ru_utime + after.ru_stime
                                      - before.ru_utime - before.ru_stime))
    return {name: (statistics.median(w for w, _ in got), statistics.median(c for _, c in got))
            for name, got in samples.items()}


def whole_table(found: dict[str, tuple[float, float]], baseline: str) -> list[str]:
    base_wall, base_cpu = found[baseline]
    lines = ["| command | wall (median) | × | CPU (median) | × |",
             "| --- | --- | --- | --- | --- |"]
    for name, (wall, cpu) in found.items():
        lines.append(f"| {name} | {1000 * wall:.0f} ms | {wall / base_wall:.2f} | "
                     f"{1000 * cpu:.0f} ms | {cpu / base_cpu:.2f} |")
    return lines


def _package(module: str) -> str:
    """A module's package for the tables: ``pipeline.x`` for ours, the top level otherwise."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "pipeline" else parts[0]


def import_tables(runs: Sequence[dict[str, Any]], limit: int = 20) -> list[str]:
    """Medians over the probe's runs: the statement's CPU; each dependency the project
    imports itself, with everything it brings that was not loaded yet; the project's own
    modules; the dataclasses built."""
    def med(values: Iterable[float]) -> float:
        found = list(values)
        return statistics.median(found + [0.0] * (len(runs) - len(found))) if found else 0.0

    total = med(r["cpu"] for r in runs)
    edges: dict[str, list[float]] = {}
    own: dict[str, list[float]] = {}
    for r in runs:
        for module, spent in r["inclusive"].items():
            parent = r["parent"].get(module)
            if not module.startswith("pipeline") and (parent is None
                                                      or parent.startswith("pipeline")):
                key = f"`{module}` ← `{parent or '(the statement)'}`"
                edges.setdefault(key, []).append(spent)
        for module, spent in r["own"].items():
            if module.startswith("pipeline"):
                own.setdefault(_package(module), []).append(spent)
    ours = med(sum(v for m, v in r["own"].items() if m.startswith("pipeline")) for r in runs)
    lines = [f"CPU of the whole statement (median of {len(runs)} processes): "
             f"{1000 * total:.0f} ms; the project's own modules: {1000 * ours:.0f} ms, of "
             f"which building {statistics.median(r['dataclasses'] for r in runs):.0f} "
             f"dataclasses {1000 * med(r['dataclass_cpu'] for r in runs):.0f} ms.", "",
             "| dependency, as the project first imports it (with all it brings) | CPU | share |",
             "| --- | --- | --- |"]
    for key, values in sorted(edges.items(), key=lambda kv: -med(kv[1]))[:limit]:
        if med(values) >= 0.0005:
            lines.append(f"| {key} | {1000 * med(values):.1f} ms | "
                         f"{100 * med(values) / total:.1f} % |")
    lines += ["", "| the project's modules (own execution) | CPU |", "| --- | --- |"]
    for key, values in sorted(own.items(), key=lambda kv: -med(kv[1]))[:limit]:
        lines.append(f"| `{key}` | {1000 * med(values):.1f} ms |")
    return lines


def parts_table(runs: Sequence[dict[str, list[float]]], bare_runs: Sequence[dict[str, Any]],
                ) -> list[str]:
    labels = list(runs[0])
    lines = ["| part | wall | CPU | calls |", "| --- | --- | --- | --- |"]
    for label in labels:
        got = [r[label] for r in runs if label in r]
        lines.append(f"| {label} | {1000 * statistics.median(g[0] for g in got):.1f} ms | "
                     f"{1000 * statistics.median(g[1] for g in got):.1f} ms | "
                     f"{got[0][2]:.0f} |")
    for label in ("imports", "command"):
        got = [r[label] for r in bare_runs]
        lines.append(f"| bare_dag.py: {label} | "
                     f"{1000 * statistics.median(g[0] for g in got):.1f} ms | "
                     f"{1000 * statistics.median(g[1] for g in got):.1f} ms | 1 |")
    return lines


def profile_startup(ctx: Context, out: Path, reps: int, rate: int) -> None:
    """``pipeline run`` as a whole process against the bare trio runner: the time of each
    command, the CPU of every import, and the parts of each command after its imports."""
    work = ctx.tmp / "startup"
    shapes = {name: dags.write_dag(work, shape, n)[0]
              for name, shape, n in (("one step", "one", 1), *dags.SHAPES)}
    commands: list[tuple[str, Sequence[str | Path]]] = [
        ("python -c pass", [PYTHON, "-c", "pass"]),
        ("python -c 'import trio'", [PYTHON, "-c", "import trio"]),
    ]
    for name, job in shapes.items():
        commands.append((f"bare runner, {name}", dags.bare_argv(job)))
        commands.append((f"pipeline run, {name}",
                         [PIPELINE, "run", job, "--state-dir", work / f"state-{job.stem}"]))
    found = whole(ctx, commands, reps)
    one = shapes["one step"]
    statement = (f"import pipeline.cli; pipeline.cli.main(['run', {str(one)!r}, "
                 f"'--state-dir', {str(work / 'state-imports')!r}])")
    ctx.command(ctx.show([PYTHON, "-m", "tests.bench.probes", "imports", statement]))
    imported = [probe("imports", statement) for _ in range(reps)]
    sections = [f"# `pipeline run` as a whole process (load average at the end: "
                f"{load_average()})", "", "## Whole commands", "", *whole_table(
                    found, "python -c 'import trio'"), "",
                "## Imports of `pipeline run` (one-step job)", "", *import_tables(imported)]
    fanout = shapes[dags.SHAPES[0][0]]
    loop = work / "run-loop.py"
    loop.write_text("import shutil, sys\nimport pipeline.cli\nfor rep in range(int(sys.argv[3])):\n"
                    "    state = f'{sys.argv[2]}-{rep}'\n    shutil.rmtree(state, True)\n"
                    "    try:\n        pipeline.cli.main(['run', sys.argv[1], '--state-dir', "
                    "state])\n    except SystemExit:\n        pass\n")
    raw = out / "startup-run.txt"
    argv: list[str | Path] = [PY_SPY, "record", "--rate", str(rate), "--format", "raw",
                              "--threads", "--gil", "--output", raw, "--", PYTHON, loop,
                              fanout, work / "loop-state", "20"]
    ctx.command(ctx.show(argv))
    subprocess.run([str(a) for a in argv], capture_output=True, env=CHILD_ENV, cwd=ROOT,
                   check=False)
    # The loop's own imports are left out: the tables above have them.
    samples, spied = spy_tables(raw, lambda frames: not any(
        "_find_and_load" in f for f, _ in frames))
    sections += ["", f"## py-spy: 20 runs of the fan-out in one process, after the imports "
                 f"({samples:,} samples of the thread holding the GIL)", "", *spied]
    for name, job in shapes.items():
        state = work / f"parts-{job.stem}"
        parts = [probe("run", job, state) for _ in range(reps)]
        bares = [probe("bare", job) for _ in range(reps)]
        sections += ["", f"## The parts of `pipeline run`, {name}", "",
                     *parts_table(parts, bares)]
    (out / "startup.summary.md").write_text("\n".join(sections) + "\n")


def profile_validate(ctx: Context, out: Path, reps: int, rate: int) -> None:
    """``pipeline validate`` of 1,000 files against the parse floor: the commands, the
    imports, the stages of ``jobset.load_jobs``, and a py-spy profile of it in a loop."""
    many, one = ctx.tmp / "validate-1000", ctx.tmp / "validate-1"
    write_jobs(many, 1000)
    write_jobs(one, 1)
    found = whole(ctx, [
        ("parse floor (libyaml, whole process)", [PYTHON, BENCH / "parse_floor.py", many]),
        ("pipeline validate, 1,000 files", [PIPELINE, "validate", many]),
        ("pipeline validate, 1 file", [PIPELINE, "validate", one]),
        ("python -c 'import yaml'", [PYTHON, "-c", "import yaml"]),
    ], reps)
    imported = [probe("imports", f"import pipeline.cli; pipeline.cli.main(['validate', "
                                 f"{str(one)!r}])") for _ in range(reps)]
    stages = probe("validate", many)
    total = stages["load_jobs"]
    lines = ["| stage | CPU | share |", "| --- | --- | --- |"]
    for label, spent in sorted(stages["stages"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {label} | {1000 * spent:.0f} ms | {100 * spent / total:.1f} % |")
    loop = ctx.tmp / "validate-loop.py"
    loop.write_text("import sys\nfrom pathlib import Path\nfrom pipeline import jobset\n"
                    "jobset.load_jobs([Path(sys.argv[1])])\n"
                    "for _ in range(int(sys.argv[2])):\n"
                    "    jobset.load_jobs([Path(sys.argv[1])])\n")
    raw = out / "validate.txt"
    argv: list[str | Path] = [PY_SPY, "record", "--rate", str(rate), "--format", "raw",
                              "--output", raw, "--", PYTHON, loop, many, "10"]
    ctx.command(ctx.show(argv))
    subprocess.run([str(a) for a in argv], capture_output=True, env=CHILD_ENV, cwd=ROOT,
                   check=False)
    samples, spied = spy_tables(raw, lambda frames: any(f == "load_jobs" for f, _ in frames))
    (out / "validate.summary.md").write_text("\n".join([
        f"# `pipeline validate` of 1,000 files (load average at the end: {load_average()})",
        "", "## Whole commands", "",
        *whole_table(found, "parse floor (libyaml, whole process)"), "",
        "## Imports of `pipeline validate` (one file)", "", *import_tables(imported), "",
        f"## The stages of `jobset.load_jobs`, in-process ({stages['files']:,} files)", "",
        f"`jobset.load_jobs`: {1000 * total:.0f} ms CPU (median of 5, validators built); the "
        f"floor's own loop (`yaml.load`, CSafeLoader, same files): "
        f"{1000 * stages['floor']:.0f} ms; `yaml.compose` alone: "
        f"{1000 * stages['compose']:.0f} ms.", "", *lines, "",
        f"## py-spy, `jobset.load_jobs` in a loop ({samples:,} samples)", "", *spied]) + "\n")


RSS_STAGES = ("import trio", "import click", "import yaml", "import jsonschema_rs",
              "import cronsim", "import jinja2, jinja2.sandbox", "import loguru",
              "import importlib.metadata", "import sqlite3", "import prometheus_client",
              "import watchfiles", "import pipeline.model, pipeline.events, pipeline.store",
              "import pipeline.spec", "import pipeline.engine", "import pipeline.daemon",
              "import pipeline.cli, pipeline.cli.daemon")


def profile_memory(ctx: Context, out: Path, reps: int) -> None:
    """RSS of ``pipeline serve --no-http`` with 1,000 jobs loaded: what each import adds, what
    the daemon adds with no jobs, what 1,000 jobs add (pymalloc, tracemalloc, a walk over the
    jobs' objects), and what each what-if change would save (``probes.WHAT_IF``)."""
    many, empty = ctx.tmp / "memory-jobs", ctx.tmp / "memory-empty"
    write_jobs(many, 1000, schedule=serve.NEVER_FIRES)
    empty.mkdir(parents=True, exist_ok=True)
    staged = [probe("rss", *RSS_STAGES) for _ in range(3)]

    def med(index: int, key: str) -> float:
        return float(statistics.median(run[index][key] for run in staged))

    lines = [f"Python alone: {med(0, 'VmRSS'):.1f} MiB (anonymous {med(0, 'RssAnon'):.1f}, "
             f"file-backed {med(0, 'RssFile'):.1f}).", "",
             "| import (each after the ones above) | + RSS | + anonymous | + file | RSS |",
             "| --- | --- | --- | --- | --- |"]
    for index, statement in enumerate(RSS_STAGES, 1):
        lines.append(f"| `{statement}` | {med(index, 'VmRSS') - med(index - 1, 'VmRSS'):.1f} | "
                     f"{med(index, 'RssAnon') - med(index - 1, 'RssAnon'):+.1f} | "
                     f"{med(index, 'RssFile') - med(index - 1, 'RssFile'):+.1f} | "
                     f"{med(index, 'VmRSS'):.1f} |")
    variants: list[tuple[str, Path, list[str]]] = [("no jobs", empty, []),
                                                    ("1,000 jobs", many, [])]
    variants += [(f"1,000 jobs, what if: {probes.WHAT_IF[n][0]}", many, [n])
                 for n in probes.WHAT_IF]
    variants.append(("1,000 jobs, what if: all of the above", many, list(probes.WHAT_IF)))
    daemons = ["| daemon (probe in-process, settled 5 s) | RSS | anonymous | file | pymalloc "
               "arenas | in used blocks |", "| --- | --- | --- | --- | --- | --- |"]
    for index, (name, jobs_dir, what_if) in enumerate(variants):
        got = [probe("daemon", jobs_dir, ctx.tmp / f"memory-state-{index}-{rep}",
                     ",".join(what_if) or "-") for rep in range(reps)]
        daemons.append(
            f"| {name} | {statistics.median(g['VmRSS'] for g in got):.1f} MiB | "
            f"{statistics.median(g['RssAnon'] for g in got):.1f} | "
            f"{statistics.median(g['RssFile'] for g in got):.1f} | "
            f"{statistics.median(g['arenas'] for g in got):.0f} | "
            f"{statistics.median(g['used_blocks'] for g in got) / 2**20:.1f} MiB |")
    held = probe("jobs", many)
    mib = 2**20
    kinds = ", ".join(f"{kind} {size / mib:.2f} MiB ({held['counts'][kind]:,})"
                      for kind, size in held["by_type"].items())
    facts = [
        f"- Loading {held['jobs']:,} jobs leaves {held['jobs_and_caches'] / mib:.1f} MiB "
        f"alive (tracemalloc), {held['caches'] / mib:.1f} MiB of it in the lru caches of the "
        f"project's modules ({', '.join(f'{k} {v:,}' for k, v in held['cache_entries'].items())}"
        f" entries); the files' bytes are {held['bytes_kept'] / mib:.1f} MiB more.",
        f"- Walking the jobs' objects ({held['walked'] / mib:.1f} MiB by `sys.getsizeof`): "
        f"{kinds}; the `document` trees (`Job.document`) alone "
        f"{held['documents'] / mib:.1f} MiB.",
        f"- Strings: {held['key_strings']:,} mapping keys hold {held['key_distinct']:,} "
        f"distinct values (the equal copies: {held['key_copies'] / mib:.2f} MiB); "
        f"{held['value_strings']:,} other strings hold {held['value_distinct']:,} "
        f"({held['value_copies'] / mib:.2f} MiB of copies).",
        f"- A `Step` has {held['step_fields']} fields: {held['step_object']} B of object and "
        f"{held['step_dict']} B of `__dict__`; {held['steps_a_job']:.1f} steps a job.",
    ]
    (out / "memory.summary.md").write_text("\n".join([
        f"# RSS of `pipeline serve` with 1,000 jobs (load average at the end: "
        f"{load_average()})", "", "## What each import adds (medians of 3 processes)", "",
        *lines, "", "## The daemon, settled", "", *daemons, "",
        "## What the loaded jobs hold (in-process, tracemalloc and a walk)", "", *facts,
        ""]) + "\n")


SCENARIOS = ("real", "burst", "firing", "startup", "validate", "memory")


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.profile",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("profile"))
    parser.add_argument("--seconds", type=int, default=20, help="the window (real, firing)")
    parser.add_argument("--only", default="real,burst",
                        help=f"scenarios, comma-separated, of: {', '.join(SCENARIOS)}")
    parser.add_argument("--jobs", type=int, default=100, help="jobs every second (real)")
    parser.add_argument("--burst", type=int, default=1000, help="jobs at the instant (burst)")
    parser.add_argument("--firing", type=int, default=1000,
                        help="jobs every second, no process (firing)")
    parser.add_argument("--rate", type=int, default=RATE, help="py-spy's samples a second")
    parser.add_argument("--reps", type=int, default=0,
                        help="repetitions (burst, firing: 1; startup, validate, memory: 5, 5, 3)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    scenarios = args.only.split(",")
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}")
    needs_perf = {"real", "burst"} & set(scenarios)
    missing = [] if PY_SPY.exists() else [str(PY_SPY)]
    missing += [] if shutil.which("perf") or not needs_perf else ["perf"]
    if missing:
        say(f"profile: missing {', '.join(missing)}: {VENV}/bin/pip install py-spy; "
            "apt-get install linux-perf")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="pipeline-profile-"))
    (tmp / "logs").mkdir()
    ctx = Context(quick=False, tmp=tmp, children=Children())
    try:
        for scenario in scenarios:
            say(f"profile: {scenario} (load average {load_average()})")
            if scenario == "real":
                profile_real(ctx, args.out, args.seconds, args.jobs, args.rate)
            elif scenario == "burst":
                profile_burst(ctx, args.out, args.burst, args.rate, args.reps or 1)
            elif scenario == "firing":
                profile_firing(ctx, args.out, args.seconds, args.firing, args.rate,
                               args.reps or 1)
            elif scenario == "startup":
                profile_startup(ctx, args.out, args.reps or 5, args.rate)
            elif scenario == "validate":
                profile_validate(ctx, args.out, args.reps or 5, args.rate)
            else:
                profile_memory(ctx, args.out, args.reps or 3)
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
