"""The jobs directory as the daemon sees it, kept current by watching it.

``Catalog.scan`` reads every job file, re-validating only those whose bytes changed (by
SHA-256). A file that turns invalid keeps its last good version scheduled while its located
errors are shown; fixing it clears them. A removed file unschedules its job.

``watch_jobs`` wakes the daemon when anything under the directory changes (watchfiles,
debounced), and rescans every few seconds anyway so a change it cannot see (a symlink's target
outside the directory edited in place, an NFS mount) is still picked up.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import watchfiles
from loguru import logger

from pipeline import spec
from pipeline.errors import JobInvalid, Problem
from pipeline.model import Job

IGNORED = (".*", "*~", "*.swp", "*.swx", "*.tmp", "#*#", "4913")  # 4913: vim's probe file
RESCAN_EVERY = 5.0


def ignored(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in IGNORED)


@dataclass
class _File:
    sha256: str
    job: Job | None
    problems: tuple[Problem, ...]


@dataclass
class Catalog:
    """Every job file under ``root``: what is valid, what is not, and what keeps running."""

    root: Path
    runner_schemas: Mapping[str, Mapping[str, Any]] | None = None
    jobs: dict[str, Job] = field(default_factory=dict)  # what the scheduler runs
    problems: dict[str, tuple[Problem, ...]] = field(default_factory=dict)  # invalid files
    files: dict[str, str] = field(default_factory=dict)  # file -> job name
    stale: dict[str, str] = field(default_factory=dict)  # job -> invalid file it still runs from
    _seen: dict[str, _File] = field(default_factory=dict)
    _good: dict[str, Job] = field(default_factory=dict)  # file -> last good version

    def scan(self) -> bool:
        """Read the directory again; True if anything that matters changed."""
        paths = spec.find_job_files(self.root) if self.root.exists() else []
        seen: dict[str, _File] = {}
        for path in paths:
            key = str(path)
            try:
                data = path.read_bytes()
            except OSError:
                continue  # vanished between listing and reading: the next scan sees it
            digest = hashlib.sha256(data).hexdigest()
            known = self._seen.get(key)
            if known is not None and known.sha256 == digest:
                seen[key] = known
                continue
            try:
                job = spec.load_job(path, runner_schemas=self.runner_schemas)
                seen[key] = _File(job.sha256, job, ())
            except JobInvalid as exc:
                seen[key] = _File(digest, None, exc.problems)
        changed = seen.keys() != self._seen.keys() or any(
            seen[k].sha256 != self._seen[k].sha256 for k in seen)
        self._seen = seen
        if changed:
            self._rebuild()
        return changed

    def _rebuild(self) -> None:
        jobs: dict[str, Job] = {}
        owners: dict[str, str] = {}
        problems: dict[str, tuple[Problem, ...]] = {}
        files: dict[str, str] = {}
        stale: dict[str, str] = {}
        self._good = {f: j for f, j in self._good.items() if f in self._seen}
        for key, entry in self._seen.items():
            if entry.job is not None:
                name = entry.job.name
                if name in owners:
                    problems[key] = (Problem(key, 1, 1, f"job name {name!r} is already used by "
                                                        f"{owners[name]}"),)
                    continue
                owners[name] = key
                jobs[name] = entry.job
                files[key] = name
                self._good[key] = entry.job
            else:
                problems[key] = entry.problems
                good = self._good.get(key)
                if good is not None and good.name not in owners:
                    owners[good.name] = key
                    jobs[good.name] = good
                    files[key] = good.name
                    stale[good.name] = key
        for key, found in problems.items():
            if self.problems.get(key) != found:
                for problem in found:
                    logger.error("{}", problem)
                if key in {f for f in stale.values()}:
                    logger.warning("{}: invalid; its last good version stays scheduled", key)
        for key in self.problems.keys() - problems.keys():
            if key in self._seen:
                logger.info("{}: valid again", key)
        self.jobs, self.problems, self.files, self.stale = jobs, problems, files, stale


async def watch_jobs(catalog: Catalog, on_change: Callable[[], Awaitable[None]], *,
                     debounce: float = 0.15, rescan_every: float = RESCAN_EVERY,
                     stop: trio.Event | None = None,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Call ``on_change`` after every scan of ``catalog`` that found a change.

    A change is seen within ``debounce`` seconds plus a scan; without any event, the directory
    is rescanned every ``rescan_every`` seconds. Returns when ``stop`` is set (promptly: the
    watcher's thread checks it every few milliseconds, while a plain cancellation has to wait
    for the thread's next timeout, up to a second).
    """
    root = catalog.root.resolve()

    def interesting(change: watchfiles.Change, path: str) -> bool:
        try:
            parts = Path(path).relative_to(root).parts
        except ValueError:
            return True
        return not any(ignored(part) for part in parts)

    catalog.root.mkdir(parents=True, exist_ok=True)
    task_status.started()
    last_scan = trio.current_time()
    async for changes in watchfiles.awatch(
            catalog.root, watch_filter=interesting, debounce=int(debounce * 1000), step=25,
            rust_timeout=1000, yield_on_timeout=True, recursive=True, stop_event=stop):
        if not changes and trio.current_time() - last_scan < rescan_every:
            continue
        last_scan = trio.current_time()
        if await trio.to_thread.run_sync(catalog.scan):
            await on_change()
