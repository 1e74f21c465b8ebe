"""Deadlines (``deadline: 30m``): a fire's run must have succeeded by its instant plus that.

Every ``every`` seconds, on every scheduler node, the fires whose deadline has just passed are
judged in the store (``Store.miss_deadline``): a fire with no succeeded run by then is late,
once for the whole cluster, whether its run failed, still runs, or was never made (a paused
job, a skipped fire: what the store knows). Deadlines are judged from when a node starts
looking: one that passed while no daemon ran is not judged afterwards. The first to judge a miss
gets to tell: a ``late`` notification, ``pipeline_deadline_missed_total``, the run marked
``late``.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import trio
from loguru import logger

from pipeline import triggers
from pipeline.errors import StateError
from pipeline.model import Job, RunRecord
from pipeline.store import Store

EVERY = 1.0
Offload = Callable[..., Awaitable[Any]]


class Deadlines:
    def __init__(self, *, store: Store, clock: Callable[[], datetime],
                 jobs: Callable[[], Mapping[str, Job]], node: Callable[[], str],
                 missed: Callable[[Job, datetime, datetime, RunRecord | None], None],
                 offload: Offload = trio.to_thread.run_sync, every: float = EVERY) -> None:
        self.store = store
        self.clock = clock
        self.jobs = jobs
        self.node = node
        self.missed = missed  # told of each miss this node judged first
        self.offload = offload
        self.every = every
        self._cursor: dict[str, datetime] = {}  # per job: deadlines up to here are judged

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                    ) -> None:
        task_status.started()
        while True:
            try:
                await self.look()
            except StateError as exc:
                logger.warning("cannot judge deadlines: {} (retrying)", exc)
            await trio.sleep(self.every)

    async def look(self) -> None:
        now = self.clock()
        for job in list(self.jobs().values()):
            if job.deadline is None or not job.schedules:
                continue
            span = timedelta(seconds=job.deadline)
            # The fires from the moment this node looks: one that came due while no daemon
            # ran is not judged after the fact (the catch-up policy and `why` tell that).
            since = self._cursor.setdefault(job.name, now)
            until = now - span
            if until <= since:
                continue
            fires, _ = triggers.fires_between(job.schedules, since, until, limit=1000)
            for fire in fires:
                deadline = fire + span
                late, run = await self.offload(functools.partial(
                    self.store.miss_deadline, job.name, fire, deadline=deadline,
                    node=self.node()))
                if late:
                    logger.warning("job {}: the fire of {} missed its deadline ({})", job.name,
                                   fire.isoformat(), deadline.isoformat())
                    self.missed(job, fire, deadline, run)
            self._cursor[job.name] = until
