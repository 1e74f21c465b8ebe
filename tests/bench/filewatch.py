"""File arrival (issue 13 §1): files dropped into a watched folder at once.

Two measurements, the files written by another process as fast as it can:

- ``daemon``: 1,000 files dropped under the glob of one job (``schedule: {file: "drop/*.csv",
  settle: 1s}``, ``concurrency: allow``, a step that starts no process) of a real ``pipeline
  serve``: the time from the last file written until every file has fired (its run recorded
  as queued, read from the state database), and the daemon's CPU from the drop until then.
- ``drop_and_watch``: 10,000 files under a ``FileWatcher`` run in this process as the daemon
  runs it (real watchfiles events, stats in worker threads, a rescan every 30 s), with an
  in-memory store: the time from the last file written until every file has fired, the CPU
  this process used meanwhile, and its memory.

Both times include the ``settle``: a file fires only after it has stayed unchanged that long.
"""

from __future__ import annotations

import gc
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import trio

from pipeline.filewatch import FileFire, FileWatcher, Outcome, Watched
from tests.bench import serve
from tests.bench.harness import (
    PYTHON,
    BenchError,
    Context,
    Row,
    Stats,
    cpu_seconds,
    rss_mib,
    say,
    wait_until,
)

FILES = 10_000
DAEMON_FILES = 1_000
ARRIVALS = """\
name: arrivals
description: one run for each file that lands, for benchmarks
schedule: {{file: "drop/*.csv", settle: {settle:g}s}}
concurrency: allow
steps:
  - id: nap
    uses: sleep
    with: {{duration: 0s}}
"""
SETTLE = 1.0
# Writes COUNT files into FOLDER as fast as it can: the drop.
DROPPER = ("import sys, pathlib\n"
           "folder, count = pathlib.Path(sys.argv[1]), int(sys.argv[2])\n"
           "for i in range(count):\n"
           "    (folder / f'{i:06}.csv').write_text(f'row {i}\\n')\n")


@dataclass(frozen=True)
class Dropped:
    seconds: float  # from the last file written until the last one fired
    cpu: float  # this process's CPU seconds over the same time, and while the files landed
    fired: int  # distinct files fired
    handed: int  # FIRE records handed out (== fired: none twice)
    batches: int  # calls to deliver with fires
    rss_growth: float  # MiB this process grew by


def drop_and_watch(folder: Path, count: int, *, settle: float = SETTLE,
                   timeout: float = 300.0) -> Dropped:
    """Start a watcher on ``folder/*.csv``, drop ``count`` files from another process, and
    wait until each has fired. Raises ``TimeoutError`` if they have not within ``timeout``."""
    folder.mkdir(parents=True, exist_ok=True)
    recorded: set[str] = set()
    batches: list[int] = []
    changed = [trio.Event()]  # set (and replaced) after every delivery

    async def delivered(test: Callable[[], bool]) -> None:
        while not test():
            await changed[0].wait()

    def dealt_with(job: str, keys: Sequence[str]) -> Collection[str]:
        return [key for key in keys if key in recorded]

    async def deliver(fires: list[FileFire]) -> None:
        recorded.update(f.key for f in fires)
        firing = [f for f in fires if f.outcome is Outcome.FIRE]
        if firing:
            batches.append(len(firing))
        changed[0].set()
        changed[0] = trio.Event()

    async def main() -> Dropped:
        watcher = FileWatcher(dealt_with=dealt_with, deliver=deliver)
        watcher.load([Watched("bench", str(folder / "*.csv"), settle)])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher.serve)
            await delivered(lambda: bool(recorded))  # BEGUN: the watch is up
            await trio.sleep(0.5)  # watchfiles' thread is watching
            gc.collect()
            rss_before, cpu_before = rss_mib(), time.process_time()
            await trio.run_process([sys.executable, "-c", DROPPER, str(folder), str(count)])
            dropped = time.perf_counter()
            with trio.fail_after(timeout):
                await delivered(lambda: sum(batches) >= count)
            took = time.perf_counter() - dropped
            cpu = time.process_time() - cpu_before
            nursery.cancel_scope.cancel()
        fired = {key for key in recorded if key.startswith("file:")}
        return Dropped(took, cpu, len(fired), sum(batches), len(batches),
                       rss_mib() - rss_before)

    try:
        return trio.run(main)
    except trio.TooSlowError:
        raise TimeoutError(f"not every one of {count:,} files fired within {timeout:g} s"
                           ) from None


def _query(db: Path, sql: str) -> tuple[object, ...]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        row: tuple[object, ...] = conn.execute(sql).fetchone()
        return row
    except sqlite3.OperationalError:  # its tables are not made yet
        return (None,)
    finally:
        conn.close()


@dataclass(frozen=True)
class Arrived:
    seconds: float  # from the last file written until the last file's run was recorded
    cpu: float  # the daemon's CPU seconds from the drop until every file had fired
    runs: int  # runs the files made (one each: none twice)


def drop_into_daemon(ctx: Context, work: Path, count: int, *,
                     settle: float = SETTLE) -> Arrived:
    """A real ``pipeline serve`` with one job watching ``drop/*.csv``; ``count`` files
    dropped by another process once the watch has begun; measured until each has fired."""
    jobs, state = work / "jobs", work / "state"
    (jobs / "drop").mkdir(parents=True)
    (jobs / "arrivals.yaml").write_text(ARRIVALS.format(settle=settle))
    db = state / "state.db"
    with serve.open_daemon(ctx, jobs, state, "files-daemon") as daemon:
        # Files there before the watch's baseline is complete would be taken as existing.
        wait_until(lambda: _query(db, "SELECT count(*) FROM fired_keys WHERE key LIKE "
                                      "'file-begun:%'")[0] == 1,
                   timeout=30, what="the daemon's file watch began", proc=daemon)
        time.sleep(0.5)
        before = cpu_seconds(daemon.pid)
        dropper = [str(PYTHON), "-c", DROPPER, str(jobs / "drop"), str(count)]
        if subprocess.run(dropper, check=False).returncode != 0:
            raise BenchError("the dropper failed")
        dropped = time.time()
        fired = "SELECT count(*), max(queued_at) FROM runs WHERE trigger = 'file'"
        wait_until(lambda: int(_query(db, fired)[0] or 0) >= count, timeout=300,
                   what=f"{count:,} dropped files fired", proc=daemon)
        cpu = cpu_seconds(daemon.pid) - before
        runs, last = _query(db, fired)
    assert isinstance(runs, int) and isinstance(last, str)
    return Arrived(datetime.fromisoformat(last).timestamp() - dropped, cpu, runs)


def run(ctx: Context) -> list[Row]:
    reps = ctx.reps(3, 1)
    say(f"bench: file arrival, {DAEMON_FILES:,} files dropped at once into pipeline serve's "
        f"watched folder ({reps}), then {FILES:,} into a watcher alone")
    arrived = [drop_into_daemon(ctx, ctx.tmp / f"files-daemon-rep{rep}", DAEMON_FILES)
               for rep in range(reps)]
    ctx.command(f"python: tests.bench.filewatch.drop_into_daemon(ctx, "
                f"Path('$BENCH_TMP/files-daemon-repN'), {DAEMON_FILES})")
    for result in arrived:
        if result.runs != DAEMON_FILES:
            raise AssertionError(f"{result.runs:,} runs for {DAEMON_FILES:,} files")
    results = [drop_and_watch(ctx.tmp / f"drop-{rep}", FILES)
               for rep in range(reps)]
    for result in results:
        if result.fired != FILES or result.handed != FILES:
            raise AssertionError(f"{result.fired:,} files fired, {result.handed:,} fires "
                                 f"handed out, for {FILES:,} files")
    ctx.command(f"python: tests.bench.filewatch.drop_and_watch(Path('$BENCH_TMP/drop'), "
                f"{FILES})")
    ctx.details.append(
        f"**File arrival, pipeline serve** — {DAEMON_FILES:,} files written into the folder "
        f"one job watches (`settle: {SETTLE:g}s`, `concurrency: allow`, a step that starts "
        "no process), each made exactly one run. The time counts from the last file written "
        "to the last run recorded as queued, and includes the settle; the CPU is the "
        "daemon's, from the drop until every file had fired.")
    ctx.details.append(
        f"**File arrival, a watcher alone** — {FILES:,} files written into a watched folder "
        f"by another process; every one fired exactly once, `settle: {SETTLE:g}s`, in "
        f"{Stats(tuple(r.batches for r in results)).median:.0f} batches (median). The time "
        "counts from the last file written and includes the settle; the CPU is the "
        "watcher's process over the drop and the firing.")
    return [
        Row(f"file arrival, pipeline serve: {DAEMON_FILES:,} files, last written → all fired "
            f"(settle {SETTLE:g} s)", "s", Stats(tuple(r.seconds for r in arrived)),
            target="(reference)"),
        Row(f"file arrival, pipeline serve: {DAEMON_FILES:,} files, daemon CPU", "s",
            Stats(tuple(r.cpu for r in arrived)), target="(reference)"),
        Row(f"file arrival: {FILES:,} files, last written → all fired (settle {SETTLE:g} s)",
            "s", Stats(tuple(r.seconds for r in results)), target="(reference)"),
        Row(f"file arrival: {FILES:,} files, watcher CPU", "s",
            Stats(tuple(r.cpu for r in results)), target="(reference)"),
        Row(f"file arrival: {FILES:,} files, watcher memory growth", "MiB",
            Stats(tuple(r.rss_growth for r in results)), target="(reference)"),
    ]
