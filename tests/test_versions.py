"""Job versions against a real git repository in a temporary directory."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from pipeline import spec
from pipeline.runrecords import Version
from pipeline.versions import LoadedVersions, version_of

JOB = b"name: j\nsteps:\n  - id: a\n    run: echo hi\n"


@pytest.fixture(autouse=True)
def git_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A git of its own: no user or system config, an identity for commits, and no walking up
    # out of tmp_path into whatever repository may hold it.
    for name in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        monkeypatch.setenv(name, "Test")
    for name in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(name, "test@example.invalid")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def new_repo(path: Path) -> Path:
    path.mkdir()
    git(path, "init", "-q")
    return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_outside_git_only_the_sha256(tmp_path: Path) -> None:
    job = tmp_path / "plain" / "job.yaml"
    job.parent.mkdir()
    job.write_bytes(JOB)
    assert version_of(job) == Version(sha256(JOB))


def test_a_repository_without_commits(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    (repo / "job.yaml").write_bytes(JOB)
    git(repo, "add", "job.yaml")  # staged is not committed: still dirty
    assert version_of(repo / "job.yaml") == Version(
        sha256(JOB), git_commit=None, git_blob=blob(JOB), git_dirty=True)


def test_committed_modified_and_committed_again(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    job = repo / "jobs.d" / "nightly backup.yaml"  # in a subfolder, with a space
    job.parent.mkdir()
    job.write_bytes(JOB)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "first")
    first = git(repo, "rev-parse", "HEAD")
    assert version_of(job) == Version(sha256(JOB), first, blob(JOB), False)
    assert version_of(job) == Version(sha256(JOB), first, blob(JOB), False)  # cached

    changed = JOB + b"# more\n"
    job.write_bytes(changed)
    assert version_of(job) == Version(sha256(changed), first, blob(changed), True)

    git(repo, "commit", "-qam", "second")
    second = git(repo, "rev-parse", "HEAD")
    assert version_of(job) == Version(sha256(changed), second, blob(changed), False)

    job.write_bytes(JOB)  # back to the first bytes: they differ from HEAD's now
    assert version_of(job) == Version(sha256(JOB), second, blob(JOB), True)


def test_an_untracked_file_is_dirty(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    (repo / "README").write_text("x\n")
    git(repo, "add", "README")
    git(repo, "commit", "-qm", "first")
    job = repo / "-new.yml"  # a name git could take for an option
    job.write_bytes(JOB)
    version = version_of(job)
    assert version == Version(sha256(JOB), git(repo, "rev-parse", "HEAD"), blob(JOB), True)


def test_a_relative_path_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = new_repo(tmp_path / "repo")
    (repo / "job.yaml").write_bytes(JOB)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "first")
    monkeypatch.chdir(repo)
    assert version_of(Path("job.yaml")).git_dirty is False


def test_without_git_only_the_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = new_repo(tmp_path / "repo")
    (repo / "job.yaml").write_bytes(JOB)
    empty = tmp_path / "no-git-here"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert version_of(repo / "job.yaml") == Version(sha256(JOB))


def test_inside_the_git_directory_is_not_a_work_tree(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    odd = repo / ".git" / "job.yaml"
    odd.write_bytes(JOB)
    assert version_of(odd) == Version(sha256(JOB))


def test_a_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        version_of(tmp_path / "gone.yaml")


async def inline(fn: Callable[..., Any], *args: Any) -> Any:
    """git run in the task itself: once every task waits, the lookups asked for are done."""
    return fn(*args)


async def test_loaded_versions_find_the_git_facts_in_the_background(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    path = repo / "j.yaml"
    path.write_bytes(JOB)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "first")
    head = git(repo, "rev-parse", "HEAD")
    job = spec.load_job(path)
    versions = LoadedVersions(offload=inline)
    versions.load({"j": job})
    assert versions.of(job) == Version(sha256(JOB))  # until found: the SHA-256 alone
    async with trio.open_nursery() as nursery:
        await nursery.start(versions.serve)
        await trio.testing.wait_all_tasks_blocked()
        assert versions.of(job) == Version(sha256(JOB), head, blob(JOB), False)

        edited_bytes = JOB.replace(b"echo hi", b"echo hello")
        path.write_bytes(edited_bytes)
        edited = spec.load_job(path)
        assert versions.of(edited) == Version(sha256(edited_bytes))  # not the old facts
        versions.load({"j": edited})
        await trio.testing.wait_all_tasks_blocked()
        assert versions.of(edited) == Version(sha256(edited_bytes), head, blob(edited_bytes),
                                              True)
        nursery.cancel_scope.cancel()


async def test_a_job_reloaded_while_git_looks_at_it_is_looked_up_again(
        tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    path = repo / "j.yaml"
    path.write_bytes(JOB)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "first")
    edited_bytes = JOB.replace(b"echo hi", b"echo hello")
    lookups: list[str] = []
    versions: LoadedVersions

    async def reloaded_meanwhile(fn: Callable[..., Any], *args: Any) -> Any:
        lookups.append(args[0].sha256)
        found = fn(*args)
        if len(lookups) == 1:  # the file is edited and reloaded under the first lookup
            path.write_bytes(edited_bytes)
            versions.load({"j": spec.load_job(path)})
        return found

    versions = LoadedVersions(offload=reloaded_meanwhile)
    versions.load({"j": spec.load_job(path)})
    async with trio.open_nursery() as nursery:
        await nursery.start(versions.serve)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert lookups == [sha256(JOB), sha256(edited_bytes)]
    edited = versions.of(spec.load_job(path))
    assert edited.sha256 == sha256(edited_bytes) and edited.git_dirty is True


async def test_a_file_changed_since_it_was_loaded_gives_no_facts(tmp_path: Path) -> None:
    """The facts are those of the bytes loaded: git would describe other bytes."""
    repo = new_repo(tmp_path / "repo")
    path = repo / "j.yaml"
    path.write_bytes(JOB)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "first")
    job = spec.load_job(path)
    path.write_bytes(JOB + b"# edited, not reloaded\n")
    versions = LoadedVersions(offload=inline)
    versions.load({"j": job})
    async with trio.open_nursery() as nursery:
        await nursery.start(versions.serve)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert versions.of(job) == Version(sha256(JOB))
