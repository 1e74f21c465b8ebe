"""Which version of a job file ran (CONTRACT §7).

Always the SHA-256 of the file's bytes; when the file lies in a git work tree, also the commit
checked out (HEAD), the blob id of the file's current bytes and whether they differ from what
HEAD holds (a file git does not track at HEAD counts as dirty). git is asked through short
``git -C DIR`` subprocesses; no git, no repository, a repository git refuses (another owner) or
a git that hangs all give the SHA-256 alone.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

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
