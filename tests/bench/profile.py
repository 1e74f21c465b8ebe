"""Profile the daemon under the real-step loads with py-spy, and summarise where its CPU goes.

    .venv/bin/pip install py-spy        # once; it is not a dependency of the project
    .venv/bin/python -m tests.bench.profile [--out DIR] [--seconds 20] [--only real,burst]

Two scenarios, each a real ``pipeline serve --no-http`` on jobs made as ``bin/bench`` makes
them (``steps.write_step_jobs``):

    real    100 jobs every second with a ``run:`` step; py-spy attaches after a warm-up and
            samples for ``--seconds``.
    burst   1,000 jobs with a ``run:`` step due at one ``at:`` instant; py-spy samples from
            just before the instant until every run has finished.

Each scenario runs twice, so that neither tool disturbs what the other sees:

1. Where the time between a fire and its step goes. The daemon runs under ``strace -f
   --seccomp-bpf`` tracing only process creation (clone, clone3, vfork, fork, execve: a few
   stops per step), with the full environment of each execve, so every step's shell is tied
   to its run (``PIPELINE_RUN_ID``) and fire (``PIPELINE_FIRE_TIME``). With the run's and the
   step's starts from the state database, each fire is a timeline: due → run recorded as
   started → step recorded as started → the daemon starts the fork → bash is exec'd → bash
   forks for ``$(date)`` and ``date`` is exec'd. The bare trio spawn loop runs the same way
   (``bare_loop.py --command``), for the same stages where it has them.
2. Where the daemon's CPU goes. py-spy attaches to a plain daemon and samples at ``--rate``
   Hz (default 100) without pausing it (``--nonblocking``), only the thread holding the GIL
   (``--gil``: py-spy's idle detection misses threads waiting in C here), so the counts split
   the daemon's Python CPU; its user and system CPU come from /proc/PID/stat, and ``perf
   record -g`` (when perf is installed: ``apt-get install linux-perf``) at the same time says
   which system calls the system CPU goes to.

DIR gets, per scenario: ``SCENARIO.strace`` and ``SCENARIO-bare.strace`` (the traces),
``SCENARIO.txt`` (py-spy's raw collapsed stacks, one line per stack: feed it to
flamegraph.pl or speedscope), ``SCENARIO.perf.data`` (``perf report -i``) and
``SCENARIO.summary.md`` (the stage table, then the CPU split: user and system, kernel entry
points, by thread, by what the frames belong to, the heaviest functions by own and total time).
Needs root or ptrace rights over the daemon (py-spy, perf) and strace.
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
    ("scheduler (pipeline.scheduler, triggers)",
     lambda f, p: p.endswith(("pipeline/scheduler.py", "pipeline/triggers.py"))),
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


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a live process (all its threads)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def summarise(raw: Path, title: str, seconds: float, fires: int, cpu: tuple[float, float],
              stages: Sequence[str], kernel: Sequence[str]) -> str:
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
        "## Where the time between a fire and its step goes (strace; ms)",
        "",
        *stages,
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


def perf(ctx: Context, pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    """``perf record`` of the daemon's threads (kernel stacks included), until SIGINT; None
    when perf is not installed (the summary then has no kernel split)."""
    if shutil.which("perf") is None:
        return None
    argv: list[str | Path] = ["perf", "record", "-e", "cpu-clock", "-F", "499", "-g", "-p",
                              str(pid), "-o", out]
    say("profile: " + ctx.show(argv))
    with ctx.log(f"perf-{out.stem}").open("wb") as log:
        return ctx.children.start(argv, stdout=subprocess.DEVNULL, stderr=log)


KERNEL_ENTRY = re.compile(r"^\s*(?P<total>[\d.]+)%\s+(?P<self>[\d.]+)%\s+\[k\]\s+"
                          r"(?P<sym>__(?:x64|se|ia32)_sys_\w+|do_exit|ret_from_fork\w*|"
                          r"asm_exc_page_fault|exc_page_fault|schedule)\s*$")
SHARE = re.compile(r"^\s*(?P<self>[\d.]+)%\s+\[(?P<kind>[k.])\]\s+(?P<sym>\S+)")


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
    entries = []
    for line in report("--children", "--sort", "sym", "-g", "none"):
        if match := KERNEL_ENTRY.match(line):
            entries.append((float(match["total"]), match["sym"]))
    lines = [f"perf: {kernel:.1f} % of the daemon's samples in the kernel, {user:.1f} % in user "
             "space. Kernel entry points by their share of all samples (inclusive):", "",
             "| kernel entry | share |", "| --- | --- |"]
    lines += [f"| {sym} | {total:.1f} % |" for total, sym in sorted(entries, reverse=True)[:15]]
    return lines


def py_spy(ctx: Context, pid: int, out: Path, *, duration: float, rate: int,
           ) -> subprocess.Popen[bytes]:
    # --gil: only the thread holding the GIL is sampled, i.e. the daemon's Python CPU (idle
    # threads waiting in C, which py-spy's idle detection misses here, are left out);
    # --nonblocking: the daemon is not paused to be sampled, so the lateness stays its own.
    argv: list[str | Path] = [PY_SPY, "record", "--pid", str(pid), "--rate", str(rate),
                              "--duration", str(math.ceil(duration)), "--format", "raw",
                              "--threads", "--gil", "--nonblocking", "--output", out]
    say("profile: " + ctx.show(argv))
    with ctx.log(f"py-spy-{out.stem}").open("wb") as log:
        return ctx.children.start(argv, stdout=subprocess.DEVNULL, stderr=log)


def profile_real(ctx: Context, out: Path, seconds: float, rate: int, jobs: int = 100) -> None:
    stages = trace_real(ctx, out, seconds, jobs)
    work = ctx.tmp / "profile-real"
    steps.write_step_jobs(work / "jobs", jobs, "every 1s", work / "marks")
    with serve.open_daemon(ctx, work / "jobs", work / "state", "profile-real") as daemon:
        start = math.floor(time.time()) + 4
        sleep_until_epoch(start - 0.5)
        before = cpu_split(daemon.pid)
        spy = py_spy(ctx, daemon.pid, out / "real.txt", duration=seconds, rate=rate)
        kernel = perf(ctx, daemon.pid, out / "real.perf.data")
        spy.wait(timeout=seconds + 60)
        after = cpu_split(daemon.pid)
        took = time.time() - (start - 0.5)
        if kernel is not None:
            ctx.children.end(kernel, sig=signal.SIGINT, grace=60)
    (out / "real.summary.md").write_text(summarise(
        out / "real.txt", f"{jobs} jobs every second, a run: step each", took,
        round(jobs * took), (after[0] - before[0], after[1] - before[1]), stages,
        perf_summary(out / "real.perf.data")))


def profile_burst(ctx: Context, out: Path, rate: int, jobs: int = 1000) -> None:
    stages = trace_burst(ctx, out, jobs)
    work = ctx.tmp / "profile-burst"
    at = math.ceil(time.time() + steps.BURST_MARGIN)
    instant = datetime.fromtimestamp(at, UTC).isoformat()
    steps.write_step_jobs(work / "jobs", jobs, f"{{at: '{instant}'}}", work / "marks")
    state = work / "state"
    with serve.open_daemon(ctx, work / "jobs", state, "profile-burst") as daemon:
        if time.time() > at - 1:
            raise BenchError("the daemon started too late for the burst's instant")
        sleep_until_epoch(at - 1)
        before = cpu_split(daemon.pid)
        spy = py_spy(ctx, daemon.pid, out / "burst.txt", duration=600, rate=rate)
        kernel = perf(ctx, daemon.pid, out / "burst.perf.data")
        db = state / "state.db"
        wait_until(lambda: steps.finished_runs(db) >= jobs, timeout=120,
                   what=f"{jobs:,} runs finished", proc=daemon)
        after = cpu_split(daemon.pid)
        took = time.time() - (at - 1)
        ctx.children.end(spy, sig=signal.SIGINT, grace=30)  # py-spy writes what it has
        if kernel is not None:
            ctx.children.end(kernel, sig=signal.SIGINT, grace=60)
    (out / "burst.summary.md").write_text(summarise(
        out / "burst.txt", f"{jobs:,} jobs due at one instant, a run: step each", took, jobs,
        (after[0] - before[0], after[1] - before[1]), stages,
        perf_summary(out / "burst.perf.data")))


# -- where the time goes: strace timelines ---------------------------------------------------

STRACE = ["strace", "-f", "-qq", "-ttt", "-v", "-s", "1024", "--seccomp-bpf",
          "-e", "trace=execve,clone,clone3,fork,vfork", "-e", "signal=none", "-o"]
TRACE_LINE = re.compile(r"^(?P<pid>\d+)\s+(?P<ts>\d+\.\d+) (?P<rest>.*)$")
FORKS = ("clone(", "clone3(", "vfork(", "fork(")
RESUMED = re.compile(r"^<\.\.\. (?P<call>\w+) resumed>.*= (?P<ret>-?\d+)")
RETURNED = re.compile(r"= (?P<ret>-?\d+)(?: [A-Z]+.*)?$")


@dataclass(frozen=True)
class Traced:
    """One step's process, from the trace: when it was due, its run, when the daemon (or
    loop) began the fork, when bash was exec'd, when ``date`` was exec'd."""

    fire: float
    run_id: str
    fork: float
    shell: float
    command: float | None


def timeline(trace: Path) -> list[Traced]:
    forks: dict[int, tuple[int, float]] = {}  # child pid -> (parent tid, fork began)
    pending: dict[int, float] = {}  # tid -> when its unfinished fork began
    execs: dict[int, tuple[float, str, str]] = {}  # pid -> (exec'd, program, the line)
    for line in trace.read_text(errors="replace").splitlines():
        match = TRACE_LINE.match(line)
        if match is None:
            continue
        pid, ts, rest = int(match["pid"]), float(match["ts"]), match["rest"]
        if rest.startswith(FORKS):
            if rest.endswith("<unfinished ...>"):
                pending[pid] = ts
            elif (ret := RETURNED.search(rest)) and int(ret["ret"]) > 0:
                forks[int(ret["ret"])] = (pid, ts)
        elif (resumed := RESUMED.match(rest)) and resumed["call"] in ("clone", "clone3",
                                                                      "vfork", "fork"):
            if int(resumed["ret"]) > 0 and pid in pending:
                forks[int(resumed["ret"])] = (pid, pending.pop(pid))
        elif rest.startswith("execve(") and "= -1 " not in rest:
            program = rest.split('"', 2)[1]
            execs[pid] = (ts, program, rest)
    shells = {pid: e for pid, e in execs.items()
              if e[1].endswith("/bash") and "PIPELINE_FIRE_TIME=" in e[2] and pid in forks}
    commands = {forks[pid][0]: e[0] for pid, e in execs.items()
                if e[1].endswith("/date") and pid in forks}
    found = []
    for pid, (shell, _, text) in shells.items():
        fire = re.search(r'"PIPELINE_FIRE_TIME=([^"]*)"', text)
        run = re.search(r'"PIPELINE_RUN_ID=([^"]*)"', text)
        if fire is None:
            continue
        found.append(Traced(datetime.fromisoformat(fire[1]).timestamp(),
                            run[1] if run else "", forks[pid][1], shell, commands.get(pid)))
    return found


def recorded_starts(db: Path) -> dict[str, tuple[float, float]]:
    """run id -> (run started as recorded, its first step started as recorded)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT id, started_at, (SELECT min(started_at) FROM steps "
                            "WHERE run_id = runs.id) FROM runs WHERE started_at IS NOT NULL")
        return {run: (datetime.fromisoformat(r).timestamp(),
                      datetime.fromisoformat(s).timestamp())
                for run, r, s in rows if s is not None}
    finally:
        conn.close()


def stage_table(contenders: Sequence[tuple[str, list[Traced], dict[str, tuple[float, float]]]],
                window: tuple[float, float]) -> list[str]:
    """p50 / p99 of each stage (ms), per contender, for the steps due inside ``window``."""
    stages: list[tuple[str, Callable[[Traced, tuple[float, float] | None], float | None]]] = [
        ("due → run recorded as started", lambda t, r: r[0] - t.fire if r else None),
        ("run recorded → its step recorded as started", lambda t, r: r[1] - r[0] if r else None),
        ("step recorded → the fork begins (a worker thread takes it; Popen's preparation)",
         lambda t, r: t.fork - r[1] if r else None),
        ("due → the fork begins", lambda t, r: t.fork - t.fire),
        ("the fork begins → bash is exec'd", lambda t, r: t.shell - t.fork),
        ("bash is exec'd → date is exec'd (bash starts, forks for $(date))",
         lambda t, r: t.command - t.shell if t.command else None),
        ("due → date is exec'd, in all", lambda t, r: t.command - t.fire if t.command else None),
    ]
    head = "| stage | " + " | ".join(f"{name} p50 / p99" for name, _, _ in contenders) + " |"
    lines = [head, "|" + " --- |" * (len(contenders) + 1)]
    for label, stage in stages:
        cells = []
        for _, traced, records in contenders:
            values = [1000 * v for t in traced if window[0] <= t.fire < window[1]
                      if (v := stage(t, records.get(t.run_id))) is not None]
            cells.append(f"{percentile(values, 0.5):.1f} / {percentile(values, 0.99):.1f} ms"
                         if values else "—")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    counts = ", ".join(f"{name}: {sum(1 for t in traced if window[0] <= t.fire < window[1]):,}"
                       for name, traced, _ in contenders)
    return [*lines, "", f"Steps traced in the window: {counts}."]


@contextmanager
def traced_bare(ctx: Context, trace: Path, jobs: int, marks: Path, at: float | None,
                ) -> Iterator[None]:
    argv: list[str | Path] = [*STRACE, trace, PYTHON, BENCH / "bare_loop.py", "--jobs",
                              str(jobs), "--out", trace.with_suffix(".json"), "--command",
                              steps.command(marks), *(["--at", str(at)] if at else [])]
    say("profile: " + ctx.show(argv))
    with ctx.log(trace.stem).open("wb") as err:
        proc = ctx.children.start(argv, stdout=subprocess.PIPE, stderr=err)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise BenchError(f"bare_loop.py under strace did not start ({ctx.log(trace.stem)})")
        yield
    finally:
        ctx.children.end(proc, grace=30)
        assert proc.stdout is not None
        proc.stdout.close()


def trace_real(ctx: Context, out: Path, seconds: float, jobs: int) -> list[str]:
    work = ctx.tmp / "trace-real"
    marks = work / "marks"
    steps.write_step_jobs(work / "jobs", jobs, "every 1s", marks)
    trace = out / "real.strace"
    with serve.open_daemon(ctx, work / "jobs", work / "state", "trace-real",
                           prefix=[*STRACE, trace]):
        start = math.floor(time.time()) + 3
        sleep_until_epoch(start + seconds + steps.LATE_GRACE)
    bare_trace = out / "real-bare.strace"
    with traced_bare(ctx, bare_trace, jobs, work / "bare-marks", None):
        bare_start = math.floor(time.time()) + 3
        sleep_until_epoch(bare_start + seconds + steps.LATE_GRACE)
    ours = timeline(trace)
    bare = timeline(bare_trace)
    # Each contender's own window of whole seconds; the bare loop's fires are re-based onto
    # the daemon's window so that one filter serves both.
    shift = start - bare_start
    bare = [Traced(t.fire + shift, t.run_id, t.fork + shift, t.shell + shift,
                   t.command + shift if t.command else None) for t in bare]
    return stage_table([("pipeline serve", ours, recorded_starts(work / "state" / "state.db")),
                        ("bare trio loop", bare, {})], (start, start + seconds))


def trace_burst(ctx: Context, out: Path, jobs: int) -> list[str]:
    work = ctx.tmp / "trace-burst"
    marks = work / "marks"
    at = math.ceil(time.time() + steps.BURST_MARGIN + 10)  # strace slows the start a little
    steps.write_step_jobs(work / "jobs", jobs,
                          f"{{at: '{datetime.fromtimestamp(at, UTC).isoformat()}'}}", marks)
    trace = out / "burst.strace"
    state = work / "state"
    with serve.open_daemon(ctx, work / "jobs", state, "trace-burst", prefix=[*STRACE, trace]):
        if time.time() > at - 1:
            raise BenchError("the traced daemon started too late for the burst's instant")
        db = state / "state.db"
        sleep_until_epoch(at)
        wait_until(lambda: steps.finished_runs(db) >= jobs, timeout=180,
                   what=f"{jobs:,} traced runs finished")
    bare_trace = out / "burst-bare.strace"
    bare_at = math.ceil(time.time()) + 3
    with traced_bare(ctx, bare_trace, jobs, work / "bare-marks", bare_at):
        steps.wait_for_marks(work / "bare-marks", jobs, deadline=bare_at + 60,
                             what="traced bare burst")
        time.sleep(1)
    bare = [Traced(t.fire + at - bare_at, t.run_id, t.fork + at - bare_at,
                   t.shell + at - bare_at, t.command + at - bare_at if t.command else None)
            for t in timeline(bare_trace)]
    return stage_table([("pipeline serve", timeline(trace), recorded_starts(state / "state.db")),
                        ("bare trio loop", bare, {})], (at, at + 1))


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.profile",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("profile"))
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--only", default="real,burst")
    parser.add_argument("--jobs", type=int, default=100, help="jobs every second (real)")
    parser.add_argument("--burst", type=int, default=1000, help="jobs at the instant (burst)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if not PY_SPY.exists():
        say(f"profile: no {PY_SPY}; install it with: {VENV}/bin/pip install py-spy")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="pipeline-profile-"))
    (tmp / "logs").mkdir()
    ctx = Context(quick=False, tmp=tmp, children=Children())
    try:
        for scenario in args.only.split(","):
            say(f"profile: {scenario}")
            if scenario == "real":
                profile_real(ctx, args.out, args.seconds, args.rate, args.jobs)
            elif scenario == "burst":
                profile_burst(ctx, args.out, args.rate, args.burst)
            else:
                parser.error(f"unknown scenario {scenario!r}")
            say(f"profile: wrote {args.out / scenario}.txt and {scenario}.summary.md")
    except BenchError as exc:
        say(f"profile: {exc}")
        return 1
    finally:
        ctx.children.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
