"""The runs a node holds but has not started, and how they end without starting.

A node holds a run from the commit that hands it over until the run starts (``LocalRuns``) or
ends. Held and not started are the fires its scheduler claimed, each to start at its instant
(``Reserved``), the runs waiting in their job's queue, and, after a fence, the runs it forgot,
to let go of. They end skipped when their job is edited or removed, when a stall made them late
(several fires of one job due at once: the catch-up policy decides about all but the newest),
or when a lone daemon stops; a node of a cluster leaves them to the other nodes instead.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

import trio
from loguru import logger

from pipeline import policy, triggers
from pipeline.errors import StateError
from pipeline.journal import Journal, Offload
from pipeline.model import Job, RunStatus, Trigger
from pipeline.nodes import Lease
from pipeline.store import Store
from pipeline.store.records import Claimed, Outcome, StoredDecision

# A lone fire taken up this soon after its instant is on time without looking further (no
# schedule allows a second fire within it); later, the job's next instant is looked up.
LATE_ENOUGH = 0.5

Clock = Callable[[], datetime]


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


class Held:
    """The runs this node holds but has not started; see the module's docstring.

    ``reserved`` and ``waiting`` are the worker's to fill and to start from; this class ends
    them, forgets them and lets them go.
    """

    def __init__(self, *, store: Store, journal: Journal, lease: Lease, clock: Clock,
                 offload: Offload) -> None:
        self.store = store
        self.journal = journal
        self.lease = lease
        self.clock = clock
        self.offload = offload
        self.reserved = Reserved()
        self.waiting: dict[str, str] = {}  # run id -> job: held, waiting in the job's queue
        self._unstarted: set[str] = set()  # held but forgotten by a fence, to let go of
        # Store calls under way that hand this node runs (starts, runs taken), and an event
        # set while there are none: leaving waits for them (see `handing`).
        self._handing = 0
        self._handed = trio.Event()
        self._handed.set()

    @contextmanager
    def handing(self) -> Iterator[None]:
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

    async def skip(self, skipped: list[tuple[Claimed, policy.Missed]], now: datetime) -> None:
        """End the fires a stall made late (``Reserved.due``) skipped, each with why."""
        for claim, miss in skipped:
            logger.info("job {}: fire {} skipped: {}", claim.job, claim.fire_time.isoformat(),
                        miss.detail)
            await self.end(claim.run_id, miss.detail or "missed")
        try:  # said in the decision log as the scheduler says its own skips
            await self.offload(self.store.record_decisions, [StoredDecision(
                claim.job, Outcome.SKIPPED, now, claim.fire_time, self.lease.node_id,
                str(miss.reason) if miss.reason else None, miss.detail, claim.run_id)
                for claim, miss in skipped])
        except StateError as exc:
            self.journal.failed(exc)

    async def forget_job(self, job: str, reason: str) -> None:
        """Runs of ``job`` held here but not started end (the job was edited or removed)."""
        doomed = [*self.reserved.of_job(job), *(r for r, j in self.waiting.items() if j == job)]
        for run_id in doomed:
            self.reserved.drop(run_id)
            self.waiting.pop(run_id, None)
            await self.end(run_id, reason)

    async def end(self, run_id: str, reason: str) -> None:
        """A run held here ends skipped before it started (recovery takes it if we cannot
        write that now: it stays queued, held by this node)."""
        try:
            await self.offload(functools.partial(
                self.store.request_stop, run_id, reason=reason, status=RunStatus.SKIPPED,
                at=self.clock()))
        except StateError as exc:
            self.journal.failed(exc)

    def forget(self) -> None:
        """Forget every run held here (the node was fenced): the next ``let_go`` lets go of
        them in the store."""
        self._unstarted.update(self.reserved)
        self._unstarted.update(self.waiting)
        self.reserved.clear()
        self.waiting.clear()

    async def let_go(self) -> None:
        """Let go of the runs a fence made this node forget: any node may take them now.
        Raises ``StateError`` (they are let go of at the next call)."""
        if self._unstarted:
            await self.offload(self.store.release_runs, self.lease.node_id,
                               list(self._unstarted))
            self._unstarted.clear()

    async def leave(self) -> None:
        """The daemon stops: once the store calls under way that hand this node runs have
        committed, leave the runs held here to another node when the store is shared;
        otherwise those asked for (triggers, backfills, events) stay queued for the next
        start and those of timed fires are skipped (the catch-up policy decides about the
        fires a stopped daemon misses, not a queue kept for it)."""
        # What a store call under way commits is this node's too: runs it started join the
        # active ones, runs it made wait join the pending.
        await self._handed.wait()
        pending = [*self.reserved, *self.waiting]
        self.reserved.clear()
        self.waiting.clear()
        if pending and self.store.shared:
            try:
                await self.offload(self.store.release_runs, self.lease.node_id, pending)
            except StateError as exc:
                logger.error("cannot leave {} run(s) to other nodes: {}", len(pending), exc)
        elif pending:
            try:
                kept, fires = await self.offload(_asked_and_fired, self.store, pending)
                if kept:  # asked for (a trigger, a backfill, an event): the next start runs it
                    await self.offload(self.store.release_runs, self.lease.node_id, kept)
            except StateError as exc:
                logger.error("cannot keep {} run(s) queued: {}", len(pending), exc)
                fires = pending
            for run_id in fires:
                await self.end(run_id, "the daemon stopped before the run could start")


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
