"""$PIPELINE_OUTPUT: a fresh path per attempt in one private directory, created by the step."""

from __future__ import annotations

import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from pipeline import scratch
from pipeline.model import Job, RunStatus
from tests.conftest import run

JobFrom = Callable[[str], Job]


def test_paths_are_fresh_and_the_directory_private() -> None:
    first, second = scratch.output_path("r1"), scratch.output_path("r1")
    assert first != second and first.parent == second.parent
    assert not first.exists()  # nothing is created until a step writes
    assert stat.S_IMODE(first.parent.stat().st_mode) == 0o700


def test_a_removed_directory_is_made_again() -> None:
    gone = scratch.output_path("r").parent
    shutil.rmtree(gone)
    again = scratch.output_path("r")
    assert again.parent.is_dir()
    again.write_text("k=v\n")
    assert scratch.read_output(again, 1024) == "k=v\n"
    scratch.discard(again)
    assert not again.exists()


def test_reading_is_capped_and_absent_is_empty(tmp_path: Path) -> None:
    assert scratch.read_output(tmp_path / "never-written", 10) == ""
    big = tmp_path / "big"
    big.write_bytes(b"a=" + b"x" * 100)
    assert scratch.read_output(big, 10) == "a=xxxxxxxx"


async def test_steps_see_a_path_that_does_not_exist_yet_and_leave_nothing(
        job_from: JobFrom, tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    job = job_from(f"""
        env: {{SEEN: "{seen}"}}
        steps:
          - id: quiet
            run: test ! -e "$PIPELINE_OUTPUT" && echo "$PIPELINE_OUTPUT" > "$SEEN"
          - id: talk
            run: echo "where=$PIPELINE_OUTPUT" >> "$PIPELINE_OUTPUT"
          - id: late
            timeout: 1s
            run: echo "half=1" >> "$PIPELINE_OUTPUT"; sleep 30
    """)
    result, rec = await run(job, tmp_path)
    assert result.status is RunStatus.FAILED  # `late` timed out
    quiet = Path(seen.read_text().strip())
    steps = rec.steps()
    talked = Path(steps["talk"].outputs["where"])
    assert quiet.parent == talked.parent and quiet != talked
    assert steps["late"].outputs == {"half": "1"}  # what a timed-out step wrote still counts
    assert list(talked.parent.iterdir()) == []  # every attempt's file is gone
