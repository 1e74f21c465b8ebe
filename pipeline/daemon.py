"""``pipeline serve``: the daemon's life from lock to clean exit.

Start: take the state directory's lock (one daemon per state directory), recover runs a dead
daemon left ``running`` (marked ``interrupted``, their leftover process groups killed), load the
jobs directory, and start the journal, the scheduler, the watcher, retention and the HTTP app,
each a task of one nursery. Stop (SIGTERM or SIGINT): stop firing, give active runs ``grace``
seconds, cancel what is left through the one cancellation path, exit 0. A second signal kills
the runs' process groups at once.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import os
import shutil
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import trio
from loguru import logger

from pipeline import sdnotify, triggers
from pipeline.deadlines import Deadlines
from pipeline.engine import utc_now
from pipeline.errors import StateError
from pipeline.eventfires import EventFires
from pipeline.filewatch import watched_of
from pipeline.journal import Journal
from pipeline.logship import LogShipper
from pipeline.metrics import Metrics
from pipeline.model import Job, iso
from pipeline.nodes import (
    DEFAULT_LEASE,
    Lease,
    Watchdog,
    definitions_digest,
    open_watchdog,
    this_node,
)
from pipeline.notify.notifier import Notifier
from pipeline.policy import AUTOMATIC, Verdict
from pipeline.recovery import recover
from pipeline.runners import Runner, schemas_of
from pipeline.runrecords import RunRecord
from pipeline.scheduler import Scheduler
from pipeline.statedir import identity_alive, process_identity
from pipeline.store import Store
from pipeline.store.records import NodeInfo, Outcome, Started, StoredDecision, outcome_of
from pipeline.watch import Catalog, watch_jobs
from pipeline.worker import Worker

PRUNE_EVERY = 600.0
DEFAULT_KEEP_RUNS = 1000
DEFAULT_KEEP_DAYS = 90.0
DAEMON_FILE = "daemon.json"
GC_YOUNG = 20_000  # allocations between collections of the youngest generation

Clock = Callable[[], datetime]


@dataclass
class Daemon:
    """The running daemon's parts, as the HTTP app and the tests reach them."""

    store: Store
    journal: Journal
    catalog: Catalog
    scheduler: Scheduler
    worker: Worker
    lease: Lease
    state_dir: Path
    started_at: datetime
    metrics: Metrics
    jobs_dir: Path
    listen: str | None = None
    circuits: int = 0  # operators' circuit resets so far (what the API's answers depend on)
    events: EventFires | None = None
    notifier: Notifier | None = None
    published_pools: dict[str, int] | None = None


def write_daemon_file(daemon: Daemon) -> None:
    """``daemon.json``: who serves this state directory, where, and what it has loaded.

    Written atomically (temp file, rename), so a reader never sees half of it.
    """
    catalog = daemon.catalog
    files: dict[str, str] = {}
    for file, name in catalog.files.items():
        files.setdefault(name, file)
    info = {
        "pid": os.getpid(), "owner": process_identity(), "listen": daemon.listen,
        "started_at": iso(daemon.started_at),
        "jobs": {name: _job_info(job, files.get(name), stale=name in catalog.stale)
                 for name, job in catalog.jobs.items()},
        "invalid": {file: [p.as_dict() for p in problems]
                    for file, problems in catalog.problems.items()},
    }
    path = daemon.state_dir / DAEMON_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=1))
    tmp.replace(path)


def _job_info(job: Job, file: str | None, *, stale: bool) -> dict[str, Any]:
    """What ``pipeline list`` needs of a loaded job when its file no longer says it: the
    version that runs, its schedule, zone and circuit breaker."""
    breaker = job.circuit_breaker
    return {
        "file": file, "path": os.path.abspath(file) if file else None, "sha256": job.sha256,
        "stale": stale, "enabled": job.enabled,
        "schedule": "; ".join(triggers.describe(s) for s in job.schedules) or None,
        "timezone": str(job.schedules[0].timezone) if job.schedules else None,
        "circuit_breaker": {"after": breaker.after, "cooldown": breaker.cooldown}
        if breaker else None,
    }


def publish(daemon: Daemon) -> None:
    """``write_daemon_file``, for the daemon's own use: a full disk costs a warning only."""
    try:
        write_daemon_file(daemon)
    except OSError as exc:
        logger.warning("cannot write {}: {}", DAEMON_FILE, exc.strerror or exc)


def read_daemon_file(state_dir: Path) -> dict[str, Any] | None:
    """What a live daemon wrote about itself; None if none is running."""
    try:
        info = json.loads((state_dir / DAEMON_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not identity_alive(str(info.get("owner", ""))):
        return None
    return info


async def prune_forever(daemon: Daemon, *, every: float = PRUNE_EVERY,
                        clock: Clock = utc_now) -> None:
    """Apply each job's ``history`` (or the defaults) now and every ``every`` seconds."""
    while True:
        try:
            await trio.to_thread.run_sync(prune, daemon.store, daemon.state_dir,
                                          dict(daemon.catalog.jobs), clock())
        except StateError as exc:  # a full disk or a busy database: try again next time
            logger.warning("retention skipped: {}", exc)
        await trio.sleep(every)


def prune(store: Store, state_dir: Path, jobs: Mapping[str, Any], now: datetime) -> int:
    removed = 0
    for name in store.jobs_with_runs():
        job = jobs.get(name)
        keep_runs = job.history.keep_runs if job and job.history.keep_runs else DEFAULT_KEEP_RUNS
        keep_days = job.history.keep_days if job and job.history.keep_days else DEFAULT_KEEP_DAYS
        for run in store.prune(name, keep_runs=keep_runs, keep_days=keep_days, now=now):
            shutil.rmtree(state_dir / "logs" / run.job / run.id, ignore_errors=True)
            removed += 1
    if removed:
        logger.info("retention: removed {} old runs and their logs", removed)
    return removed


@asynccontextmanager
async def open_daemon(*, jobs_dir: Path, state_dir: Path, store: Store,
                      runners: Mapping[str, Runner], clock: Clock | None = None,
                      environ: Mapping[str, str] | None = None, node: NodeInfo | None = None,
                      lease: float = DEFAULT_LEASE, listen: str | None = None,
                      ) -> AsyncIterator[Daemon]:
    """The daemon's parts, running: this node registered with its lease and watchdog, the
    journal, the worker and the scheduler (with the jobs directory loaded once; watching it is
    ``serve``'s). On exit: stop firing, end what still runs at once, leave the store."""
    node = node or this_node(listen=listen)
    await trio.to_thread.run_sync(recover, store, state_dir, utc_now())
    metrics = Metrics()
    catalog = Catalog(jobs_dir, runner_schemas=schemas_of(runners), store=store)
    await trio.to_thread.run_sync(catalog.scan)
    # A shared store's node must stop its steps before its lease can run out elsewhere; with
    # SQLite nobody takes a run over, so only a dead daemon (its pipe closing) counts.
    fence_after = lease * 2 / 3 if store.shared else 0.0
    if "scheduler" in node.roles:
        node = dataclasses.replace(node, digest=definitions_digest(catalog.jobs))
    async with open_watchdog(fence_after=fence_after, grace=10.0) as watchdog:
        holder = Lease(store, node, lease=lease, watchdog=watchdog,
                       digest=lambda: definitions_digest(catalog.jobs)
                       if "scheduler" in node.roles else None)
        await holder.register()
        parts: list[Worker] = []
        shipper = LogShipper(store, state_dir, node=lambda: holder.node_id) \
            if store.shared else None
        observers = [metrics.observe, lambda e: parts[0].local.observe(e)]
        if shipper is not None:
            observers.append(shipper.observe)
        journal = Journal(store, node=lambda: holder.node_id, observers=tuple(observers))
        async with trio.open_nursery() as outer:  # the journal outlives everything that writes
            await outer.start(journal.serve)
            daemon, deadlines = _parts(
                store=store, journal=journal, lease=holder, watchdog=watchdog,
                catalog=catalog, metrics=metrics, runners=runners, state_dir=state_dir,
                jobs_dir=jobs_dir, clock=clock or holder.clock, environ=environ,
                listen=listen)
            worker, scheduler, events = daemon.worker, daemon.scheduler, daemon.events
            notifier = daemon.notifier
            assert events is not None and notifier is not None
            parts.append(worker)
            await outer.start(notifier.serve)  # alerts outlive the runs: flushed at the end
            async with trio.open_nursery() as inner:
                await inner.start(holder.serve)
                if shipper is not None:
                    await outer.start(shipper.serve)  # ships the last logs after the runs end
                await inner.start(worker.serve)
                await publish_pools(daemon)
                await scheduler.load(catalog.jobs)
                if "scheduler" in node.roles:
                    await inner.start(scheduler.serve)
                    await events.rebooted()
                    events.watcher.load(watched_of(catalog.jobs.values()))
                    await inner.start(events.watcher.serve)
                    await inner.start(events.serve_after)
                    await inner.start(deadlines.serve)
                try:
                    yield daemon
                finally:
                    with trio.CancelScope(shield=True):
                        scheduler.stop_firing()
                        with trio.move_on_after(30):
                            await worker.shutdown(0, claims=scheduler.stop)
                    inner.cancel_scope.cancel()
            with trio.move_on_after(5):  # pending alerts get a few seconds to go out
                await notifier.flush()
            with trio.move_on_after(10):  # the runs' ends first: a node that left is lost
                await journal.drain()
            try:
                await trio.to_thread.run_sync(store.leave, holder.node_id)
            except StateError as exc:
                logger.warning("cannot record that this node stopped: {}", exc)
            outer.cancel_scope.cancel()


def _parts(*, store: Store, journal: Journal, lease: Lease, watchdog: Watchdog,
           catalog: Catalog, metrics: Metrics, runners: Mapping[str, Runner], state_dir: Path,
           jobs_dir: Path, clock: Clock, environ: Mapping[str, str] | None,
           listen: str | None) -> tuple[Daemon, Deadlines]:
    """The daemon's parts, wired to each other and not yet started: the notifier (its
    outcomes recorded, its pending alerts and cooldowns kept in the store), the worker, the
    scheduler, the fires that events make, and the deadlines that notify when missed."""
    node = lease.node
    notifier = Notifier(
        report=functools.partial(_notified, metrics, store, journal, lease),
        save=lambda pending: store.save_outbox(lease.node.name, pending),
        load=lambda: store.load_outbox(lease.node.name),
        adopt=lambda: store.adopt_outboxes(lease.node.name),
        claim=lambda job, target, kind, at, cooldown, delivery: store.claim_notice(
            job, target, kind, at=at, cooldown=cooldown, delivery=delivery),
        settings=catalog.settings, base_url=_base_url(listen))
    scheduler: Scheduler
    worker = Worker(store=store, journal=journal, lease=lease, state_dir=state_dir,
                    runners=runners, jobs=catalog.jobs.get, clock=clock,
                    environ=environ, watchdog=watchdog, max_runs=node.max_runs,
                    runner="runner" in node.roles,
                    versions=lambda name: scheduler.version(name),
                    on_decision=lambda started: _count(metrics, started),
                    notifier=notifier)
    lease.on_fence = worker.fence
    scheduler = Scheduler(store=store, clock=clock, node=lambda: lease.node_id,
                          reserve=worker.reserve, forget=worker.held.forget_job,
                          trouble=journal.failed,
                          on_decisions=metrics.not_made, hold=worker.may_hold)
    daemon = Daemon(store=store, journal=journal, catalog=catalog, scheduler=scheduler,
                    worker=worker, lease=lease, state_dir=state_dir,
                    started_at=clock(), metrics=metrics, jobs_dir=jobs_dir,
                    listen=listen)

    def missed(job: Job, fire: datetime, deadline: datetime,
               run: RunRecord | None) -> None:
        metrics.deadlines_missed.labels(job.name).inc()
        notifier.deadline_missed(job, fire, deadline, run)

    deadlines = Deadlines(store=store, clock=clock, jobs=lambda: catalog.jobs,
                          node=lambda: lease.node_id, missed=missed)
    daemon.events = EventFires(store=store, clock=clock, node=lambda: lease.node_id,
                               jobs=lambda: catalog.jobs, reserve=worker.reserve,
                               hold=worker.may_hold,
                               version=lambda name: scheduler.version(name),
                               trouble=journal.failed)
    daemon.notifier = notifier
    return daemon, deadlines


async def serve(*, jobs_dir: Path, state_dir: Path, store: Store,
                runners: Mapping[str, Runner], grace: float = 30.0,
                clock: Clock | None = None, environ: Mapping[str, str] | None = None,
                serve_http: Callable[..., Awaitable[None]] | None = None,
                listen: str | None = None, node: NodeInfo | None = None,
                lease: float = DEFAULT_LEASE,
                task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the daemon until SIGTERM/SIGINT (or cancellation); the lock is the caller's.

    ``task_status.started`` gets the ``Daemon`` once every part is up.
    """
    async with open_daemon(jobs_dir=jobs_dir, state_dir=state_dir, store=store,
                           runners=runners, clock=clock, environ=environ, node=node,
                           lease=lease, listen=listen) as daemon:

        async def reload() -> None:
            await publish_pools(daemon)
            if daemon.notifier is not None:
                daemon.notifier.settings = daemon.catalog.settings
            await daemon.scheduler.load(daemon.catalog.jobs)
            if daemon.events is not None:
                daemon.events.watcher.load(watched_of(daemon.catalog.jobs.values()))
            publish(daemon)

        async with trio.open_nursery() as nursery:
            stop_watching = trio.Event()
            await nursery.start(partial(watch_jobs, daemon.catalog, reload, stop=stop_watching))
            nursery.start_soon(prune_forever, daemon)
            nursery.start_soon(reap_forever, daemon, lease)
            if serve_http is not None:
                daemon.listen = await nursery.start(serve_http, daemon)
            publish(daemon)
            # What is loaded now lives as long as the daemon: out of the collector's sight,
            # so its passes over a thousand jobs do not make fires late (MEASURED.md). The
            # youngest generation is collected every 20,000 allocations, not 700: each fire
            # allocates a few hundred objects, few of them in cycles, and the default made
            # the collector ~8 % of the daemon's CPU at 1,000 fires a second (tests/bench).
            gc.freeze()
            gc.set_threshold(GC_YOUNG, 50, 100)
            logger.info("serving {} jobs from {} ({} invalid files); state in {}; node {}",
                        len(daemon.catalog.jobs), jobs_dir, len(daemon.catalog.problems),
                        state_dir, daemon.lease.node.name)
            task_status.started(daemon)
            sdnotify.notify(f"READY=1\nSTATUS=serving {len(daemon.catalog.jobs)} jobs"
                            + (f" on {daemon.listen}" if daemon.listen else ""))
            watchdog = sdnotify.watchdog_interval()
            if watchdog is not None:
                nursery.start_soon(sdnotify.watchdog_forever, watchdog)
            await wait_for_stop(daemon, grace)
            stop_watching.set()
            nursery.cancel_scope.cancel()
        (state_dir / DAEMON_FILE).unlink(missing_ok=True)
    logger.info("stopped")


async def _notified(metrics: Metrics, store: Store, journal: Journal, holder: Lease,
                    outcome: Any) -> None:
    """A notification's outcome: with its run, in the decision log, in the metrics."""
    status = str(outcome.status)
    metrics.notifications.labels(outcome.job, str(outcome.event), status).inc()
    kind = {"delivered": Outcome.NOTIFIED,
            "suppressed": Outcome.NOTIFY_SUPPRESSED}.get(status, Outcome.NOTIFY_FAILED)
    decision = StoredDecision(
        outcome.job, kind,
        outcome.at, outcome.fire_time, holder.node_id, str(outcome.event),
        f"{outcome.target}: {outcome.event} {status}"
        + (f" ({outcome.error})" if outcome.error else ""), outcome.run_id)
    try:
        await trio.to_thread.run_sync(functools.partial(
            store.record_notification, outcome.run_id, outcome.as_dict(),
            decision=decision))
    except StateError as exc:
        journal.failed(exc)


def _base_url(listen: str | None) -> str | None:
    return None if not listen else f"http://{listen}"


async def publish_pools(daemon: Daemon) -> None:
    """The settings file's pools (and its cap on active runs, as the pool ``*``) to the
    store, where every node counts them."""
    settings = daemon.catalog.settings
    pools = dict(settings.pools)
    if settings.max_active_runs is not None:
        pools["*"] = settings.max_active_runs
    if pools == daemon.published_pools:
        return
    try:
        await trio.to_thread.run_sync(daemon.store.publish_pools, pools)
    except StateError as exc:
        daemon.journal.failed(exc)
        return
    daemon.published_pools = pools


async def reap_forever(daemon: Daemon, lease: float) -> None:
    """Take back the runs of lost nodes, on every node (the store makes that safe)."""
    every = min(lease / 2, 5.0) if daemon.store.shared else 5.0
    await look_for_lost_nodes(lambda: trio.to_thread.run_sync(
        recover, daemon.store, daemon.state_dir, daemon.lease.clock()), every=every)


async def look_for_lost_nodes(look: Callable[[], Awaitable[object]], *, every: float) -> None:
    """``look()`` every ``every`` seconds until cancelled. A store out of reach is said once,
    until a look succeeds again: an outage longer than ``every`` repeated the line at every
    look (the store itself says when it is lost and when it answers again)."""
    failing = False
    while True:
        await trio.sleep(every)
        try:
            await look()
        except StateError as exc:
            if not failing:
                logger.warning("cannot look for lost nodes: {}", exc)
            failing = True
        else:
            failing = False


async def wait_for_stop(daemon: Daemon, grace: float) -> None:
    """Return once a signal asked us to stop and every run has ended."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            logger.info("{}: stopping; active runs get {:g}s to finish (signal again to kill "
                        "them now)", signal.Signals(signum).name, grace)
            sdnotify.notify(f"STOPPING=1\nSTATUS=stopping: active runs get {grace:g}s to "
                            "finish")
            break
        async with trio.open_nursery() as nursery:
            async def second_signal() -> None:
                async for again in signals:
                    logger.warning("{}: killing active runs now", signal.Signals(again).name)
                    daemon.worker.kill_all()

            nursery.start_soon(second_signal)
            daemon.scheduler.stop_firing()
            await daemon.worker.shutdown(grace, claims=daemon.scheduler.stop)
            nursery.cancel_scope.cancel()


def _count(metrics: Metrics, started: Started) -> None:
    decision, run = started.decision, started.run
    if decision.verdict in (Verdict.QUEUE, Verdict.REPLACE):
        return  # decided when it starts
    metrics.decided(run.job, str(outcome_of(decision)),
                    None if decision.reason is None else str(decision.reason), run_id=run.id,
                    fire_time=run.fire_time, at=run.started_at,
                    automatic=run.trigger in AUTOMATIC)
