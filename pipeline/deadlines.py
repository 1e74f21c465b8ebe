"""Deadlines (``deadline: 30m``): a fire's run must have succeeded by its instant plus that.

Every ``every`` seconds, on every scheduler node, the fires whose deadline has just passed are
judged in the store (``Store.miss_deadline``): a fire with no succeeded run by then is late,
once for the whole cluster, whether its run failed, still runs, or was never made (a skipped
fire, a node lost: what the store knows). Deadlines are judged from when a node starts
looking: one that passed while no daemon ran is not judged afterwards. The first to judge a miss
gets to tell: a ``late`` notification, ``pipeline_deadline_missed_total``, the run marked
``late``.

A fire an operator held back has no deadline: a paused job's fires are not made by choice
(`not made: paused`), as are a disabled job's, and a late alert on every tick of a paused
schedule would only be noise. So each look also notes when each job was held (paused, from
the store's ``paused_at``; or ``enabled: false``, from when this node saw it so) and until
when; a fire inside such a span that has no run is passed over. A held fire that has a run
anyway (a catch-up on resume, a backfill) is judged like any other.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import trio
from loguru import logger

from pipeline import triggers
from pipeline.errors import StateError
from pipeline.model import Job
from pipeline.runrecords import RunRecord
from pipeline.store import Store
from pipeline.store.records import JobState

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
        # per job: the spans it was held in (paused or disabled); those that ended before
        # the cursor are forgotten
        self._held: dict[str, list[_Held]] = {}

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
        watched = [job for job in list(self.jobs().values())
                   if job.deadline is not None and job.schedules]
        if not watched:
            return
        states: dict[str, JobState] = await self.offload(self.store.job_states)
        for job in watched:
            span = timedelta(seconds=job.deadline or 0.0)
            # The fires from the moment this node looks: one that came due while no daemon
            # ran is not judged after the fact (the catch-up policy and `why` tell that).
            since = self._cursor.setdefault(job.name, now)
            self._note_held(job, states.get(job.name), now)
            until = now - span
            if until <= since:
                continue
            fires, _ = triggers.fires_between(job.schedules, since, until, limit=1000)
            held = [fire for fire in fires if self._was_held(job.name, fire)]
            if held:  # passed over unless a run holds the fire after all
                made = await self.offload(functools.partial(
                    self.store.fired, job.name, since=held[0], until=held[-1]))
                passed = set(held) - set(made)
                fires = [fire for fire in fires if fire not in passed]
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
            self._held[job.name] = [h for h in self._held.get(job.name, [])
                                    if h.until is None or h.until > until]

    def _note_held(self, job: Job, state: JobState | None, now: datetime) -> None:
        """Open a held span when the job is paused or disabled, close it when it is not."""
        spans = self._held.setdefault(job.name, [])
        holding = spans[-1] if spans and spans[-1].until is None else None
        paused_at = state.paused_at if state is not None else None
        if paused_at is not None or not job.enabled:
            if holding is None:
                # Paused: since the pause (which may predate this node); disabled: since now.
                spans.append(_Held(min(paused_at or now, now)))
        elif holding is not None:
            holding.until = now

    def _was_held(self, name: str, fire: datetime) -> bool:
        return any(h.since <= fire and (h.until is None or fire < h.until)
                   for h in self._held.get(name, []))


@dataclass
class _Held:
    """A span in which a job was held back by an operator: [since, until), until None while
    it still is."""

    since: datetime
    until: datetime | None = None
