"""Deadlines judged over a real SQLite store with a clock the test moves: a fire that made no
run is late, unless an operator held the job back (paused, or disabled) when it was due."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.deadlines import Deadlines
from pipeline.events import RunFinished, RunQueued, RunSkipped, RunStarted
from pipeline.model import Job, RunStatus, Trigger
from pipeline.runrecords import RunRecord
from pipeline.statedir import new_run_id
from pipeline.store.records import Outcome
from pipeline.store.sqlite import SqliteStore
from tests.conftest import write_job

T0 = datetime(2026, 5, 4, 10, 0, 10, tzinfo=UTC)


def at(minutes: float) -> datetime:
    """10:00:00 plus ``minutes``."""
    return T0.replace(second=0) + timedelta(minutes=minutes)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore.open(tmp_path / "state")
    yield opened
    opened.close()


class Judge:
    """A Deadlines over ``jobs`` and the store, its clock moved by hand; the misses it told."""

    def __init__(self, store: SqliteStore, jobs: dict[str, Job]) -> None:
        self.now = T0
        self.jobs = jobs
        self.missed: list[tuple[str, datetime]] = []

        def missed(job: Job, fire: datetime, _: datetime, __: RunRecord | None) -> None:
            self.missed.append((job.name, fire))

        async def offload(function: Callable[..., Any], *args: Any) -> Any:
            return function(*args)

        self.deadlines = Deadlines(store=store, clock=lambda: self.now, jobs=lambda: self.jobs,
                                   node=lambda: "n1", missed=missed, offload=offload)

    async def look_at(self, moment: datetime) -> list[tuple[str, datetime]]:
        """Look at ``moment``; the misses told by this look."""
        self.now, before = moment, len(self.missed)
        await self.deadlines.look()
        return self.missed[before:]


def minutely(tmp_path: Path, name: str, extra: str = "") -> Job:
    return write_job(tmp_path, f"""
        name: {name}
        schedule: every 1m
        deadline: 30s
        {extra}
        steps:
          - {{id: a, run: "true"}}
    """, name=f"{name}.yaml")


async def test_a_paused_jobs_fires_are_not_late_but_a_fire_that_made_no_run_is(
        tmp_path: Path, store: SqliteStore) -> None:
    job = minutely(tmp_path, "held")
    judge = Judge(store, {"held": job})
    assert await judge.look_at(T0) == []  # where judging starts
    store.pause(["held"], by="ops", reason="db migration", at=T0 + timedelta(seconds=10))
    # While paused, the scheduler makes no run of 10:01 ... 10:04 (`not made: paused`):
    # deliberate, so no deadline.
    assert await judge.look_at(at(4.5)) == []
    assert await judge.look_at(at(5.5)) == []  # 10:05, still paused
    # A held fire that has a run after all (a catch-up, a backfill) is judged as any other.
    run_id = new_run_id(at(5.75))
    store.record([RunQueued(run_id, "held", Trigger.BACKFILL, at(5.75), fire_time=at(6)),
                  RunStarted(run_id, at(5.75)),
                  RunFinished(run_id, RunStatus.FAILED, at(5.8), reason="step failed: a")])
    store.resume(["held"])
    assert await judge.look_at(at(6.2)) == []  # the resume is seen at 10:06:12
    assert await judge.look_at(at(6.6)) == [("held", at(6))]  # its run failed: late
    # Resumed: a fire that makes no run (no daemon made it, a node was lost) is late again.
    assert await judge.look_at(at(8.6)) == [("held", at(7)), ("held", at(8))]
    lates = [d for d in store.decisions("held") if d.outcome is Outcome.LATE]
    assert sorted(d.fire_time for d in lates if d.fire_time) == [at(6), at(7), at(8)]


async def test_a_pause_from_before_the_daemon_started_holds_too(
        tmp_path: Path, store: SqliteStore) -> None:
    store.pause(["held"], by="ops", reason=None, at=T0 - timedelta(days=1))
    judge = Judge(store, {"held": minutely(tmp_path, "held")})
    assert await judge.look_at(T0) == []
    assert await judge.look_at(at(10)) == []


async def test_a_disabled_jobs_fires_are_not_late_and_a_skipped_fire_is(
        tmp_path: Path, store: SqliteStore) -> None:
    off = minutely(tmp_path, "off", "enabled: false")
    busy = minutely(tmp_path, "busy")
    judge = Judge(store, {"off": off, "busy": busy})
    assert await judge.look_at(T0) == []
    # An overlap skip keeps the fire as a skipped run: not succeeded, so late.
    store.record([RunSkipped(new_run_id(at(1)), "busy", Trigger.SCHEDULE, at(1), at(1),
                             "overlap")])
    assert await judge.look_at(at(2.6)) == [("busy", at(1)), ("busy", at(2))]
