"""What became of each delivery (delivered, failed, suppressed, dropped): counted for the
notifier's statistics, logged, and handed to ``report`` in order, by a task of its own, so that
a slow report never holds up a send."""

from __future__ import annotations

import collections
import math
from collections.abc import Awaitable, Callable
from datetime import datetime

import trio
from loguru import logger

from pipeline.model import NotifyTarget
from pipeline.notify.notice import Notice, NotifyStatus, Outcome


class Outcomes:
    """The outcomes of one notifier. ``report``: told every ``Outcome`` (an async function;
    the daemon records it with the run and as a decision), by ``serve``."""

    def __init__(self, *, report: Callable[[Outcome], Awaitable[object]] | None) -> None:
        self._report = report
        self.counts: collections.Counter[NotifyStatus] = collections.Counter()
        self._in, self._out = trio.open_memory_channel[Outcome](math.inf)

    def add(self, notice: Notice, target: NotifyTarget, status: NotifyStatus, tries: int,
            error: str | None, *, at: datetime) -> None:
        """What became of ``notice`` for ``target`` (``at``: when); never blocks."""
        self.counts[status] += 1
        outcome = Outcome(notice.job, notice.run_id, notice.fire_time, target.label,
                          notice.kind, status, at, tries, error)
        run = f" of run {notice.run_id}" if notice.run_id else ""
        if status is NotifyStatus.DELIVERED:
            logger.info("{}: {} told of {}{}", notice.job, target.label, notice.kind, run)
        elif status is NotifyStatus.SUPPRESSED:
            logger.info("{}: {} not told of {}{}: {}", notice.job, target.label, notice.kind,
                        run, error)
        else:
            logger.error("{}: {} could not be told of {}{} ({}): {}", notice.job,
                         target.label, notice.kind, run, status, error)
        self._in.send_nowait(outcome)

    async def serve(self) -> None:
        """Hand each outcome to ``report``, in order, until cancelled; a report that fails is
        logged and the next one goes on."""
        async for outcome in self._out:
            if self._report is None:
                continue
            try:
                await self._report(outcome)
            except Exception:
                logger.exception("recording a notification's outcome failed")
