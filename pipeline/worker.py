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
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio
from loguru import logger

from pipeline import policy, spec, triggers
from pipeline.engine import MAX_CHAIN, RunHandle, RunResult, check_chain, run_job
from pipeline.errors import NotFound, PipelineError, StateError
from pipeline.events import RunFinished, RunQueued, StepFinished, StepRetrying, StepSpawned
from pipeline.faults import crash_point
from pipeline.journal import Journal, Offload
from pipeline.model import Job, Pool, RunRecord, RunStatus, Trigger, Version
from pipeline.nodes import Lease, Watchdog
from pipeline.notify import Notifier
from pipeline.params import parse_params
from pipeline.policy import Verdict
from pipeline.runners import Runner
from pipeline.statedir import new_run_id
from pipeline.store import Claimed, Started, Store

POLL = 1.0  # seconds between looks at the store: runs nobody holds, waiting runs, stops
# At most this many runs are taken, or waiting runs retried, per look: a backfill of ten
# thousand instants is paced through the queue, not taken all at once.
PER_LOOK = 64
# trio wakes a sleeper ~1-2 ms late; sleeping to just before the instant and then to the
# instant halves that (MEASURED.md).
PRECISE = 0.010
# A reserved fire started this late means the daemon stalled at its instant (suspended,
# starved); the scheduler stalled with it, so a later fire may be due and not yet claimed.
STALLED = 0.25

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class Dispatched:
    """What became of a trigger: a run started, queued, or skipped (and why)."""

    run_id: str
    status: RunStatus
    reason: str | None = None


@dataclass
class _Local:
    """A run this node runs: its handle, and what it ended as."""

    handle: RunHandle
    job: str
    done: trio.Event = field(default_factory=trio.Event)
    result: RunResult | None = None


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
        self.state_dir = state_dir
        self.runners = runners
        self.jobs = jobs  # the jobs this node loaded, by name (None: build from the record)
        self.clock = clock or lease.clock
        self.environ = environ
        self.offload = offload
        self.watchdog = watchdog
        self.max_runs = max_runs
        self.poll = poll
        self.only: set[str] | None = None  # take none but these runs (a foreground backfill)
        self.runner = runner  # may hold runs (the runner role)
        self.claims = claims and runner  # also take runs nobody holds
        self.versions = versions
        self.on_decision = on_decision  # told of each decision the store took (metrics)
        self.notifier = notifier  # told of runs' starts, ends, retries (notify:)
        self.runs: dict[str, _Local] = {}
        self._reserved: list[tuple[datetime, int, str]] = []  # (ready_at, seq, run id)
        self._reserved_ids: dict[str, str] = {}  # run id -> job
        self._claims: dict[str, Claimed] = {}
        self._records: dict[str, RunRecord] = {}  # the local runs, as they started
        self._waiting: dict[str, str] = {}  # run id -> job: held, waiting in the job's queue
        self._seq = 0
        self._nursery: trio.Nursery | None = None
        self._wakeup = trio.Event()
        self._stopping = False
        self._pgids: dict[tuple[str, str], int] = {}
        self._turns: set[str] = set()  # jobs whose waiting runs may start now
        self._next_look = 0.0
        self._freed = trio.Event()  # set when this node gives slots of a pool back
        # Store calls under way that hand this node runs (starts, runs taken), and an event
        # set while there are none: a shutdown waits for them (see `_handing_runs`).
        self._handing = 0
        self._handed = trio.Event()
        self._handed.set()

    @property
    def node(self) -> str:
        return self.lease.node_id

    def capacity(self) -> int:
        if self.max_runs is None:
            return 1 << 30
        return max(0, self.max_runs - len(self.runs) - len(self._reserved_ids))

    def statistics(self) -> Statistics:
        return Statistics(len(self.runs), len(self._reserved_ids), len(self._waiting))

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
        if self._reserved and not self._stopping:
            delay = min(delay, (self._reserved[0][0] - self.clock()).total_seconds())
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
            if not claim.held:
                continue
            self._seq += 1
            heapq.heappush(self._reserved, (claim.ready_at, self._seq, claim.run_id))
            self._reserved_ids[claim.run_id] = claim.job
            self._claims[claim.run_id] = claim
        self.wake()

    async def start_due(self) -> None:
        """Start every reserved run whose instant has come.

        Several fires of one job due at once mean the daemon stalled past them (suspended,
        starved): as when they are found late at claim time, only the newest can be on time
        (within the misfire grace) and the catch-up policy decides about the others. The newest
        may be one the scheduler has not claimed yet (it woke up after us, or its commit is
        slower than our start): a held fire is superseded by it all the same.
        """
        now = self.clock()
        due: dict[str, list[Claimed]] = {}
        while self._reserved and self._reserved[0][0] <= now:
            run_id = heapq.heappop(self._reserved)[2]
            claim = self._claims.pop(run_id, None)
            if self._reserved_ids.pop(run_id, None) is not None and claim is not None:
                due.setdefault(claim.job, []).append(claim)
        starting: list[str] = []
        for name, claims in due.items():
            job = self.jobs(name)
            scheduled = [c for c in claims if c.trigger is Trigger.SCHEDULE and not c.backlog]
            if job is None or not scheduled:
                starting.extend(c.run_id for c in claims)
                continue
            fires = [c.ready_at for c in scheduled]
            if (now - max(fires)).total_seconds() > STALLED:
                later = triggers.next_fires(job.schedules,
                                            max(c.fire_time for c in scheduled), 1)
                if later and later[0] <= now:  # due, not claimed yet: the scheduler's to run
                    fires.append(later[0])
            plan = policy.catch_up(sorted(fires), now=now,
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
                detail = (miss.detail or "").replace("the daemon was down",
                                                     "the daemon stalled")
                logger.info("job {}: fire {} skipped: {}", name, claim.fire_time.isoformat(),
                            detail)
                await self._end_unstarted(claim.run_id, detail)
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
            try:
                started: list[Started] = await self.offload(functools.partial(
                    self.store.start_runs, self.node, run_ids, now=self.clock(),
                    stopping=self._stopping, force=run_ids if force else ()))
            except StateError as exc:
                # Nothing was decided: they stay queued, held by us; the next look retries.
                self.journal.failed(exc)
                for run_id in run_ids:
                    self._waiting.setdefault(run_id, "")
                return []
            if started:
                crash_point("run-written")
            for one in started:
                self._act(one)
        return started

    def _act(self, started: Started) -> None:
        """Carry out the store's decision about a run this node holds."""
        run, decision = started.run, started.decision
        if self.on_decision is not None:
            self.on_decision(started)
        self._waiting.pop(run.id, None)
        for replaced in started.replaced:
            local = self.runs.get(replaced)
            if local is not None:
                local.handle.stop(f"replaced by run {run.id}")
        if decision.verdict is Verdict.START:
            self._run(run)
            job = self.jobs(run.job)
            if self.notifier is not None and job is not None and job.notify:
                self.notifier.run_started(job, run)
        elif decision.verdict in (Verdict.QUEUE, Verdict.REPLACE):
            self._waiting[run.id] = run.job
        else:
            job = self.jobs(run.job)
            if (self.notifier is not None and job is not None and job.notify
                    and decision.verdict is Verdict.SKIP):
                self.notifier.run_ended(job, dataclasses.replace(
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
        except StateError:
            return
        for request in requests:
            local = self.runs.get(request.run_id)
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

    # -- running --------------------------------------------------------------------------------

    def _job_of(self, run: RunRecord) -> Job:
        """The job to run: as this node loaded it when it is the version the run was made
        with, else as the run's record holds it (a runner node needs no jobs directory)."""
        loaded = self.jobs(run.job)
        if loaded is not None and (run.version is None
                                   or run.version.sha256 == loaded.sha256):
            return loaded
        if run.document is None:
            if loaded is not None:
                return loaded
            raise NotFound(f"job {run.job!r} is not loaded here and its run has no record")
        return spec.job_from_record(run.document, name=run.job, file=f"<{run.job} record>",
                                    sha256=run.version.sha256 if run.version else "")

    def _run(self, run: RunRecord) -> None:
        assert self._nursery is not None, "serve() is not running"
        handle = RunHandle(run.id, run.job)
        local = self.runs[run.id] = _Local(handle, run.job)
        self._records[run.id] = run
        self._nursery.start_soon(self._run_task, run, local, name=f"run {run.id}")

    async def _run_task(self, run: RunRecord, local: _Local) -> None:
        status = RunStatus.CANCELLED
        try:
            try:
                job = self._job_of(run)
            except PipelineError as exc:
                await self.journal.write(RunFinished(run.id, RunStatus.FAILED, self.clock(),
                                                     str(exc), attempt=run.attempt))
                status = RunStatus.FAILED
                return
            result = await run_job(
                job, run_id=run.id, state_dir=self.state_dir, emit=self.journal.write,
                params=run.params, trigger=run.trigger, fire_time=run.fire_time,
                handle=local.handle, runners=self.runners, clock=self.clock,
                environ=self.environ, start_job=self.start_child,
                started_at=run.started_at, attempt=run.attempt,
                reuse={k: dict(v) for k, v in run.reuse.items()}, pools=self.hold_pool,
                event=run.event)
            local.result = result
            status = result.status
            if self.notifier is not None and job.notify:
                await self._tell_end(job, run, result)
        finally:
            self.runs.pop(run.id, None)
            self._records.pop(run.id, None)
            local.done.set()
            logger.debug("run {} of {} ended {}", run.id, run.job, status)
            # Its job's waiting runs may start now, and so may runs waiting for slots it held.
            if self._waiting:
                self._turns.add(run.job)
                self.wake()
            self._slots_freed()

    @asynccontextmanager
    async def hold_pool(self, run_id: str, step_id: str, pool: Pool,
                        waiting: Callable[[str], Awaitable[None]]) -> AsyncIterator[None]:
        """A step's slots of ``pool`` for the block, first come, first served across the
        cluster (the store counts them); given back however the block ends."""
        told = False
        try:
            while not await self.offload(functools.partial(
                    self.store.acquire, pool.name, pool.slots, run_id=run_id, step_id=step_id,
                    now=self.clock())):
                if not told:
                    await waiting(f"waiting for pool {pool.name}")
                    told = True
                with trio.move_on_after(self.poll / 2):  # another node's release: polled
                    await self._freed.wait()
            yield
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await self.offload(self.store.release, run_id, step_id)
                except StateError as exc:  # the run's end gives them back anyway
                    self.journal.failed(exc)
            self._slots_freed()

    def _slots_freed(self) -> None:
        self._freed.set()
        self._freed = trio.Event()

    async def _tell_end(self, job: Job, run: RunRecord, result: RunResult) -> None:
        """The notifier hears how a run ended, and how the job's run before it did (for
        ``recovery``): skipped and cancelled runs say nothing about the job."""
        assert self.notifier is not None
        try:
            earlier: list[RunRecord] = await self.offload(functools.partial(
                self.store.runs, job=run.job, limit=20))
        except StateError:
            earlier = []
        # Newest first: the first that ended before this one was queued, and said something.
        previous = next((r.status for r in earlier if r.id != run.id and r.status.finished
                         and r.status not in (RunStatus.SKIPPED, RunStatus.CANCELLED)
                         and (r.id < run.id)), None)
        self.notifier.run_ended(job, dataclasses.replace(
            run, status=result.status, reason=result.reason, outputs=result.outputs,
            finished_at=self.clock()), previous)

    def observe(self, event: object) -> None:
        """A journal observer: tell the watchdog of every step's process group, and the
        notifier of every retry."""
        if isinstance(event, StepRetrying) and self.notifier is not None:
            local = self.runs.get(event.run_id)
            job = self.jobs(local.job) if local is not None else None
            record = self._records.get(event.run_id)
            if job is not None and job.notify and record is not None:
                self.notifier.step_retrying(job, record, event.step_id, event.attempt,
                                            event.error)
        if self.watchdog is None:
            return
        if isinstance(event, StepSpawned):
            self._pgids[(event.run_id, event.step_id)] = event.pgid
            self.watchdog.add(event.pgid)
        elif isinstance(event, StepFinished):
            pgid = self._pgids.pop((event.run_id, event.step_id), None)
            if pgid is not None:
                self.watchdog.remove(pgid)

    # -- asking for runs ------------------------------------------------------------------------

    async def trigger(self, job: Job, params: Mapping[str, Any] | None = None, *,
                      trigger: Trigger = Trigger.API, parent: str | None = None,
                      version: Version | None = None, run_id: str | None = None,
                      force: bool = False) -> tuple[Dispatched, _Local | None]:
        """Make a run of ``job`` now (outside its schedule) and start it by its policies.

        Params must already be checked. The run is held here when this node may run it
        (its ``runs_on`` labels, ``--max-runs``); otherwise any node takes it. A refusal by
        the policy is recorded as a skipped run and says why; ``force`` starts it whatever
        the job's concurrency policy says. Raises ``StateError``.
        """
        asked = self.clock()
        run_id = run_id or new_run_id(asked)
        hold = self.runner and self.capacity() > 0 and _fits(job, self.lease.node.labels)
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
            return Dispatched(run_id, RunStatus.RUNNING), self.runs.get(run_id)
        if decision.verdict in (Verdict.QUEUE, Verdict.REPLACE):
            return Dispatched(run_id, RunStatus.QUEUED), None
        return Dispatched(run_id, RunStatus.SKIPPED, decision.detail), None

    async def wait_for(self, run_id: str, local: _Local | None) -> RunRecord | None:
        """Wait for ``run_id`` to end (here, or on whichever node holds it); its record."""
        if local is None:
            local = self.runs.get(run_id)
        if local is not None:
            await local.done.wait()
        while True:
            record: RunRecord | None = await self.offload(self.store.run, run_id)
            if record is None or record.status.finished:
                return record
            local = self.runs.get(run_id)
            if local is not None:
                await local.done.wait()
            else:
                await trio.sleep(self.poll / 2)

    async def start_child(self, job: str, params: Mapping[str, Any] | None = None, *,
                          parent_run_id: str | None = None, wait: bool = True,
                          ) -> Mapping[str, Any]:
        """For ``uses: job``: start ``job`` as a child run of ``parent_run_id``.

        The child goes through the job's overlap policy like any trigger. With ``wait``, this
        returns when the child has ended, with its status and its own outputs (the child
        job's ``outputs:``); if the waiting parent is cancelled, the child is stopped too.
        Raises NotFound, ParamError, and PipelineError for a chain of jobs that would call
        itself or grow too deep.
        """
        child = self.jobs(job)
        if child is None:
            raise NotFound(f"no job {job!r}")
        chain = await self.offload(self._chain, parent_run_id)
        check_chain(chain, job)
        values = parse_params(child, params or {})
        dispatched, local = await self.trigger(child, values, trigger=Trigger.PARENT,
                                               parent=parent_run_id)
        answer: dict[str, Any] = {"run_id": dispatched.run_id,
                                  "status": str(dispatched.status)}
        if dispatched.status is RunStatus.SKIPPED:
            answer["reason"] = dispatched.reason
            return answer
        if not wait:
            return answer
        try:
            record = await self.wait_for(dispatched.run_id, local)
        except trio.Cancelled:
            self.stop(dispatched.run_id, "its parent run was cancelled")
            raise
        if local is not None and local.result is not None:
            # What the run itself ended with: its final record may not be written yet.
            answer.update(status=str(local.result.status), reason=local.result.reason,
                          outputs=dict(local.result.outputs))
        elif record is not None:
            answer.update(status=str(record.status), reason=record.reason,
                          outputs=dict(record.outputs))
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
        """Stop a run this node runs; False if it runs elsewhere (or not at all)."""
        local = self.runs.get(run_id)
        if local is None:
            return False
        local.handle.stop(reason)
        return True

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
        doomed = [r for r, j in {**self._reserved_ids, **self._waiting}.items() if j == job]
        for run_id in doomed:
            self._reserved_ids.pop(run_id, None)
            self._claims.pop(run_id, None)
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
        store is shared, and skipped otherwise (the catch-up policy decides about the fires
        a stopped daemon misses, not a queue kept for it).

        ``claims`` returns once the claims under way have handed their runs to ``reserve``
        (the scheduler's ``stop``); it is awaited once no more runs start here, so those runs
        are among the ones skipped.
        """
        self._stopping = True
        if claims is not None:
            await claims()
        # What a store call under way commits is this node's too: runs it started join the
        # active ones, runs it made wait join the pending.
        await self._handed.wait()
        pending = [*self._reserved_ids, *self._waiting]
        self._reserved.clear()
        self._reserved_ids.clear()
        self._claims.clear()
        self._waiting.clear()
        if pending and self.store.shared:
            try:
                await self.offload(self.store.release_runs, self.node, pending)
            except StateError as exc:
                logger.error("cannot leave {} run(s) to other nodes: {}", len(pending), exc)
        elif pending:
            for run_id in pending:
                await self._end_unstarted(run_id,
                                          "the daemon stopped before the run could start")
        if self.runs:
            logger.info("waiting up to {:g}s for {} active run(s)", grace, len(self.runs))
        await self._all_finished(grace)
        for local in list(self.runs.values()):
            local.handle.stop("the daemon stopped while it ran", status=RunStatus.INTERRUPTED)
        # Stopped runs get their `finally` hooks, within the grace period again.
        await self._all_finished(max(grace, 1.0))
        self.kill_all()
        await self._all_finished(None)

    async def _all_finished(self, within: float | None) -> None:
        with trio.move_on_after(math.inf if within is None else within):
            while self.runs:
                await next(iter(self.runs.values())).done.wait()

    def kill_all(self, reason: str = "the daemon stopped while it ran") -> None:
        self._stopping = True
        for local in list(self.runs.values()):
            local.handle.kill(reason, status=RunStatus.INTERRUPTED)

    async def fence(self, why: str) -> None:
        """This node may have lost its runs: stop them all now, forget what it held."""
        self._reserved.clear()
        self._reserved_ids.clear()
        self._claims.clear()
        self._waiting.clear()
        for local in list(self.runs.values()):
            local.handle.kill(f"this node was fenced: {why}", status=RunStatus.INTERRUPTED)


def _runs_on(job: Job) -> Mapping[str, str]:
    return job.runs_on


def _fits(job: Job, labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in _runs_on(job).items())
