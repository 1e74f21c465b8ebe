"""The runs a node runs, each a task of its worker's nursery: the job it runs (as loaded here,
or as its record holds it), the slots of its pools (counted by the store, across the cluster),
the notifier told of its start, end and retries, the watchdog told of its process groups, the
child runs its steps start (``uses: job``), and the wait for a run to end here or on whichever
node holds it. Which runs start is the worker's business (``pipeline.worker``); this module
runs them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import trio
from loguru import logger

from pipeline import build
from pipeline.engine import MAX_CHAIN, RunHandle, RunResult, check_chain, run_job
from pipeline.errors import NotFound, PipelineError, StateError
from pipeline.events import RunFinished, StepFinished, StepRetrying, StepSpawned
from pipeline.journal import Journal, Offload
from pipeline.model import Job, Pool, RunStatus, Trigger
from pipeline.nodes import Watchdog
from pipeline.notify.notifier import Notifier
from pipeline.params import parse_params
from pipeline.runners import Runner
from pipeline.runrecords import RunRecord
from pipeline.store import Store

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class Dispatched:
    """What became of a trigger: a run started, queued, or skipped (and why)."""

    run_id: str
    status: RunStatus
    reason: str | None = None


@dataclass
class LocalRun:
    """A run this node runs: its handle, and what it ended as."""

    handle: RunHandle
    job: str
    done: trio.Event = field(default_factory=trio.Event)
    result: RunResult | None = None


# The worker's ``trigger``: a run of a job made now, and started here if it may.
TriggerRun = Callable[..., Awaitable[tuple[Dispatched, LocalRun | None]]]


class LocalRuns:
    """The runs this node runs, by id; see the module's docstring.

    ``trigger``: how a step's ``uses: job`` makes its child run (the worker's). ``ended``:
    told the job of each run that ends here (its waiting runs may start now).
    """

    def __init__(self, *, store: Store, journal: Journal, state_dir: Path,
                 runners: Mapping[str, Runner], jobs: Callable[[str], Job | None],
                 clock: Clock, environ: Mapping[str, str] | None, offload: Offload,
                 watchdog: Watchdog | None, poll: float, notifier: Notifier | None,
                 trigger: TriggerRun, ended: Callable[[str], None]) -> None:
        self.store = store
        self.journal = journal
        self.state_dir = state_dir
        self.runners = runners
        self.jobs = jobs  # the jobs this node loaded, by name (None: build from the record)
        self.clock = clock
        self.environ = environ
        self.offload = offload
        self.watchdog = watchdog
        self.poll = poll
        self.notifier = notifier  # told of runs' starts, ends, retries (notify:)
        self.trigger = trigger
        self.ended = ended
        self.runs: dict[str, LocalRun] = {}
        self._records: dict[str, RunRecord] = {}  # the local runs, as they started
        self._pgids: dict[tuple[str, str], int] = {}
        self._freed = trio.Event()  # set when this node gives slots of a pool back

    def start(self, run: RunRecord, nursery: trio.Nursery) -> None:
        """Run ``run`` (the store started it) as a task of ``nursery``; the notifier hears of
        its start."""
        handle = RunHandle(run.id, run.job)
        local = self.runs[run.id] = LocalRun(handle, run.job)
        self._records[run.id] = run
        nursery.start_soon(self._run_task, run, local, name=f"run {run.id}")
        job = self.jobs(run.job)
        if self.notifier is not None and job is not None and job.notify:
            self.notifier.run_started(job, run)

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
        return build.job_from_record(run.document, name=run.job, file=f"<{run.job} record>",
                                    sha256=run.version.sha256 if run.version else "")

    async def _run_task(self, run: RunRecord, local: LocalRun) -> None:
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
            self.ended(run.job)
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

    # -- stopping and waiting -------------------------------------------------------------------

    def stop(self, run_id: str, reason: str) -> bool:
        """Stop a run this node runs; False if it runs elsewhere (or not at all)."""
        local = self.runs.get(run_id)
        if local is None:
            return False
        local.handle.stop(reason)
        return True

    def kill_all(self, reason: str) -> None:
        for local in list(self.runs.values()):
            local.handle.kill(reason, status=RunStatus.INTERRUPTED)

    async def shutdown(self, grace: float) -> None:
        """Give the runs ``grace`` seconds, then stop them (they end ``interrupted``), give
        them as long again, then kill what is left; return once all have ended."""
        if self.runs:
            logger.info("waiting up to {:g}s for {} active run(s)", grace, len(self.runs))
        await self._all_finished(grace)
        for local in list(self.runs.values()):
            local.handle.stop("the daemon stopped while it ran", status=RunStatus.INTERRUPTED)
        # Stopped runs get their `finally` hooks, within the grace period again.
        await self._all_finished(max(grace, 1.0))
        self.kill_all("the daemon stopped while it ran")
        await self._all_finished(None)

    async def _all_finished(self, within: float | None) -> None:
        with trio.move_on_after(math.inf if within is None else within):
            while self.runs:
                await next(iter(self.runs.values())).done.wait()

    async def wait_for(self, run_id: str, local: LocalRun | None) -> RunRecord | None:
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

    # -- child runs -------------------------------------------------------------------------------

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
