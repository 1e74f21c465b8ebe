"""``pipeline serve``: the daemon's life from lock to clean exit.

Start: take the state directory's lock (one daemon per state directory), recover runs a dead
daemon left ``running`` (marked ``interrupted``, their leftover process groups killed), load the
jobs directory, and start the journal, the scheduler, the watcher, retention and the HTTP app,
each a task of one nursery. Stop (SIGTERM or SIGINT): stop firing, give active runs ``grace``
seconds, cancel what is left through the one cancellation path, exit 0. A second signal kills
the runs' process groups at once.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import trio
from loguru import logger

from pipeline import triggers
from pipeline.engine import utc_now
from pipeline.errors import StateError
from pipeline.journal import Journal
from pipeline.metrics import Metrics
from pipeline.model import Job, iso
from pipeline.runners import Runner, schemas_of
from pipeline.scheduler import Scheduler
from pipeline.statedir import identity_alive, process_identity, recover
from pipeline.store import Store
from pipeline.watch import Catalog, watch_jobs

PRUNE_EVERY = 600.0
DEFAULT_KEEP_RUNS = 1000
DEFAULT_KEEP_DAYS = 90.0
DAEMON_FILE = "daemon.json"

Clock = Callable[[], datetime]


@dataclass
class Daemon:
    """The running daemon's parts, as the HTTP app and the tests reach them."""

    store: Store
    journal: Journal
    catalog: Catalog
    scheduler: Scheduler
    state_dir: Path
    started_at: datetime
    metrics: Metrics
    jobs_dir: Path
    listen: str | None = None


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


async def serve(*, jobs_dir: Path, state_dir: Path, store: Store,
                runners: Mapping[str, Runner], grace: float = 30.0,
                clock: Clock = utc_now, environ: Mapping[str, str] | None = None,
                serve_http: Callable[..., Awaitable[None]] | None = None,
                listen: str | None = None,
                task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the daemon until SIGTERM/SIGINT (or cancellation); the lock is the caller's.

    ``task_status.started`` gets the ``Daemon`` once every part is up.
    """
    recover(store, state_dir, clock())
    metrics = Metrics()
    journal = Journal(store, observers=(metrics.observe,))
    catalog = Catalog(jobs_dir, runner_schemas=schemas_of(runners), store=store)
    await trio.to_thread.run_sync(catalog.scan)
    async with trio.open_nursery() as outer:  # the journal outlives everything that writes
        await outer.start(journal.serve)
        scheduler = Scheduler(store=store, journal=journal, state_dir=state_dir,
                              runners=runners, clock=clock, environ=environ)
        daemon = Daemon(store=store, journal=journal, catalog=catalog, scheduler=scheduler,
                        state_dir=state_dir, started_at=clock(), metrics=metrics,
                        jobs_dir=jobs_dir, listen=listen)

        async def reload() -> None:
            await scheduler.load(catalog.jobs)
            publish(daemon)

        async with trio.open_nursery() as inner:
            await scheduler.load(catalog.jobs)
            await inner.start(scheduler.serve)
            stop_watching = trio.Event()
            await inner.start(partial(watch_jobs, catalog, reload, stop=stop_watching))
            inner.start_soon(prune_forever, daemon)
            if serve_http is not None:
                daemon.listen = await inner.start(serve_http, daemon)
            publish(daemon)
            # What is loaded now lives as long as the daemon: out of the collector's sight, so
            # its passes over a thousand jobs do not make fires late (MEASURED.md).
            gc.freeze()
            logger.info("serving {} jobs from {} ({} invalid files); state in {}",
                        len(catalog.jobs), jobs_dir, len(catalog.problems), state_dir)
            task_status.started(daemon)
            await wait_for_stop(scheduler, grace)
            stop_watching.set()
            inner.cancel_scope.cancel()
        (state_dir / DAEMON_FILE).unlink(missing_ok=True)
        outer.cancel_scope.cancel()
    logger.info("stopped")


async def wait_for_stop(scheduler: Scheduler, grace: float) -> None:
    """Return once a signal asked us to stop and every run has ended."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            logger.info("{}: stopping; active runs get {:g}s to finish (signal again to kill "
                        "them now)", signal.Signals(signum).name, grace)
            break
        async with trio.open_nursery() as nursery:
            async def second_signal() -> None:
                async for again in signals:
                    logger.warning("{}: killing active runs now", signal.Signals(again).name)
                    scheduler.kill_all()

            nursery.start_soon(second_signal)
            await scheduler.shutdown(grace)
            nursery.cancel_scope.cancel()


