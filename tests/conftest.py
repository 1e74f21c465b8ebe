"""Shared test helpers: real job files in tmp_path, real runs with their events collected."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from pipeline import spec
from pipeline.engine import RunHandle, RunResult, run_job
from pipeline.events import Event, StepFinished
from pipeline.model import Job

pytest_plugins = ["tests.postgres"]  # the throwaway PostgreSQL: postgres, postgres_url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs PostgreSQL starts a server (or a database in it): slow."""
    for item in items:
        if {"postgres", "postgres_url"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def write_job(directory: Path, text: str, name: str = "job.yaml") -> Job:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return spec.load_job(path)


class Recorded:
    """A run's events, as a plain list, with a few ways to look at them."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def emit(self, event: Event) -> None:
        self.events.append(event)
        await trio.lowlevel.checkpoint()  # as the real journal does: cancellation can land here

    def steps(self) -> dict[str, StepFinished]:
        return {e.step_id: e for e in self.events if isinstance(e, StepFinished)}

    def status(self, step_id: str) -> str:
        return str(self.steps()[step_id].status)


async def run(job: Job, state_dir: Path, *, handle: RunHandle | None = None,
              **kwargs: Any) -> tuple[RunResult, Recorded]:
    recorded = Recorded()
    result = await run_job(job, run_id="20261128T000000-00000001", state_dir=state_dir,
                           emit=recorded.emit, handle=handle, **kwargs)
    return result, recorded


@pytest.fixture
def job_from(tmp_path: Path) -> Callable[[str], Job]:
    def make(text: str) -> Job:
        return write_job(tmp_path, text)

    return make
