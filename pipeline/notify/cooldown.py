"""A target's ``cooldown``: the same event of the same job goes to one target at most once per
``cooldown`` seconds; the repeats are suppressed, and reported so.

It is judged twice. When a notice is queued, against what this process queued (in trio's
time: cheap, and it spares a burst the outbox). Before a delivery is first tried, against the
store, through ``claim`` (``Store.claim_notice``), which records the send in the same atomic
step: so the cooldown holds across restarts and across a cluster's nodes. Without ``claim``
it holds in this process alone.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from loguru import logger

from pipeline.model import NotifyEvent, NotifyTarget
from pipeline.notation import short_duration
from pipeline.notify.outbox import Delivery, Offload

# ``claim(job, target label, event kind, now, cooldown, delivery id)``: ``Store.claim_notice``.
Claim = Callable[[str, str, str, datetime, float, str], "datetime | None"]


class Cooldowns:
    """The cooldowns of every target a notifier sends to. ``claim`` (blocking, called through
    ``offload``): where they are kept beyond this process, None for nowhere."""

    def __init__(self, *, claim: Claim | None, offload: Offload) -> None:
        self._claim = claim
        self._offload = offload
        self._queued: dict[tuple[str, str, NotifyEvent], float] = {}  # trio time

    def within(self, job: str, target: NotifyTarget, kind: NotifyEvent,
               now: float) -> str | None:
        """Why ``job``'s ``kind`` event is not queued for ``target`` at ``now`` (trio time):
        the same was queued within its cooldown; None if it may be."""
        last = self._queued.get((job, target.label, kind))
        if target.cooldown > 0 and last is not None and now - last < target.cooldown:
            return _suppressed(now - last, target.cooldown)
        return None

    def queued(self, job: str, target: NotifyTarget, kind: NotifyEvent, now: float) -> None:
        """``job``'s ``kind`` event is queued for ``target`` at ``now``: its cooldown begins."""
        self._queued[(job, target.label, kind)] = now

    async def claimed(self, delivery: Delivery, now: datetime) -> str | None:
        """Why ``delivery`` is not sent, as far as the shared cooldown goes (the same was
        sent within it, from here or from another node); None if it may be, the send
        recorded. A store that cannot answer lets it go: a repeated alert is better than a
        lost one."""
        notice, target = delivery.notice, delivery.target
        if target.cooldown <= 0 or self._claim is None:
            return None
        try:
            last = await self._offload(self._claim, notice.job, target.label, str(notice.kind),
                                       now, target.cooldown, delivery.id)
        except Exception as exc:  # the store is down: send, and say why the cooldown lapsed
            logger.warning("{}: {} of {}: the cooldown cannot be checked, sent anyway: {}",
                           notice.job, target.label, notice.kind, exc)
            return None
        if last is None:
            return None
        return _suppressed(max(0.0, (now - last).total_seconds()), target.cooldown)


def _suppressed(ago: float, cooldown: float) -> str:
    return (f"the same event was sent {short_duration(round(ago, 3))} ago, "
            f"within the cooldown of {short_duration(cooldown)}")
