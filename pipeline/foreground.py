"""``pipeline run``: one run in the foreground, through the same path as the daemon's runs.

The process registers as a node (role ``runner``) for as long as its run lasts, makes the run
held by itself, and lets the store decide about it under the job's lock, as for any trigger: a
``forbid`` job that a daemon is running is refused (unless forced). Child runs (``uses: job``)
run in this process too, under their parent. Ctrl-C stops the run (again: kills it), and a
``pipeline stop`` from elsewhere reaches it through the store.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from pipeline.engine import RunResult
from pipeline.errors import PipelineError, StateError
from pipeline.events import Event
from pipeline.journal import Journal
from pipeline.model import Job, RunStatus, Trigger
from pipeline.nodes import Lease, this_node
from pipeline.runners import Runner
from pipeline.runrecords import RunRecord
from pipeline.store import Store
from pipeline.versions import version_of
from pipeline.worker import Worker


class RunRefused(PipelineError):
    """The job's policy refused the run (a ``forbid`` job already running, say)."""


@dataclass(frozen=True)
class Outcome:
    run_id: str
    status: RunStatus
    result: RunResult | None


async def run_in_foreground(job: Job, params: Mapping[str, Any], *, store: Store,
                            state_dir: Path, runners: Mapping[str, Runner],
                            jobs: Callable[[str], Job | None],
                            observers: tuple[Callable[[Event], None], ...] = (),
                            run_id: str | None = None, force: bool = False, lease: float = 30.0,
                            tick: Callable[[], None] | None = None) -> Outcome:
    """Run ``job`` now and wait for it; raises ``RunRefused`` if its policy says no."""
    node = this_node(name=f"pipeline-run-{os.getpid()}", roles=frozenset({"runner"}))
    holder = Lease(store, node, lease=lease)
    await holder.register()
    journal = Journal(store, node=lambda: holder.node_id, observers=observers)
    worker = Worker(store=store, journal=journal, lease=holder, state_dir=state_dir,
                    runners=runners, jobs=lambda name: job if name == job.name else jobs(name),
                    claims=False)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.serve)
            await nursery.start(holder.serve)
            await nursery.start(worker.serve)
            dispatched, local = await worker.trigger(
                job, params, trigger=Trigger.MANUAL, version=version_of(Path(job.file)),
                force=force, run_id=run_id)
            if dispatched.status is RunStatus.SKIPPED:
                raise RunRefused(f"job {job.name} was not run: {dispatched.reason}"
                                 + ("; use --force to run it anyway"
                                    if "still active" in (dispatched.reason or "") else ""))
            if local is None:  # waiting in the job's queue (another process runs it)
                raise RunRefused(f"job {job.name} was not run now: it waits for its active "
                                 "run (concurrency: queue); the daemon will start it")
            nursery.start_soon(_signals, worker)
            if tick is not None:
                nursery.start_soon(_ticks, tick)
            await local.done.wait()
            nursery.cancel_scope.cancel()
        result = local.result
        return Outcome(dispatched.run_id, result.status if result else RunStatus.CANCELLED,
                       result)
    finally:
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(store.leave, holder.node_id)
            except StateError:
                pass


async def _signals(worker: Worker) -> None:
    """First Ctrl-C (or SIGTERM): stop the runs gracefully. Second: kill them now."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        first = True
        async for signum in signals:
            name = signal.Signals(signum).name
            if first:
                import click

                click.echo(f"\npipeline: {name}: stopping the run (again to kill it now)",
                           err=True)
            for local in list(worker.local.runs.values()):
                if first:
                    local.handle.stop(f"interrupted by {name}")
                else:
                    local.handle.kill(f"interrupted by {name}")
            first = False


async def _ticks(tick: Callable[[], None]) -> None:
    while True:
        await trio.sleep(0.2)
        tick()


async def run_queued(run_ids: list[str], *, store: Store, state_dir: Path,
                     runners: Mapping[str, Runner], jobs: Callable[[str], Job | None],
                     on_end: Callable[[RunRecord], None] | None = None,
                     lease: float = 30.0, poll: float = 0.2) -> list[RunRecord]:
    """Run queued runs (a backfill, a rerun) here when no daemon would: this process takes
    them as a node, by their policies, and returns their records once all have ended."""
    node = this_node(name=f"pipeline-run-{os.getpid()}", roles=frozenset({"runner"}))
    holder = Lease(store, node, lease=lease)
    await holder.register()
    journal = Journal(store, node=lambda: holder.node_id)
    worker = Worker(store=store, journal=journal, lease=holder, state_dir=state_dir,
                    runners=runners, jobs=jobs, poll=poll)
    worker.only = set(run_ids)
    ended: dict[str, RunRecord] = {}
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.serve)
            await nursery.start(holder.serve)
            await nursery.start(worker.serve)
            nursery.start_soon(_signals, worker)
            while len(ended) < len(run_ids):
                await trio.sleep(poll)
                active = {r.id for r in await trio.to_thread.run_sync(store.active_runs)}
                for run_id in run_ids:
                    if run_id in ended or run_id in active:
                        continue
                    record: RunRecord | None = await trio.to_thread.run_sync(store.run, run_id)
                    if record is None or record.status.finished:
                        if record is not None:
                            ended[run_id] = record
                            if on_end is not None:
                                on_end(record)
                        else:
                            ended[run_id] = RunRecord(run_id, "?", RunStatus.CANCELLED,
                                                      Trigger.MANUAL)
                        worker.only.discard(run_id)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(store.leave, holder.node_id)
            except StateError:
                pass
    return [ended[r] for r in run_ids]
