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
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio
import watchfiles
from loguru import logger

from pipeline import expr, jobset, spec
from pipeline.errors import JobInvalid, Problem, StateError
from pipeline.model import Definition, Job, Settings
from pipeline.settings import is_settings_file, settings_or_problems
from pipeline.store import Store

IGNORED = (".*", "*~", "*.swp", "*.swx", "*.tmp", "#*#", "4913")  # 4913: vim's probe file
RESCAN_EVERY = 5.0


def ignored(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in IGNORED)


@dataclass
class _File:
    sha256: str
    job: Job | None
    problems: tuple[Problem, ...]
    source: bytes | None = None  # a valid file's bytes, to remember as its last good version


@dataclass
class Catalog:
    """Every job file under ``root``: what is valid, what is not, and what keeps running.

    With a ``store``, the catalog remembers each file's last good version and so which file
    holds which job name, across restarts: a file that turns invalid keeps its last good
    version scheduled even after the daemon restarts, and a new file never takes over a name
    that another file already holds (the newcomer is the invalid one); the commands judge
    names by the same rule (``jobset.load_jobs`` with ``remembered``). The settings file's last
    good version is remembered the same way (under the name ``jobset.SETTINGS_NAME``, which no
    job can have): broken before a restart, its pools and defaults stay in force.
    """

    root: Path
    runner_schemas: Mapping[str, Mapping[str, Any]] | None = None
    store: Store | None = None
    jobs: dict[str, Job] = field(default_factory=dict)  # what the scheduler runs
    problems: dict[str, tuple[Problem, ...]] = field(default_factory=dict)  # invalid files
    files: dict[str, str] = field(default_factory=dict)  # file -> job name
    stale: dict[str, str] = field(default_factory=dict)  # job -> invalid file it still runs from
    _seen: dict[str, _File] = field(default_factory=dict)
    _good: dict[str, Job] = field(default_factory=dict)  # file -> last good version
    _remembered: dict[str, Definition] | None = None  # file -> what the store holds
    settings: Settings = field(default_factory=Settings)  # the settings file's, in force
    _settings_files: set[str] = field(default_factory=set)
    _settings_good: Settings | None = None
    _settings_digest: str | None = None
    _settings_problems: dict[str, tuple[Problem, ...]] = field(default_factory=dict)
    _settings_kept: str | None = None  # the broken settings file whose last good version holds
    # The settings file in force when it is valid now: (file, sha256, bytes), to remember.
    _settings_source: tuple[str, str, bytes] | None = None

    def scan(self) -> bool:
        """Read the directory again; True if anything that matters changed."""
        paths = spec.find_job_files(self.root) if self.root.exists() else []
        seen: dict[str, _File] = {}
        files: list[tuple[Path, str, bytes, str]] = []
        settings_files: list[tuple[str, bytes, str]] = []
        for path in paths:
            key = str(path)
            try:
                data = path.read_bytes()
            except OSError:
                continue  # vanished between listing and reading: the next scan sees it
            digest = hashlib.sha256(data).hexdigest()
            if key in self._settings_files or is_settings_file(path, data):
                settings_files.append((key, data, digest))  # not a job (CONTRACT §1)
            else:
                files.append((path, key, data, digest))
        first = self._remembered is None
        if first:
            self._read_remembered()
        settings_before = self._settings_problems
        settings_changed = self._scan_settings(settings_files)
        loaded = False
        for path, key, data, digest in files:
            known = None if settings_changed else self._seen.get(key)
            if known is not None and known.sha256 == digest:
                seen[key] = known
                continue
            loaded = True
            try:
                job = spec.load_job(path, runner_schemas=self.runner_schemas, data=data,
                                    settings=self.settings)
                seen[key] = _File(job.sha256, job, (), data)
            except JobInvalid as exc:
                seen[key] = _File(digest, None, exc.problems)
        if loaded:
            expr.forget_parsed()
        if first:
            self._recall(seen)
        # A settings file broken (or fixed) with no change to the settings in force still
        # changes what is shown: its errors, in the catalog's problems and the log.
        changed = (first or settings_changed or self._settings_problems != settings_before
                   or seen.keys() != self._seen.keys()
                   or any(seen[k].sha256 != self._seen[k].sha256 for k in seen))
        self._seen = seen
        if changed:
            self._rebuild(first)
            self._remember()
        return changed

    def _scan_settings(self, found: list[tuple[str, bytes, str]]) -> bool:
        """Read the settings file (at most one; a second is invalid). A broken one keeps its
        last good version, as a job file does; True if the settings in force changed (every
        job is then judged again: its defaults and pools may differ)."""
        problems: dict[str, tuple[Problem, ...]] = {}
        chosen = None
        for key, data, digest in found:
            if chosen is not None:
                problems[key] = (Problem(key, 1, 1, f"a second settings file: {chosen[0]} is "
                                                    "the jobs directory's settings file"),)
                continue
            chosen = (key, data, digest)
        self._settings_files = {key for key, _, _ in found}
        self._settings_source = None
        self._settings_kept = None
        wanted = Settings()
        if chosen is not None:
            key, data, digest = chosen
            if digest == self._settings_digest and self._settings_good is not None:
                wanted = self._settings_good
            else:
                loaded, found_problems = settings_or_problems(Path(key), data=data)
                if loaded is not None:
                    wanted = self._settings_good = loaded
                    self._settings_digest = digest
                else:
                    problems[key] = found_problems
                    if self._settings_good is None:
                        self._settings_good = self._remembered_settings(key)
                    wanted = self._settings_good or Settings()
                    if self._settings_good is not None:
                        self._settings_kept = key  # said by _rebuild, after its errors
            if key not in problems:
                self._settings_source = (key, digest, data)
        else:
            self._settings_good, self._settings_digest = None, None
        self._settings_problems = problems
        changed = wanted != self.settings
        self.settings = wanted
        return changed

    def _file(self, key: str) -> str:
        return os.path.relpath(key, self.root)

    def _read_remembered(self) -> None:
        self._remembered = {}
        if self.store is None:
            return
        try:
            self._remembered = jobset.remembered_files(self.root, self.store.definitions())
        except StateError as exc:
            logger.warning("cannot read the last good versions of job files: {}", exc)

    def _remembered_settings(self, key: str) -> Settings | None:
        """The last good version of settings file ``key`` the store holds, if it loads."""
        known = (self._remembered or {}).get(key)
        if known is None or known.name != jobset.SETTINGS_NAME:
            return None
        loaded, problems = settings_or_problems(Path(key), data=known.source)
        if loaded is None:
            logger.warning("{}: its last good version (of {}) no longer loads: {}", key,
                           known.since.isoformat(timespec="seconds"), problems[0])
        return loaded

    def _recall(self, seen: Mapping[str, _File]) -> None:
        """The store's last good versions, for the job files that are invalid now."""
        remembered = self._remembered or {}
        for key, entry in seen.items():
            known = remembered.get(key)
            if entry.job is not None or known is None:
                continue
            try:
                # Built with the settings in force, as it was when it last loaded: their
                # defaults (a zone, a timeout) are part of what fired.
                self._good[key] = jobset.last_good(key, known, runner_schemas=self.runner_schemas,
                                                 settings=self.settings)
            except JobInvalid as exc:
                logger.warning("{}: its last good version (of {}) no longer loads: {}", key,
                               known.since.isoformat(timespec="seconds"), exc.problems[0])

    def _rebuild(self, first: bool) -> None:
        # Who held each name before this scan: the running catalog, or at start the state.
        holders = {name: key for key, name in self.files.items()}
        if first:
            for name, key in jobset.held_names(self._remembered or {}).items():
                holders.setdefault(name, key)
        self._good = {f: j for f, j in self._good.items() if f in self._seen}
        candidates: dict[str, list[str]] = {}  # name -> files that want it, in path order
        for key, entry in self._seen.items():
            job = entry.job or self._good.get(key)
            if entry.job is not None:
                self._good[key] = entry.job
            if job is not None:
                candidates.setdefault(job.name, []).append(key)
        jobs: dict[str, Job] = {}
        problems: dict[str, tuple[Problem, ...]] = {}
        files: dict[str, str] = {}
        stale: dict[str, str] = {}
        for name, keys in candidates.items():
            owner = jobset.name_holder(keys, holders.get(name))
            jobs[name] = self._good[owner]
            files[owner] = name
            if self._seen[owner].job is None:
                stale[name] = owner
            for other in keys:
                if other != owner:
                    problems[other] = (*self._seen[other].problems, Problem(
                        other, *jobset.name_mark(self._seen[other].source or b""),
                        jobset.name_taken(name, owner, held=holders.get(name) == owner)))
        for key, entry in self._seen.items():
            if entry.job is None and key not in problems:
                problems[key] = entry.problems
        problems.update(self._settings_problems)
        # A valid file whose `uses: job` steps name a job not there, or a parameter it does
        # not declare, is invalid too; the version that loaded keeps running, as any file's
        # last good version does.
        for name, job in jobs.items():
            if name not in stale:
                calls = jobset.call_problems(job, jobs)
                if calls:
                    problems[job.file] = calls
                    stale[name] = job.file
        # So is one whose `after:` names a job not there, or closes a ring of jobs.
        for name, found in jobset.after_problems(
                {n: None if n in stale else j for n, j in jobs.items()}).items():
            file = jobs[name].file
            problems[file] = tuple(sorted({*problems.get(file, ()), *found}))
            stale[name] = file
        for key, found in problems.items():
            if self.problems.get(key) != found:
                for problem in found:
                    logger.error("{}", problem)
                if key in stale.values():
                    logger.warning("{}: invalid; its last good version stays scheduled", key)
                elif key == self._settings_kept:
                    logger.warning("{}: invalid; its last good version stays in force", key)
        for key in self.problems.keys() - problems.keys():
            if key in self._seen or key in self._settings_files:
                logger.info("{}: valid again", key)
        self.jobs, self.problems, self.files, self.stale = jobs, problems, files, stale

    def _remember(self) -> None:
        """Tell the store each name holder's last good version (and forget lost files)."""
        remembered = self._remembered
        if self.store is None or remembered is None:
            return
        kept = [Definition(self._file(key), name, self._seen[key].sha256,
                           self._seen[key].source or b"", datetime.now(UTC))
                for key, name in self.files.items()
                if self._seen[key].job is not None
                and (key not in remembered or remembered[key].sha256 != self._seen[key].sha256
                     or remembered[key].name != name)]
        settings = self._settings_source
        if settings is not None:
            key, digest, data = settings
            known = remembered.get(key)
            if known is None or known.sha256 != digest or known.name != jobset.SETTINGS_NAME:
                kept.append(Definition(self._file(key), jobset.SETTINGS_NAME, digest, data,
                                       datetime.now(UTC)))
        # A settings file that is broken now keeps the version remembered before.
        holders = set(self.files) | self._settings_files
        forgotten = [key for key in remembered if key not in holders]
        if not kept and not forgotten:
            return
        try:
            self.store.remember_definitions(kept, [self._file(key) for key in forgotten])
        except StateError as exc:  # a full disk: the next change tries again
            logger.warning("cannot remember the last good versions of job files: {}", exc)
            return
        for key in forgotten:
            del remembered[key]
        for definition in kept:
            remembered[str(self.root / definition.file)] = definition


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
