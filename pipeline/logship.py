"""Step logs to a shared store, in chunks, so that any node shows any run's log.

In cluster mode a step's output is still written to a local file first (the engine's
``StepLog``: capped, head and tail kept); the shipper sends what is new of each live log to the
store every ``every`` seconds, and the whole final file once its step has ended (a capped log
is rebuilt at its end, so the final version replaces what was shipped). ``pipeline logs`` and
the API read a log from the local file when it is there, and from the store otherwise
(``read_any``). With SQLite nothing is shipped: every reader is on the machine.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from loguru import logger

from pipeline.errors import StateError
from pipeline.events import Event, StepFinished, StepStarted
from pipeline.store import Store

EVERY = 1.0  # seconds between shipments of live logs
CHUNK = 256 * 1024  # bytes per shipped chunk (and per read of a shipped log)

Offload = Callable[..., Awaitable[Any]]


@dataclass
class _Live:
    path: Path
    node: str | None  # the node that ran the step: its shipments are refused once it lost it
    shipped: int = 0
    ended: bool = False
    refused: bool = False


class LogShipper:
    """Follows the journal's step events; ships what the steps wrote."""

    def __init__(self, store: Store, state_dir: Path, *, every: float = EVERY,
                 offload: Offload = trio.to_thread.run_sync,
                 node: Callable[[], str | None] = lambda: None) -> None:
        self.store = store
        self.state_dir = state_dir
        self.node = node  # this node's id (it changes if the node registers again)
        self.every = every
        self.offload = offload
        self._live: dict[tuple[str, str], _Live] = {}
        self._wakeup = trio.Event()
        self._failure: str | None = None

    def observe(self, event: Event) -> None:
        """A journal observer (synchronous, in the trio thread)."""
        if isinstance(event, StepStarted) and event.log:
            self._live[(event.run_id, event.step_id)] = _Live(self.state_dir / event.log,
                                                              self.node())
        elif isinstance(event, StepFinished):
            live = self._live.get((event.run_id, event.step_id))
            if live is not None:
                live.ended = True
                self._wakeup.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                    ) -> None:
        task_status.started()
        try:
            while True:
                with trio.move_on_after(self.every):
                    await self._wakeup.wait()
                self._wakeup = trio.Event()
                await self.ship()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                for live in self._live.values():
                    live.ended = True
                await self.ship()

    async def ship(self) -> None:
        for key, live in list(self._live.items()):
            # Its end may be seen while this shipment is under way: only a shipment that
            # began after it ships the whole file.
            ended = live.ended
            try:
                await self.offload(functools.partial(self._ship_one, key, live, ended))
            except StateError as exc:
                if str(exc) != self._failure:
                    logger.warning("cannot ship step logs to the store: {} (retrying)", exc)
                    self._failure = str(exc)
                return
            self._failure = None
            if ended or live.refused:
                del self._live[key]

    def _ship_one(self, key: tuple[str, str], live: _Live, ended: bool) -> None:
        """What is new of one log (worker thread); its whole file once the step has ended.
        A shipment the store refuses (this node lost the run) ends the log's shipping."""
        run_id, step_id = key
        try:
            with open(live.path, "rb") as f:
                if ended:
                    data = f.read()
                    chunks = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]
                    for index, chunk in enumerate(chunks):
                        last = index == len(chunks) - 1
                        if not self.store.ship_log(run_id, step_id, index * CHUNK, chunk,
                                                   final=len(data) if last else None,
                                                   node=live.node):
                            live.refused = True
                            return
                    return
                f.seek(live.shipped)
                data = f.read(CHUNK)
        except FileNotFoundError:
            if ended:  # the step wrote nothing: an empty, complete log
                live.refused = not self.store.ship_log(run_id, step_id, 0, b"", final=0,
                                                       node=live.node)
            return
        if data:
            if not self.store.ship_log(run_id, step_id, live.shipped, data, node=live.node):
                live.refused = True
                return
            live.shipped += len(data)


def shipped_whole(store: Store, run_id: str, step_id: str) -> bool:
    """Whether a shared store holds the final version of a step's log. Then the store's copy
    is what to read, even where a file of that log is on this machine: the file may be that
    of an attempt cut short when this node was lost, the run going on elsewhere."""
    return store.shared and store.shipped_log(run_id, step_id, 0, 0)[1] is not None


def read_any(store: Store, state_dir: Path, relpath: str, run_id: str, step_id: str,
             start: int, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of a step's log from ``start``: from the local file if this node
    has it (and the store has not its final version), else from the store. Also whether the
    store says the log is complete (a local file's readers judge that from the step's
    record)."""
    path = state_dir / relpath
    if not shipped_whole(store, run_id, step_id):
        try:
            with open(path, "rb") as f:
                f.seek(start)
                return f.read(limit), False
        except FileNotFoundError:
            pass
    data, size = store.shipped_log(run_id, step_id, start, limit)
    return data, size is not None and start + len(data) >= size
