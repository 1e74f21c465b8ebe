"""Fires that events make (CONTRACT §11): a file settled, an upstream run ended, a daemon
started. Each has an identity the store records once (``Store.claim_events``), so a restart,
another node or a second look never doubles one; its run then goes through the job's policies
like a timed fire's (pause, ``enabled``, ``concurrency``, the decision log).

- ``@reboot``: once per daemon start (per node in a cluster), key ``reboot:NODE``; a hot reload
  that adds such a job makes no fire.
- ``after: JOB``: every ``poll`` seconds, the upstreams' runs that ended since each downstream
  job's cursor, in a listed state, make a fire keyed ``after:RUN_ID`` with the upstream's id,
  job, status and ``outputs:`` as ``run.upstream``; the cursor moves after the fires are
  recorded, so a crash between the two only asks the store again.
- ``file:``: ``pipeline.filewatch`` watches; its fires are recorded here.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import trio
from loguru import logger

from pipeline.errors import StateError
from pipeline.filewatch import FileFire, FileWatcher
from pipeline.filewatch import Outcome as FileOutcome
from pipeline.model import Job, ScheduleKind, Trigger, thaw
from pipeline.runrecords import Version
from pipeline.store import Store
from pipeline.store.records import Claimed, EventFire

POLL = 1.0
Offload = Callable[..., Awaitable[Any]]


class EventFires:
    """Turns events into claimed runs for the worker (``reserve``)."""

    def __init__(self, *, store: Store, clock: Callable[[], datetime],
                 node: Callable[[], str], jobs: Callable[[], Mapping[str, Job]],
                 reserve: Callable[[list[Claimed]], None],
                 hold: Callable[[Job], bool] = lambda job: True,
                 version: Callable[[str], Version | None] = lambda name: None,
                 offload: Offload = trio.to_thread.run_sync, poll: float = POLL,
                 trouble: Callable[[StateError], None] | None = None) -> None:
        self.store = store
        self.clock = clock
        self.node = node
        self.jobs = jobs
        self.reserve = reserve
        self.hold = hold
        self.version = version
        self.offload = offload
        self.poll = poll
        self.trouble = trouble or (lambda exc: logger.error("cannot record state: {}", exc))
        self.watcher = FileWatcher(dealt_with=self._dealt_with, deliver=self._files)
        self._rebooted = False

    def _fire(self, job: Job, key: str, trigger: Trigger, event: Mapping[str, Any] | None,
              record_only: bool = False) -> EventFire:
        return EventFire(job.name, key, trigger, event, record_only, self.hold(job),
                         self.version(job.name) or Version(sha256=job.sha256), job.document,
                         job.runs_on)

    async def claim(self, fires: list[EventFire]) -> None:
        """Record ``fires`` and hand the runs this node holds to its worker; a store that
        cannot be written is retried until it can (the fires are not lost meanwhile)."""
        while fires:
            try:
                claims = await self.offload(functools.partial(
                    self.store.claim_events, fires, node=self.node(), now=self.clock()))
            except StateError as exc:
                self.trouble(exc)
                await trio.sleep(1.0)
                continue
            if claims.runs:
                self.reserve(claims.runs)
            return

    # -- @reboot -------------------------------------------------------------------------------

    async def rebooted(self) -> None:
        """This daemon started: fire the jobs loaded now that say ``@reboot``, once."""
        if self._rebooted:
            return
        self._rebooted = True
        fires = [self._fire(job, f"reboot:{self.node()}", Trigger.REBOOT, None)
                 for job in self.jobs().values()
                 if any(s.kind is ScheduleKind.REBOOT for s in job.schedules)]
        await self.claim(fires)

    # -- after: --------------------------------------------------------------------------------

    async def serve_after(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                          ) -> None:
        """Fire ``after:`` schedules every ``poll`` seconds until cancelled."""
        task_status.started()
        while True:
            try:
                await self.upstreams_ended()
            except StateError as exc:
                self.trouble(exc)
            await trio.sleep(self.poll)

    async def upstreams_ended(self) -> None:
        wanted: dict[str, list[tuple[Job, frozenset[str]]]] = {}
        for job in self.jobs().values():
            for schedule in job.schedules:
                if schedule.kind is ScheduleKind.AFTER and schedule.after:
                    wanted.setdefault(schedule.after, []).append(
                        (job, frozenset(str(s) for s in schedule.status)))
        if not wanted:
            return
        cursors: dict[str, datetime] = await self.offload(self.store.event_cursors)
        now = self.clock()
        downstream = {job.name for pairs in wanted.values() for job, _ in pairs}
        new = [name for name in downstream if name not in cursors]
        for name in new:  # a job seen for the first time fires for what ends from now on
            await self.offload(self.store.move_event_cursor, name, now)
            cursors[name] = now
        since = min(cursors[name] for name in downstream)
        ended = await self.offload(functools.partial(self.store.ended_runs, list(wanted),
                                                     since=since))
        fires: list[EventFire] = []
        latest: dict[str, datetime] = {}
        for run in ended:
            assert run.finished_at is not None
            for job, statuses in wanted.get(run.job, ()):
                if run.finished_at <= cursors[job.name]:
                    continue
                latest[job.name] = max(latest.get(job.name, run.finished_at), run.finished_at)
                if str(run.status) in statuses:
                    fires.append(self._fire(job, f"after:{run.id}", Trigger.AFTER, {
                        "id": run.id, "job": run.job, "status": str(run.status),
                        "outputs": thaw(run.outputs)}))
        await self.claim(fires)
        for name, at in latest.items():
            await self.offload(self.store.move_event_cursor, name, at)

    # -- file: ---------------------------------------------------------------------------------

    def _dealt_with(self, job: str, keys: Sequence[str]) -> set[str]:
        return self.store.known_keys(job, keys)

    async def _files(self, fires: list[FileFire]) -> None:
        jobs = self.jobs()
        claims = [self._fire(jobs[f.job], f.key, Trigger.FILE,
                             f.event if f.outcome is FileOutcome.FIRE else None,
                             record_only=f.outcome is not FileOutcome.FIRE)
                  for f in fires if f.job in jobs]
        await self.claim(claims)
