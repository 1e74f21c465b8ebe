"""The journal on its own: group commit, claims that wait for their commit, a store that fails.

A real ``SqliteStore`` in tmp_path takes the commits. Where a commit must be watched, held back
or made to fail, the journal's ``offload`` (how it calls the store off the event loop) is a
plain function here that does that and then calls the store in place; with it the tests run on
trio's virtual clock, which cannot jump while SQLite commits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
from loguru import logger

from pipeline.errors import StateError
from pipeline.events import (
    Event,
    RunFinished,
    RunQueued,
    RunSkipped,
    StepFinished,
    StepRetrying,
    StepStarted,
)
from pipeline.journal import MAX_BATCH, Journal
from pipeline.model import RunStatus, StepStatus, Trigger
from pipeline.store.sqlite import SqliteStore

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


def run_id(n: int) -> str:
    return f"20261128T090000-{n:08x}"


def claim(n: int, *, fire: int | None = None, job: str = "job") -> RunQueued:
    """The run of fire ``fire`` (seconds after NOW), or a manual run when ``fire`` is None."""
    if fire is None:
        return RunQueued(run_id(n), job, Trigger.MANUAL, NOW)
    return RunQueued(run_id(n), job, Trigger.SCHEDULE, NOW, fire_time=NOW + timedelta(seconds=fire))


def started(n: int, step: str) -> StepStarted:
    return StepStarted(run_id(n), step, 1, NOW, f"logs/job/{run_id(n)}/{step}.log")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore.open(tmp_path / "state")
    yield opened
    opened.close()


@pytest.fixture
def logged() -> Iterator[list[tuple[str, str]]]:
    """What the journal logs, as (level, message)."""
    lines: list[tuple[str, str]] = []
    sink = logger.add(lambda m: lines.append((m.record["level"].name, m.record["message"])),
                      level="INFO", filter="pipeline.journal")
    yield lines
    logger.remove(sink)


async def inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def steps_of(store: SqliteStore, n: int) -> list[str]:
    run = store.run(run_id(n))
    assert run is not None
    return sorted(s.id for s in run.steps)


# -- group commit ---------------------------------------------------------------------------------


async def test_a_fan_out_of_two_hundred_steps_costs_a_few_commits(store: SqliteStore) -> None:
    commits: list[list[Event]] = []

    async def counted(fn: Callable[..., Any], events: list[Event]) -> Any:
        commits.append(list(events))
        return await trio.to_thread.run_sync(fn, events)  # the real offload, counted

    journal = Journal(store, offload=counted)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.serve)
        assert await journal.write(claim(1))
        async with trio.open_nursery() as steps:
            for i in range(200):
                steps.start_soon(journal.write, started(1, f"s{i:03}"))
        # A claim is committed after everything queued before it: once it returns, so are they.
        assert await journal.write(claim(2))
        nursery.cancel_scope.cancel()
    assert steps_of(store, 1) == [f"s{i:03}" for i in range(200)]
    assert sum(len(batch) for batch in commits) == 202
    assert len(commits) <= 6, [len(batch) for batch in commits]


async def test_a_batch_is_at_most_max_batch_events(store: SqliteStore) -> None:
    commits: list[int] = []

    async def counted(fn: Callable[..., Any], events: list[Event]) -> Any:
        commits.append(len(events))
        return fn(events)

    journal = Journal(store, offload=counted)
    journal.write_nowait(claim(1))
    for i in range(MAX_BATCH + 4):  # all queued before the writer starts: it takes them at once
        journal.write_nowait(started(1, f"s{i}"))
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.serve)
        assert await journal.write(claim(2))
        nursery.cancel_scope.cancel()
    assert commits[0] == MAX_BATCH and max(commits) == MAX_BATCH
    assert sum(commits) == MAX_BATCH + 6
    assert len(steps_of(store, 1)) == MAX_BATCH + 4


# -- claims wait, the rest does not ---------------------------------------------------------------


async def test_a_claim_returns_once_committed_and_a_step_event_does_not_wait(
        store: SqliteStore, autojump_clock: Any) -> None:
    gate = trio.Event()

    async def held(fn: Callable[..., Any], events: list[Event]) -> Any:
        await gate.wait()  # the disk is slow: nothing commits until the gate opens
        return fn(events)

    journal = Journal(store, offload=held)
    verdicts: list[bool] = []

    async def fire() -> None:
        verdicts.append(await journal.write(claim(1, fire=0)))

    async with trio.open_nursery() as nursery:
        await nursery.start(journal.serve)
        nursery.start_soon(fire)
        await trio.sleep(60)
        assert verdicts == [] and store.run(run_id(1)) is None  # the fire is not acted on yet
        with trio.fail_after(0.001):  # a step's record is queued, not waited for
            assert await journal.write(started(1, "a"))
        assert store.run(run_id(1)) is None
        gate.set()
        await trio.sleep(0.1)
        assert verdicts == [True]
        assert steps_of(store, 1) == ["a"]
        nursery.cancel_scope.cancel()


async def test_a_second_claim_for_the_same_fire_is_refused(store: SqliteStore) -> None:
    journal = Journal(store)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.serve)
        assert await journal.write(claim(1, fire=0)) is True
        assert await journal.write(claim(2, fire=0)) is False  # another node, a restart
        assert [await journal.write(c) for c in (claim(3, fire=60), claim(4, fire=60),
                                                 claim(5))] == [True, False, True]
        skip = RunSkipped(run_id(6), "job", Trigger.SCHEDULE, NOW + timedelta(seconds=120), NOW,
                          "forbid: a run is active")
        assert await journal.write(skip) is True
        nursery.cancel_scope.cancel()
    assert store.run(run_id(2)) is None and store.run(run_id(4)) is None
    assert [r.id for r in store.runs(job="job", limit=10)] == [
        run_id(6), run_id(5), run_id(3), run_id(1)]


# -- a failing store ------------------------------------------------------------------------------


async def test_a_failing_store_is_retried_and_loses_nothing(
        store: SqliteStore, autojump_clock: Any, logged: list[tuple[str, str]]) -> None:
    failures = iter(["database or disk is full"] * 3 + ["disk I/O error"] * 2)
    attempts: list[float] = []

    async def failing(fn: Callable[..., Any], events: list[Event]) -> Any:
        """The store's own errors, five times over, then the real commit."""
        attempts.append(trio.current_time())
        message = next(failures, None)
        if message is not None:
            raise StateError(message)
        return fn(events)

    journal = Journal(store, retry=2.0, offload=failing)
    verdicts: list[bool] = []

    async def fire() -> None:
        verdicts.append(await journal.write(claim(1, fire=0)))

    async with trio.open_nursery() as nursery:
        await nursery.start(journal.serve)
        health = [(journal.healthy, journal.failure)]
        nursery.start_soon(fire)
        await trio.sleep(0.5)
        health.append((journal.healthy, journal.failure))
        # Runs under way carry on: their records queue up behind the failing commit.
        for step in ("a", "b", "c"):
            with trio.fail_after(0.001):
                assert await journal.write(started(1, step))
        journal.write_nowait(RunFinished(run_id(1), RunStatus.SUCCEEDED, NOW))
        await trio.sleep(9)
        assert verdicts == []  # still failing: the fire is not acted on
        assert store.run(run_id(1)) is None
        await trio.sleep(1)
        assert verdicts == [True]
        health.append((journal.healthy, journal.failure))
        assert health == [(True, None), (False, "database or disk is full"), (True, None)]
        # Nothing dropped: the claim's batch and everything queued while it failed.
        await journal.write(claim(2))
        nursery.cancel_scope.cancel()
    run = store.run(run_id(1))
    assert run is not None and run.status is RunStatus.SUCCEEDED
    assert sorted(s.id for s in run.steps) == ["a", "b", "c"]
    start = attempts[0]
    assert [t - start for t in attempts[:6]] == [0, 2, 4, 6, 8, 10]  # every retry seconds
    # Logged once per condition, not once per attempt; and the recovery.
    assert logged == [
        ("ERROR", "cannot record state: database or disk is full (retrying every 2.0s)"),
        ("ERROR", "cannot record state: disk I/O error (retrying every 2.0s)"),
        ("INFO", "recording state again"),
    ]


# -- order ----------------------------------------------------------------------------------------


async def test_write_nowait_and_write_commit_in_the_order_given(store: SqliteStore) -> None:
    committed: list[Event] = []

    async def recorded(fn: Callable[..., Any], events: list[Event]) -> Any:
        committed.extend(events)
        return fn(events)

    journal = Journal(store, offload=recorded)
    written: list[Event] = [claim(1), started(1, "a")]
    for attempt in range(1, 6):
        written.append(StepRetrying(run_id(1), "a", attempt, 1.0, f"exit status {attempt}"))
    written += [StepFinished(run_id(1), "a", StepStatus.SUCCEEDED, NOW, attempt=6),
                RunFinished(run_id(1), RunStatus.SUCCEEDED, NOW), claim(2)]
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.serve)
        for index, event in enumerate(written):
            if index % 2:  # from synchronous code (the scheduler's), and from async code
                journal.write_nowait(event)
            else:
                await journal.write(event)
        await journal.write(claim(3))
        nursery.cancel_scope.cancel()
    assert committed == [*written, claim(3)]
    run = store.run(run_id(1))
    assert run is not None and run.status is RunStatus.SUCCEEDED
    (step,) = run.steps
    assert (step.status, step.attempt) == (StepStatus.SUCCEEDED, 6)


# -- shutdown -------------------------------------------------------------------------------------


async def test_what_is_queued_when_the_writer_is_cancelled_is_still_committed(
        store: SqliteStore, autojump_clock: Any) -> None:
    gate = trio.Event()
    calls = 0

    async def first_one_held(fn: Callable[..., Any], events: list[Event]) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            await gate.wait()  # never opened: the writer is cancelled in this commit
        return fn(events)

    journal = Journal(store, offload=first_one_held)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.serve)
        journal.write_nowait(claim(1))
        await trio.sleep(1)  # the writer holds [claim 1] now
        for step in ("a", "b"):
            journal.write_nowait(started(1, step))
        nursery.cancel_scope.cancel()
    assert journal.closed
    assert steps_of(store, 1) == ["a", "b"]  # the batch in flight and the queue, once
    # Once closed, a write goes straight to the store.
    assert await journal.write(RunFinished(run_id(1), RunStatus.CANCELLED, NOW))
    journal.write_nowait(started(1, "c"))
    run = store.run(run_id(1))
    assert run is not None and run.status is RunStatus.CANCELLED
    assert steps_of(store, 1) == ["a", "b", "c"]


# -- observers ------------------------------------------------------------------------------------


async def test_an_observer_that_fails_is_dropped_and_the_write_goes_on(store: SqliteStore) -> None:
    seen: list[Event] = []
    broken: list[Event] = []

    def closed_terminal(event: Event) -> None:
        broken.append(event)
        raise BrokenPipeError("the terminal went away")

    journal = Journal(store, observers=(closed_terminal, seen.append), offload=inline)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.serve)
        assert await journal.write(claim(1))
        journal.write_nowait(started(1, "a"))
        assert await journal.write(claim(2))
        nursery.cancel_scope.cancel()
    assert broken == [claim(1)]  # told once, then no more
    assert seen == [claim(1), started(1, "a"), claim(2)]
    assert steps_of(store, 1) == ["a"]
