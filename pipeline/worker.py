"""A node's worker: start the runs it holds, take runs nobody holds, act on stop requests.

Runs come to the worker three ways: fires its node's scheduler claimed (``reserve``: started at
their instant, precisely), triggers asked of this node (``trigger``: the API, a parent run, the
CLI), and runs nobody holds (polled every ``poll`` seconds: fires another node claimed for
anyone, triggers from a node that runs nothing, runs of a lost node). Whatever the way, the
store decides under the job's lock whether a run starts, waits or is skipped (``start_runs``,
``claim_runs``); the worker only times, runs and records. Every run is a task of the worker's
nursery; its events go through the journal tagged with this node, so a node that lost a run
has its writes refused. The runs it holds but has not started, and how they end unstarted, are
``pipeline.held``'s.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import trio
from loguru import logger

from pipeline import policy
from pipeline.errors import StateError
from pipeline.events import RunQueued
from pipeline.faults import crash_point
from pipeline.held import Held
from pipeline.journal import Journal, Offload
from pipeline.localruns import Dispatched, LocalRun, LocalRuns
from pipeline.model import Job, RunStatus, Trigger
from pipeline.nodes import Lease, Watchdog
from pipeline.notify.notifier import Notifier
from pipeline.policy import Verdict
from pipeline.runners import Runner
from pipeline.runrecords import RunRecord, Version
from pipeline.statedir import new_run_id
from pipeline.store import Store
from pipeline.store.records import Claimed, Started

POLL = 1.0  # seconds between looks at the store: runs nobody holds, waiting runs, stops
# At most this many runs are taken, or waiting runs retried, per look: a backfill of ten
# thousand instants is paced through the queue, not taken all at once.
PER_LOOK = 64
# Runs decided in one transaction when many are due at once: the first slice this many, each
# next one twice the one before, up to MAX_SLICE.
START_SLICE = 16
MAX_SLICE = 128
# trio wakes a sleeper ~1-2 ms late; sleeping to just before the instant and then to the
# instant halves that (MEASURED.md).
PRECISE = 0.010

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class Statistics:
    active_runs: int
    reserved_runs: int
    waiting_runs: int


class Worker:
    """Holds and runs this node's runs; see the module's docstring."""

    def __init__(self, *, store: Store, journal: Journal, lease: Lease, state_dir: Path,
                 runners: Mapping[str, Runner], jobs: Callable[[str], Job | None],
                 clock: Clock | None = None, environ: Mapping[str, str] | None = None,
                 offload: Offload = trio.to_thread.run_sync,
                 watchdog: Watchdog | None = None, max_runs: int | None = None,
                 poll: float = POLL, runner: bool = True, claims: bool = True,
                 versions: Callable[[str], Version | None] | None = None,
                 on_decision: Callable[[Started], None] | None = None,
                 notifier: Notifier | None = None) -> None:
        self.store = store
        self.journal = journal
        self.lease = lease
        self.jobs = jobs  # the jobs this node loaded, by name (None: build from the record)
        self.clock = clock or lease.clock
        self.offload = offload
        self.max_runs = max_runs
        self.poll = poll
        self.only: set[str] | None = None  # take none but these runs (a foreground backfill)
        self.runner = runner  # may hold runs (the runner role)
        self.claims = claims and runner  # also take runs nobody holds
        self.versions = versions
        self.on_decision = on_decision  # told of each decision the store took (metrics)
        self.local = LocalRuns(  # the runs it runs; its notifier is told of them (notify:)
            store=store, journal=journal, state_dir=state_dir, runners=runners, jobs=jobs,
            clock=self.clock, environ=environ, offload=offload, watchdog=watchdog, poll=poll,
            notifier=notifier, trigger=self.trigger, ended=self._ended)
        self.held = Held(store=store, journal=journal, lease=lease, clock=self.clock,
                         offload=offload)  # the runs it holds but has not started
        self._nursery: trio.Nursery | None = None
        self._wakeup = trio.Event()
        self._stopping = False
        self._turns: set[str] = set()  # jobs whose waiting runs may start now
        self._next_look = 0.0

    @property
    def node(self) -> str:
        return self.lease.node_id

    def may_hold(self, job: Job) -> bool:
        """Whether this node may hold a new run of ``job`` now: it runs runs, has room for
        one, is not fenced, and its labels fit the job's ``runs_on``."""
        return (self.runner and self.capacity() > 0 and not self.lease.fenced
                and policy.fits(job.runs_on, self.lease.node.labels))

    def capacity(self) -> int:
        if self.max_runs is None:
            return 1 << 30
        return max(0, self.max_runs - len(self.local.runs) - len(self.held.reserved))

    def statistics(self) -> Statistics:
        return Statistics(len(self.local.runs), len(self.held.reserved), len(self.held.waiting))

    # -- the loop -------------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                    ) -> None:
        """Start reserved runs at their instant, and look at the store every ``poll``
        seconds, until cancelled. Runs are tasks of this nursery."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            self._next_look = trio.current_time()
            while True:
                if trio.current_time() >= self._next_look:
                    self._next_look = trio.current_time() + self.poll
                    if not self._stopping and not self.lease.fenced:
                        await self.look()
                if not self._stopping and not self.lease.fenced:
                    await self.start_due()
                    if self._turns:  # a local run ended: waiting runs may start
                        self._turns = set()
                        await self._start(list(self.held.waiting)[:PER_LOOK])
                await self._sleep(self._next_look)

    async def _sleep(self, next_poll: float) -> None:
        self._wakeup = trio.Event()
        delay = next_poll - trio.current_time()
        instant = self.held.reserved.next_instant()
        if instant is not None and not self._stopping:
            delay = min(delay, (instant - self.clock()).total_seconds())
        delay = max(delay, 0.0)
        if delay > PRECISE:
            with trio.move_on_after(delay - PRECISE):
                await self._wakeup.wait()
            if self._wakeup.is_set():
                return
            delay = PRECISE
        await trio.sleep(delay)

    def wake(self) -> None:
        self._wakeup.set()

    def poke(self) -> None:
        """Look at the store now (runs were just made for any node to take)."""
        self._next_look = 0.0
        self.wake()

    def reserve(self, claimed: list[Claimed]) -> None:
        """Runs this node's scheduler claimed and holds: start each at its ``ready_at``."""
        for claim in claimed:
            if claim.held:
                self.held.reserved.add(claim)
        self.wake()

    async def start_due(self) -> None:
        """Start every reserved run whose instant has come; skip the fires a stall made
        late (``Reserved.due``)."""
        now = self.clock()
        starting, skipped = self.held.reserved.due(now, self.jobs)
        if skipped:
            await self.held.skip(skipped, now)
        if starting:
            await self._start(starting)

    async def _start(self, run_ids: list[str], *, force: bool = False) -> list[Started]:
        started: list[Started] = []
        now = self.clock()  # when the worker took them up: every slice is decided as of then
        # In slices: the first runs of a burst start while the store decides about the next,
        # instead of all waiting for one transaction over the whole burst. The slices grow:
        # each costs a few round trips whatever its size, and once runs are starting every
        # round trip waits behind their spawns in this process (with 100 due at once on
        # PostgreSQL, slices of 16 took 10 ms for the first and 30 ms for each next one).
        with self.held.handing():
            at, size = 0, START_SLICE
            while at < len(run_ids):
                part = run_ids[at:at + size]
                try:
                    some: list[Started] = await self.offload(functools.partial(
                        self.store.start_runs, self.node, part, now=now,
                        stopping=self._stopping, force=part if force else ()))
                except StateError as exc:
                    # Nothing was decided: they stay queued, held by us; the next look retries.
                    self.journal.failed(exc)
                    for run_id in run_ids[at:]:
                        self.held.waiting.setdefault(run_id, "")
                    return started
                if some:
                    crash_point("run-written")
                for one in some:
                    self._act(one)
                started.extend(some)
                at, size = at + len(part), min(size * 2, MAX_SLICE)
        return started

    def _act(self, started: Started) -> None:
        """Carry out the store's decision about a run this node holds."""
        run, decision = started.run, started.decision
        if self.on_decision is not None:
            self.on_decision(started)
        self.held.waiting.pop(run.id, None)
        for replaced in started.replaced:
            self.local.stop(replaced, f"replaced by run {run.id}")
        if decision.verdict is Verdict.START:
            assert self._nursery is not None, "serve() is not running"
            self.local.start(run, self._nursery)
        elif decision.verdict in (Verdict.QUEUE, Verdict.REPLACE):
            self.held.waiting[run.id] = run.job
        else:
            job = self.jobs(run.job)
            notifier = self.local.notifier
            if (notifier is not None and job is not None and job.notify
                    and decision.verdict is Verdict.SKIP):
                notifier.run_ended(job, dataclasses.replace(
                    run, status=RunStatus.SKIPPED, reason=decision.detail,
                    finished_at=self.clock()), None)
            logger.info("job {}: {} {}: {}", run.job,
                        "fire " + run.fire_time.isoformat() if run.fire_time else "run",
                        "skipped" if decision.verdict is Verdict.SKIP else "not made",
                        decision.detail)

    async def look(self) -> None:
        """Once a poll: stop what was asked to stop, retry waiting runs, take runs nobody
        holds. A store that cannot be reached is tried again at the next look."""
        try:
            requests = await self.offload(self.store.stop_requests, self.node)
            await self.held.let_go()  # what a fence made it forget
        except StateError:
            return
        for request in requests:
            local = self.local.runs.get(request.run_id)
            if local is not None and local.handle.stop_reason is None:
                local.handle.stop(request.reason, status=request.status)
        if self.held.waiting:  # first in, first out: the oldest may start now
            await self._start(list(self.held.waiting)[:PER_LOOK])
        if self.claims and self.capacity() > 0:
            with self.held.handing():
                try:
                    started = await self.offload(functools.partial(
                        self.store.claim_runs, self.lease.node,
                        limit=min(self.capacity(), PER_LOOK), now=self.clock(),
                        only=self.only))
                except StateError as exc:
                    logger.error("cannot look for runs to take: {}", exc)
                    return
                for one in started:
                    self._act(one)

    def _ended(self, job: str) -> None:
        """A run of ``job`` ended here: its job's waiting runs may start now."""
        if self.held.waiting:
            self._turns.add(job)
            self.wake()

    # -- asking for runs ------------------------------------------------------------------------

    async def trigger(self, job: Job, params: Mapping[str, Any] | None = None, *,
                      trigger: Trigger = Trigger.API, parent: str | None = None,
                      version: Version | None = None, run_id: str | None = None,
                      force: bool = False) -> tuple[Dispatched, LocalRun | None]:
        """Make a run of ``job`` now (outside its schedule) and start it by its policies.

        Params must already be checked. The run is held here when this node may run it
        (its ``runs_on`` labels, ``--max-runs``); otherwise any node takes it. A refusal by
        the policy is recorded as a skipped run and says why; ``force`` starts it whatever
        the job's concurrency policy says. Raises ``StateError``.
        """
        asked = self.clock()
        run_id = run_id or new_run_id(asked)
        hold = self.may_hold(job)
        # The instant it was asked for is its fire time (scripts name files by it); it is
        # not a fire's identity, so it never takes a scheduled fire's slot.
        await self.journal.write(RunQueued(
            run_id, job.name, trigger, asked, fire_time=asked, params=params or {},
            version=version or (self.versions(job.name) if self.versions else None)
            or Version(sha256=job.sha256), document=job.document, parent_run_id=parent,
            node=self.node if hold else None, runs_on=job.runs_on))
        if not hold:
            self.wake()
            return Dispatched(run_id, RunStatus.QUEUED), None
        started = await self._start([run_id], force=force)
        if not started:
            return Dispatched(run_id, RunStatus.QUEUED), None
        decision = started[0].decision
        if decision.verdict is Verdict.START:
            return Dispatched(run_id, RunStatus.RUNNING), self.local.runs.get(run_id)
        if decision.verdict in (Verdict.QUEUE, Verdict.REPLACE):
            return Dispatched(run_id, RunStatus.QUEUED), None
        return Dispatched(run_id, RunStatus.SKIPPED, decision.detail), None

    def stop(self, run_id: str, reason: str = "stopped by an operator") -> bool:
        """Stop a run this node runs; False if it runs elsewhere (or not at all)."""
        return self.local.stop(run_id, reason)

    async def request_stop(self, run_id: str, reason: str = "stopped by an operator",
                           ) -> RunRecord | None:
        """Stop ``run_id`` wherever it runs: here at once, elsewhere through the store (its
        node acts within a poll). None if it is not active."""
        record: RunRecord | None = await self.offload(functools.partial(
            self.store.request_stop, run_id, reason=reason, at=self.clock()))
        self.stop(run_id, reason)
        self.held.waiting.pop(run_id, None)
        return record

    # -- the end --------------------------------------------------------------------------------

    async def shutdown(self, grace: float, *,
                       claims: Callable[[], Awaitable[None]] | None = None) -> None:
        """Stop taking runs; leave the runs held here but not started (``Held.leave``: to
        another node when the store is shared, else kept queued or skipped); give active runs
        ``grace`` seconds, then stop them (they end ``interrupted``).

        ``claims`` returns once the claims under way have handed their runs to ``reserve``
        (the scheduler's ``stop``); it is awaited once no more runs start here, so those runs
        are among the ones dealt with here.
        """
        self._stopping = True
        if claims is not None:
            await claims()
        await self.held.leave()
        await self.local.shutdown(grace)

    def kill_all(self, reason: str = "the daemon stopped while it ran") -> None:
        self._stopping = True
        self.local.kill_all(reason)

    async def fence(self, why: str) -> None:
        """This node may have lost its runs: stop them all now, forget what it held, and let
        go of the runs it held but had not started (at the next look: the store may be out
        of reach now). If the others found it lost they took those already; if not (a
        stall shorter than the lease), nobody else could, and they waited for its restart."""
        self.held.forget()
        self.local.kill_all(f"this node was fenced: {why}")
