"""The one writer between event producers and the store: group commit, and calm on disk errors.

Producers (every step of every run, the scheduler) call ``await journal.write(event)``; the
writer task takes everything queued at that moment and commits it as one transaction in a
worker thread, so a fan-out of a hundred steps costs a few commits, not two hundred.

Only claims wait for their commit: a fire is acted on once its run (or skip) is durable, which
is what makes a fire run at most once across crashes. Step records follow within a commit or
two, in order; a crash may lose the last few, and recovery does not depend on them (a dead
daemon's leftover processes are found by the run id in their environment, see
``process.kill_leftovers``), so steps never wait for the disk.

When a commit fails (a full disk, an I/O error), nothing is dropped: the batch is retried
every ``retry`` seconds, the error is logged once per condition, and ``write`` stops waiting
(runs under way carry on) until a commit succeeds again, except for claims: a fire is not
acted on until its run or skip is durable.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from loguru import logger

from pipeline.errors import StateError
from pipeline.events import Event, RunQueued, RunSkipped, WatermarkMoved
from pipeline.faults import crash_point
from pipeline.store import Store

MAX_BATCH = 2000

# Runs a blocking function off the event loop: trio.to_thread.run_sync, or in tests on the
# virtual clock, a plain call (so the clock cannot jump while SQLite commits).
Offload = Callable[..., Awaitable[Any]]


class Journal:
    def __init__(self, store: Store, *, retry: float = 1.0,
                 node: Callable[[], str | None] = lambda: None,
                 observers: tuple[Callable[[Event], None], ...] = (),
                 offload: Offload = trio.to_thread.run_sync) -> None:
        self.store = store
        # The node whose events these are: the store applies a run's writes only while that
        # node holds the run (a node that lost a run to another has its writes refused).
        self.node = node
        self.offload = offload  # how blocking store calls leave the event loop
        self.retry = retry
        self.observers = observers  # told of every event as it is written (view, metrics)
        self.healthy = True
        self.closed = False  # serve() has ended: writes go straight to the store
        self._inflight: list[tuple[Event, trio.Event | None, list[bool]]] = []
        self.failure: str | None = None
        self._sent = 0  # events queued so far
        self._committed = 0  # ... of which committed (or given up on)
        self._progress = trio.Event()  # set at every commit
        self._send, self._receive = trio.open_memory_channel[
            tuple[Event, trio.Event | None, list[bool]]](math.inf)

    async def write(self, event: Event) -> bool:
        """Record ``event``. A claim (``RunQueued``, ``RunSkipped``) is waited for until it is
        committed; anything else is queued, in order, and committed with the next batch.

        Returns False only for a ``RunQueued`` that the store refused: its fire already has a
        run.
        """
        self._observe(event)
        if self.closed:
            # The writer is gone (the daemon is going down, a run was cancelled with it):
            # commit this last word ourselves rather than wait for nobody.
            try:
                refused = await self.offload(self._record, [event])
            except StateError as exc:
                logger.error("cannot record {}: {}", type(event).__name__, exc)
                return True
            return not (isinstance(event, RunQueued) and event.run_id in refused)
        if not isinstance(event, RunQueued | RunSkipped):
            self._queue((event, None, []))
            await trio.lowlevel.checkpoint()
            return True
        # A claim (a fire's run or skip) is waited for even while the store is failing: a
        # fire acted on before its claim is durable could run again after a crash.
        done = trio.Event()
        verdict: list[bool] = []
        self._queue((event, done, verdict))
        await done.wait()
        return not verdict or verdict[0]

    def _queue(self, item: tuple[Event, trio.Event | None, list[bool]]) -> None:
        self._send.send_nowait(item)
        self._sent += 1

    async def drain(self) -> None:
        """Wait until every event written so far is committed. A node's last records (its
        runs' ends) must be in the store before it says it has left: another node takes the
        active runs of a node that left as those of a lost one."""
        target = self._sent
        while self._committed < target and not self.closed:
            await self._progress.wait()

    def _observe(self, event: Event) -> None:
        """Tell the observers; one that fails (a closed terminal) never stops a run."""
        for observer in self.observers:
            try:
                observer(event)
            except Exception as exc:
                logger.opt(exception=exc).warning("an observer of events failed; dropped")
                self.observers = tuple(o for o in self.observers if o is not observer)

    def failed(self, exc: StateError) -> None:
        """A write to the store failed: say so once per condition (every writer of the
        daemon reports here: the journal, the scheduler's claims, the worker's starts)."""
        message = str(exc)
        if self.failure != message:
            logger.error("cannot record state: {} (retrying every {}s)", message, self.retry)
            self.failure = message
        self.healthy = False

    def recovered(self) -> None:
        if not self.healthy:
            logger.info("recording state again")
        self.healthy = True
        self.failure = None

    def _record(self, events: list[Event]) -> frozenset[str]:
        return self.store.record(events, node=self.node())

    def write_nowait(self, event: Event) -> None:
        self._observe(event)
        if self.closed:
            try:
                self._record([event])
            except StateError as exc:
                logger.error("cannot record {}: {}", type(event).__name__, exc)
            return
        self._queue((event, None, []))

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                    ) -> None:
        """Commit batches until cancelled; then commit what is still queued, once."""
        task_status.started()
        try:
            while True:
                batch = [await self._receive.receive()]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                self._inflight = batch
                await self._commit(batch)
                self._inflight = []
        finally:
            self.closed = True
            with trio.CancelScope(shield=True):
                await self.flush_queued()

    async def flush_queued(self) -> None:
        batch, self._inflight = self._inflight, []  # a batch cancelled while being retried
        while True:
            try:
                batch.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                break
        if batch:
            with trio.move_on_after(5):
                await self._commit(batch, give_up=True)

    async def _commit(self, batch: list[tuple[Event, trio.Event | None, list[bool]]], *,
                      give_up: bool = False) -> None:
        events = [event for event, _, _ in batch]
        if any(isinstance(e, WatermarkMoved) for e in events):
            crash_point("watermark-flush")
        while True:
            try:
                refused = await self.offload(self._record, events)
                break
            except StateError as exc:
                self.failed(exc)
                for event, done, _ in batch:  # writers go on; their events stay queued here
                    if done is not None and not isinstance(event, RunQueued | RunSkipped):
                        done.set()
                if give_up:
                    logger.error("{} events not recorded", len(events))
                    self._committed += len(batch)
                    return
                await trio.sleep(self.retry)
        self.recovered()
        self._committed += len(batch)
        self._progress.set()
        self._progress = trio.Event()
        for event, done, verdict in batch:
            if isinstance(event, RunQueued):
                verdict.append(event.run_id not in refused)
            if done is not None:
                done.set()
