"""File arrival (issue 13 §1): 10,000 files dropped into a watched folder at once.

A ``FileWatcher`` runs in this process as the daemon runs it (real watchfiles events, stats in
worker threads, a rescan every 30 s), with an in-memory store; another process drops the files
(so that writing them is not counted as the watcher's CPU). Measured: the time from the last
file written until every file has fired (``settle`` included: a file fires only after it has
stayed unchanged that long), the CPU this process used meanwhile, and its memory.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from pipeline.filewatch import FileFire, FileWatcher, Outcome, Watched
from tests.bench.harness import Context, Row, Stats, rss_mib, say

FILES = 10_000
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


def run(ctx: Context) -> list[Row]:
    say(f"bench: file arrival, {FILES:,} files dropped at once")
    results = [drop_and_watch(ctx.tmp / f"drop-{rep}", FILES)
               for rep in range(ctx.reps(3, 1))]
    for result in results:
        if result.fired != FILES or result.handed != FILES:
            raise AssertionError(f"{result.fired:,} files fired, {result.handed:,} fires "
                                 f"handed out, for {FILES:,} files")
    ctx.command(f"python: tests.bench.filewatch.drop_and_watch(Path('$BENCH_TMP/drop'), "
                f"{FILES})")
    ctx.details.append(
        f"**File arrival** — {FILES:,} files written into a watched folder by another "
        f"process; every one fired exactly once, `settle: {SETTLE:g}s`, in "
        f"{Stats(tuple(r.batches for r in results)).median:.0f} batches (median). The time "
        "counts from the last file written and includes the settle; the CPU is the "
        "watcher's process over the drop and the firing.")
    return [
        Row(f"file arrival: {FILES:,} files, last written → all fired (settle {SETTLE:g} s)",
            "s", Stats(tuple(r.seconds for r in results)), target="(reference)"),
        Row(f"file arrival: {FILES:,} files, watcher CPU", "s",
            Stats(tuple(r.cpu for r in results)), target="(reference)"),
        Row(f"file arrival: {FILES:,} files, watcher memory growth", "MiB",
            Stats(tuple(r.rss_growth for r in results)), target="(reference)"),
    ]
