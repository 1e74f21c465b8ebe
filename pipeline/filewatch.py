"""File arrival (issue 13 §1, CONTRACT §11): ``schedule: {file: GLOB, settle: 10s}``.

A ``FileWatcher`` watches the ``file:`` schedules it is given (``load``) and hands out a
``FileFire`` for each file under a glob once that file has stopped changing for the
schedule's ``settle``: its size and modification time were the same when it was first seen
in that state and again ``settle`` seconds later (``wait_for``'s ``stable_for``). A file
deleted before it settled fires nothing; a file that changes later (a new size or mtime) fires
again. A fire's identity is (job, path, size, mtime): ``FileFire.key``, the run's fire key.

Where files are seen: watchfiles events on each glob's root folder (recursive only for globs
that reach below it), and a rescan of every glob every ``rescan`` seconds, because events can
be lost (an inotify queue overflow, a network file system, a folder created after the watch
began). Every blocking call (stat, listing folders, the store) goes through ``offload``.

What has been dealt with lives in the caller's store, not here, so that a restart (or another
node) neither loses nor doubles a fire: before handing out fires the watcher asks
``dealt_with(job, keys)`` which of those keys are already recorded, and leaves those out. The
caller records what it is handed, in one of three ways (``Outcome``):

* ``FIRE``: make a run (trigger ``file``, fire key ``key``, ``run.event`` = ``event``);
* ``BASELINE``: the file was there when a watch with ``existing: false`` first began: record
  ``key`` as dealt with, make no run ("not made: there before the job");
* ``BEGUN``: the baseline of that watch is complete (``key`` is ``file-begun:GLOB``): record
  it, and the next start of any daemon knows the watch began, so files that arrived while no
  daemon ran fire then instead of being taken for a baseline.

``dealt_with`` must answer True for a key recorded in any of the three ways. Fires come out as
files settle, in batches of at most ``batch`` (``deliver`` is awaited before the next), so
10,000 files dropped at once become a few dozen calls, not a storm; memory is a few hundred
bytes per file under the globs.
"""

from __future__ import annotations

import heapq
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import trio
import watchfiles
from loguru import logger

from pipeline import globs
from pipeline.journal import Offload
from pipeline.model import Job, ScheduleKind

RESCAN = 30.0  # seconds between two scans of every glob: the safety net under lost events
MIN_RESCAN_GAP = 1.0  # a folder created under a glob asks for a scan, at most this often
BATCH = 500  # fires handed to `deliver` at once
DEBOUNCE = 0.2  # seconds watchfiles gathers changes before it yields them

# Which of a job's keys the store has recorded already (blocking: run through `offload`).
DealtWith = Callable[[str, Sequence[str]], Collection[str]]
Deliver = Callable[[list["FileFire"]], Awaitable[None]]
# A source of change events: (folders, recursive, stop) -> batches of (change, path).
Changes = Callable[[Sequence[str], bool, trio.Event],
                   AsyncIterator[set[tuple[watchfiles.Change, str]]]]


class Outcome(StrEnum):
    FIRE = "fire"  # make a run
    BASELINE = "baseline"  # there before the watch began, `existing: false`: record, no run
    BEGUN = "begun"  # a watch's baseline is complete: record, no run


@dataclass(frozen=True)
class Watched:
    """One ``file:`` schedule of one job: ``glob`` is absolute (``Schedule.file``)."""

    job: str
    glob: str
    settle: float
    existing: bool = False

    @property
    def begun_key(self) -> str:
        return f"file-begun:{self.glob}"


def watched_of(jobs: Iterable[Job]) -> list[Watched]:
    """The ``file:`` schedules of ``jobs``, disabled ones included (their fires are recorded
    as not made, as a disabled job's timed fires are)."""
    return [Watched(job.name, schedule.file, schedule.settle, schedule.existing)
            for job in jobs for schedule in job.schedules
            if schedule.kind is ScheduleKind.FILE and schedule.file is not None]


@dataclass(frozen=True)
class FileFire:
    """A file under a job's glob that settled (or, for ``BEGUN``, a watch that began)."""

    job: str
    glob: str
    path: str
    size: int
    mtime_ns: int
    outcome: Outcome = Outcome.FIRE

    @property
    def key(self) -> str:
        """The fire key: one per (job, path, size, mtime); the same file never fires twice."""
        if self.outcome is Outcome.BEGUN:
            return f"file-begun:{self.glob}"
        return f"file:{self.path}:{self.size}:{self.mtime_ns}"

    @property
    def mtime(self) -> datetime:
        return datetime.fromtimestamp(self.mtime_ns / 1e9, UTC)

    @property
    def event(self) -> dict[str, Any]:
        """``run.event`` (CONTRACT §11); ``path`` is also ``PIPELINE_EVENT_PATH``."""
        return {"path": self.path, "size": self.size, "mtime": self.mtime.isoformat()}


@dataclass(frozen=True)
class Statistics:
    watches: int
    files: int  # files under the globs, as last seen
    settling: int  # files waiting to stay unchanged for their settle
    fired: int  # FIRE handed out since start
    baselined: int  # BASELINE handed out since start
    scans: int  # rescans of every glob since start


@dataclass(slots=True)
class _Seen:
    identity: tuple[int, int]  # size, mtime_ns
    since: float  # trio time at which it was first seen with this identity


@dataclass
class _Watch:
    watched: Watched
    glob: globs.Glob
    new: bool = True  # not yet begun in this process


async def watch_changes(folders: Sequence[str], recursive: bool,
                        stop: trio.Event) -> AsyncIterator[set[tuple[watchfiles.Change, str]]]:
    """watchfiles' events under ``folders`` until ``stop`` is set; no filter (the globs are)."""
    async for changes in watchfiles.awatch(
            *folders, watch_filter=None, recursive=recursive, stop_event=stop,
            debounce=int(DEBOUNCE * 1000), step=50, rust_timeout=1000,
            ignore_permission_denied=True):
        yield changes


class FileWatcher:
    """Makes ``FileFire``s of the files under the loaded globs; see the module."""

    def __init__(self, *, dealt_with: DealtWith, deliver: Deliver,
                 changes: Changes | None = watch_changes, rescan: float = RESCAN,
                 batch: int = BATCH, offload: Offload = trio.to_thread.run_sync) -> None:
        self.dealt_with = dealt_with
        self.deliver = deliver
        self.changes = changes  # None: rescans only
        self.rescan = rescan
        self.batch = batch
        self.offload = offload
        self._watches: dict[Watched, _Watch] = {}
        self._seen: dict[str, _Seen] = {}  # path -> what it was when last looked at
        self._done: dict[tuple[str, str], tuple[int, int]] = {}  # (job, path) -> identity
        self._heap: list[tuple[float, str, Watched]] = []  # (due, path, watch)
        self._armed: set[tuple[str, Watched]] = set()  # (path, watch) on the heap
        self._changed: set[str] = set()  # paths watchfiles named since the last look
        self._wake = trio.Event()
        self._roots_changed = trio.Event()
        self._watched_roots: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        self._next_scan = -float("inf")
        self._last_scan = -float("inf")
        self._scan_soon = False
        self._fired = self._baselined = self._scans = 0

    def load(self, watched: Iterable[Watched]) -> None:
        """Make ``watched`` the set of watches (the daemon calls it on every catalog change).

        A watch that is new here begins: with ``existing: false`` and no ``BEGUN`` recorded,
        the files there now are its baseline; otherwise every file is looked at as if it had
        just arrived (those already dealt with are left out). An unchanged watch carries on.
        """
        wanted = dict.fromkeys(watched)
        for gone in [w for w in self._watches if w not in wanted]:
            del self._watches[gone]
        for entry in wanted:
            if entry not in self._watches:
                self._watches[entry] = _Watch(entry, globs.parse(entry.glob))
        self._scan_soon = True
        self._wake.set()

    def statistics(self) -> Statistics:
        return Statistics(watches=len(self._watches), files=len(self._seen),
                          settling=len(self._armed), fired=self._fired,
                          baselined=self._baselined, scans=self._scans)

    # -- the loop -------------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                    ) -> None:
        """Watch and hand out fires until cancelled."""
        async with trio.open_nursery() as nursery:
            if self.changes is not None:
                nursery.start_soon(self._listen_to_roots)
            task_status.started()
            while True:
                self._wake = trio.Event()
                await self._look()
                await self._sleep()

    async def _sleep(self) -> None:
        if self._changed or any(w.new for w in self._watches.values()):
            await trio.lowlevel.checkpoint()
            return
        wake_at = self._next_scan
        if self._scan_soon:
            wake_at = min(wake_at, self._last_scan + MIN_RESCAN_GAP)
        if self._heap:
            wake_at = min(wake_at, self._heap[0][0])
        with trio.move_on_at(wake_at):
            await self._wake.wait()

    async def _look(self) -> None:
        """Everything due: begin new watches, rescan, read changed paths, settle files."""
        fresh = [w for w in self._watches.values() if w.new]
        if fresh:
            await self._begin(fresh)
        now = trio.current_time()
        if now >= self._next_scan or (self._scan_soon
                                      and now >= self._last_scan + MIN_RESCAN_GAP):
            await self._scan()
        if self._changed:
            paths, self._changed = sorted(self._changed), set()
            found = await self.offload(_stat_all, paths)
            now = trio.current_time()
            for path in paths:
                self._observe(path, found[path], now)
        await self._settle()

    async def _begin(self, fresh: list[_Watch]) -> None:
        """Take the baseline of new ``existing: false`` watches that never began before."""
        for watch in fresh:
            watch.new = False
        wanting = [w for w in fresh if not w.watched.existing]
        begun: set[str] = set()
        for job in {w.watched.job for w in wanting}:
            keys = [w.watched.begun_key for w in wanting if w.watched.job == job]
            begun |= {f"{job}\0{key}" for key in await self.offload(self.dealt_with, job, keys)}
        for watch in wanting:
            entry = watch.watched
            if f"{entry.job}\0{entry.begun_key}" in begun or entry not in self._watches:
                continue
            files = await self.offload(_scan_glob, watch.glob)
            now = trio.current_time()
            baseline = [FileFire(entry.job, entry.glob, path, size, mtime, Outcome.BASELINE)
                        for path, (size, mtime) in files.items()]
            for path, identity in files.items():
                if path not in self._seen or self._seen[path].identity != identity:
                    self._seen[path] = _Seen(identity, now)
            fires = await self._unrecorded(baseline)
            fires.append(FileFire(entry.job, entry.glob, entry.glob, 0, 0, Outcome.BEGUN))
            for fire in baseline:  # recorded before, or now: either way dealt with
                self._done[fire.job, fire.path] = (fire.size, fire.mtime_ns)
            await self._hand_out(fires)
            logger.info("job {}: watching {}; {} file(s) already there do not fire "
                        "(existing: false)", entry.job, entry.glob, len(baseline))
        self._scan_soon = True  # the other new watches look at every file now

    async def _scan(self) -> None:
        """Scan every glob: new and changed files are observed, vanished ones forgotten."""
        watches = list(self._watches.values())
        self._last_scan = trio.current_time()
        self._next_scan = self._last_scan + self.rescan
        self._scan_soon = False
        found, roots = await self.offload(_scan_all, [w.glob for w in watches])
        self._scans += 1
        now = trio.current_time()
        present: set[str] = set()
        for files in found:
            for path, identity in files.items():
                present.add(path)
                self._observe(path, identity, now)
        for path in [p for p in self._seen if p not in present]:
            self._forget(path)
        jobs = {w.watched.job for w in self._watches.values()}
        for job, path in [k for k in self._done if k[0] not in jobs or k[1] not in present]:
            del self._done[job, path]
        if roots != self._watched_roots:
            self._roots_changed.set()

    def _observe(self, path: str, identity: tuple[int, int] | None, now: float) -> None:
        """What ``path`` is now (None: gone, or not a regular file); arm the watches for which
        this identity is not dealt with yet."""
        if identity is None:
            self._forget(path)
            return
        seen = self._seen.get(path)
        if seen is None or seen.identity != identity:
            seen = self._seen[path] = _Seen(identity, now)
        for entry, watch in self._watches.items():
            if ((path, entry) not in self._armed
                    and self._done.get((entry.job, path)) != identity
                    and watch.glob.matches(path)):
                self._arm(path, entry, seen.since + entry.settle)

    def _arm(self, path: str, entry: Watched, due: float) -> None:
        self._armed.add((path, entry))
        heapq.heappush(self._heap, (due, path, entry))

    def _forget(self, path: str) -> None:
        # Its heap entries find nothing when they come due; a file that settles later under
        # the same identity is checked against the store again.
        self._seen.pop(path, None)

    async def _settle(self) -> None:
        """Files due: those unchanged for their settle fire; changed ones wait again."""
        now = trio.current_time()
        due: list[tuple[str, Watched]] = []
        while self._heap and self._heap[0][0] <= now:
            _, path, entry = heapq.heappop(self._heap)
            self._armed.discard((path, entry))
            if entry in self._watches and path in self._seen:
                due.append((path, entry))
        if not due:
            return
        found = await self.offload(_stat_all, sorted({path for path, _ in due}))
        now = trio.current_time()
        ready: list[FileFire] = []
        for path, entry in due:
            identity = found[path]
            seen = self._seen.get(path)
            if identity is None or seen is None:
                self._forget(path)  # deleted before it settled: nothing fires
                continue
            if seen.identity != identity:
                seen = self._seen[path] = _Seen(identity, now)
            if entry not in self._watches or self._done.get((entry.job, path)) == identity:
                continue
            if now - seen.since < entry.settle:
                self._arm(path, entry, seen.since + entry.settle)
                continue
            ready.append(FileFire(entry.job, entry.glob, path, *identity))
        fires = await self._unrecorded(ready)
        handing = {(fire.job, fire.key) for fire in fires}
        for fire in ready:  # recorded before: dealt with; the rest once handed out
            if (fire.job, fire.key) not in handing:
                self._done[fire.job, fire.path] = (fire.size, fire.mtime_ns)
        await self._hand_out(fires)

    async def _unrecorded(self, fires: list[FileFire]) -> list[FileFire]:
        """``fires`` less those the store has recorded, one per key (two globs of a job may
        name the same file)."""
        by_job: dict[str, dict[str, FileFire]] = {}
        for fire in fires:
            by_job.setdefault(fire.job, {}).setdefault(fire.key, fire)
        kept: list[FileFire] = []
        for job, keyed in by_job.items():
            keys = list(keyed)
            recorded: set[str] = set()
            for start in range(0, len(keys), self.batch):
                chunk = keys[start:start + self.batch]
                recorded |= set(await self.offload(self.dealt_with, job, chunk))
            kept += [fire for key, fire in keyed.items() if key not in recorded]
        return kept

    async def _hand_out(self, fires: list[FileFire]) -> None:
        for start in range(0, len(fires), self.batch):
            chunk = fires[start:start + self.batch]
            await self.deliver(chunk)
            for fire in chunk:
                if fire.outcome is Outcome.FIRE:
                    self._fired += 1
                elif fire.outcome is Outcome.BASELINE:
                    self._baselined += 1
                if fire.outcome is not Outcome.BEGUN:
                    self._done[fire.job, fire.path] = (fire.size, fire.mtime_ns)

    # -- watchfiles -----------------------------------------------------------------------------

    async def _listen_to_roots(self) -> None:
        """Listen for changes under the globs' roots that exist; start again when they change
        (a rescan finds a root created or removed, or the watches change)."""
        assert self.changes is not None
        while True:
            self._roots_changed = trio.Event()
            deep, flat = self._watched_roots = await self.offload(
                _roots, [w.glob for w in self._watches.values()])
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                for folders, recursive in ((deep, True), (flat, False)):
                    if folders:
                        nursery.start_soon(self._listen, folders, recursive, stop)
                await self._roots_changed.wait()
                stop.set()

    async def _listen(self, folders: Sequence[str], recursive: bool, stop: trio.Event) -> None:
        assert self.changes is not None
        try:
            async for changes in self.changes(folders, recursive, stop):
                deep = [w.glob.root for w in self._watches.values() if w.glob.deep]
                for change, path in changes:
                    if any(w.glob.matches(path) for w in self._watches.values()):
                        self._changed.add(path)
                    elif change is not watchfiles.Change.modified and any(
                            path.startswith(root + os.sep) for root in deep):
                        self._scan_soon = True  # a folder came or went under a deep glob
                self._wake.set()
        except OSError as exc:  # a root vanished between looking and watching
            logger.warning("cannot watch {}: {}; rescanning instead", ", ".join(folders), exc)
            self._scan_soon = True
            self._wake.set()


# -- blocking helpers (run through `offload`) -------------------------------------------------


def _identity(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_size, info.st_mtime_ns) if stat.S_ISREG(info.st_mode) else None


def _stat_all(paths: Sequence[str]) -> dict[str, tuple[int, int] | None]:
    return {path: _identity(path) for path in paths}


def _scan_glob(glob: globs.Glob) -> dict[str, tuple[int, int]]:
    return {path: (info.st_size, info.st_mtime_ns) for path, info in glob.scan()}


def _scan_all(found_globs: Sequence[globs.Glob],
              ) -> tuple[list[dict[str, tuple[int, int]]],
                         tuple[tuple[str, ...], tuple[str, ...]]]:
    return [_scan_glob(glob) for glob in found_globs], _roots(found_globs)


def _roots(found_globs: Sequence[globs.Glob]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The roots that exist: (those to watch recursively, those to watch flat)."""
    deep = {g.root for g in found_globs if g.deep and os.path.isdir(g.root)}
    flat = {g.root for g in found_globs if not g.deep and os.path.isdir(g.root)} - deep
    # a root inside a deep root is watched by it already
    flat = {r for r in flat if not any(r.startswith(d + os.sep) for d in deep)}
    deep = {r for r in deep if not any(r.startswith(d + os.sep) for d in deep if d != r)}
    return tuple(sorted(deep)), tuple(sorted(flat))

