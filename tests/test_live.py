"""The live view of `pipeline run`: a redrawn table on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

from pipeline.events import RunFinished, RunStarted, StepFinished, StepRetrying, StepStarted
from pipeline.live import LiveView
from pipeline.model import RunStatus, StepStatus
from tests.conftest import write_job

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
RUN = "20261128T120000-00000001"


def events() -> list[object]:
    return [
        RunStarted(RUN, NOW),
        StepStarted(RUN, "build", 1, NOW, "logs/x"),
        StepRetrying(RUN, "build", 1, 2.0, "exit status 1"),
        StepFinished(RUN, "build", StepStatus.SUCCEEDED, NOW, attempt=2),
        StepStarted("20261128T120000-0000000f", "child-step", 1, NOW, "logs/y"),  # a child run
        StepFinished(RUN, "test", StepStatus.FAILED, NOW, attempt=1, error="exit status 3"),
        RunFinished(RUN, RunStatus.FAILED, NOW, "step failed: test"),
    ]


def test_plain_lines_without_a_terminal(tmp_path: Path) -> None:
    job = write_job(tmp_path, """
        steps:
          - {id: build, run: "true"}
          - {id: test, needs: [build], run: "true"}
    """)
    out = io.StringIO()
    view = LiveView(job, RUN, out=out, tty=False)
    for event in events():
        view.update(event)  # type: ignore[arg-type]
    lines = out.getvalue().splitlines()
    assert any(line.endswith(f"run {RUN} of job started") for line in lines)
    assert "build: attempt 1 failed (exit status 1); retrying in 2s" in lines
    assert any("build: succeeded" in line for line in lines)
    assert any("test: failed (exit status 3)" in line for line in lines)
    assert not any("child-step" in line for line in lines)


def test_a_table_redrawn_in_place_on_a_terminal(tmp_path: Path) -> None:
    job = write_job(tmp_path, """
        steps:
          - {id: build, run: "true"}
          - {id: test, needs: [build], run: "true"}
    """)
    out = io.StringIO()
    view = LiveView(job, RUN, out=out, tty=True)
    for event in events():
        view.update(event)  # type: ignore[arg-type]
    text = out.getvalue()
    assert "\x1b[3F" in text  # moved back up over the three lines it drew before
    last = text.rsplit("\x1b[3F", 1)[-1]
    assert "✓ build" in last and "attempt 2" in last
    assert "✗ test" in last and "exit status 3" in last


def test_a_closed_output_never_stops_the_run(tmp_path: Path) -> None:
    job = write_job(tmp_path, "steps:\n  - {id: build, run: 'true'}\n")

    class Closed(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    view = LiveView(job, RUN, out=Closed(), tty=False)
    for event in events():
        view.update(event)  # type: ignore[arg-type]
