"""The scheduler on trio's virtual clock with an injected wall clock and a real SQLite store.

The wall clock is virtual time plus an offset the tests move to simulate downtime, clock jumps
and suspend/resume. The autojump threshold is small but not zero, so the clock does not jump
while a worker thread is committing to SQLite.
"""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from pipeline import operate, spec
from pipeline.errors import RunnerError
from pipeline.eventfires import EventFires
from pipeline.journal import Journal
from pipeline.localruns import Dispatched
from pipeline.model import Job, RunStatus, Trigger
from pipeline.nodes import Lease, this_node
from pipeline.runners import Runner, StepContext, builtin_runners, schemas_of
from pipeline.runrecords import RunRecord, Version
from pipeline.scheduler import Scheduler
from pipeline.store.records import Outcome
from pipeline.store.sqlite import SqliteStore
from pipeline.worker import Worker

BASE = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


async def inline(fn: Callable[..., Any], *args: Any) -> Any:
    """Blocking calls made in place: the virtual clock cannot run ahead of a commit."""
    return fn(*args)


async def always_fails(args: Mapping[str, Any], ctx: StepContext) -> None:
    raise RunnerError("this step always fails")


# The built-ins plus a plain function that fails without starting a process: real processes
# would let the virtual clock jump while they run.
RUNNERS = {**builtin_runners(), "fail": Runner("fail", always_fails, {"type": "object"})}


class World:
    """A state directory, a jobs directory and a wall clock that tests can move."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.offset = 0.0
        self.start: float | None = None  # virtual time at the first look at the wall clock
        self.state_dir = tmp_path / "state"
        self.store = SqliteStore.open(self.state_dir)

    def now(self) -> datetime:
        if self.start is None:
            self.start = trio.current_time()
        return BASE + timedelta(seconds=trio.current_time() - self.start + self.offset)

    def job(self, text: str, name: str = "job") -> Job:
        path = self.tmp / "jobs" / f"{name}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return spec.load_job(path, runner_schemas=schemas_of(RUNNERS))

    @asynccontextmanager
    async def daemon(self, *jobs: Job, grace: float = 0) -> AsyncIterator[Node]:
        lease = Lease(self.store, this_node(), offload=inline)
        await lease.register()
        journal = Journal(self.store, node=lambda: lease.node_id, offload=inline)
        loaded: dict[str, Job] = {}
        worker = Worker(store=self.store, journal=journal, lease=lease,
                        state_dir=self.state_dir, runners=RUNNERS, jobs=loaded.get,
                        clock=self.now, offload=inline)
        scheduler = Scheduler(store=self.store, clock=self.now, node=lambda: lease.node_id,
                              reserve=worker.reserve, forget=worker.held.forget_job,
                              offload=inline)
        events = EventFires(store=self.store, clock=self.now, node=lambda: lease.node_id,
                            jobs=lambda: loaded, reserve=worker.reserve, offload=inline)
        node = Node(scheduler, worker, loaded, events)
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.serve)
            await nursery.start(worker.serve)
            await node.load({j.name: j for j in jobs})
            await nursery.start(scheduler.serve)
            await events.rebooted()
            await nursery.start(events.serve_after)
            try:
                yield node
            finally:
                with trio.CancelScope(shield=True):
                    await node.shutdown(grace)
                nursery.cancel_scope.cancel()

    def not_made(self, job: str = "job") -> list[tuple[float, str]]:
        """Fires the catch-up policy (or a pause) made no run of, as seconds after BASE."""
        return sorted(((d.fire_time - BASE).total_seconds(), d.detail or "")
                      for d in self.store.decisions(job, limit=100000)
                      if d.outcome is Outcome.NOT_MADE and d.fire_time is not None)

    def runs(self, job: str = "job", **filters: object) -> list[RunRecord]:
        return list(reversed(self.store.runs(job=job, limit=10000, **filters)))  # type: ignore[arg-type]

    def fired(self, job: str = "job") -> list[float]:
        """Fire times of runs that ran, as seconds after BASE."""
        return sorted((r.fire_time - BASE).total_seconds() for r in self.runs(job)
                      if r.fire_time and r.status is not RunStatus.SKIPPED
                      and r.trigger in (Trigger.SCHEDULE, Trigger.CATCHUP))

    def skipped(self, job: str = "job") -> list[tuple[float, str]]:
        return sorted(((r.fire_time - BASE).total_seconds()
                       if r.fire_time and r.trigger in (Trigger.SCHEDULE, Trigger.CATCHUP)
                       else -1, r.reason or "")
                      for r in self.runs(job) if r.status is RunStatus.SKIPPED)


class Node:
    """A daemon's firing and running parts, as the tests drive them."""

    def __init__(self, scheduler: Scheduler, worker: Worker, jobs: dict[str, Job],
                 events: EventFires) -> None:
        self.scheduler = scheduler
        self.worker = worker
        self.jobs = jobs
        self.events = events

    async def load(self, jobs: Mapping[str, Job]) -> None:
        self.jobs.clear()
        self.jobs.update(jobs)
        await self.scheduler.load(jobs)

    async def trigger(self, name: str, trigger: Trigger = Trigger.API) -> Dispatched:
        return (await self.worker.trigger(self.jobs[name], {}, trigger=trigger))[0]

    def stop(self, run_id: str) -> bool:
        return self.worker.stop(run_id)

    async def shutdown(self, grace: float) -> None:
        self.scheduler.stop_firing()
        await self.worker.shutdown(grace)


@pytest.fixture
def world(tmp_path: Path, mock_clock: MockClock) -> World:
    mock_clock.autojump_threshold = 0.005
    return World(tmp_path)


EVERY_10S = """
    schedule: {every: 10s, catchup: %s}
    steps:
      - {id: s, uses: sleep, with: {duration: %s}}
"""


async def test_interval_fires_on_every_aligned_instant_once(world: World,
                                                            mock_clock: MockClock) -> None:
    job = world.job(EVERY_10S % ("latest", "1s"))
    async with world.daemon(job):
        await trio.sleep(55)
    assert world.fired() == [10, 20, 30, 40, 50]
    runs = world.runs()
    assert all(r.status is RunStatus.SUCCEEDED for r in runs)
    assert all(r.trigger is Trigger.SCHEDULE for r in runs)
    for r in runs:
        assert r.started_at is not None and r.fire_time is not None
        assert (r.started_at - r.fire_time).total_seconds() < 0.5


async def test_forbid_records_the_overlapping_fire_as_skipped(world: World,
                                                              mock_clock: MockClock) -> None:
    job = world.job(EVERY_10S % ("latest", "15s"))
    async with world.daemon(job):
        await trio.sleep(45)
    assert world.fired() == [10, 30]
    assert [t for t, _ in world.skipped()] == [20, 40]
    assert "still active" in world.skipped()[0][1]


async def test_allow_with_max_active(world: World, mock_clock: MockClock) -> None:
    job = world.job("""
        schedule: every 10s
        concurrency: {policy: allow, max_active: 2}
        steps:
          - {id: s, uses: sleep, with: {duration: 25s}}
    """)
    async with world.daemon(job):
        await trio.sleep(45)
    assert world.fired() == [10, 20, 40]
    assert [t for t, _ in world.skipped()] == [30]


async def test_replace_cancels_the_active_run_then_starts(world: World,
                                                          mock_clock: MockClock) -> None:
    job = world.job("""
        schedule: every 10s
        concurrency: replace
        steps:
          - {id: s, uses: sleep, with: {duration: 15s}}
    """)
    async with world.daemon(job):
        await trio.sleep(25)
    runs = world.runs()
    assert len(runs) == 2
    assert runs[0].status is RunStatus.CANCELLED
    assert runs[1].status is RunStatus.INTERRUPTED  # cut off by the daemon's shutdown
    assert runs[0].reason is not None and runs[0].reason.startswith("replaced by run")
    assert runs[1].started_at is not None and runs[0].finished_at is not None
    assert runs[1].started_at >= runs[0].finished_at


async def test_queue_waits_for_the_active_run_and_is_bounded(world: World,
                                                             mock_clock: MockClock) -> None:
    job = world.job("""
        schedule: every 10s
        concurrency: {policy: queue, max_queued: 1}
        steps:
          - {id: s, uses: sleep, with: {duration: 25s}}
    """)
    async with world.daemon(job, grace=100):
        await trio.sleep(45)
    # 10 runs until 35; 20 waits and starts at 35; 30 finds the queue full; 40 waits, and
    # is still waiting when the daemon stops.
    runs = {(r.fire_time - BASE).total_seconds(): r for r in world.runs() if r.fire_time}
    assert runs[10].status is RunStatus.SUCCEEDED
    assert runs[20].status is RunStatus.SUCCEEDED
    assert runs[20].started_at is not None
    assert (runs[20].started_at - BASE).total_seconds() == pytest.approx(35, abs=0.1)
    assert runs[30].status is RunStatus.SKIPPED and "queue full" in (runs[30].reason or "")
    assert runs[40].status is RunStatus.SKIPPED
    assert runs[40].reason == "the daemon stopped before the run could start"


async def test_a_run_asked_for_stays_queued_across_a_restart(world: World,
                                                              mock_clock: MockClock) -> None:
    """A lone daemon that stops skips its timed fires that had not started (catch-up decides
    about those) but keeps the runs asked for (a trigger, a backfill, an event) queued: the
    next start runs them."""
    job = world.job("""
        schedule: every 10s
        concurrency: {policy: queue, max_queued: 5}
        steps:
          - {id: s, uses: sleep, with: {duration: 25s}}
    """)
    async with world.daemon(job) as node:
        await trio.sleep(15)  # the fire at 10 runs
        asked, _ = await node.worker.trigger(job)  # waits behind it
        await trio.sleep(10)  # the fire at 20 waits too
    runs = {r.id: r for r in world.runs()}
    assert runs[asked.run_id].status is RunStatus.QUEUED
    timed = [r for r in runs.values() if r.fire_time and r.trigger is Trigger.SCHEDULE]
    assert [r.status for r in timed] == [RunStatus.INTERRUPTED, RunStatus.SKIPPED]
    async with world.daemon(job):
        await trio.sleep(5)
    ran = world.store.run(asked.run_id)
    assert ran is not None and ran.started_at is not None


async def test_restart_after_downtime_catchup_latest(world: World, mock_clock: MockClock) -> None:
    job = world.job(EVERY_10S % ("latest", "0s"))
    async with world.daemon(job):
        await trio.sleep(15)  # fires at 10
    world.offset += 3600  # an hour of downtime
    async with world.daemon(job):
        await trio.sleep(3)
    fired = world.fired()
    assert fired[0] == 10
    assert fired[1] == 3610  # the newest missed fire runs, as a catch-up
    assert len(fired) == 2
    assert world.runs()[-1].trigger is Trigger.CATCHUP
    missed = world.not_made()
    assert len(missed) == 359  # 20 .. 3600: recorded as decisions, not silently dropped
    assert all("superseded" in why for _, why in missed)
    assert world.skipped() == []  # and no skipped runs: a missed fire makes no run


async def test_restart_after_downtime_catchup_none_and_all(tmp_path: Path,
                                                           mock_clock: MockClock,
                                                           ) -> None:
    mock_clock.autojump_threshold = 0.005
    for policy in ("none", "all"):
        world = World(tmp_path / policy)
        job = world.job(EVERY_10S % (policy, "0s"))
        async with world.daemon(job):
            await trio.sleep(15)  # 10
        world.offset += 125  # down for two minutes: 20 .. 140 are due at once on restart
        async with world.daemon(job):
            await trio.sleep(1)
        if policy == "none":  # every fire that came due while it was down was missed; 140
            assert world.fired() == [10, 140]  # comes due at the very instant of the start
            assert [t for t, _ in world.not_made()] == list(range(20, 140, 10))
            assert all(why == "missed while the daemon was down (catchup: none)"
                       for _, why in world.not_made())
        else:  # every missed fire runs, one after another, in order
            assert world.fired() == list(range(10, 150, 10)), str(world.fired())
            assert world.skipped() == world.not_made() == []


@pytest.mark.parametrize("policy", ["none", "latest", "all"])
async def test_a_fire_due_while_no_daemon_ran_is_left_to_catchup_however_recent(
        tmp_path: Path, mock_clock: MockClock, policy: str) -> None:
    """Stopped across one fire and back 5 s after it: not an on-time fire (issue 9.4)."""
    mock_clock.autojump_threshold = 0.005
    world = World(tmp_path)
    job = world.job(EVERY_10S % (policy, "0s"))
    async with world.daemon(job):
        await trio.sleep(15)  # 10
    world.offset += 10  # down from 15 to 25: the fire at 20 came due meanwhile
    async with world.daemon(job):
        await trio.sleep(1)
    runs = {(r.fire_time - BASE).total_seconds(): r for r in world.runs() if r.fire_time}
    if policy == "none":
        assert set(runs) == {10}
        assert world.not_made() == [(20, "missed while the daemon was down (catchup: none)")]
    else:
        assert set(runs) == {10, 20}
        assert runs[20].status is RunStatus.SUCCEEDED
        assert runs[20].trigger is Trigger.CATCHUP


async def test_misfire_grace_covers_only_a_stall_while_running(tmp_path: Path,
                                                               mock_clock: MockClock) -> None:
    mock_clock.autojump_threshold = 0.005
    for grace, expect in (("60s", Trigger.SCHEDULE), ("5s", None)):
        world = World(tmp_path / grace)
        job = world.job(f"""
            schedule: {{every: 10s, catchup: none, misfire_grace: {grace}}}
            steps:
              - {{id: s, uses: sleep, with: {{duration: 0s}}}}
        """)
        async with world.daemon(job):
            await trio.sleep(12)  # 10
            world.offset += 15  # the loop stalls from 12 to 27: the fire at 20 is 7-9 s late
            await trio.sleep(2)
        runs = {(r.fire_time - BASE).total_seconds(): r for r in world.runs() if r.fire_time}
        if expect is None:  # past its grace: catchup none decides
            assert 20 not in runs, grace
            assert (20, "missed while the daemon stalled (catchup: none)") in world.not_made()
        else:
            assert runs[20].status is RunStatus.SUCCEEDED, grace
            assert runs[20].trigger is expect


async def test_a_held_fire_a_stall_made_older_than_the_next_is_missed_and_said(
        world: World, mock_clock: MockClock) -> None:
    """The daemon stalls after it claimed the fire at 20 and before its instant, past the fire
    at 30: only the newest (30) may be on time, though 20 is within the misfire grace, and
    the skip of 20 is in the decision log."""
    mock_clock.autojump_threshold = 0.005
    job = world.job("""
        schedule: {every: 10s, catchup: none, misfire_grace: 60s}
        steps:
          - {id: s, uses: sleep, with: {duration: 0s}}
    """)
    async with world.daemon(job):
        await trio.sleep(19.9)  # 10 ran; 20 is claimed, held for its instant
        world.offset += 15  # the loop stalls: when it looks again it is 34.9
        await trio.sleep(2)
    runs = {(r.fire_time - BASE).total_seconds(): r for r in world.runs() if r.fire_time}
    assert runs[20].status is RunStatus.SKIPPED
    assert runs[20].reason == "missed while the daemon stalled (catchup: none)"
    assert runs[30].status is RunStatus.SUCCEEDED and runs[30].trigger is Trigger.SCHEDULE
    said = [(d.outcome, (d.fire_time - BASE).total_seconds(), d.detail)
            for d in world.store.decisions("job") if d.fire_time and d.run_id == runs[20].id]
    assert said == [(Outcome.SKIPPED, 20, "missed while the daemon stalled (catchup: none)")]


async def test_a_fire_is_never_run_twice_across_a_crash(world: World,
                                                        mock_clock: MockClock) -> None:
    """A fire claimed but whose watermark was never flushed is refused on restart."""
    job = world.job(EVERY_10S % ("all", "0s"))
    async with world.daemon(job):
        await trio.sleep(25)
    # Roll the persisted watermark back, as if the daemon died before flushing it.
    with world.store._transaction() as conn:
        conn.execute("UPDATE jobs SET watermark = ? WHERE name = 'job'",
                     ((BASE + timedelta(seconds=5)).isoformat(timespec="microseconds"),))
    async with world.daemon(job):
        await trio.sleep(1)
    fired = world.fired()
    assert fired == sorted(set(fired)) == [10, 20]


async def test_clock_jump_back_never_reruns_a_fire(world: World, mock_clock: MockClock) -> None:
    job = world.job(EVERY_10S % ("latest", "0s"))
    async with world.daemon(job):
        await trio.sleep(35)  # 10, 20, 30
        world.offset -= 25  # the wall clock goes back to 10
        await trio.sleep(31)  # wall 10 .. 41
    assert world.fired() == [10, 20, 30, 40]


async def test_clock_jump_forward_is_caught_up_by_policy(world: World,
                                                         mock_clock: MockClock) -> None:
    job = world.job(EVERY_10S % ("latest", "0s"))
    async with world.daemon(job):
        await trio.sleep(15)
        world.offset += 600  # suspend/resume: ten minutes vanish
        await trio.sleep(3)  # noticed within the recheck period
    fired = world.fired()
    assert fired == [10, 610]
    assert [t for t, _ in world.not_made()] == list(range(20, 610, 10))


async def test_circuit_breaker_opens_skips_and_closes(world: World,
                                                      mock_clock: MockClock,
                                                      ) -> None:
    job = world.job("""
        schedule: every 10s
        circuit_breaker: {after: 2, cooldown: 25s}
        steps:
          - {id: s, uses: fail}
    """)
    async with world.daemon(job) as scheduler:
        await trio.sleep(42)  # 10 and 20 fail: open from 20 until 45; 30 and 40 skipped
        manual = await scheduler.trigger("job")  # an operator's trigger still runs
        await trio.sleep(33)  # 50 runs after the cooldown, fails: open again; 60, 70 skipped
    assert manual.status is RunStatus.RUNNING
    assert world.fired() == [10, 20, 50]
    assert world.skipped() == [(30, "circuit open"), (40, "circuit open"),
                               (60, "circuit open"), (70, "circuit open")]
    assert world.store.job_states()["job"].failures == 3  # the manual run does not count
    world.store.reset_circuit("job", world.now())
    assert world.store.job_states()["job"].failures == 0


async def test_disabled_job_never_fires_but_can_be_triggered(world: World,
                                                             mock_clock: MockClock) -> None:
    job = world.job("""
        enabled: false
        schedule: every 10s
        steps:
          - {id: s, uses: sleep, with: {duration: 0s}}
    """)
    async with world.daemon(job) as scheduler:
        await trio.sleep(35)
        await scheduler.trigger("job")
        await trio.sleep(1)
    runs = world.runs()
    assert [r.trigger for r in runs] == [Trigger.API]
    assert runs[0].status is RunStatus.SUCCEEDED


async def test_schedule_edit_never_fires_retroactively_and_new_jobs_never_backfill(
        world: World, mock_clock: MockClock) -> None:
    job = world.job(EVERY_10S % ("all", "0s"))
    async with world.daemon(job) as scheduler:
        await trio.sleep(15)  # 10
        edited = world.job("""
            schedule: {every: 7s, catchup: all}
            steps:
              - {id: s, uses: sleep, with: {duration: 0s}}
        """)
        await scheduler.load({"job": edited})
        late = world.job(EVERY_10S % ("all", "0s"), name="late")
        await scheduler.load({"job": edited, "late": late})
        await trio.sleep(10)  # until 25
    assert world.fired() == [10, 21]  # 7s multiples after the edit at 15: 21 (not 14)
    assert world.fired("late") == [20]


async def test_removed_job_is_unscheduled_and_its_history_kept(world: World,
                                                               mock_clock: MockClock) -> None:
    job = world.job(EVERY_10S % ("all", "0s"))
    async with world.daemon(job) as scheduler:
        await trio.sleep(15)
        await scheduler.load({})
        await trio.sleep(30)
    assert world.fired() == [10]


async def test_long_outage_considers_at_most_1000_fires_and_starts_fast(
        world: World, mock_clock: MockClock) -> None:
    job = world.job("""
        schedule: {every: 1s, catchup: latest}
        steps:
          - {id: s, uses: sleep, with: {duration: 0s}}
    """)
    async with world.daemon(job):
        await trio.sleep(1.5)
    world.offset += 3 * 365 * 86400  # three years
    async with world.daemon(job):
        await trio.sleep(0.2)
    assert len(world.not_made()) == 999
    assert len(world.fired()) == 2


async def test_stop_cancels_a_running_run(world: World, mock_clock: MockClock) -> None:
    job = world.job("""
        steps:
          - {id: s, uses: sleep, with: {duration: 100s}}
    """)
    async with world.daemon(job) as scheduler:
        started = await scheduler.trigger("job")
        await trio.sleep(1)
        assert scheduler.stop(started.run_id)
        await trio.sleep(1)
        assert not scheduler.stop(started.run_id)
    run = world.store.run(started.run_id)
    assert run is not None and run.status is RunStatus.CANCELLED
    assert run.reason == "stopped by an operator"


async def test_enabling_a_disabled_job_never_backfills(world: World,
                                                       mock_clock: MockClock) -> None:
    disabled = world.job("""
        enabled: false
        schedule: {every: 10s, catchup: all}
        steps:
          - {id: s, uses: sleep, with: {duration: 0s}}
    """)
    async with world.daemon(disabled) as scheduler:
        await trio.sleep(105)
        enabled = world.job("""
            schedule: {every: 10s, catchup: all}
            steps:
              - {id: s, uses: sleep, with: {duration: 0s}}
        """)
        await scheduler.load({"job": enabled})
        await trio.sleep(10)
    assert world.fired() == [110]
    assert world.skipped() == []


async def test_manual_failures_do_not_open_the_circuit(world: World,
                                                       mock_clock: MockClock) -> None:
    job = world.job("""
        schedule: every 10s
        circuit_breaker: {after: 2, cooldown: 1h}
        steps:
          - {id: s, uses: fail}
    """)
    async with world.daemon(job) as scheduler:
        await scheduler.trigger("job")
        await scheduler.trigger("job", trigger=Trigger.API)
        await trio.sleep(12)
    assert world.fired() == [10]
    assert world.store.job_states()["job"].failures == 1


async def test_no_new_run_starts_once_the_daemon_is_stopping(world: World,
                                                             mock_clock: MockClock) -> None:
    job = world.job("""
        concurrency: allow
        steps:
          - {id: s, uses: sleep, with: {duration: 5s}}
    """)
    async with world.daemon(job, grace=10) as scheduler:
        first = await scheduler.trigger("job")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scheduler.shutdown, 10)
            await trio.sleep(1)
            late = await scheduler.trigger("job")
    assert first.status is RunStatus.RUNNING
    assert late.status is RunStatus.SKIPPED and late.reason == "the daemon is shutting down"
    record = world.store.run(first.run_id)
    assert record is not None and record.status is RunStatus.SUCCEEDED


async def test_a_triggered_run_has_the_instant_it_was_asked_for(world: World,
                                                                mock_clock: MockClock) -> None:
    job = world.job(EVERY_10S % ("latest", "0s"))
    async with world.daemon(job) as scheduler:
        await trio.sleep(20)  # wall 20: the scheduled fire at 20 is made too
        asked = world.now()
        dispatched = await scheduler.trigger("job")
        await trio.sleep(1)
    run = world.store.run(dispatched.run_id)
    assert run is not None and run.fire_time == asked
    assert world.fired() == [10, 20]


async def test_runs_cut_off_by_a_shutdown_are_interrupted(world: World,
                                                         mock_clock: MockClock) -> None:
    job = world.job(EVERY_10S % ("latest", "1h"))
    async with world.daemon(job, grace=5):
        await trio.sleep(12)
    [listed] = world.runs()
    run = world.store.run(listed.id)
    assert run is not None and run.status is RunStatus.INTERRUPTED
    assert run.reason == "the daemon stopped while it ran"
    assert run.steps[0].status.value == "cancelled"


async def test_a_paused_job_makes_no_fire_until_resumed_and_triggers_still_run(
        world: World, mock_clock: MockClock) -> None:
    job = world.job(EVERY_10S % ("latest", "0s"))
    async with world.daemon(job) as node:
        await trio.sleep(15)  # 10 fires
        operate.pause(world.store, ["job"], by="alice@host", reason="db migration",
                      now=world.now())
        await trio.sleep(20)  # 20 and 30 are not made
        manual = await node.trigger("job")  # an operator's trigger still runs
        operate.resume(world.store, ["job"], jobs=node.jobs, catchup=False, now=world.now())
        await trio.sleep(10)  # 40 fires
    assert world.fired() == [10, 40]
    assert world.not_made() == [(20, "the job is paused (by alice@host)"),
                                (30, "the job is paused (by alice@host)")]
    assert manual.status is RunStatus.RUNNING


@pytest.mark.parametrize(("policy", "caught"), [("latest", [30]), ("all", [20, 30]),
                                                ("none", [])])
async def test_resume_with_catchup_follows_the_jobs_policy(
        tmp_path: Path, mock_clock: MockClock, policy: str, caught: list[float]) -> None:
    mock_clock.autojump_threshold = 0.005
    world = World(tmp_path)
    job = world.job(EVERY_10S % (policy, "0s"))
    async with world.daemon(job) as node:
        await trio.sleep(15)
        operate.pause(world.store, ["job"], by="ops", reason=None, now=world.now())
        await trio.sleep(20)
        made = operate.resume(world.store, ["job"], jobs=node.jobs, catchup=True,
                              now=world.now())
        await trio.sleep(3)  # any node (this one) takes the caught-up runs
    assert len(made) == len(caught)
    assert world.fired() == sorted([10, *caught])
    assert all(world.store.run(r) is not None and world.store.run(r).trigger is  # type: ignore[union-attr]
               Trigger.CATCHUP for r in made)


async def test_a_backfilled_instant_is_not_fired_again_and_the_reverse(
        world: World, mock_clock: MockClock) -> None:
    job = world.job(EVERY_10S % ("latest", "0s"))
    async with world.daemon(job) as node:
        await trio.sleep(12)  # 10 fires on schedule
        made, left = operate.backfill(
            world.store, job, [BASE + timedelta(seconds=s) for s in (10, 20)], rerun="none",
            max_parallel=1, now=world.now(), version=Version(sha256=job.sha256))
        node.worker.poke()
        await trio.sleep(20)  # 20 comes due: its instant is taken by the backfill
    assert [(i - BASE).total_seconds() for i, _ in left] == [10]
    runs = [r for r in world.runs() if r.fire_time is not None]
    by_instant: dict[float, list[Trigger]] = {}
    for r in runs:
        by_instant.setdefault((r.fire_time - BASE).total_seconds(), []).append(r.trigger)
    assert by_instant[10] == [Trigger.SCHEDULE]
    assert by_instant[20] == [Trigger.BACKFILL]
    assert by_instant[30] == [Trigger.SCHEDULE]
    assert len(made) == 1



async def test_reboot_fires_once_per_daemon_start_and_not_on_a_reload(
        world: World, mock_clock: MockClock) -> None:
    job = world.job("""
        schedule: "@reboot"
        steps:
          - {id: s, uses: sleep, with: {duration: 0s}}
    """)
    async with world.daemon(job) as node:
        await trio.sleep(2)
        await node.load({})
        await node.load({"job": job})  # a hot reload makes no second fire
        await trio.sleep(2)
    async with world.daemon(job):
        await trio.sleep(2)
    runs = world.runs()
    assert [r.trigger for r in runs] == [Trigger.REBOOT, Trigger.REBOOT]
    assert all(r.status is RunStatus.SUCCEEDED for r in runs)


async def test_after_fires_once_per_upstream_run_with_its_outputs(
        world: World, mock_clock: MockClock) -> None:
    up = world.job("""
        name: extract
        schedule: every 10s
        steps:
          - {id: s, uses: sleep, with: {duration: 1s}}
        outputs: {rows: "42"}
    """, name="extract")
    down = world.job("""
        name: load
        schedule: {after: extract, status: [succeeded]}
        steps:
          - {id: s, uses: sleep, with: {duration: 0s}}
    """, name="load")
    async with world.daemon(up, down):
        await trio.sleep(25)  # extract at 10 and 20
    async with world.daemon(up, down):  # a restart neither loses nor doubles one
        await trio.sleep(2)
    upstream = [r for r in world.runs("extract") if r.status is RunStatus.SUCCEEDED]
    fired = world.runs("load")
    assert len(upstream) == 2 and len(fired) == 2
    assert [r.trigger for r in fired] == [Trigger.AFTER, Trigger.AFTER]
    records = [world.store.run(r.id) for r in fired]
    assert [r.event["id"] for r in records if r and r.event] == [u.id for u in upstream]
    assert records[0] is not None and records[0].event is not None
    assert dict(records[0].event["outputs"]) == {"rows": "42"}


async def test_a_pool_lets_no_more_runs_hold_slots_than_it_has(world: World,
                                                              mock_clock: MockClock) -> None:
    world.store.publish_pools({"db": 2})
    jobs = [world.job(f"""
        name: j{i}
        pool: db
        steps:
          - {{id: s, uses: sleep, with: {{duration: 10s}}}}
    """, name=f"j{i}") for i in range(4)]
    async with world.daemon(*jobs) as node:
        started = [await node.trigger(f"j{i}") for i in range(4)]
        await trio.sleep(1)
        assert [world.store.pools()[0].used, world.store.pools()[0].waiting] == [2, 2]
        waiting = world.store.run(started[2].run_id)
        assert waiting is not None and waiting.reason == "waiting for pool db"
        await trio.sleep(30)
    runs = sorted((world.store.run(d.run_id) for d in started), key=lambda r: r.started_at)  # type: ignore[union-attr, arg-type, return-value]
    assert all(r.status is RunStatus.SUCCEEDED for r in runs)  # type: ignore[union-attr]
    # First come, first served: the two that waited started when the first two ended.
    assert [(r.started_at - BASE).total_seconds() // 10 for r in runs] == [0, 0, 1, 1]  # type: ignore[union-attr, operator]


async def test_calendar_removed_fires_are_decisions(world: World, mock_clock: MockClock) -> None:
    """One decision per stretch of removed fires: its first, saying until when none is made."""
    job = world.job("""
        schedule: {cron: "*/10 * * * * *", timezone: UTC, exclude: ["0,2 12 * * *"]}
        steps:
          - {id: s, uses: sleep, with: {duration: 0s}}
    """)
    async with world.daemon(job):
        await trio.sleep(185)  # 12:00:10 .. 12:00:50 and 12:02:xx are excluded
    assert world.fired() == [60, 70, 80, 90, 100, 110, 180]
    assert world.not_made() == [
        (10, "exclude 0,2 12 * * *; no fire is made after it until 2026-03-01 12:01:00+00:00"),
        (120, "exclude 0,2 12 * * *; no fire is made after it until 2026-03-01 12:03:00+00:00")]


async def test_an_excluded_day_is_one_decision_when_it_begins(
        world: World, mock_clock: MockClock) -> None:
    """An every-second job excluded all day: its first fire is recorded as not made when it
    comes due (not tomorrow, with the next made fire), once, and once more after a restart."""
    job = world.job("""
        schedule: {every: 1s, timezone: UTC, exclude: ["2026-03-01"]}
        steps:
          - {id: s, uses: sleep, with: {duration: 0s}}
    """)
    async with world.daemon(job):
        await trio.sleep(10)
    [decision] = world.store.decisions("job", limit=100)
    assert decision.outcome is Outcome.NOT_MADE and decision.reason == "excluded"
    assert decision.fire_time == BASE + timedelta(seconds=1)
    assert decision.detail == ("exclude 2026-03-01; no fire is made after it until "
                               "2026-03-02 00:00:00+00:00")
    assert decision.decided_at - decision.fire_time < timedelta(seconds=1)  # near its time
    assert world.fired() == []
    async with world.daemon(job):  # a new daemon says it again, once
        await trio.sleep(10)
    # From the stored watermark: nothing moved it past the first fire of the stretch.
    assert [t for t, _ in world.not_made()] == [1, 2]
    lines = operate.explain("job", job, decisions=world.store.decisions("job"), state=None,
                            nodes=[], now=world.now())
    assert lines[0].startswith("2026-03-01 12:00:01+00:00  not made: exclude 2026-03-01; "), lines


async def test_a_step_pool_and_the_cap_on_active_runs(world: World,
                                                      mock_clock: MockClock) -> None:
    world.store.publish_pools({"db": 1, "*": 3})
    fan = world.job("""
        name: fan
        concurrency: allow
        steps:
          - id: items
            for_each: [1, 2, 3]
            pool: {name: db, slots: 1}
            uses: sleep
            with: {duration: 10s}
    """, name="fan")
    other = world.job("""
        name: other
        concurrency: allow
        steps:
          - {id: s, uses: sleep, with: {duration: 10s}}
    """, name="other")
    async with world.daemon(fan, other) as node:
        first = await node.trigger("fan")
        await trio.sleep(1)
        record = world.store.run(first.run_id)
        assert record is not None
        states = {s.id: (s.status.value, s.error) for s in record.steps}
        assert states["items.0"][0] == "running"
        assert states["items.1"] == ("pending", "waiting for pool db")
        others = [await node.trigger("other") for _ in range(3)]
        await trio.sleep(1)
        # The cap: fan and two of the others run, the third waits for a place.
        assert [o.status.value for o in others] == ["running", "running", "queued"]
        late = world.store.run(others[2].run_id)
        assert late is not None and late.reason == "waiting for max_active_runs"
        await trio.sleep(40)
    done = world.store.run(first.run_id)
    assert done is not None and done.status is RunStatus.SUCCEEDED
    starts = sorted(s.started_at for s in done.steps if "." in s.id and s.started_at)
    # One item at a time: each began when the one before had given its slot back.
    assert [round((b - a).total_seconds()) for a, b in itertools.pairwise(starts)] == [10, 10]
    # Each waiting item says since when it waited (the run page draws it).
    waits = {s.id: round((s.started_at - s.waited_from).total_seconds())  # type: ignore[operator]
             for s in done.steps if s.waited_from is not None}
    assert waits == {"items.1": 10, "items.2": 20}
    assert all(world.store.run(o.run_id).status is RunStatus.SUCCEEDED  # type: ignore[union-attr]
               for o in others)


async def test_a_step_that_waited_for_its_pool_no_longer_says_so_once_it_runs(
        world: World, mock_clock: MockClock) -> None:
    world.store.publish_pools({"db": 1})
    job = world.job("""
        name: two
        steps:
          - {id: a, pool: db, uses: sleep, with: {duration: 10s}}
          - {id: b, pool: db, uses: sleep, with: {duration: 10s}}
    """, name="two")
    async with world.daemon(job) as node:
        started = await node.trigger("two")
        await trio.sleep(1)
        record = world.store.run(started.run_id)
        assert record is not None
        assert {s.id: (s.status.value, s.error) for s in record.steps}["b"] == (
            "pending", "waiting for pool db")
        await trio.sleep(10)  # a gave the slot back: b runs
        record = world.store.run(started.run_id)
        assert record is not None
        assert {s.id: (s.status.value, s.error) for s in record.steps}["b"] == ("running", None)
        await trio.sleep(10)


async def test_a_settled_file_fires_once_with_its_event(world: World,
                                                        mock_clock: MockClock) -> None:
    from pipeline.filewatch import FileFire
    from pipeline.filewatch import Outcome as FileOutcome

    job = world.job("""
        schedule: {file: "incoming/*.csv"}
        steps:
          - {id: s, run: 'echo "path=$PIPELINE_EVENT_PATH" >> "$PIPELINE_OUTPUT"'}
    """)
    async with world.daemon(job) as node:
        seen = FileFire("job", "incoming/*.csv", "/in/old.csv", 3, 1, FileOutcome.BASELINE)
        new = FileFire("job", "incoming/*.csv", "/in/a.csv", 10, 2)
        await node.events._files([seen, new])
        await node.events._files([new])  # the same file again: nothing
        changed = FileFire("job", "incoming/*.csv", "/in/a.csv", 12, 3)
        await node.events._files([changed])  # changed later: fires again
        with trio.move_on_after(5):
            while len([r for r in world.runs() if r.status.finished]) < 2:  # noqa: ASYNC110
                await trio.sleep(0.1)
    runs = world.runs()
    assert [r.trigger for r in runs] == [Trigger.FILE, Trigger.FILE]
    events = sorted((world.store.run(r.id).event["size"], world.store.run(r.id).event["path"])  # type: ignore[union-attr, index]
                    for r in runs)
    assert events == [(10, "/in/a.csv"), (12, "/in/a.csv")]
    assert world.store.known_keys("job", [seen.key, new.key, changed.key]) == {
        seen.key, new.key, changed.key}


async def test_a_burst_starts_in_slices_and_every_run_on_time(world: World,
                                                              mock_clock: MockClock) -> None:
    # More jobs due at one instant than one start transaction decides (START_SLICE): they
    # are decided slice by slice (each slice's runs start while the next is decided, each
    # slice twice the one before), and every run keeps the instant the worker took the burst
    # up as its start.
    from pipeline.worker import START_SLICE
    count = START_SLICE * 3 + 3
    jobs = [world.job("""
        schedule: every 10s
        steps:
          - {id: s, uses: sleep, with: {duration: 0s}}
    """, name=f"j{i:02d}") for i in range(count)]
    slices: list[int] = []

    async def recording(fn: Callable[..., Any], *args: Any) -> Any:
        if getattr(fn, "func", None) == world.store.start_runs:
            slices.append(len(fn.args[1]))  # type: ignore[attr-defined]
        return fn(*args)

    async with world.daemon(*jobs) as node:
        node.worker.offload = recording
        await trio.sleep(15)
    runs = [run for i in range(count) for run in world.runs(f"j{i:02d}")]
    assert len(runs) == count and all(r.status is RunStatus.SUCCEEDED for r in runs)
    assert len({r.started_at for r in runs}) == 1
    assert all((r.started_at - r.fire_time).total_seconds() < 0.5 for r in runs)  # type: ignore[operator]
    assert slices == [START_SLICE, START_SLICE * 2, 3]
