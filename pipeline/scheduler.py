"""The firing loop: make each loaded job's fires into runs, on time, once.

Every fire has an identity, (job, scheduled instant). About ``LEAD`` seconds before its instant
the scheduler claims it in the store (``Store.claim_fires``): the store keeps only the fires
after the job's stored watermark (whoever moved it dealt with the rest: this node before a
crash, or another scheduler node), sorts them into on time, caught up and not made
(``policy.catch_up``), makes runs of the first two and moves the watermark, in one transaction.
The runs this node holds go to its worker, which starts them at their instant. So a crash at any
moment loses nothing (fires after the watermark are looked at again) and doubles nothing (the
store refuses a second run of a fire).

A fire the job's calendar removes (``exclude:``, outside ``active:``) is a "not made" decision,
recorded once per stretch (``policy.stretch_starts``): the first removed fire after a made one
(or the first this node sees of the job since it loaded it, or since its schedule changed) is
recorded when it comes due, its detail saying until when no fire is made; the rest of the
stretch is not. So an ``every: 1s`` job excluded for a day makes one row, not 86,400, and
``why`` still says why it is quiet, at the moment it goes quiet (the job is woken for that
fire, not only at its next made one).

The loop never sleeps blindly until a far fire: it wakes at least every ``recheck`` seconds and
reads the clock again, so a clock jump forward or a resume from suspend is handled by the
catch-up policy, and a jump back never re-runs a fire (fires are only taken after the
watermark). The clock is the store's (``Lease.clock``): a node with a wrong wall clock neither
doubles nor skips fires.
"""

from __future__ import annotations

import functools
import heapq
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import trio
from loguru import logger

from pipeline import triggers
from pipeline.errors import StateError
from pipeline.faults import crash_point
from pipeline.journal import Offload
from pipeline.model import Job
from pipeline.policy import (
    catchup_of,
    has_calendar,
    misfire_grace_of,
    stretch_detail,
    stretch_starts,
)
from pipeline.runrecords import Version
from pipeline.store import Store
from pipeline.store.records import Claimed, Claims, FireClaim, JobSettings, StoredDecision
from pipeline.versions import LoadedVersions

RECHECK = 2.0  # longest sleep without looking at the clock again
# Fires are claimed this long before their instant, so that at the instant the claim is already
# durable and the run starts on time (a thousand claims take tens of milliseconds to commit).
LEAD = 0.25
MAX_MISSED = 1000
MAX_REMOVED_LOGGED = 100  # stretches of fires a calendar removed, recorded per claim
PRECISE = 0.010

Clock = Callable[[], datetime]


@dataclass
class _Scheduled:
    """What the scheduler keeps per job between fires."""

    job: Job
    watermark: datetime  # every fire up to here is dealt with (as far as this node knows)
    next_fire: datetime | None = None
    generation: int = 0
    # The last fire dealt with was one the calendar removed, and its stretch is recorded.
    in_stretch: bool = False


@dataclass(frozen=True)
class Statistics:
    jobs: int
    claims: int  # fires claimed since start


class Scheduler:
    """Claims the loaded jobs' fires; ``reserve`` gets the runs this node holds."""

    def __init__(self, *, store: Store, clock: Clock, node: Callable[[], str],
                 reserve: Callable[[list[Claimed]], None],
                 forget: Callable[[str, str], Any] | None = None,
                 hold: Callable[[Job], bool] = lambda job: True,
                 recheck: float = RECHECK, rng: random.Random | None = None,
                 offload: Offload = trio.to_thread.run_sync,
                 trouble: Callable[[StateError], None] | None = None,
                 on_decisions: Callable[[list[StoredDecision]], None] | None = None) -> None:
        self.store = store
        self.clock = clock
        self.node = node  # this node's id (it changes if the node registers again)
        self.reserve = reserve
        self.forget = forget  # async (job, reason): its runs held here but not started end
        self.hold = hold  # whether this node may hold the job's runs (runs_on, capacity)
        self.recheck = recheck
        self.rng = rng or random.Random()
        self.offload = offload
        # Told of a store that cannot be written (the journal says so once per condition).
        self.trouble = trouble or (lambda exc: logger.error("cannot record state: {}", exc))
        self.on_decisions = on_decisions  # told of fires made no run of (metrics)
        self._chores: list[Callable[[], Any]] = []  # store writes to retry until they succeed
        self.jobs: dict[str, _Scheduled] = {}
        self.started: datetime | None = None  # when this node began to fire
        self.claims = 0
        self._heap: list[tuple[datetime, str, int]] = []
        self._wakeup = trio.Event()
        self._firing = True
        self._claiming = trio.Lock()  # held from a claim's commit until its runs are reserved
        self.versions = LoadedVersions(offload=offload)  # the jobs' git facts, found meanwhile

    # -- the catalog ----------------------------------------------------------------------------

    async def load(self, jobs: Mapping[str, Job]) -> None:
        """Make ``jobs`` the scheduled set: add, update and remove jobs.

        The first call picks up each job's stored watermark, so fires missed while no daemon
        ran are caught up by policy. Later, a job that appears starts from now (it never
        backfills), and an edited schedule starts from now (it never fires retroactively);
        runs under way finish on the version they started with.
        """
        first = self.started is None
        stored: dict[str, datetime] = {}
        if first:
            # Without the stored watermarks nothing can be fired safely: wait for the store.
            while True:
                try:
                    states = await self.offload(self.store.job_states)
                    break
                except StateError as exc:
                    self.trouble(exc)
                    await trio.sleep(1.0)
            stored = {n: s.watermark for n, s in states.items() if s.watermark is not None}
        now = self.clock()
        if first:
            self.started = now
        self._chores.append(functools.partial(self.store.publish_jobs,
                                              [settings_of(j) for j in jobs.values()]))
        moved: list[tuple[str, datetime]] = []
        for name, job in jobs.items():
            known = self.jobs.get(name)
            if known is None:
                watermark = stored.get(name)
                if watermark is None:
                    # Where a new job starts, so a restart does not backfill it.
                    watermark = now
                    moved.append((name, now))
                known = self.jobs[name] = _Scheduled(job, watermark)
                logger.info("job {} scheduled: {}", name, describe(job))
            elif job.sha256 != known.job.sha256:
                if job.schedules != known.job.schedules:
                    known.in_stretch = False  # another calendar: its stretches are new
                if ((job.schedules != known.job.schedules or job.enabled != known.job.enabled)
                        and now > known.watermark):
                    known.watermark = now
                    moved.append((name, now))
                    if self.forget is not None:
                        await self.forget(name, "the schedule was edited")
                known.job = job
                logger.info("job {} reloaded: {}", name, describe(job))
            else:
                continue
            self._reschedule(known)
        for name, until in moved:
            self._chores.append(functools.partial(self.store.move_watermark, name, until))
        await self._do_chores()
        for name in [n for n in self.jobs if n not in jobs]:
            del self.jobs[name]
            if self.forget is not None:
                await self.forget(name, "the job was removed")
            logger.info("job {} unscheduled (its file is gone); history kept", name)
        self._wakeup.set()
        self.versions.load({name: known.job for name, known in self.jobs.items()})

    def _reschedule(self, known: _Scheduled) -> None:
        known.generation += 1
        known.next_fire = None
        if not known.job.schedules:
            return
        # A disabled job stays on the heap so its watermark keeps moving: enabling it later
        # must not look like downtime to catch up.
        fires = triggers.next_fires(known.job.schedules, known.watermark, 1)
        if fires:
            known.next_fire = fires[0] if known.job.enabled else None
        wake = fires[0] if fires else None
        if not known.in_stretch and has_calendar(known.job.schedules):
            # A stretch of removed fires begins before the next made fire: its first is
            # recorded when it comes due, so the job is woken for it.
            removed = triggers.removed_after(known.job.schedules, known.watermark)
            if removed is not None and (wake is None or removed.fire < wake):
                wake = removed.fire
        if wake is not None:
            heapq.heappush(self._heap, (wake, known.job.name, known.generation))

    async def _do_chores(self) -> None:
        """Store writes that may wait for a store that cannot be written (a full disk)."""
        while self._chores:
            try:
                await self.offload(self._chores[0])
            except StateError as exc:
                self.trouble(exc)
                return
            self._chores.pop(0)

    def next_fire(self, name: str) -> datetime | None:
        known = self.jobs.get(name)
        return known.next_fire if known else None

    def statistics(self) -> Statistics:
        return Statistics(jobs=len(self.jobs), claims=self.claims)

    def version(self, name: str) -> Version | None:
        known = self.jobs.get(name)
        return None if known is None else self.versions.of(known.job)

    # -- the loop -------------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                    ) -> None:
        """Claim due fires until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.versions.serve)
            task_status.started()
            while True:
                if self._firing:
                    if self._chores:
                        await self._do_chores()
                    await self.claim_due()
                await self._sleep()

    def stop_firing(self) -> None:
        self._firing = False

    async def stop(self) -> None:
        """Stop firing, once a claim under way has handed its runs to the worker.

        A claim commits in a worker thread, and from that commit on its runs are held by this
        node: dropped by a stop that did not wait, they would stay queued for a node that is
        gone instead of being skipped by the worker's shutdown.
        """
        self._firing = False
        async with self._claiming:
            pass

    def _until_next(self) -> float:
        if not self._firing:
            return self.recheck
        now = self.clock()
        delay = self.recheck
        while self._heap:
            at, name, generation = self._heap[0]
            known = self.jobs.get(name)
            if known is None or known.generation != generation:
                heapq.heappop(self._heap)
                continue
            delay = min(delay, (at - now).total_seconds() - LEAD)
            break
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

    async def claim_due(self) -> None:
        """Claim, in one transaction, every job's fires up to LEAD seconds ahead."""
        if not self._firing:  # stopped while the chores were done
            return
        now = self.clock()
        horizon = now + timedelta(seconds=LEAD)
        due: list[_Scheduled] = []
        while self._heap and self._heap[0][0] <= horizon:
            _, name, generation = heapq.heappop(self._heap)
            known = self.jobs.get(name)
            if known is not None and known.generation == generation:
                due.append(known)
        if not due:
            return
        claimed = [self._claim_of(known, horizon) for known in due]
        claims = [claim for claim, _ in claimed]
        crash_point("watermark-flush")
        try:
            async with self._claiming:  # until the worker has the claim's runs: see stop()
                result: Claims = await self.offload(functools.partial(
                    self.store.claim_fires, claims, node=self.node(), now=now))
                if result.runs:
                    self.claims += len(result.runs)
                    crash_point("fire-claimed")
                    self.reserve(result.runs)
        except StateError as exc:
            # Nothing was claimed: look again at the next tick, from the same watermarks.
            self.trouble(exc)
            for known in due:
                heapq.heappush(self._heap, (now, known.job.name, known.generation))
            await trio.sleep(1.0)
            return
        if result.decisions and self.on_decisions is not None:
            self.on_decisions(result.decisions)
        for known, (_, in_stretch) in zip(due, claimed, strict=True):
            # Where the store says: a fire not yet due by its clock is claimed next time.
            watermark = result.watermarks.get(known.job.name, known.watermark)
            if watermark >= horizon:  # else the store took less: look at the rest again
                known.in_stretch = in_stretch
            known.watermark = max(known.watermark, watermark)
            self._reschedule(known)

    def _claim_of(self, known: _Scheduled, horizon: datetime) -> tuple[FireClaim, bool]:
        """The claim of ``known``'s fires up to ``horizon``, and whether, once it is made, the
        last fire dealt with is in a recorded stretch of removed ones."""
        job = known.job
        fires, truncated = triggers.fires_between(job.schedules, known.watermark, horizon,
                                                  limit=MAX_MISSED)
        if truncated:
            logger.warning("job {}: more than {} fires were missed; only the latest {} are "
                           "considered", job.name, MAX_MISSED, MAX_MISSED)
        removed, in_stretch = stretch_starts(job.schedules, fires, after=known.watermark,
                                             in_stretch=known.in_stretch, horizon=horizon)
        if len(removed) > MAX_REMOVED_LOGGED:  # after a long outage: the latest are recorded
            logger.info("job {}: its calendar removed {} stretches of fires; the latest {} "
                        "are recorded", job.name, len(removed), MAX_REMOVED_LOGGED)
            removed = removed[-MAX_REMOVED_LOGGED:]
        spread = max((s.jitter for s in job.schedules), default=0.0)
        assert self.started is not None
        return FireClaim(
            job=job.name,
            fires=tuple((f, self.rng.uniform(0, spread) if spread else 0.0) for f in fires),
            until=horizon, catchup=catchup_of(job), misfire_grace=misfire_grace_of(job),
            started=self.started, version=self.versions.of(job), document=job.document,
            runs_on=job.runs_on, hold=self.hold(job),
            removed=tuple((r.fire, str(r.reason), stretch_detail(job.schedules, r))
                          for r in removed),
        ), in_stretch


def describe(job: Job) -> str:
    if not job.schedules:
        return "no schedule (runs when triggered)"
    text = "; ".join(triggers.describe(s) for s in job.schedules)
    return text + ("" if job.enabled else " (disabled)")


def settings_of(job: Job) -> JobSettings:
    return JobSettings(job.name, job.concurrency, job.circuit_breaker, job.enabled,
                       job.on_node_loss_retry,
                       None if job.pool is None else (job.pool.name, job.pool.slots))
