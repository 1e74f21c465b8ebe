"""What every benchmark shares: child processes that never outlive the harness, timing of whole
processes, medians and ranges, the result table, and the machine it ran on.

Every child starts in its own session, so one ``killpg`` ends it and everything it started
(a Prefect server's workers, a step a daemon spawned); ``Children.close`` does that for every
child still alive, and ``bin/bench`` calls it on the way out, Ctrl-C included.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "tests" / "bench"
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
PIPELINE = VENV / "bin" / "pipeline"
T = TypeVar("T")


# What every child gets: the harness's environment, except that Python may write its bytecode
# caches (this sandbox sets PYTHONDONTWRITEBYTECODE; a user's machine does not, and without the
# caches every start recompiles the project's modules).
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


class BenchError(Exception):
    """A benchmark could not be measured (a command failed, a process never got ready)."""


# -- figures -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """Repeated measurements of one thing."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)


@dataclass(frozen=True)
class Row:
    """One line of the table: a measurement, what it is compared with, and its target."""

    benchmark: str
    unit: str  # "s", "ms", "MiB" or "%"
    stats: Stats
    baseline: str = ""  # what the ratio divides by
    baseline_stats: Stats | None = None
    target: str = ""
    met: bool | None = None  # None: no target, or it could not be judged
    note: str = ""  # what the figure leaves out (fires that never started, say)

    @property
    def ratio(self) -> float | None:
        if self.baseline_stats is None or self.baseline_stats.median == 0:
            return None
        return self.stats.median / self.baseline_stats.median


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered) - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def fmt(value: float, unit: str) -> str:
    if math.isinf(value):
        return "∞"  # e.g. a lateness p99 over fires that never started
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit == "ms":
        if value >= 1000:
            return f"{value / 1000:.2f} s"
        if value < 0.1:
            return f"{value:.3f} ms"  # CPU per fire of the bare loop
        return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms"
    if unit == "%":
        return f"{value:.1f} %"
    return f"{value:.1f} {unit}"


def fmt_range(stats: Stats, unit: str) -> str:
    return f"{fmt(stats.low, unit)} – {fmt(stats.high, unit)}"


HEADERS = ("benchmark", "median", "min – max", "n", "baseline", "baseline median", "ratio",
           "target", "met?")


def table_rows(rows: Sequence[Row], *, markdown: bool = False) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for row in rows:
        ratio = row.ratio
        out.append((
            row.benchmark, fmt(row.stats.median, row.unit), fmt_range(row.stats, row.unit),
            str(len(row.stats.samples)), row.baseline or "—",
            fmt(row.baseline_stats.median, row.unit) if row.baseline_stats else "—",
            f"{ratio:.2f}×" if ratio is not None else "—", row.target or "—",
            {True: "yes", False: "**NO**" if markdown else "NO", None: "—"}[row.met]))
    return out


def text_table(rows: Sequence[Row]) -> str:
    cells = [HEADERS, *table_rows(rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(HEADERS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + " --- |" * len(HEADERS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |"
              for r in table_rows(rows, markdown=True)]
    return "\n".join(lines)


# -- processes -----------------------------------------------------------------------------


class Children:
    """Every process the harness starts; ``close`` ends the ones still alive."""

    def __init__(self) -> None:
        self._alive: list[subprocess.Popen[bytes]] = []

    def start(self, argv: Sequence[str | Path], **kwargs: object) -> subprocess.Popen[bytes]:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        if kwargs.get("env") is None:
            kwargs["env"] = CHILD_ENV
        proc: subprocess.Popen[bytes] = subprocess.Popen(
            [str(a) for a in argv], start_new_session=True, **kwargs)  # type: ignore[call-overload]
        self._alive.append(proc)
        return proc

    def end(self, proc: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM,
            grace: float = 10.0) -> int:
        """Signal ``proc``'s process group, give it ``grace`` seconds, then SIGKILL it.

        Returns the exit status of ``proc``. The group is killed even when its leader has
        exited already: whatever it started must not outlive it.
        """
        _signal_group(proc.pid, sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        _signal_group(proc.pid, signal.SIGKILL)  # stragglers of an exited leader
        self.forget(proc)
        return proc.returncode

    def forget(self, proc: subprocess.Popen[bytes]) -> None:
        if proc in self._alive:
            self._alive.remove(proc)

    def close(self) -> None:
        for proc in list(self._alive):
            self.end(proc, grace=3.0)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass(frozen=True)
class Timed:
    seconds: float
    status: int


def run_timed(children: Children, argv: Sequence[str | Path], *, log: Path,
              env: Mapping[str, str] | None = None, cwd: Path | None = None,
              check: bool = True) -> Timed:
    """Run ``argv`` as a whole process (stdout to /dev/null, stderr to ``log``) and time it
    from before the fork to after the exit. Raises BenchError if it fails and ``check``."""
    with log.open("wb") as err:
        start = time.perf_counter()
        proc = children.start(argv, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=cwd)
        proc.wait()
        seconds = time.perf_counter() - start
    _signal_group(proc.pid, signal.SIGKILL)  # nothing it started may linger
    children.forget(proc)
    if check and proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise BenchError(f"{shlex.join(str(a) for a in argv)} exited {proc.returncode}:\n"
                         f"{tail}")
    return Timed(seconds, proc.returncode)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, all its threads (from /proc/PID/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int | str = "self") -> float:
    """VmRSS of a live process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for process {pid}")


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str,
               proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log else ""
            raise BenchError(f"{what}: the process exited ({proc.returncode}) first\n{tail}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not after {timeout:g}s")
        time.sleep(0.05)


def sleep_until_epoch(moment: float) -> None:
    delay = moment - time.time()
    if delay > 0:
        time.sleep(delay)


# -- one run of the harness ----------------------------------------------------------------


@dataclass
class Context:
    """What a benchmark gets: the mode, a scratch directory, the children, and where to put
    what the report says besides the table."""

    quick: bool
    tmp: Path
    children: Children
    peers: bool = True
    commands: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)  # Markdown lines for the report

    memo: dict[str, Any] = field(default_factory=dict)  # measurements groups share

    def reps(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def once(self, key: str, make: Callable[[], T]) -> T:
        """``make()``, measured once per invocation: a later group that needs the same run
        (CPU per fire reads the firing runs) reuses it rather than measuring it again."""
        if key not in self.memo:
            self.memo[key] = make()
        found: T = self.memo[key]
        return found

    def show(self, argv: Sequence[str | Path], env: Mapping[str, str] | None = None) -> str:
        """``argv`` as a shell line a reader can paste (scratch paths shown as $BENCH_TMP)."""
        prefix = "".join(f"{k}={shlex.quote(v)} " for k, v in (env or {}).items())
        line = prefix + shlex.join(str(a) for a in argv)
        line = re.sub(r"http://127\.0\.0\.1:\d+", "http://127.0.0.1:PORT", line)
        line = re.sub(r"-rep\d+\b", "-repN", line)  # one line for every repetition
        line = line.replace(str(self.tmp), "$BENCH_TMP").replace(str(ROOT) + "/", "")
        return line.replace(str(Path.home()) + "/", "~/")

    def command(self, line: str) -> None:
        if line not in self.commands:
            self.commands.append(line)

    def log(self, name: str) -> Path:
        return self.tmp / "logs" / f"{name}.log"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def machine() -> dict[str, str]:
    """The facts about this machine that the figures depend on."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    version = subprocess.run([str(PYTHON), "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores (nproc)": str(os.cpu_count()),
        "CPU": model,
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "Python": f"{version} ({PYTHON.relative_to(ROOT)})",
        "kernel": platform.release(),
        "pipeline": product_version(),
    }


def product_version() -> str:
    """The commit of the checkout, and whether the product's files differ from it."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    if not commit:
        return "not a git checkout"
    changed = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", *PRODUCT],
                             capture_output=True, text=True, check=False).stdout.strip()
    return f"commit {commit}" + (" with uncommitted changes" if changed else "")


PRODUCT = ("pipeline", "schemas", "pyproject.toml")


def product_fingerprint() -> str:
    """What the product's files are now: committed trees, edits and new files alike."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True,
                              text=True, check=False).stdout

    return hashlib.sha256((git("rev-parse", *(f"HEAD:{p}" for p in PRODUCT))
                           + git("diff", "HEAD", "--", *PRODUCT)
                           + git("status", "--porcelain", "--", *PRODUCT)).encode()).hexdigest()


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass(frozen=True)
class Tool:
    """One contender of a whole-process benchmark: ``argv(rep)`` runs it once (rep -1 is the
    warm-up, which fills the page cache and writes .pyc files and is not counted)."""

    name: str
    reps: int
    argv: Callable[[int], Sequence[str | Path]]
    env: Mapping[str, str] | None = None


def measure(ctx: Context, tools: Sequence[Tool], *, what: str) -> dict[str, list[Timed]]:
    """Time every tool ``reps`` times, interleaved (A B C A B C ...) so that a change in the
    machine's load touches every tool alike."""
    for tool in tools:
        ctx.command(ctx.show(tool.argv(0), _env_shown(tool.env)))
        run_timed(ctx.children, tool.argv(-1), log=ctx.log(f"{what}-{tool.name}-warmup"),
                  env=tool.env)
    timings: dict[str, list[Timed]] = {tool.name: [] for tool in tools}
    for rep in range(max(tool.reps for tool in tools)):
        for tool in tools:
            if rep < tool.reps:
                timings[tool.name].append(run_timed(
                    ctx.children, tool.argv(rep), log=ctx.log(f"{what}-{tool.name}"),
                    env=tool.env))
    return timings


def _env_shown(env: Mapping[str, str] | None) -> dict[str, str]:
    """The variables a tool sets beyond the harness's own environment."""
    if env is None:
        return {}
    return {k: v for k, v in env.items() if CHILD_ENV.get(k) != v}


def seconds(timings: Sequence[Timed]) -> Stats:
    return Stats(tuple(t.seconds for t in timings))

