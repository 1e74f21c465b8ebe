"""The notifier: notices queued per target, sent by its own tasks, retried, kept in order per
target, saved while pending; see the package's docstring."""

from __future__ import annotations

import collections
import os
import ssl
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import trio
from loguru import logger

from pipeline.errors import ExpressionError, NotifyError
from pipeline.model import EMPTY, Job, NotifyEvent, NotifyTarget, RunStatus, Settings, utc_now
from pipeline.notation import short_duration
from pipeline.notify.cooldown import Claim, Cooldowns
from pipeline.notify.message import Message, render_message
from pipeline.notify.notice import Notice, NotifyStatus, Outcome, end_events
from pipeline.notify.outbox import Delivery, Offload, Outbox
from pipeline.notify.outcomes import Outcomes
from pipeline.notify.send import send_message
from pipeline.runrecords import RunRecord

if TYPE_CHECKING:
    import httpx

# httpx (and the CA bundle) are loaded when a notifier first sends, not when this module is
# imported: every run of ``pipeline run`` imports it, few of them notify anyone.

RETRY_DELAYS = (2.0, 10.0)  # between the 3 tries
MAX_PENDING = 1000
MAX_CONCURRENT = 16
ADOPT_EVERY = 30.0  # seconds between looks for what nodes that are gone left pending


@dataclass(frozen=True)
class NotifierStatistics:
    pending: int
    delivered: int
    failed: int
    suppressed: int
    dropped: int


class Notifier:
    """Sends notices to their targets without ever making the caller wait.

    Construct it with plain values and functions, start ``serve`` in a nursery of its own
    (``await nursery.start(notifier.serve)``), then call ``notify`` (or ``run_started``,
    ``run_ended``, ...) from any task of that trio run.

    ``report``: told every ``Outcome`` (an async function; see ``Outcomes``).
    ``save(pending)``: stores the list of pending deliveries (plain JSON data, replacing what
    it stored before); ``load()``: returns what was last saved; ``adopt()``: returns what
    nodes no longer running left pending, now this one's to send (asked when serving starts
    and every ``adopt_every`` seconds). The three are blocking functions, called through
    ``offload`` (a worker thread). ``settings``: the SMTP server and the settings' secrets
    (an attribute: set it again when the file changes). ``base_url``: the status page, for
    links to runs. ``environ``: where ``{env: NAME}`` secrets are read, and a command's
    environment. ``tls``: what HTTPS and SMTP's STARTTLS verify servers with (default: the
    system's CAs). ``send``: how a rendered ``Message`` is sent (default ``send_message``;
    tests pass a plain function). ``claim``: where a target's ``cooldown`` is kept beyond
    this process (``Store.claim_notice``; see ``Cooldowns``); without it, in memory.
    ``max_concurrent``: tries under way at once, all targets together; ``max_pending``:
    deliveries kept before new ones are dropped.
    """

    def __init__(self, *, report: Callable[[Outcome], Awaitable[object]] | None = None,
                 save: Callable[[list[dict[str, Any]]], object] | None = None,
                 load: Callable[[], Sequence[Mapping[str, Any]]] | None = None,
                 settings: Settings | None = None, base_url: str | None = None,
                 environ: Mapping[str, str] = os.environ, tls: ssl.SSLContext | None = None,
                 retry_delays: Sequence[float] = RETRY_DELAYS, max_pending: int = MAX_PENDING,
                 max_concurrent: int = MAX_CONCURRENT,
                 send: Callable[[Message], Awaitable[object]] | None = None,
                 offload: Offload = trio.to_thread.run_sync,
                 clock: Callable[[], datetime] = utc_now,
                 claim: Claim | None = None,
                 adopt: Callable[[], Sequence[Mapping[str, Any]]] | None = None,
                 adopt_every: float = ADOPT_EVERY) -> None:
        self.settings = settings
        self.base_url = base_url
        self.environ = environ
        self._tls = tls
        self.retry_delays = tuple(retry_delays)
        self.max_pending = max_pending
        self.clock = clock
        self._send = send
        self._limiter = trio.CapacityLimiter(max_concurrent)
        self._outbox = Outbox(save=save, load=load, offload=offload, adopt=adopt)
        self._cooldowns = Cooldowns(claim=claim, offload=offload)
        self._outcomes = Outcomes(report=report)
        self._adopting = adopt is not None
        self.adopt_every = adopt_every
        self._lanes: dict[tuple[str, str], collections.deque[str]] = {}
        self._running: set[tuple[str, str]] = set()  # lanes with a task sending
        self._changed = trio.lowlevel.ParkingLot()
        self._nursery: trio.Nursery | None = None
        self._client: httpx.AsyncClient | None = None

    @property
    def tls(self) -> ssl.SSLContext:
        if self._tls is None:
            from pipeline.runners.http import ssl_context

            self._tls = ssl_context(None)
        return self._tls

    @property
    def tries(self) -> int:
        return len(self.retry_delays) + 1

    def statistics(self) -> NotifierStatistics:
        counts = self._outcomes.counts
        return NotifierStatistics(len(self._outbox.pending), counts[NotifyStatus.DELIVERED],
                                  counts[NotifyStatus.FAILED], counts[NotifyStatus.SUPPRESSED],
                                  counts[NotifyStatus.DROPPED])

    # -- what callers call --------------------------------------------------------------

    def notify(self, job: Job, notice: Notice) -> None:
        """Queue ``notice`` for each of ``job.notify``'s targets that wants its kind; never
        blocks, never raises for a target. A repeat within a target's ``cooldown`` (same
        job, target and kind) is suppressed; past ``max_pending`` pending deliveries, new
        ones are dropped. Both are reported."""
        shared = self.settings.secrets if self.settings is not None else EMPTY
        secrets = {**shared, **job.secrets}
        now = trio.current_time()
        for target in job.notify:
            if notice.kind not in target.when:
                continue
            why = self._cooldowns.within(job.name, target, notice.kind, now)
            if why is not None:
                self._outcome(notice, target, NotifyStatus.SUPPRESSED, 0, why)
                continue
            if len(self._outbox.pending) >= self.max_pending:
                self._outcome(notice, target, NotifyStatus.DROPPED, 0,
                              f"{len(self._outbox.pending)} notifications are already pending")
                continue
            self._cooldowns.queued(job.name, target, notice.kind, now)
            self._add(Delivery(uuid.uuid4().hex, notice, target, secrets))

    def run_started(self, job: Job, run: RunRecord) -> None:
        self.notify(job, Notice.of_run(NotifyEvent.START, run, at=run.started_at))

    def run_ended(self, job: Job, run: RunRecord, previous: RunStatus | None) -> None:
        """The events of a finished (or skipped) run; ``previous`` as ``end_events`` says."""
        for kind in end_events(run.status, previous):
            self.notify(job, Notice.of_run(kind, run))

    def step_retrying(self, job: Job, run: RunRecord, step: str, attempt: int,
                      error: str | None) -> None:
        self.notify(job, Notice.of_run(NotifyEvent.RETRY, run, at=self.clock(), reason=error,
                                       step=step, attempt=attempt))

    def deadline_missed(self, job: Job, fire_time: datetime, deadline: datetime,
                        run: RunRecord | None = None) -> None:
        """A fire's run had not succeeded by ``deadline`` (``run``: None if it has none)."""
        if run is None:
            notice = Notice(NotifyEvent.LATE, job.name, self.clock(), fire_time=fire_time,
                            deadline=deadline, reason="the fire produced no run")
        else:
            notice = Notice.of_run(NotifyEvent.LATE, run, at=self.clock(), deadline=deadline,
                                   reason=f"the run is {run.status}")
        self.notify(job, notice)

    async def flush(self) -> None:
        """Wait until nothing is pending (delivered, or given up on). Bound it with a cancel
        scope: before shutting down, give pending alerts a few seconds to go out."""
        while self._outbox.pending:
            await self._changed.park()

    # -- running ------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Send what is pending (what ``load`` gives back first) until cancelled; on the way
        out, save what is still pending."""
        for delivery in await self._outbox.load():
            if delivery.id not in self._outbox.pending:
                self._add(delivery)
        await self._take_over()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._outcomes.serve)
                nursery.start_soon(self._outbox.keep_saved)
                if self._adopting:
                    nursery.start_soon(self._keep_taking_over)
                for lane in list(self._lanes):
                    self._start(lane)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            client, self._client = self._client, None
            if client is not None:
                with trio.CancelScope(shield=True):
                    await client.aclose()

    def _http(self) -> httpx.AsyncClient:
        """The HTTP client, made when a notice first goes over HTTP: httpx and the CA bundle
        weigh several MiB a daemon whose jobs notify nobody by HTTP need not hold."""
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(verify=self.tls, timeout=None, trust_env=False,
                                             follow_redirects=False)
        return self._client

    async def _take_over(self) -> None:
        try:
            adopted = await self._outbox.adopted()
        except Exception as exc:  # the store is out of reach: they wait for the next look
            logger.warning("cannot look for notifications left by other nodes: {}", exc)
            return
        for delivery in adopted:
            if delivery.id not in self._outbox.pending:
                self._add(delivery)

    async def _keep_taking_over(self) -> None:
        """A node that died (kill -9, a machine lost) is found dead after its lease; what
        it had pending is taken over at the next look, by whichever node looks first."""
        while True:
            await trio.sleep(self.adopt_every)
            await self._take_over()

    def _add(self, delivery: Delivery) -> None:
        self._outbox.add(delivery)
        self._lanes.setdefault(delivery.lane, collections.deque()).append(delivery.id)
        if self._nursery is not None:
            self._start(delivery.lane)

    def _start(self, lane: tuple[str, str]) -> None:
        if lane not in self._running:
            assert self._nursery is not None
            self._running.add(lane)
            self._nursery.start_soon(self._drive, lane)

    async def _drive(self, lane: tuple[str, str]) -> None:
        """Deliver one lane's notices in order, until it is empty."""
        queue = self._lanes[lane]
        try:
            while queue:
                await self._deliver(self._outbox.pending[queue[0]])
                queue.popleft()
            del self._lanes[lane]
        finally:
            self._running.discard(lane)

    async def _deliver(self, delivery: Delivery) -> None:
        notice, target = delivery.notice, delivery.target
        suppressed = await self._cooldowns.claimed(delivery, self.clock())
        if suppressed is not None:
            self._done(delivery, NotifyStatus.SUPPRESSED, suppressed)
            return
        try:
            message, redactor = render_message(notice, target, delivery.secrets,
                                               environ=self.environ, base_url=self.base_url)
        except (NotifyError, ExpressionError) as exc:
            self._done(delivery, NotifyStatus.FAILED, f"cannot be sent: {exc}")
            return
        while True:
            try:
                async with self._limiter:
                    with trio.fail_after(target.timeout):
                        if self._send is not None:
                            await self._send(message)
                        else:
                            await send_message(message, client=self._http,
                                               settings=self.settings, environ=self.environ,
                                               tls=lambda: self.tls)
            except trio.TooSlowError:
                error = f"timed out after {short_duration(target.timeout)}"
            except Exception as exc:  # any failure of one try is that try's: retried
                error = str(exc) or type(exc).__name__
            else:
                self._done(delivery, NotifyStatus.DELIVERED, None)
                return
            delivery.tries += 1
            self._outbox.changed()
            error = redactor.text(error)
            if delivery.tries >= self.tries:
                self._done(delivery, NotifyStatus.FAILED, error)
                return
            delay = self.retry_delays[delivery.tries - 1]
            logger.warning("{}: {} of {} {} failed (try {} of {}), again in {}: {}",
                           notice.job, target.label, notice.kind, notice.run_id or "",
                           delivery.tries, self.tries, short_duration(delay), error)
            await trio.sleep(delay)

    def _done(self, delivery: Delivery, status: NotifyStatus, error: str | None) -> None:
        self._outbox.remove(delivery)
        self._changed.unpark_all()
        self._outcome(delivery.notice, delivery.target, status,
                      delivery.tries + (status is NotifyStatus.DELIVERED), error)

    def _outcome(self, notice: Notice, target: NotifyTarget, status: NotifyStatus, tries: int,
                 error: str | None) -> None:
        self._outcomes.add(notice, target, status, tries, error, at=self.clock())
