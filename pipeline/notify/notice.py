"""A notice: one event of one job (start, success, failure, recovery, late, skipped, retry),
as every target is told it, and what became of telling one target (``Outcome``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pipeline.model import EMPTY, NotifyEvent, RunStatus, freeze, iso, thaw, utc_now
from pipeline.runrecords import RunRecord

FAILED = frozenset({RunStatus.FAILED, RunStatus.INTERRUPTED})


def end_events(status: RunStatus, previous: RunStatus | None) -> tuple[NotifyEvent, ...]:
    """The events of a run that ended in ``status``.

    ``previous`` is how the job's run before it ended (skipped and cancelled runs not
    counted; None: there was none): a success after a failed or interrupted run is also a
    ``recovery``. A cancelled run is an operator's doing and tells nobody.
    """
    if status is RunStatus.SUCCEEDED:
        if previous in FAILED:
            return (NotifyEvent.SUCCESS, NotifyEvent.RECOVERY)
        return (NotifyEvent.SUCCESS,)
    if status in FAILED:
        return (NotifyEvent.FAILURE,)
    if status is RunStatus.SKIPPED:
        return (NotifyEvent.SKIPPED,)
    return ()


def _time(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


@dataclass(frozen=True)
class Notice:
    """One event of a job, as every target is told it. Values come from the run's record
    (its params and outputs already masked); secrets are masked again before sending."""

    kind: NotifyEvent
    job: str
    at: datetime  # when it happened
    run_id: str | None = None  # None: a fire that produced no run (late)
    status: str | None = None  # the run's status at the time
    trigger: str | None = None
    fire_time: datetime | None = None
    reason: str | None = None
    outputs: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    params: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    step: str | None = None  # retry: the step that failed
    attempt: int | None = None  # retry: the attempt that failed
    deadline: datetime | None = None  # late: the instant that passed

    @classmethod
    def of_run(cls, kind: NotifyEvent, run: RunRecord, *, at: datetime | None = None,
               reason: str | None = None, step: str | None = None, attempt: int | None = None,
               deadline: datetime | None = None) -> Notice:
        """The notice of ``kind`` about ``run`` (as the store records it); ``at`` defaults to
        when it finished, started or was queued, ``reason`` to its own."""
        when = at or run.finished_at or run.started_at or run.queued_at or utc_now()
        return cls(kind, run.job, when, run.id, str(run.status), str(run.trigger),
                   run.fire_time, reason if reason is not None else run.reason,
                   run.outputs, run.params, step, attempt, deadline)

    def headline(self) -> str:
        """One line a person reads: what happened to which run."""
        run = f"run {self.run_id}" if self.run_id else "a run"
        because = f": {self.reason}" if self.reason else ""
        fire = iso(self.fire_time) or "?"
        if self.kind is NotifyEvent.START:
            return f"{self.job}: {run} started ({self.trigger or 'manual'})"
        if self.kind is NotifyEvent.SUCCESS:
            return f"{self.job}: {run} succeeded"
        if self.kind is NotifyEvent.RECOVERY:
            return f"{self.job}: recovered, {run} succeeded after failing"
        if self.kind is NotifyEvent.FAILURE:
            ended = "failed" if self.status in (None, "failed") else f"ended {self.status}"
            return f"{self.job}: {run} {ended}{because}"
        if self.kind is NotifyEvent.LATE:
            return (f"{self.job}: the fire of {fire} is late: no run succeeded by "
                    f"{iso(self.deadline) or '?'}{because}")
        if self.kind is NotifyEvent.SKIPPED:
            return f"{self.job}: the fire of {fire} was skipped{because}"
        return (f"{self.job}: step {self.step} of {run} failed (attempt {self.attempt}), "
                f"trying again{because}")

    def link(self, base_url: str | None) -> str | None:
        """The run's page, when the status page's address is known."""
        if not base_url or not self.run_id:
            return None
        return f"{base_url.rstrip('/')}/runs/{self.run_id}"

    def payload(self, base_url: str | None = None) -> dict[str, Any]:
        """The event as JSON: a webhook's body and a command's stdin (docs/notifications.md)."""
        return {
            "version": 1, "event": str(self.kind), "job": self.job, "run_id": self.run_id,
            "status": self.status, "trigger": self.trigger, "fire_time": iso(self.fire_time),
            "at": iso(self.at), "reason": self.reason, "outputs": thaw(self.outputs),
            "step": self.step, "attempt": self.attempt, "deadline": iso(self.deadline),
            "url": self.link(base_url), "text": self.headline(),
        }

    def as_dict(self) -> dict[str, Any]:
        """What ``save`` stores of it (``from_dict`` reads it back)."""
        return {**{k: v for k, v in self.payload().items()
                   if k not in ("version", "url", "text", "event")},
                "kind": str(self.kind), "params": thaw(self.params)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Notice:
        return cls(NotifyEvent(data["kind"]), str(data["job"]), _time(data["at"]) or utc_now(),
                   data.get("run_id"), data.get("status"), data.get("trigger"),
                   _time(data.get("fire_time")), data.get("reason"),
                   freeze(data.get("outputs") or {}), freeze(data.get("params") or {}),
                   data.get("step"), data.get("attempt"), _time(data.get("deadline")))


class NotifyStatus(StrEnum):
    DELIVERED = "delivered"
    FAILED = "failed"  # every try failed, or it cannot be sent at all (a missing secret)
    SUPPRESSED = "suppressed"  # the same event went to this target within its cooldown
    DROPPED = "dropped"  # too many notifications were pending


@dataclass(frozen=True)
class Outcome:
    """What became of one notification: for the run's record (``notifications``) and the
    decision log (``notified`` / ``notify failed``). ``error`` has secrets masked."""

    job: str
    run_id: str | None
    fire_time: datetime | None
    target: str  # NotifyTarget.label: "notify[0] webhook"
    event: NotifyEvent
    status: NotifyStatus
    at: datetime
    tries: int = 0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """As the API shows it with the run (CONTRACT §5: target, event, status, at, error)."""
        return {"target": self.target, "event": str(self.event), "status": str(self.status),
                "at": iso(self.at), "error": self.error, "tries": self.tries}
