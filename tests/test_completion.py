"""Shell completion as the shells run it: click's protocol (``_PIPELINE_COMPLETE``) against the
real command, with job files on disk and runs in a real state directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PIPELINE = Path(sys.executable).with_name("pipeline")


def complete(cwd: Path, shell: str, words: str) -> list[str]:
    """What ``pipeline`` answers a shell that asks to complete ``words`` (the last one being
    typed): bash and zsh give the index of the word, fish the word itself."""
    last = words.split(" ")[-1]
    env = {**os.environ, "_PIPELINE_COMPLETE": f"{shell}_complete", "COMP_WORDS": words,
           "COMP_CWORD": last if shell == "fish" else str(len(words.split(" ")) - 1)}
    env.pop("PIPELINE_JOBS_DIR", None)
    env.pop("PIPELINE_STATE_DIR", None)
    done = subprocess.run([str(PIPELINE)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=30, check=True)
    return [line for line in done.stdout.splitlines() if line]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    jobs = tmp_path / "jobs.d"
    (jobs / "team").mkdir(parents=True)
    (jobs / "backup.yaml").write_text(
        'name: "nightly-backup"  # the name wins over the file name\n'
        "steps:\n  - {id: dump, run: 'true'}\n  - {id: ship, needs: [dump], run: 'true'}\n")
    (jobs / "team" / "report.yml").write_text("steps:\n  - {id: a, run: 'true'}\n")
    (jobs / "broken.yaml").write_text("name: half-done\nsteps: [\n")  # invalid, still named
    (jobs / ".draft.yaml").write_text("name: hidden\nsteps: []\n")  # ignored, as spec does
    return tmp_path


def test_job_names_complete_in_bash_zsh_and_fish(project: Path) -> None:
    assert complete(project, "bash", "pipeline run ") == [
        "plain,half-done", "plain,nightly-backup", "plain,report"]
    assert complete(project, "bash", "pipeline next n") == ["plain,nightly-backup"]
    assert complete(project, "zsh", "pipeline graph r") == ["plain", "report", "_"]
    assert complete(project, "fish", "pipeline trigger ha") == ["plain,half-done"]
    # A path is left to the shell's own file completion.
    assert complete(project, "bash", "pipeline run ./jobs.d/ba") == ["file,./jobs.d/ba"]
    # --jobs-dir given on the line is where names come from.
    other = project / "elsewhere"
    other.mkdir()
    (other / "solo.yaml").write_text("steps:\n  - {id: a, run: 'true'}\n")
    assert complete(project, "bash", f"pipeline --jobs-dir {other} runs ") == ["plain,solo"]


def test_run_ids_and_steps_complete_from_the_store(project: Path) -> None:
    assert complete(project, "bash", "pipeline show ") == []
    assert not (project / ".pipeline").exists()  # completing never makes a state directory
    for job in ("nightly-backup", "report"):
        subprocess.run([str(PIPELINE), "run", job], cwd=project, check=True,
                       capture_output=True, timeout=60)
    runs = complete(project, "bash", "pipeline show ")
    assert len(runs) == 2 and all(r.startswith("plain,2") for r in runs)
    newest = runs[0].removeprefix("plain,")
    assert complete(project, "bash", f"pipeline show {newest[:-3]}") == [f"plain,{newest}"]
    zsh = complete(project, "zsh", "pipeline logs ")
    assert zsh[:3] == ["plain", newest, "report succeeded"]  # zsh shows the help
    first = runs[1].removeprefix("plain,")
    assert complete(project, "bash", f"pipeline logs {first} ") == ["plain,dump", "plain,ship"]
    assert complete(project, "bash", f"pipeline logs {first} s") == ["plain,ship"]
    assert complete(project, "bash", "pipeline stop 1999") == []


def test_the_completion_command_prints_each_shells_script(project: Path) -> None:
    scripts = {shell: subprocess.run([str(PIPELINE), "completion", shell], capture_output=True,
                                     text=True, check=True).stdout
               for shell in ("bash", "zsh", "fish")}
    assert "_PIPELINE_COMPLETE=bash_complete" in scripts["bash"]
    assert "#compdef pipeline" in scripts["zsh"]
    assert "complete --no-files --command pipeline" in scripts["fish"]
    bad = subprocess.run([str(PIPELINE), "completion", "tcsh"], capture_output=True, text=True)
    assert bad.returncode == 2 and "tcsh" in bad.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_takes_the_script(project: Path) -> None:
    """The script as a user's ~/.bashrc evals it registers the completion function."""
    done = subprocess.run(["bash", "-c", f'eval "$({PIPELINE} completion bash)"; complete -p '
                           "pipeline"], capture_output=True, text=True, check=True)
    assert "_pipeline_completion" in done.stdout
