"""A node's worker: start the runs it holds, take runs nobody holds, act on stop requests.

Runs come to the worker three ways: fires its node's scheduler claimed (``reserve``: started at
their instant, precisely), triggers asked of this node (``trigger``: the API, a parent run, the
CLI), and runs nobody holds (polled every ``poll`` seconds: fires another node claimed for
anyone, triggers from a node that runs nothing, runs of a lost node). Whatever the way, the
store decides under the job's lock whether a run starts, waits or is skipped (``start_runs``,
``claim_runs``); the worker only times, runs and records. Every run is a task of the worker's
nursery; its events go through the journal tagged with this node, so a node that lost a run
has its writes refused.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio
from loguru import logger

from pipeline import policy, triggers
from pipeline.errors import StateError
from pipeline.events import RunQueued
from pipeline.faults import crash_point
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
from pipeline.store.records import Claimed, Outcome, Started, StoredDecision

POLL = 1.0  # seconds between looks at the store: runs nobody holds, waiting runs, stops
# At most this many runs are taken, or waiting runs retried, per look: a backfill of ten
# thousand instants is paced through the queue, not taken all at once.
PER_LOOK = 64
START_SLICE = 16  # runs decided in one transaction when many are due at once
# A lone fire taken up this soon after its instant is on time without looking further (no
# schedule allows a second fire within it); later, the job's next instant is looked up.
LATE_ENOUGH = 0.5
# trio wakes a sleeper ~1-2 ms late; sleeping to just before the instant and then to the
# instant halves that (MEASURED.md).
PRECISE = 0.010

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class Statistics:
    active_runs: int
    reserved_runs: int
    waiting_runs: int


class Reserved:
    """The fires this node's scheduler claimed and holds, each to start at its instant."""

    def __init__(self) -> None:
        self._heap: list[tuple[datetime, int, str]] = []  # (ready_at, seq, run id)
        self._claims: dict[str, Claimed] = {}  # by run id, until it is due or dropped
        self._seq = 0

    def __len__(self) -> int:
        return len(self._claims)

    def __iter__(self) -> Iterator[str]:
        return iter(self._claims)

    def add(self, claim: Claimed) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (claim.ready_at, self._seq, claim.run_id))
        self._claims[claim.run_id] = claim

    def next_instant(self) -> datetime | None:
        return self._heap[0][0] if self._heap else None

    def of_job(self, job: str) -> list[str]:
        return [run_id for run_id, claim in self._claims.items() if claim.job == job]

    def drop(self, run_id: str) -> None:
        self._claims.pop(run_id, None)

    def clear(self) -> None:
        self._heap.clear()
        self._claims.clear()

    def due(self, now: datetime, jobs: Callable[[str], Job | None],
            ) -> tuple[list[str], list[tuple[Claimed, policy.Missed]]]:
        """Take out the runs whose instant has come: the ids of those to start, and the fires
        to skip, each with why.

        Several fires of one job due at once mean the daemon stalled past them (suspended,
        starved): as when they are found late at claim time, only the newest can be on time
        (within the misfire grace) and the catch-up policy decides about the others. The
        newest may not be held here yet (the scheduler claims it after the stall): a fire
        whose job has a later instant already due is not the newest either.
        """
        due: dict[str, list[Claimed]] = {}
        while self._heap and self._heap[0][0] <= now:
            claim = self._claims.pop(heapq.heappop(self._heap)[2], None)
            if claim is not None:
                due.setdefault(claim.job, []).append(claim)
        starting: list[str] = []
        skipped: list[tuple[Claimed, policy.Missed]] = []
        for name, claims in due.items():
            job = jobs(name)
            scheduled = [c for c in claims if c.trigger is Trigger.SCHEDULE and not c.backlog]
            if job is None or not scheduled:
                starting.extend(c.run_id for c in claims)
                continue
            late = (now - scheduled[-1].ready_at).total_seconds()
            if len(scheduled) == 1 and late <= LATE_ENOUGH:  # the usual case: one fire, on time
                starting.extend(c.run_id for c in claims)
                continue
            later = triggers.next_fires(job.schedules, max(c.fire_time for c in scheduled), 1)
            newer = [later[0]] if later and later[0] <= now else []  # claimed elsewhere
            if len(scheduled) == 1 and not newer and late <= policy.misfire_grace_of(job):
                starting.extend(c.run_id for c in claims)
                continue
            plan = policy.catch_up([*(c.ready_at for c in scheduled), *newer], now=now,
                                   started=datetime.min.replace(tzinfo=UTC),
                                   catchup=policy.catchup_of(job),
                                   misfire_grace=policy.misfire_grace_of(job))
            missed = {m.fire: m for m in plan.missed}
            starting.extend(c.run_id for c in claims if c not in scheduled)
            for claim in scheduled:
                miss = missed.get(claim.ready_at)
                if miss is None or miss.caught_up:
                    starting.append(claim.run_id)
                    continue
                skipped.append((claim, dataclasses.replace(miss, detail=(
                    miss.detail or "").replace("the daemon was down", "the daemon stalled"))))
        return starting, skipped


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
        self._reserved = Reserved()
        self._waiting: dict[str, str] = {}  # run id -> job: held, waiting in the job's queue
        self._unstarted: set[str] = set()  # held but forgotten by a fence, to let go of
        self._nursery: trio.Nursery | None = None
        self._wakeup = trio.Event()
        self._stopping = False
        self._turns: set[str] = set()  # jobs whose waiting runs may start now
        # Store calls under way that hand this node runs (starts, runs taken), and an event
        # set while there are none: a shutdown waits for them (see `_handing_runs`).
        self._handing = 0
        self._handed = trio.Event()
        self._handed.set()
        self._next_look = 0.0

    @property
    def node(self) -> str:
        return self.lease.node_id

    def may_hold(self, job: Job) -> bool:
        """Whether this node may hold a new run of ``job`` now: it runs runs, has room for
        one, is not fenced, and its labels fit the job's ``runs_on``."""
        return (self.runner and self.capacity() > 0 and not self.lease.fenced
                and _fits(job, self.lease.node.labels))

    def capacity(self) -> int:
        if self.max_runs is None:
            return 1 << 30
        return max(0, self.max_runs - len(self.local.runs) - len(self._reserved))

    def statistics(self) -> Statistics:
        return Statistics(len(self.local.runs), len(self._reserved), len(self._waiting))

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
                        await self._start(list(self._waiting)[:PER_LOOK])
                await self._sleep(self._next_look)

    async def _sleep(self, next_poll: float) -> None:
        self._wakeup = trio.Event()
        delay = next_poll - trio.current_time()
        instant = self._reserved.next_instant()
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
                self._reserved.add(claim)
        self.wake()

    async def start_due(self) -> None:
        """Start every reserved run whose instant has come; skip the fires a stall made
        late (``Reserved.due``)."""
        now = self.clock()
        starting, skipped = self._reserved.due(now, self.jobs)
        for claim, miss in skipped:
            logger.info("job {}: fire {} skipped: {}", claim.job, claim.fire_time.isoformat(),
                        miss.detail)
            await self._end_unstarted(claim.run_id, miss.detail or "missed")
        if skipped:  # said in the decision log as the scheduler says its own skips
            try:
                await self.offload(self.store.record_decisions, [StoredDecision(
                    claim.job, Outcome.SKIPPED, now, claim.fire_time, self.node,
                    str(miss.reason) if miss.reason else None, miss.detail, claim.run_id)
                    for claim, miss in skipped])
            except StateError as exc:
                self.journal.failed(exc)
        if starting:
            await self._start(starting)

    @contextmanager
    def _handing_runs(self) -> Iterator[None]:
        """Around a store call that hands this node runs, until they are acted on.

        The call commits in a worker thread; from that commit on the runs are this node's
        (started, or waiting in their job's queue). A shutdown that did not wait for it would
        leave them running or queued in the store for a node that is gone.
        """
        if not self._handing:
            self._handed = trio.Event()
        self._handing += 1
        try:
            yield
        finally:
            self._handing -= 1
            if not self._handing:
                self._handed.set()

    async def _start(self, run_ids: list[str], *, force: bool = False) -> list[Started]:
        with self._handing_runs():
            return await self._start_slices(run_ids, force=force)

    async def _start_slices(self, run_ids: list[str], *, force: bool) -> list[Started]:
        started: list[Started] = []
        now = self.clock()  # when the worker took them up: every slice is decided as of then
        # In slices: the first runs of a burst start while the store decides about the next,
        # instead of all waiting for one transaction over the whole burst.
        for at in range(0, len(run_ids), START_SLICE):
            part = run_ids[at:at + START_SLICE]
            try:
                some: list[Started] = await self.offload(functools.partial(
                    self.store.start_runs, self.node, part, now=now,
                    stopping=self._stopping, force=part if force else ()))
            except StateError as exc:
                # Nothing was decided: they stay queued, held by us; the next look retries.
                self.journal.failed(exc)
                for run_id in run_ids[at:]:
                    self._waiting.setdefault(run_id, "")
                return started
            if some:
                crash_point("run-written")
            for one in some:
                self._act(one)
            started.extend(some)
        return started

    def _act(self, started: Started) -> None:
        """Carry out the store's decision about a run this node holds."""
        run, decision = started.run, started.decision
        if self.on_decision is not None:
            self.on_decision(started)
        self._waiting.pop(run.id, None)
        for replaced in started.replaced:
            self.local.stop(replaced, f"replaced by run {run.id}")
        if decision.verdict is Verdict.START:
            assert self._nursery is not None, "serve() is not running"
            self.local.start(run, self._nursery)
        elif decision.verdict in (Verdict.QUEUE, Verdict.REPLACE):
            self._waiting[run.id] = run.job
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
            if self._unstarted:  # forgotten by a fence: any node may take them now
                await self.offload(self.store.release_runs, self.node, list(self._unstarted))
                self._unstarted.clear()
        except StateError:
            return
        for request in requests:
            local = self.local.runs.get(request.run_id)
            if local is not None and local.handle.stop_reason is None:
                local.handle.stop(request.reason, status=request.status)
        if self._waiting:  # first in, first out: the oldest may start now
            await self._start(list(self._waiting)[:PER_LOOK])
        if self.claims and self.capacity() > 0:
            with self._handing_runs():
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
        if self._waiting:
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
            node=self.node if hold else None, runs_on=_runs_on(job)))
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
        self._waiting.pop(run_id, None)
        return record

    # -- the end --------------------------------------------------------------------------------

    async def forget_job(self, job: str, reason: str) -> None:
        """Runs of ``job`` held here but not started end (the job was edited or removed)."""
        doomed = [*self._reserved.of_job(job), *(r for r, j in self._waiting.items() if j == job)]
        for run_id in doomed:
            self._reserved.drop(run_id)
            self._waiting.pop(run_id, None)
            await self._end_unstarted(run_id, reason)

    async def _end_unstarted(self, run_id: str, reason: str) -> None:
        """A run held here ends skipped before it started (recovery takes it if we cannot
        write that now: it stays queued, held by this node)."""
        try:
            await self.offload(functools.partial(
                self.store.request_stop, run_id, reason=reason, status=RunStatus.SKIPPED,
                at=self.clock()))
        except StateError as exc:
            self.journal.failed(exc)

    async def shutdown(self, grace: float, *,
                       claims: Callable[[], Awaitable[None]] | None = None) -> None:
        """Stop taking runs; give active runs ``grace`` seconds, then stop them (they end
        ``interrupted``). Runs held here but not started are left to another node when the
        store is shared; otherwise those asked for (triggers, backfills, events) stay queued
        for the next start and those of timed fires are skipped (the catch-up policy decides
        about the fires a stopped daemon misses, not a queue kept for it).

        ``claims`` returns once the claims under way have handed their runs to ``reserve``
        (the scheduler's ``stop``); it is awaited once no more runs start here, so those runs
        are among the ones dealt with here.
        """
        self._stopping = True
        if claims is not None:
            await claims()
        # What a store call under way commits is this node's too: runs it started join the
        # active ones, runs it made wait join the pending.
        await self._handed.wait()
        pending = [*self._reserved, *self._waiting]
        self._reserved.clear()
        self._waiting.clear()
        if pending and self.store.shared:
            try:
                await self.offload(self.store.release_runs, self.node, pending)
            except StateError as exc:
                logger.error("cannot leave {} run(s) to other nodes: {}", len(pending), exc)
        elif pending:
            try:
                kept, fires = await self.offload(_asked_and_fired, self.store, pending)
                if kept:  # asked for (a trigger, a backfill, an event): the next start runs it
                    await self.offload(self.store.release_runs, self.node, kept)
            except StateError as exc:
                logger.error("cannot keep {} run(s) queued: {}", len(pending), exc)
                fires = pending
            for run_id in fires:
                await self._end_unstarted(run_id,
                                          "the daemon stopped before the run could start")
        await self.local.shutdown(grace)

    def kill_all(self, reason: str = "the daemon stopped while it ran") -> None:
        self._stopping = True
        self.local.kill_all(reason)

    async def fence(self, why: str) -> None:
        """This node may have lost its runs: stop them all now, forget what it held, and let
        go of the runs it held but had not started (at the next look: the store may be out
        of reach now). If the others found it lost they took those already; if not (a
        stall shorter than the lease), nobody else could, and they waited for its restart."""
        self._unstarted.update(self._reserved)
        self._unstarted.update(self._waiting)
        self._reserved.clear()
        self._waiting.clear()
        self.local.kill_all(f"this node was fenced: {why}")


def _asked_and_fired(store: Store, run_ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """Of runs not started when a lone daemon stops: those asked for (kept queued, for the
    next start) and those of its timed fires (skipped: the next start's catch-up policy
    decides about fires it missed, as about any fire due while no daemon ran)."""
    asked: list[str] = []
    fired: list[str] = []
    for run_id in run_ids:
        run = store.run(run_id)
        timed = run is None or run.trigger in (Trigger.SCHEDULE, Trigger.CATCHUP)
        (fired if timed else asked).append(run_id)
    return asked, fired


def _runs_on(job: Job) -> Mapping[str, str]:
    return job.runs_on


def _fits(job: Job, labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in _runs_on(job).items())
