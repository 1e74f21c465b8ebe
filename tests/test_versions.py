"""Job versions against a real git repository in a temporary directory."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from pipeline.runrecords import Version
from pipeline.versions import version_of

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
