"""File arrival (pipeline.filewatch): files under a glob fire once they have settled.

Real files in tmp_path. Where time matters (settle, rescans) trio's virtual clock runs and
blocking calls run inline (no worker threads, whose real time the virtual clock cannot see);
the store is a plain object whose two functions the watcher is given. Two tests at the end
use real watchfiles events and real time.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import watchfiles

from pipeline import spec
from pipeline.filewatch import FileFire, FileWatcher, Outcome, Watched, watched_of


class Store:
    """What the daemon's store does for the watcher: which keys are recorded, and recording
    what it is handed (a run for FIRE, a decision for the others)."""

    def __init__(self) -> None:
        self.recorded: dict[str, set[str]] = {}
        self.batches: list[list[FileFire]] = []
        self.asked = 0  # keys asked about
        self._delivered = trio.Event()

    def dealt_with(self, job: str, keys: Sequence[str]) -> Collection[str]:
        self.asked += len(keys)
        return [key for key in keys if key in self.recorded.get(job, set())]

    async def deliver(self, fires: list[FileFire]) -> None:
        self.batches.append(fires)
        for fire in fires:
            self.recorded.setdefault(fire.job, set()).add(fire.key)
        self._delivered.set()
        self._delivered = trio.Event()

    async def until(self, test: Callable[[], object]) -> None:
        """Wait until ``test()`` holds after some delivery."""
        while not test():
            await self._delivered.wait()

    def handed(self, outcome: Outcome = Outcome.FIRE) -> list[FileFire]:
        return [f for batch in self.batches for f in batch if f.outcome is outcome]

    def fired(self) -> list[tuple[str, str]]:
        return [(f.job, os.path.basename(f.path)) for f in self.handed()]


async def inline(function: Callable[..., Any], *args: Any) -> Any:
    await trio.lowlevel.checkpoint()
    return function(*args)


def drop(path: Path, text: str = "data") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


class Running:
    """A watcher serving in the test's nursery, with its store."""

    def __init__(self, nursery: trio.Nursery, store: Store, watched: list[Watched],
                 **options: Any) -> None:
        options.setdefault("changes", None)
        options.setdefault("offload", inline)
        options.setdefault("rescan", 1.0)
        self.watcher = FileWatcher(dealt_with=store.dealt_with, deliver=store.deliver,
                                   **options)
        self.watcher.load(watched)
        self.store = store
        self.scope = trio.CancelScope()
        nursery.start_soon(self._serve)

    async def _serve(self) -> None:
        with self.scope:
            await self.watcher.serve()

    def stop(self) -> None:
        self.scope.cancel()


def watch(tmp_path: Path, pattern: str = "in/*.csv", *, job: str = "etl", settle: float = 10.0,
          existing: bool = False) -> Watched:
    return Watched(job, str(tmp_path / pattern), settle, existing)


# -- settling ------------------------------------------------------------------------------


async def test_a_dropped_file_fires_once_after_it_settled(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    (tmp_path / "in").mkdir()
    store = Store()
    async with trio.open_nursery() as nursery:
        running = Running(nursery, store, [watch(tmp_path)])
        await trio.sleep(0.5)
        assert [f.outcome for b in store.batches for f in b] == [Outcome.BEGUN]  # empty baseline
        report = drop(tmp_path / "in" / "report.csv", "a,b\n1,2\n")
        drop(tmp_path / "in" / "notes.txt")  # not under the glob
        await trio.sleep(9.0)  # seen by the rescan at 1 s, settles at 11 s
        assert store.fired() == []
        await trio.sleep(3.0)
        assert store.fired() == [("etl", "report.csv")]
        await trio.sleep(60.0)  # rescans see the same file: it never fires again
        running.stop()
    [fire] = store.handed()
    info = report.stat()
    assert fire.key == f"file:{report}:{info.st_size}:{info.st_mtime_ns}"
    assert fire.event == {"path": str(report), "size": 8, "mtime": fire.mtime.isoformat()}
    assert fire.mtime.timestamp() == pytest.approx(info.st_mtime, abs=1e-6)
    assert running.watcher.statistics().fired == 1


async def test_a_file_still_being_written_waits_until_it_stops_changing(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    store = Store()
    growing = drop(tmp_path / "in" / "big.csv", "x")
    async with trio.open_nursery() as nursery:
        running = Running(nursery, store, [watch(tmp_path, settle=5.0, existing=True)])
        for _ in range(8):  # appended every 3 s for 24 s: never unchanged for 5 s
            await trio.sleep(3.0)
            with growing.open("a") as out:
                out.write("more")
            assert store.fired() == []
        await trio.sleep(8.0)
        running.stop()
    [fire] = store.handed()
    assert fire.size == growing.stat().st_size == 1 + 8 * 4


async def test_a_file_deleted_before_it_settled_fires_nothing(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    (tmp_path / "in").mkdir()
    store = Store()
    async with trio.open_nursery() as nursery:
        running = Running(nursery, store, [watch(tmp_path)])
        await trio.sleep(0.5)
        brief = drop(tmp_path / "in" / "brief.csv")
        await trio.sleep(5.0)
        brief.unlink()
        await trio.sleep(30.0)
        assert store.fired() == []
        drop(tmp_path / "in" / "brief.csv", "back for good")  # arrives again: it fires
        await trio.sleep(15.0)
        running.stop()
    assert store.fired() == [("etl", "brief.csv")]


async def test_a_file_that_changes_later_fires_again(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    (tmp_path / "in").mkdir()
    store = Store()
    async with trio.open_nursery() as nursery:
        running = Running(nursery, store, [watch(tmp_path)])
        await trio.sleep(0.5)
        daily = drop(tmp_path / "in" / "daily.csv", "monday")
        await trio.sleep(15.0)
        daily.write_text("tuesday!")
        os.utime(daily, ns=(daily.stat().st_atime_ns, daily.stat().st_mtime_ns + 10**9))
        await trio.sleep(15.0)
        running.stop()
    first, second = store.handed()
    assert (first.size, second.size) == (6, 8)
    assert first.key != second.key and second.mtime_ns > first.mtime_ns


# -- what was there before, and restarts ---------------------------------------------------


async def test_files_there_when_the_watch_first_begins_are_its_baseline(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    old = [drop(tmp_path / "in" / f"old{i}.csv") for i in range(3)]
    store = Store()
    async with trio.open_nursery() as nursery:
        running = Running(nursery, store, [watch(tmp_path)])
        await trio.sleep(0.5)
        baseline = store.handed(Outcome.BASELINE)
        assert sorted(f.path for f in baseline) == sorted(map(str, old))
        # BEGUN comes after the baseline, so a crash in between takes the baseline again
        assert store.batches[-1][-1].outcome is Outcome.BEGUN
        assert store.batches[-1][-1].key == f"file-begun:{tmp_path}/in/*.csv"
        await trio.sleep(60.0)
        running.stop()
    assert store.fired() == []
    assert running.watcher.statistics().baselined == 3


async def test_files_that_arrive_while_no_daemon_runs_fire_when_one_starts(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    drop(tmp_path / "in" / "old.csv")
    store = Store()
    async with trio.open_nursery() as nursery:
        first = Running(nursery, store, [watch(tmp_path)])
        await trio.sleep(0.5)
        drop(tmp_path / "in" / "seen.csv")
        await trio.sleep(15.0)
        first.stop()
    assert store.fired() == [("etl", "seen.csv")]
    # down: one arrives, one that fired is rewritten
    drop(tmp_path / "in" / "while-down.csv")
    drop(tmp_path / "in" / "seen.csv", "rewritten, longer")
    async with trio.open_nursery() as nursery:
        second = Running(nursery, store, [watch(tmp_path)])
        await trio.sleep(15.0)
        second.stop()
    assert sorted(store.fired()) == [("etl", "seen.csv"), ("etl", "seen.csv"),
                                     ("etl", "while-down.csv")]
    assert len(store.handed(Outcome.BASELINE)) == 1  # old.csv, once, by the first start only
    assert len(store.handed(Outcome.BEGUN)) == 1


async def test_with_existing_true_the_files_already_there_fire(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    drop(tmp_path / "in" / "a.csv")
    drop(tmp_path / "in" / "b.csv")
    store = Store()
    async with trio.open_nursery() as nursery:
        running = Running(nursery, store, [watch(tmp_path, existing=True)])
        await trio.sleep(9.0)
        assert store.fired() == []  # they settle first
        await trio.sleep(3.0)
        running.stop()
    assert sorted(store.fired()) == [("etl", "a.csv"), ("etl", "b.csv")]
    assert store.handed(Outcome.BASELINE) == store.handed(Outcome.BEGUN) == []


async def test_a_restart_never_fires_a_file_twice(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    for i in range(5):
        drop(tmp_path / "in" / f"f{i}.csv")
    store = Store()
    for _ in range(3):
        async with trio.open_nursery() as nursery:
            running = Running(nursery, store, [watch(tmp_path, existing=True)])
            await trio.sleep(20.0)
            running.stop()
    assert sorted(store.fired()) == [("etl", f"f{i}.csv") for i in range(5)]


# -- several globs, several jobs -------------------------------------------------------------


async def test_each_job_fires_for_its_own_files_once_per_file(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    (tmp_path / "in" / "eu").mkdir(parents=True)
    store = Store()
    watches = [watch(tmp_path, "in/*.csv", job="etl"),
               watch(tmp_path, "in/**/*.csv", job="etl", settle=2.0),  # same file, same job
               watch(tmp_path, "in/**/*.csv", job="audit", settle=1.0)]
    async with trio.open_nursery() as nursery:
        running = Running(nursery, store, watches)
        await trio.sleep(0.5)
        drop(tmp_path / "in" / "top.csv")
        drop(tmp_path / "in" / "eu" / "deep.csv")
        await trio.sleep(20.0)
        running.stop()
    assert sorted(store.fired()) == [("audit", "deep.csv"), ("audit", "top.csv"),
                                     ("etl", "deep.csv"), ("etl", "top.csv")]


async def test_a_removed_watch_stops_and_a_new_one_begins(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    drop(tmp_path / "out" / "before.json")
    store = Store()
    async with trio.open_nursery() as nursery:
        running = Running(nursery, store, [watch(tmp_path)])
        await trio.sleep(0.5)
        running.watcher.load([watch(tmp_path, "out/*.json")])  # the job's file was edited
        await trio.sleep(0.5)
        drop(tmp_path / "in" / "ignored.csv")
        drop(tmp_path / "out" / "after.json")
        await trio.sleep(20.0)
        running.stop()
    assert store.fired() == [("etl", "after.json")]
    assert [os.path.basename(f.path) for f in store.handed(Outcome.BASELINE)] == [
        "before.json"]


async def test_a_folder_created_later_is_found_by_the_rescan(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    store = Store()
    async with trio.open_nursery() as nursery:
        running = Running(nursery, store, [watch(tmp_path, "later/**/*.csv", settle=1.0)],
                          rescan=30.0)
        await trio.sleep(5.0)
        drop(tmp_path / "later" / "a" / "b" / "x.csv")
        await trio.sleep(40.0)
        running.stop()
    assert store.fired() == [("etl", "x.csv")]


async def test_many_files_come_out_in_batches_and_each_once(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    (tmp_path / "in").mkdir()
    store = Store()
    async with trio.open_nursery() as nursery:
        running = Running(nursery, store, [watch(tmp_path, settle=2.0)], batch=500)
        await trio.sleep(0.5)
        for i in range(1200):
            (tmp_path / "in" / f"{i:05}.csv").write_text(str(i))
        await trio.sleep(10.0)
        running.stop()
    fires = store.handed()
    assert len(fires) == len({f.path for f in fires}) == 1200
    assert [len(b) for b in store.batches if b[0].outcome is Outcome.FIRE] == [500, 500, 200]
    assert store.asked <= 1200 + 1  # one question per file (and the BEGUN key)


# -- watch events ----------------------------------------------------------------------------


async def test_a_watch_event_finds_a_file_before_any_rescan(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    (tmp_path / "in").mkdir()
    send, receive = trio.open_memory_channel[set[tuple[watchfiles.Change, str]]](10)
    watched_folders: list[tuple[tuple[str, ...], bool]] = []

    async def changes(folders: Sequence[str], recursive: bool,
                      stop: trio.Event) -> AsyncIterator[set[tuple[watchfiles.Change, str]]]:
        watched_folders.append((tuple(folders), recursive))
        async for batch in receive:
            yield batch

    store = Store()
    async with trio.open_nursery() as nursery:
        running = Running(nursery, store, [watch(tmp_path, settle=3.0)], changes=changes,
                          rescan=3600.0)
        await trio.sleep(1.0)
        path = drop(tmp_path / "in" / "now.csv")
        await send.send({(watchfiles.Change.added, str(path)),
                         (watchfiles.Change.added, str(tmp_path / "in" / "other.txt"))})
        await trio.sleep(2.0)
        assert store.fired() == []
        await trio.sleep(2.0)
        assert store.fired() == [("etl", "now.csv")]
        running.stop()
    assert watched_folders == [((str(tmp_path / "in"),), False)]


# -- from job files --------------------------------------------------------------------------


def test_watched_of_reads_the_jobs_file_schedules(tmp_path: Path) -> None:
    path = tmp_path / "jobs" / "etl.yaml"
    path.parent.mkdir()
    path.write_text('schedule:\n  - "@daily"\n  - {file: "in/*.csv", settle: 30s}\n'
                    '  - {file: /srv/x/*.json, existing: true}\nsteps:\n'
                    '  - {id: a, run: "true"}\n')
    job = spec.load_job(path)
    assert watched_of([job]) == [
        Watched("etl", str(tmp_path / "jobs" / "in" / "*.csv"), 30.0, False),
        Watched("etl", "/srv/x/*.json", 5.0, True)]


# -- real watchfiles, real time --------------------------------------------------------------


@pytest.mark.slow
async def test_real_watch_events_fire_a_file_long_before_a_rescan(tmp_path: Path) -> None:
    (tmp_path / "in" / "deep").mkdir(parents=True)
    store = Store()
    async with trio.open_nursery() as nursery:
        watcher = FileWatcher(dealt_with=store.dealt_with, deliver=store.deliver,
                              rescan=3600.0)
        watcher.load([watch(tmp_path, "in/**/*.csv", settle=0.3)])
        nursery.start_soon(watcher.serve)
        with trio.fail_after(10):
            await store.until(lambda: store.handed(Outcome.BEGUN))
        await trio.sleep(0.5)  # the watch is set up
        drop(tmp_path / "in" / "deep" / "one.csv")
        with trio.fail_after(10):
            await store.until(store.fired)
        nursery.cancel_scope.cancel()
    assert store.fired() == [("etl", "one.csv")]
    assert watcher.statistics().scans == 1  # the first look; events found the file


@pytest.mark.slow
async def test_real_watch_sees_a_root_created_after_it_began(tmp_path: Path) -> None:
    store = Store()
    async with trio.open_nursery() as nursery:
        watcher = FileWatcher(dealt_with=store.dealt_with, deliver=store.deliver, rescan=0.5)
        watcher.load([watch(tmp_path, "in/*.csv", settle=0.2)])
        nursery.start_soon(watcher.serve)
        await trio.sleep(0.3)
        drop(tmp_path / "in" / "first.csv")  # the root appears: a rescan finds it
        with trio.fail_after(10):
            await store.until(store.fired)
        await trio.sleep(1.0)  # the watch on the new root is set up
        drop(tmp_path / "in" / "second.csv")
        with trio.fail_after(10):
            await store.until(lambda: len(store.fired()) == 2)
        nursery.cancel_scope.cancel()
    assert sorted(store.fired()) == [("etl", "first.csv"), ("etl", "second.csv")]
