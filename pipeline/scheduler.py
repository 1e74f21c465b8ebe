"""The daemon loop: fire each job on its schedules, apply the catch-up, overlap and circuit
breaker policies, and run the fires through the engine.

Every fire has an identity, (job, scheduled instant). A fire is claimed in the store (a run or
a skip is recorded for it) before anything else happens, and the store refuses a second claim
for the same fire; only then does the job's watermark ("every fire up to here is dealt with")
move past it. So a crash at any moment loses nothing (fires after the watermark are looked at
again on restart) and doubles nothing (those already claimed are refused).

The loop never sleeps blindly until a far fire: it wakes at least every ``recheck`` seconds and
reads the wall clock again, so a clock jump forward or a resume from suspend is handled by the
catch-up policy, and a jump back never re-runs a fire (fires are only ever taken after the
watermark).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import trio
from loguru import logger

from pipeline import triggers
from pipeline.engine import MAX_CHAIN, RunHandle, check_chain, run_job, utc_now
from pipeline.errors import NotFound
from pipeline.events import RunFinished, RunQueued, RunSkipped, WatermarkMoved
from pipeline.faults import crash_point
from pipeline.journal import Journal, Offload
from pipeline.model import Catchup, Job, Policy, RunStatus, Trigger, Version
from pipeline.params import parse_params
from pipeline.runners import Runner
from pipeline.statedir import new_run_id, process_identity
from pipeline.store import Store
from pipeline.versions import version_of

RECHECK = 2.0  # longest sleep without looking at the wall clock again
# Fires are claimed this long before their instant, so that at the instant the claim is already
# durable and the run starts on time (a thousand claims take tens of milliseconds to commit).
LEAD = 0.25
MAX_MISSED = 1000
# trio wakes a sleeper ~1-2 ms late; sleeping to just before the instant and then to the
# instant halves that (MEASURED.md).
PRECISE = 0.010

Clock = Callable[[], datetime]


@dataclass
class _Queued:
    run_id: str
    fire_time: datetime | None
    trigger: Trigger
    params: Mapping[str, Any]
    job: Job
    done: trio.Event | None = None  # set when the run has ended (or will never start)


@dataclass
class _Reserved:
    """A fire claimed ahead of its instant, waiting to start at ``at`` (fire + jitter)."""

    at: datetime
    seq: int
    name: str
    run_id: str
    fire_time: datetime
    trigger: Trigger
    backlog: bool  # a catch-up of `all`: it waits its turn in the queue


@dataclass(frozen=True)
class _Stored:
    watermark: datetime
    claimed: set[datetime]
    failures: int
    opened_at: datetime | None


@dataclass
class JobState:
    """What the daemon keeps per job between fires."""

    job: Job
    watermark: datetime
    next_fire: datetime | None = None
    generation: int = 0
    active: dict[str, RunHandle] = field(default_factory=dict)
    queue: deque[_Queued] = field(default_factory=deque)
    failures: int = 0  # consecutive failed runs
    opened_at: datetime | None = None  # when the circuit breaker opened
    claimed: set[datetime] = field(default_factory=set)  # fires after the watermark, claimed
    reserved: dict[str, _Reserved] = field(default_factory=dict)  # claimed, not yet started
    version: Version | None = None  # of `job`, with git facts; looked up at its first fire

    def circuit_open(self, now: datetime) -> bool:
        breaker = self.job.circuit_breaker
        if breaker is None or self.failures < breaker.after or self.opened_at is None:
            return False
        return now < self.opened_at + timedelta(seconds=breaker.cooldown)


@dataclass(frozen=True)
class Dispatched:
    """What became of a fire or a trigger: a run started, queued, or skipped (and why)."""

    run_id: str
    status: RunStatus
    reason: str | None = None


@dataclass(frozen=True)
class Statistics:
    jobs: int
    active_runs: int
    queued_runs: int
    circuits_open: int


class Scheduler:
    """Fires jobs and owns their runs: every run is a task in the scheduler's nursery."""

    def __init__(self, *, store: Store, journal: Journal, state_dir: Path,
                 runners: Mapping[str, Runner], clock: Clock = utc_now,
                 recheck: float = RECHECK,
                 rng: random.Random | None = None,
                 environ: Mapping[str, str] | None = None,
                 on_run_finished: Callable[[str, str, RunStatus], None] | None = None,
                 offload: Offload = trio.to_thread.run_sync) -> None:
        self.store = store
        self.offload = offload
        self.journal = journal
        self.state_dir = state_dir
        self.runners = runners
        self.clock = clock
        self.recheck = recheck
        # When this daemon began to fire: a fire due before it came due while no daemon ran,
        # and only the catch-up policy decides about it (no misfire grace).
        self.started: datetime | None = None
        self.rng = rng or random.Random()
        self.environ = environ
        self.on_run_finished = on_run_finished
        self.jobs: dict[str, JobState] = {}
        self.runs: dict[str, RunHandle] = {}
        self._heap: list[tuple[datetime, str, int]] = []
        self._wakeup = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._firing = True
        self._loaded = False
        self._versions_wanted = trio.Event()
        self._retired: dict[str, JobState] = {}  # removed jobs whose runs are still going
        # Claimed fires by start time: (at, seq, fire) tuples, compared in C, since a thousand
        # pops comparing dataclasses cost tens of milliseconds at the very instant they fire.
        self._starts: list[tuple[datetime, int, _Reserved]] = []
        self._seq = 0

    # -- the catalog ---------------------------------------------------------------------

    async def load(self, jobs: Mapping[str, Job]) -> None:
        """Make ``jobs`` the scheduled set: add, update and remove jobs.

        The first call picks up each job's stored watermark, so fires missed while the daemon
        was down are caught up by policy. Later, a job that appears starts from now (it never
        backfills), and an edited schedule starts from now (it never fires retroactively);
        runs under way finish on the version they started with.
        """
        stored: dict[str, _Stored] = {}
        if not self._loaded:
            stored = await self.offload(self._read_stored, dict(jobs))
        now = self.clock()
        if self.started is None:
            self.started = now
        for name, job in jobs.items():
            state = self.jobs.get(name)
            if state is None and name in self._retired:
                # Back before its last run ended: the same state, so `forbid` still sees it.
                state = self.jobs[name] = self._retired.pop(name)
                state.job, state.watermark = job, max(state.watermark, now)
                self.journal.write_nowait(WatermarkMoved(name, state.watermark))
            elif state is None:
                known = stored.get(name)
                state = JobState(job=job, watermark=known.watermark if known else now)
                if known is not None:
                    state.claimed = known.claimed
                    state.failures = known.failures
                    state.opened_at = known.opened_at
                else:
                    # Persist where a new job starts, so a restart does not backfill it.
                    self.journal.write_nowait(WatermarkMoved(name, now))
                self.jobs[name] = state
                logger.info("job {} scheduled: {}", name, self.describe(job))
            elif job.sha256 != state.job.sha256:
                if ((job.schedules != state.job.schedules or job.enabled != state.job.enabled)
                        and now > state.watermark):
                    # Fires of the old schedule due this very moment are recorded, not lost.
                    due, _ = triggers.fires_between(state.job.schedules, state.watermark, now)
                    for fire in due:
                        if fire not in state.claimed and state.job.enabled:
                            self.journal.write_nowait(RunSkipped(
                                new_run_id(now), name, Trigger.SCHEDULE, fire, now,
                                "the schedule was edited", version=self._version(state)))
                    state.watermark = now
                    self.journal.write_nowait(WatermarkMoved(name, now))
                    self._cancel_reserved(state, "the schedule was edited")
                state.job = job
                logger.info("job {} reloaded: {}", name, self.describe(job))
            else:
                continue
            self._reschedule(state)
        for name in [n for n in self.jobs if n not in jobs]:
            state = self.jobs.pop(name)
            self._cancel_reserved(state, "the job was removed")
            if state.active:
                self._retired[name] = state
            for queued in state.queue:
                self.journal.write_nowait(RunFinished(queued.run_id, RunStatus.SKIPPED, now,
                                                      "the job was removed"))
                if queued.done is not None:
                    queued.done.set()
            state.queue.clear()
            logger.info("job {} unscheduled (its file is gone); history kept", name)
        self._loaded = True
        self._wakeup.set()
        self._versions_wanted.set()

    def _read_stored(self, jobs: Mapping[str, Job]) -> dict[str, _Stored]:
        """Each job's schedule state as the last daemon left it (runs in a worker thread)."""
        found = {}
        for name, watermark in self.store.watermarks().items():
            if name not in jobs:
                continue
            failures = self.store.consecutive_failures(name)
            breaker = jobs[name].circuit_breaker
            opened_at = None
            if failures and breaker is not None:
                opened_at = self.store.circuit_opened_at(name, breaker.after)
            found[name] = _Stored(watermark, self.store.fires_after(name, watermark),
                                  failures, opened_at)
        return found

    @staticmethod
    def describe(job: Job) -> str:
        if not job.schedules:
            return "no schedule (runs when triggered)"
        text = "; ".join(triggers.describe(s) for s in job.schedules)
        return text + ("" if job.enabled else " (disabled)")

    def _reschedule(self, state: JobState) -> None:
        state.generation += 1
        state.next_fire = None
        if not state.job.schedules:
            return
        # A disabled job stays on the heap so its watermark keeps moving: enabling it later
        # must not look like downtime to catch up.
        fires = triggers.next_fires(state.job.schedules, state.watermark, 1)
        if fires:
            state.next_fire = fires[0] if state.job.enabled else None
            heapq.heappush(self._heap, (fires[0], state.job.name, state.generation))

    def next_fire(self, name: str) -> datetime | None:
        state = self.jobs.get(name)
        return state.next_fire if state else None

    def statistics(self) -> Statistics:
        now = self.clock()
        return Statistics(
            jobs=len(self.jobs), active_runs=len(self.runs),
            queued_runs=sum(len(s.queue) for s in self.jobs.values()),
            circuits_open=sum(1 for s in self.jobs.values() if s.circuit_open(now)))

    # -- the loop -------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                    ) -> None:
        """Fire due jobs until cancelled. Runs are tasks of this nursery."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._look_up_versions)
            task_status.started()
            while True:
                if self._firing:
                    await self.fire_due()
                await self._sleep()

    def _until_next(self) -> float:
        """Seconds (by the wall clock) until there is something to claim or to start, at most
        ``recheck``."""
        if not self._firing:
            return self.recheck
        now = self.clock()
        delay = self.recheck
        while self._heap:
            at, name, generation = self._heap[0]
            state = self.jobs.get(name)
            if state is None or state.generation != generation:
                heapq.heappop(self._heap)
                continue
            delay = min(delay, (at - now).total_seconds() - LEAD)
            break
        if self._starts:
            delay = min(delay, (self._starts[0][0] - now).total_seconds())
        return max(delay, 0.0)

    async def _sleep(self) -> None:
        self._wakeup = trio.Event()
        delay = self._until_next()
        if delay > PRECISE:
            with trio.move_on_after(delay - PRECISE):
                await self._wakeup.wait()
            if self._wakeup.is_set():
                return
            delay = self._until_next()
            if delay > PRECISE * 2:
                return  # the clock moved under us: look again from the top
        await trio.sleep(delay)

    async def fire_due(self) -> None:
        """Claim every fire due within LEAD seconds, then start those whose instant has come."""
        await self.claim_due()
        self.start_due()

    async def claim_due(self) -> None:
        """Claim, in one commit, every job's fires up to LEAD seconds ahead.

        Missed fires (downtime, a stall, a clock jump) are dealt with here by the catch-up
        policy: recorded as skipped, or claimed to run now.
        """
        now = self.clock()
        horizon = now + timedelta(seconds=LEAD)
        due = []
        while self._heap and self._heap[0][0] <= horizon:
            _, name, generation = heapq.heappop(self._heap)
            state = self.jobs.get(name)
            if state is not None and state.generation == generation:
                due.append(state)
        if not due:
            return
        claims: list[RunQueued | RunSkipped] = []
        plans: list[tuple[JobState, RunQueued, Trigger, bool]] = []
        for state in due:
            self._plan(state, now, horizon, claims, plans)
        accepted = await self.journal.write_many(claims)
        for (state, claim, trigger, backlog), ok in zip(
                plans, [a for c, a in zip(claims, accepted, strict=True)
                        if isinstance(c, RunQueued)], strict=True):
            fire = claim.fire_time
            assert fire is not None
            if not ok:
                logger.warning("job {}: fire {} already has a run; not run again",
                               state.job.name, fire.isoformat())
                continue
            state.claimed.add(fire)
            at = fire
            if trigger is Trigger.SCHEDULE:
                at += timedelta(seconds=self._jitter(state.job))
            self._seq += 1
            reserved = _Reserved(at, self._seq, state.job.name, claim.run_id, fire, trigger,
                                 backlog)
            state.reserved[claim.run_id] = reserved
            heapq.heappush(self._starts, (at, self._seq, reserved))
        if plans:
            crash_point("fire-claimed")
        for state in due:
            self.journal.write_nowait(WatermarkMoved(state.job.name, state.watermark))
            self._reschedule(state)

    def _plan(self, state: JobState, now: datetime, horizon: datetime,
              claims: list[RunQueued | RunSkipped],
              plans: list[tuple[JobState, RunQueued, Trigger, bool]]) -> None:
        """What to do with ``state``'s fires up to ``horizon``: the claims to write."""
        job = state.job
        watermark = max(state.watermark, horizon)
        if not job.enabled:  # its fires pass, unrun and unrecorded: it asked for that
            state.watermark = watermark
            return
        fires, truncated = triggers.fires_between(job.schedules, state.watermark, horizon,
                                                  limit=MAX_MISSED)
        if truncated:
            logger.warning("job {}: more than {} fires were missed; only the latest {} are "
                           "considered", job.name, MAX_MISSED, MAX_MISSED)
        fires = [f for f in fires if f not in state.claimed]
        coming = [f for f in fires if f > now]
        started = self.started or now
        # Fires that came due while no daemon ran were missed, however recent.
        down = [f for f in fires if f < started]
        past = [f for f in fires if started <= f <= now]
        # Of several fires due at once while we ran (a stall, a clock jump) only the newest
        # can be on time, and only within the misfire grace; the catch-up policy decides about
        # the others.
        late, on_time = down + past[:-1], past[-1:]
        if on_time and (now - on_time[0]).total_seconds() > _misfire_grace(job):
            late, on_time = late + on_time, []
        catchup = _catchup(job)
        if late:
            logger.warning("job {}: {} fire(s) missed (from {} to {}); catchup: {}", job.name,
                           len(late), late[0].isoformat(), late[-1].isoformat(), catchup)
        to_run: list[tuple[datetime, Trigger]] = []
        for index, fire in enumerate(late):
            last = index == len(late) - 1
            if catchup is Catchup.ALL or (catchup is Catchup.LATEST and last and not on_time):
                to_run.append((fire, Trigger.CATCHUP))
            else:
                why = "the daemon was down" if fire < started else "the daemon stalled"
                reason = (f"missed while {why} (catchup: none)" if catchup is Catchup.NONE else
                          "missed; superseded by a later fire (catchup: latest)")
                claims.append(RunSkipped(new_run_id(now), job.name, Trigger.CATCHUP, fire, now,
                                         reason, version=self._version(state)))
        to_run.extend((fire, Trigger.SCHEDULE) for fire in (*on_time, *coming))
        # Catch-up of `all` runs the backlog one after another, in order, whatever the overlap
        # policy says (it is about a new fire meeting a run, not about a backlog); the fires
        # due now join the end of that queue.
        backlog = catchup is Catchup.ALL and bool(late)
        for fire, trigger in to_run:
            claim = RunQueued(new_run_id(now), job.name, trigger, now, fire_time=fire,
                              version=self._version(state), document=job.document,
                              owner=process_identity())
            claims.append(claim)
            plans.append((state, claim, trigger, backlog))
        state.watermark = watermark
        state.claimed = {f for f in state.claimed if f > watermark}

    def _jitter(self, job: Job) -> float:
        spreads = [s.jitter for s in job.schedules if s.jitter]
        return self.rng.uniform(0, max(spreads)) if spreads else 0.0

    def start_due(self) -> None:
        """Start (or skip, or queue, by policy) every claimed fire whose instant has come.

        Several fires of one job due at once mean the daemon stalled past them (suspended,
        starved): as when they are found late at claim time, only the newest is on time and
        the catch-up policy decides about the others.
        """
        now = self.clock()
        due: dict[str, list[_Reserved]] = {}
        while self._starts and self._starts[0][0] <= now:
            reserved = heapq.heappop(self._starts)[2]
            state = self.jobs.get(reserved.name)
            if state is None or state.reserved.pop(reserved.run_id, None) is None:
                continue  # the job was removed or edited meanwhile: already recorded
            due.setdefault(reserved.name, []).append(reserved)
        for name, fires in due.items():
            state = self.jobs[name]
            *missed, newest = fires
            late = (now - newest.at).total_seconds() > _misfire_grace(state.job)
            catchup = _catchup(state.job)
            for reserved in missed:
                if catchup is Catchup.ALL or reserved.backlog:
                    self._begin(state, replace(reserved, backlog=True), now)
                else:
                    self._skip_reserved(state, reserved, now,
                                        "missed; superseded by a later fire (the daemon "
                                        "stalled)")
            if late and catchup is Catchup.NONE:
                self._skip_reserved(state, newest, now, "missed while the daemon was stalled "
                                    "(catchup: none)")
            else:
                self._begin(state, newest, now)

    def _skip_reserved(self, state: JobState, reserved: _Reserved, now: datetime,
                       reason: str) -> None:
        self.journal.write_nowait(RunFinished(reserved.run_id, RunStatus.SKIPPED, now, reason))
        logger.info("job {}: fire {} skipped: {}", state.job.name,
                    reserved.fire_time.isoformat(), reason)

    def _begin(self, state: JobState, reserved: _Reserved, now: datetime) -> None:
        decision, detail = self._decide(state, reserved.trigger, now,
                                        force_queue=reserved.backlog)
        queued = _Queued(reserved.run_id, reserved.fire_time, reserved.trigger, {}, state.job)
        if decision == "skip":
            self._skip_reserved(state, reserved, now, detail)
        elif decision == "queue":
            state.queue.append(queued)
            self._start_queued(state)
        else:
            replaced = self._replace(state, reserved.run_id)
            self._start(state, queued, after=replaced)

    def _decide(self, state: JobState, trigger: Trigger, now: datetime, *,
                force_queue: bool = False) -> tuple[str, str]:
        """The overlap policy and the circuit breaker, for a fire or a trigger: ``("skip",
        reason)``, ``("queue", "")`` or ``("start", "")``."""
        job = state.job
        if not self._firing:
            return "skip", "the daemon is shutting down"
        if trigger in (Trigger.SCHEDULE, Trigger.CATCHUP) and state.circuit_open(now):
            return "skip", "circuit open"
        policy = job.concurrency
        busy = bool(state.active) or bool(state.queue)
        if force_queue:
            return "queue", ""
        if policy.policy is Policy.QUEUE and busy:
            if len(state.queue) >= policy.max_queued:
                return "skip", f"queue full ({policy.max_queued} waiting)"
            return "queue", ""
        if busy and policy.policy is Policy.FORBID:
            return "skip", "a previous run is still active (concurrency: forbid)"
        if (policy.policy is Policy.ALLOW and policy.max_active is not None
                and len(state.active) >= policy.max_active):
            return "skip", f"{policy.max_active} runs already active (max_active)"
        return "start", ""

    def _replace(self, state: JobState, run_id: str) -> list[RunHandle]:
        """`replace`: stop the job's active runs; the new one starts once they are gone."""
        if state.job.concurrency.policy is not Policy.REPLACE:
            return []
        replaced = list(state.active.values())
        for handle in replaced:
            handle.stop(f"replaced by run {run_id}")
        return replaced

    def _cancel_reserved(self, state: JobState, reason: str) -> None:
        """Record claimed fires that will not start now (the job was edited or removed)."""
        now = self.clock()
        for reserved in state.reserved.values():
            self.journal.write_nowait(RunFinished(reserved.run_id, RunStatus.SKIPPED, now,
                                                  reason))
        state.reserved.clear()

    def _version(self, state: JobState) -> Version:
        """The version to record: with its git facts once the background lookup has them."""
        if state.version is not None and state.version.sha256 == state.job.sha256:
            return state.version
        return Version(sha256=state.job.sha256)

    async def _look_up_versions(self) -> None:
        """Find each loaded job's git facts, one file at a time, off the firing path.

        git costs a few subprocesses per file; asked at fire time it would make a thousand
        jobs firing together late by seconds. The facts are those of when the file was loaded.
        """
        while True:
            pending = [s for s in self.jobs.values()
                       if s.version is None or s.version.sha256 != s.job.sha256]
            if not pending:
                self._versions_wanted = trio.Event()
                await self._versions_wanted.wait()
                continue
            for state in pending:
                job = state.job
                try:
                    found = await self.offload(_version_of, job)
                except OSError:
                    found = Version(sha256=job.sha256)
                if state.job is job:
                    state.version = found

    async def _skip(self, state: JobState, fire: datetime | None, trigger: Trigger,
                    reason: str) -> Dispatched:
        run_id = new_run_id(self.clock())
        await self.journal.write(RunSkipped(run_id, state.job.name, trigger, fire,
                                            self.clock(), reason,
                                            version=self._version(state)))
        logger.info("job {}: fire {} skipped: {}", state.job.name,
                    fire.isoformat() if fire else "-", reason)
        return Dispatched(run_id, RunStatus.SKIPPED, reason)

    async def _dispatch(self, state: JobState, *, trigger: Trigger,
                        params: Mapping[str, Any] | None, parent: str | None = None,
                        done: trio.Event | None = None) -> Dispatched:
        """A trigger (API, a parent run): the policies, then a claimed run."""
        decision, detail = self._decide(state, trigger, self.clock())
        if decision == "skip":
            return await self._skip(state, self.clock(), trigger, detail)
        # The instant it was asked for is its fire time (scripts name files by it); it is
        # not a fire's identity, so it never takes a scheduled fire's slot.
        asked = self.clock()
        run_id = await self._claim(state, asked, trigger, params or {}, parent)
        if run_id is None:  # pragma: no cover - a trigger has no fire to conflict on
            return Dispatched("", RunStatus.SKIPPED, "refused by the store")
        queued = _Queued(run_id, asked, trigger, params or {}, state.job, done)
        if decision == "queue":
            state.queue.append(queued)
            self._start_queued(state)
            return Dispatched(run_id, RunStatus.QUEUED)
        self._start(state, queued, after=self._replace(state, run_id))
        return Dispatched(run_id, RunStatus.RUNNING)

    async def _claim(self, state: JobState, fire_time: datetime | None, trigger: Trigger,
                     params: Mapping[str, Any], parent: str | None) -> str | None:
        run_id = new_run_id(self.clock())
        accepted = await self.journal.write(RunQueued(
            run_id, state.job.name, trigger, self.clock(), fire_time=fire_time,
            params=params, version=self._version(state), document=state.job.document,
            parent_run_id=parent, owner=process_identity()))
        if not accepted:
            logger.warning("job {}: fire {} already has a run; not run again",
                           state.job.name, fire_time.isoformat() if fire_time else "-")
            return None
        return run_id

    def _start_queued(self, state: JobState) -> None:
        if state.active or not state.queue:
            return
        self._start(state, state.queue.popleft(), after=[])

    def _start(self, state: JobState, queued: _Queued, *, after: list[RunHandle]) -> None:
        """Start a claimed run as a task of the scheduler's nursery.

        Its start is recorded now, when its task is made (as a process's start is its fork):
        a thousand runs started in the same instant then each carry their own time, and what
        their first steps wait for the CPU shows in the steps' start times.
        """
        started = None if after else self.clock()
        assert self._nursery is not None, "serve() is not running"
        handle = RunHandle(queued.run_id, state.job.name)
        state.active[queued.run_id] = handle
        self.runs[queued.run_id] = handle
        self._nursery.start_soon(self._run, state, queued, handle, after, started,
                                 name=f"run {queued.run_id}")

    async def _run(self, state: JobState, queued: _Queued, handle: RunHandle,
                   after: list[RunHandle], started: datetime | None) -> None:
        status = RunStatus.CANCELLED
        try:
            for previous in after:  # `replace`: the old run is gone before the new starts
                await previous.finished.wait()
            result = await run_job(
                queued.job, run_id=queued.run_id, state_dir=self.state_dir,
                emit=self.journal.write, params=queued.params, trigger=queued.trigger,
                fire_time=queued.fire_time, handle=handle, runners=self.runners,
                clock=self.clock, environ=self.environ, start_job=self.start_child,
                started_at=started)
            status = result.status
        finally:
            state.active.pop(queued.run_id, None)
            self.runs.pop(queued.run_id, None)
            if queued.done is not None:
                queued.done.set()
            self._count(state, status, queued.trigger)
            if self.on_run_finished is not None:
                self.on_run_finished(state.job.name, queued.run_id, status)
            if self.jobs.get(state.job.name) is state and self._firing:
                self._start_queued(state)
            if not state.active and self._retired.get(state.job.name) is state:
                del self._retired[state.job.name]

    def _count(self, state: JobState, status: RunStatus, trigger: Trigger) -> None:
        """The circuit breaker's count, as the store keeps it: failed scheduled runs in a row
        (any success closes it; a manual run's failure does not count)."""
        if status is RunStatus.SUCCEEDED:
            state.failures = 0
            state.opened_at = None
        elif status is RunStatus.FAILED and trigger in (Trigger.SCHEDULE, Trigger.CATCHUP):
            state.failures += 1
            breaker = state.job.circuit_breaker
            if (breaker is not None and state.failures >= breaker.after
                    and (state.opened_at is None or not state.circuit_open(self.clock()))):
                state.opened_at = self.clock()
                logger.warning("job {}: circuit open after {} failed runs; scheduled fires "
                               "are skipped for {:g}s", state.job.name, state.failures,
                               breaker.cooldown)

    # -- operators ------------------------------------------------------------------------

    async def trigger(self, name: str, params: Mapping[str, Any] | None = None, *,
                      trigger: Trigger = Trigger.API, parent: str | None = None,
                      done: trio.Event | None = None) -> Dispatched:
        """Run a job now (outside its schedule), through its overlap policy.

        Params must already be checked. A refusal by the policy is recorded as a skipped run
        and says why. The circuit breaker never stops a trigger. Raises NotFound.
        """
        state = self.jobs.get(name)
        if state is None:
            raise NotFound(f"no job {name!r}")
        return await self._dispatch(state, trigger=trigger, params=params, parent=parent,
                                    done=done)

    async def start_child(self, job: str, params: Mapping[str, Any] | None = None, *,
                          parent_run_id: str | None = None, wait: bool = True,
                          ) -> Mapping[str, Any]:
        """For ``uses: job``: start ``job`` as a child run of ``parent_run_id``.

        The child goes through the job's overlap policy like any trigger. With ``wait``, this
        returns when the child has finished, with its steps' outputs; if the waiting parent is
        cancelled, the child is stopped too. Raises NotFound, ParamError, and PipelineError
        for a chain of jobs that would call itself or grow too deep.
        """
        state = self.jobs.get(job)
        if state is None:
            raise NotFound(f"no job {job!r}")
        chain = await self.offload(self._chain, parent_run_id)
        check_chain(chain, job)
        values = parse_params(state.job, params or {})
        done = trio.Event()
        dispatched = await self.trigger(job, values, trigger=Trigger.PARENT,
                                        parent=parent_run_id, done=done)
        answer: dict[str, Any] = {"run_id": dispatched.run_id, "status": str(dispatched.status)}
        if dispatched.status is RunStatus.SKIPPED:
            answer["reason"] = dispatched.reason
            return answer
        if not wait:
            return answer
        try:
            await done.wait()
        except trio.Cancelled:
            self.stop(dispatched.run_id, "its parent run was cancelled")
            raise
        record = await self.offload(self.store.run, dispatched.run_id)
        if record is not None:
            answer.update(status=str(record.status), reason=record.reason,
                          outputs={s.id: dict(s.outputs) for s in record.steps if s.outputs})
        return answer

    def _chain(self, run_id: str | None) -> list[str]:
        """The jobs of a run's ancestry, root first (runs in a worker thread)."""
        chain: list[str] = []
        seen: set[str] = set()
        while run_id is not None and run_id not in seen and len(chain) <= MAX_CHAIN:
            seen.add(run_id)
            record = self.store.run(run_id)
            if record is None:
                break
            chain.insert(0, record.job)
            run_id = record.parent_run_id
        return chain

    def stop(self, run_id: str, reason: str = "stopped by an operator") -> bool:
        """Cancel an active or queued run; False if it is not active."""
        handle = self.runs.get(run_id)
        if handle is not None:
            handle.stop(reason)
            return True
        for state in self.jobs.values():
            for queued in list(state.queue):
                if queued.run_id == run_id:
                    state.queue.remove(queued)
                    self.journal.write_nowait(RunFinished(run_id, RunStatus.CANCELLED,
                                                          self.clock(), reason))
                    if queued.done is not None:
                        queued.done.set()
                    return True
        return False

    async def reset_circuit(self, name: str) -> bool:
        """Close ``name``'s circuit breaker (an operator's decision); False if no such job."""
        state = self.jobs.get(name)
        if state is None:
            return False
        state.failures = 0
        state.opened_at = None
        await self.offload(self.store.reset_circuit, name, self.clock())
        return True

    async def shutdown(self, grace: float) -> None:
        """Stop firing; give active runs ``grace`` seconds, then cancel them."""
        self._firing = False
        for state in self.jobs.values():
            self._cancel_reserved(state, "the daemon stopped before the run could start")
            for queued in state.queue:
                await self.journal.write(RunFinished(
                    queued.run_id, RunStatus.SKIPPED, self.clock(),
                    "the daemon stopped before the run could start"))
                if queued.done is not None:
                    queued.done.set()
            state.queue.clear()
        if self.runs:
            logger.info("waiting up to {:g}s for {} active run(s)", grace, len(self.runs))
        await self._all_finished(grace)
        for handle in list(self.runs.values()):
            handle.stop("the daemon stopped while it ran", status=RunStatus.INTERRUPTED)
        # Stopped runs get their `finally` hooks, within the grace period again.
        await self._all_finished(max(grace, 1.0))
        for handle in list(self.runs.values()):
            handle.kill("the daemon stopped while it ran", status=RunStatus.INTERRUPTED)
        await self._all_finished(None)

    async def _all_finished(self, within: float | None) -> None:
        with trio.move_on_after(math.inf if within is None else within):
            while self.runs:
                await next(iter(self.runs.values())).finished.wait()

    def kill_all(self) -> None:
        self._firing = False
        for handle in list(self.runs.values()):
            handle.kill("the daemon was told to stop now", status=RunStatus.INTERRUPTED)


def _catchup(job: Job) -> Catchup:
    # A job with several schedules takes the most generous catch-up among them.
    order = [Catchup.NONE, Catchup.LATEST, Catchup.ALL]
    return max((s.catchup for s in job.schedules), key=order.index, default=Catchup.LATEST)


def _misfire_grace(job: Job) -> float:
    return max((s.misfire_grace for s in job.schedules), default=60.0)


def _version_of(job: Job) -> Version:
    """The job's version with its git facts, if the file still holds the bytes we loaded."""
    version = version_of(Path(job.file))
    return version if version.sha256 == job.sha256 else Version(sha256=job.sha256)

