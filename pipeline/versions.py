"""Which version of a job file ran (CONTRACT §7).

Always the SHA-256 of the file's bytes; when the file lies in a git work tree, also the commit
checked out (HEAD), the blob id of the file's current bytes and whether they differ from what
HEAD holds (a file git does not track at HEAD counts as dirty). git is asked through short
``git -C DIR`` subprocesses; no git, no repository, a repository git refuses (another owner) or
a git that hangs all give the SHA-256 alone.

A daemon records the version of each fire's run: ``LoadedVersions`` finds the git facts of the
jobs it loaded in the background, so that firing never waits for git.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from pipeline.model import Job
from pipeline.runrecords import Version

GIT_TIMEOUT = 2.0  # seconds per git command
_CACHE_SIZE = 1024

# (absolute path, sha256, HEAD commit) -> (blob id, dirty): with these three unchanged the
# answer cannot change, so a run of an unchanged job costs one git command instead of three.
_cache: dict[tuple[str, str, str], tuple[str | None, bool]] = {}


def _git(directory: Path, *args: str) -> subprocess.CompletedProcess[str] | None:
    """Run git in ``directory``; None if git is missing or does not answer in time."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
    try:
        return subprocess.run(["git", "-C", str(directory), *args], capture_output=True,
                              text=True, timeout=GIT_TIMEOUT, env=env, stdin=subprocess.DEVNULL,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def version_of(path: Path) -> Version:
    """The version of the job file at ``path``.

    Raises ``OSError`` if the file cannot be read; git trouble only leaves the git fields None.
    """
    path = Path(os.path.abspath(path))
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    directory, name = path.parent, f"./{path.name}"
    # One command tells a work tree from none (exit 128, or "false" inside .git) and gives HEAD;
    # in a repository without commits it prints "true" and exits 1.
    head = _git(directory, "rev-parse", "--is-inside-work-tree", "--verify", "-q", "HEAD")
    if head is None or head.returncode not in (0, 1):
        return Version(sha256)
    lines = head.stdout.split()
    if not lines or lines[0] != "true":
        return Version(sha256)
    commit = lines[1] if head.returncode == 0 and len(lines) > 1 else None

    key = (str(path), sha256, commit or "")
    known = _cache.get(key)
    if known is None:
        found = _blob_and_dirty(directory, name, commit)
        if found is None:
            return Version(sha256, git_commit=commit)
        if len(_cache) >= _CACHE_SIZE:
            _cache.pop(next(iter(_cache)))
        _cache[key] = known = found
    blob, dirty = known
    return Version(sha256, git_commit=commit, git_blob=blob, git_dirty=dirty)


def _blob_and_dirty(directory: Path, name: str, commit: str | None) -> tuple[str, bool] | None:
    """The blob id of the file's bytes and whether HEAD holds other bytes (or none) there."""
    hashed = _git(directory, "hash-object", "--", name)
    if hashed is None or hashed.returncode != 0 or not hashed.stdout.strip():
        return None
    blob = hashed.stdout.strip()
    if commit is None:  # no commits yet: nothing is committed, so the file is not either
        return blob, True
    at_head = _git(directory, "rev-parse", "-q", "--verify", f"HEAD:{name}")
    if at_head is None:
        return None
    # Exit 1: HEAD has no such path (untracked, or added since): dirty.
    return blob, at_head.returncode != 0 or at_head.stdout.strip() != blob


class LoadedVersions:
    """The versions of the jobs a daemon loaded, with their git facts once found.

    git costs a few subprocesses per file; asked at fire time it would make a thousand jobs
    firing together late by seconds. So ``serve`` finds each loaded job's facts, one file at a
    time, off the firing path; until then a job's version is its SHA-256 alone. The facts are
    those of when the file was loaded.
    """

    def __init__(self, *, offload: Callable[..., Awaitable[Any]] = trio.to_thread.run_sync,
                 ) -> None:
        self.offload = offload
        self._jobs: dict[str, Job] = {}  # as loaded, by name
        self._found: dict[str, Version] = {}  # by job name: of the bytes its sha256 says
        self._wanted = trio.Event()

    def load(self, jobs: Mapping[str, Job]) -> None:
        """Make ``jobs`` the loaded set; those new or edited are looked up next."""
        self._jobs = dict(jobs)
        self._found = {name: v for name, v in self._found.items() if name in self._jobs}
        self._wanted.set()

    def of(self, job: Job) -> Version:
        """The version to record for ``job``: with its git facts once they are found."""
        found = self._found.get(job.name)
        return found if found is not None and found.sha256 == job.sha256 else Version(job.sha256)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                    ) -> None:
        """Find the git facts of the loaded jobs that lack them, until cancelled."""
        task_status.started()
        while True:
            pending = [job for name, job in self._jobs.items()
                       if (found := self._found.get(name)) is None or found.sha256 != job.sha256]
            if not pending:
                self._wanted = trio.Event()
                await self._wanted.wait()
                continue
            for job in pending:
                try:
                    found = await self.offload(_loaded_version, job)
                except OSError:
                    found = Version(sha256=job.sha256)
                if self._jobs.get(job.name) is job:
                    self._found[job.name] = found


def _loaded_version(job: Job) -> Version:
    """The job's version with its git facts, if the file still holds the bytes we loaded."""
    version = version_of(Path(job.file))
    return version if version.sha256 == job.sha256 else Version(sha256=job.sha256)
