"""This process as a node of the store: its identity, its lease, and its watchdog.

A node id is made at start (CLUSTER.md rule 10: a host name is for people, never identity).
``Lease.serve`` renews the node's lease every ``lease / 3`` seconds (a failed renewal is tried
again within a second), measures the offset between this machine's wall clock and the store's
(the node fires and stamps what it records by the store's clock, rule 4; a measurement that
waited does not replace a sharper one, ``measured_offset``), and pings the watchdog after every
renewal.
When renewals fail for ``lease × 2/3`` by this process's monotonic clock, in a store other
daemons share, the node **fences** itself (rule 5): it stops claiming and stops its runs
before anyone may take them over; the watchdog, a separate process,
kills its steps' process groups even if the daemon is frozen. When the store says the node is
no longer alive (another node found it lost), it registers again under a new id.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import socket
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import trio
from loguru import logger

from pipeline import __version__
from pipeline.errors import StateError
from pipeline.model import iso
from pipeline.statedir import process_identity
from pipeline.store import Store
from pipeline.store.records import NodeInfo, NodeState

Offload = Callable[..., Awaitable[Any]]
T = TypeVar("T")
DEFAULT_LEASE = 30.0
RETRY = 1.0  # longest pause between renewals that fail
# The node fences itself this much of a lease before its watchdog would kill its steps.
FENCE_EARLY = 1 / 30


def new_node_id() -> str:
    return os.urandom(8).hex()


def default_node_name() -> str:
    return f"{socket.gethostname().split('.')[0]}-{os.urandom(2).hex()}"


@functools.cache
def _machine() -> str:
    """This boot of this machine and this pid namespace: a pid means the same process only
    within both."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "unknown-boot"
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = "unknown-ns"
    return f"{boot}/{pidns}"


def machine_identity(pid: int | None = None) -> str:
    """``BOOT/PIDNS/PID:STARTTIME``: this process (or ``pid``), unique across machines."""
    return f"{_machine()}/{process_identity(pid)}"


def identity_dead(identity: str) -> bool:
    """True only when ``identity`` names a process of this machine (same boot, same pid
    namespace) that no longer runs. A process elsewhere is never judged from here."""
    from pipeline.statedir import identity_alive

    where, _, process = identity.rpartition("/")
    if not where:  # an older pipeline's "PID:STARTTIME": a process of this machine
        return bool(process) and not identity_alive(process)
    if where != _machine():
        return False
    return not identity_alive(process)


def this_node(*, name: str | None = None, roles: frozenset[str] | None = None,
              labels: dict[str, str] | None = None, listen: str | None = None,
              max_runs: int | None = None, digest: str | None = None) -> NodeInfo:
    return NodeInfo(id=new_node_id(), name=name or default_node_name(),
                    roles=roles if roles is not None else frozenset({"scheduler", "runner",
                                                                     "http"}),
                    labels=labels or {}, version=__version__, identity=machine_identity(),
                    listen=listen, digest=digest, max_runs=max_runs)


def node_views(nodes: Sequence[NodeInfo], now: datetime) -> list[dict[str, Any]]:
    """Nodes as ``pipeline nodes`` and the API show them. ``jobs_match`` compares a
    scheduler's loaded definitions with those most alive schedulers loaded (None: it has none
    to compare)."""
    alive = [n for n in nodes if n.state is NodeState.ALIVE and "scheduler" in n.roles
             and n.digest]
    common = Counter(n.digest for n in alive).most_common(1)
    usual = common[0][0] if common else None
    return [{
        "id": n.id, "name": n.name, "state": str(n.state), "roles": sorted(n.roles),
        "labels": dict(n.labels), "version": n.version, "listen": n.listen,
        "started_at": iso(n.started_at), "heartbeat_at": iso(n.heartbeat_at),
        "heartbeat_age_s": round((now - n.heartbeat_at).total_seconds(), 3)
        if n.heartbeat_at else None,
        "lease_expires_at": iso(n.expires_at), "active_runs": n.active_runs,
        "max_runs": n.max_runs,
        "jobs_match": None if not n.digest or usual is None or "scheduler" not in n.roles
        else n.digest == usual,
    } for n in nodes]


def definitions_digest(jobs: Mapping[str, Any]) -> str:
    """One digest of the job definitions a node loaded (name and file hash of each)."""
    text = "\n".join(f"{name}:{job.sha256}" for name, job in sorted(jobs.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- the watchdog ------------------------------------------------------------------------------

class Watchdog:
    """The daemon's side of ``_watchdog.py``: tell it of process groups, ping it on renewal.

    Messages are queued and written by ``serve``; a full pipe never blocks a step.
    """

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[bytes](math.inf)

    def add(self, pgid: int) -> None:
        self._send.send_nowait(b"add %d\n" % pgid)

    def remove(self, pgid: int) -> None:
        self._send.send_nowait(b"remove %d\n" % pgid)

    def ping(self) -> None:
        self._send.send_nowait(b"ping\n")

    async def serve(self, *, fence_after: float, grace: float,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the watchdog process and feed it until cancelled; then close its pipe (it
        kills what is still registered, which after a clean shutdown is nothing)."""
        script = Path(__file__).with_name("_watchdog.py")
        process = await trio.lowlevel.open_process(
            [sys.executable, "-P", str(script), f"{fence_after:g}", f"{grace:g}"],
            stdin=-1, start_new_session=True)  # -1: subprocess.PIPE
        assert process.stdin is not None
        task_status.started()
        try:
            async for message in self._receive:
                try:
                    await process.stdin.send_all(message)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    logger.warning("the watchdog process is gone; steps are no longer watched")
                    return
        finally:
            with trio.CancelScope(shield=True):
                await process.stdin.aclose()
                with trio.move_on_after(grace + 5):
                    await process.wait()


@asynccontextmanager
async def open_watchdog(*, fence_after: float, grace: float) -> AsyncIterator[Watchdog]:
    watchdog = Watchdog()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: watchdog.serve(
            fence_after=fence_after, grace=grace, task_status=task_status))
        yield watchdog
        nursery.cancel_scope.cancel()


# -- the lease ---------------------------------------------------------------------------------

# How fast two healthy clocks may part (NTP slews at most 500 ppm), with room to spare: how
# much vaguer a kept offset grows each second.
DRIFT = 0.001


@dataclass(frozen=True)
class Offset:
    """The store's clock minus this machine's: ``value``, right within ``error``, as measured
    at ``at`` (seconds of the monotonic clock the lease renews by)."""

    value: timedelta
    error: timedelta
    at: float


def measured_offset(kept: Offset | None, before: datetime, store_now: datetime,
                    after: datetime, at: float) -> Offset:
    """The offset to keep after a measurement: the store read its clock (``store_now``)
    between this machine's ``before`` and ``after``, so the offset is their midpoint's,
    right within half the round trip. A round trip that waited (a loaded machine: the GIL, a
    slow commit) gives a vaguer offset than the one kept, which stays (its error grown by the
    drift since), unless the two disagree beyond both errors: this machine's clock was set."""
    error = (after - before) / 2
    new = Offset(store_now - (before + error), error, at)
    if kept is None:
        return new
    kept_error = kept.error + timedelta(seconds=DRIFT * max(0.0, at - kept.at))
    if error <= kept_error or abs(new.value - kept.value) > error + kept_error:
        return new
    return kept


def _timed(call: Callable[[], T]) -> Callable[[], tuple[datetime, T, datetime]]:
    """``call`` with this machine's clock read just before and just after it, where it runs.
    The store's clock is read between the two, so the offset measured from them is off by
    half the call at most; read around the offload instead, it was off by half the wait for
    a thread too (on a loaded machine, hundreds of milliseconds: a run's end, stamped by the
    node, then came after the next run's start, stamped by the store)."""
    def timed() -> tuple[datetime, T, datetime]:
        before = datetime.now(UTC)
        answer = call()
        return before, answer, datetime.now(UTC)
    return timed


class Lease:
    """The node's registration and lease in ``store``; the clock the node fires by."""

    def __init__(self, store: Store, node: NodeInfo, *, lease: float = DEFAULT_LEASE,
                 offload: Offload = trio.to_thread.run_sync,
                 watchdog: Watchdog | None = None,
                 on_fence: Callable[[str], Awaitable[None]] | None = None,
                 digest: Callable[[], str | None] | None = None) -> None:
        self.store = store
        self.node = node
        self.lease = lease
        self.offload = offload
        self.watchdog = watchdog
        self.on_fence = on_fence
        self.digest = digest
        self.offset = timedelta(0)  # the store's clock minus this machine's
        self._offset: Offset | None = None  # ... as measured, and how well
        self._fenced = False
        self.renewed = trio.Event()  # set at every renewal (tests and the fence wait on it)
        self._last_ok = 0.0
        self._failure: str | None = None

    def clock(self) -> datetime:
        """Now, by the store's clock (this machine's, corrected by the measured offset)."""
        return datetime.now(UTC) + self.offset

    @property
    def fenced(self) -> bool:
        """Whether this node must claim and start nothing now: it fenced itself, or, in a
        shared store, its lease has gone unrenewed for two thirds of it by its monotonic
        clock (rule 5). A node woken from a freeze knows that before any renewal can tell it
        the others found it lost, and its worker may poll first."""
        return self._fenced or (self.store.shared and self._stale())

    def _stale(self, fence_after: float | None = None) -> bool:
        limit = self.lease * 2 / 3 if fence_after is None else fence_after
        return trio.current_time() - self._last_ok > limit

    @property
    def node_id(self) -> str:
        return self.node.id

    async def register(self) -> None:
        """Register the node; raises ``StateError`` if the store cannot be reached."""
        before, store_now, after = await self.offload(_timed(
            functools.partial(self.store.register_node, self.node, lease=self.lease)))
        self._measured(before, store_now, after)
        self._last_ok = trio.current_time()
        if self.watchdog is not None:
            self.watchdog.ping()

    def _measured(self, before: datetime, store_now: datetime, after: datetime) -> None:
        self._offset = measured_offset(self._offset, before, store_now, after,
                                       trio.current_time())
        self.offset = self._offset.value

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                    ) -> None:
        """Renew the lease until cancelled (the node must be registered)."""
        fence_after = self.lease * 2 / 3
        async with trio.open_nursery() as nursery:
            if self.store.shared:
                nursery.start_soon(self._fence_in_time, fence_after - self.lease * FENCE_EARLY)
            task_status.started()
            while True:
                if self._failure is None:
                    await trio.sleep(self.lease / 3)
                else:
                    # A renewal failed: try again soon. A third of a lease later, an outage of
                    # the store that began at the wrong moment and lasted a second (a restart)
                    # would have kept the node unrenewed for two thirds of it: fenced, every
                    # step killed by its watchdog.
                    await trio.sleep(min(RETRY, self.lease / 15))
                await self.renew(fence_after)

    async def _fence_in_time(self, limit: float) -> None:
        """Fence as soon as the lease has gone unrenewed for ``limit`` seconds: a little
        before the watchdog kills this node's steps on its own (at two thirds of the lease),
        so that they end interrupted by the fence, not failed by the watchdog's signal; and
        whatever a renewal is waiting for (a store that does not answer, a restart)."""
        while True:
            deadline = self._last_ok + limit
            if trio.current_time() < deadline:
                await trio.sleep_until(deadline)  # a renewal meanwhile moves the deadline
            elif not self._fenced:
                await self._fence("its lease went unrenewed for "
                                  f"{trio.current_time() - self._last_ok:.1f}s")
            else:
                await trio.sleep(self.lease / 15)  # fenced: until a renewal succeeds

    async def renew(self, fence_after: float | None = None) -> None:
        fence_after = self.lease * 2 / 3 if fence_after is None else fence_after
        if self.store.shared and not self._fenced and self._stale(fence_after):
            # Asleep (frozen, starved) past the moment the watchdog killed this node's steps:
            # its runs are stopped whatever the store answers, and end interrupted.
            await self._fence("its lease went unrenewed for "
                              f"{trio.current_time() - self._last_ok:.1f}s")
        try:
            digest = self.digest() if self.digest is not None else None
            before, store_now, after = await self.offload(_timed(functools.partial(
                self.store.renew_lease, self.node.id, lease=self.lease, digest=digest)))
        except StateError as exc:
            message = str(exc)
            if self._failure != message:
                logger.error("cannot renew this node's lease: {} (retrying)", message)
                self._failure = message
            if self.store.shared and not self._fenced and self._stale(fence_after):
                await self._fence("the store could not be reached for "
                                  f"{trio.current_time() - self._last_ok:.0f}s")
            return
        if self._failure is not None:
            logger.info("the store answers again")
            self._failure = None
        if store_now is None:
            # Another node found us lost and took our runs: they are not ours to finish.
            if not self._fenced:
                await self._fence("another node found this node lost")
            await self._register_again()
            return
        # Renewed: whatever happened meanwhile, nobody took our runs (a reap needs the lease
        # to have run out at the moment it looks, and it runs out no more now).
        self._measured(before, store_now, after)
        self._last_ok = trio.current_time()
        if self.watchdog is not None:
            self.watchdog.ping()
        if self._fenced:
            logger.warning("this node's lease is renewed: claiming again")
            self._fenced = False
        self.renewed.set()
        self.renewed = trio.Event()

    async def _fence(self, why: str) -> None:
        self._fenced = True
        logger.error("fencing this node: {}; its runs are stopped and it claims nothing until "
                     "it is registered again", why)
        if self.on_fence is not None:
            await self.on_fence(why)

    async def _register_again(self) -> None:
        """Come back under a new id (ids are never reused: the old one's runs are gone)."""
        old = self.node.id
        self.node = NodeInfo(**{**self.node.__dict__, "id": new_node_id()})
        try:
            await self.register()
        except StateError as exc:
            logger.error("cannot register this node again: {} (retrying)", exc)
            return  # the next renewal finds the new id unknown and tries again
        self._fenced = False
        logger.warning("registered again as node {} (was {})", self.node.id, old)
