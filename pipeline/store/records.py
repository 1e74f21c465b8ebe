"""The records the ``Store`` protocol takes and gives back: frozen values, and the states
and reasons that name what became of a run, a fire or a node."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pipeline.model import Catchup, CircuitBreaker, Concurrency, RunStatus, Trigger, empty_mapping
from pipeline.policy import Decision, Verdict
from pipeline.runrecords import RunRecord, Version

ACTIVE_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING)
# Runs that stand for a scheduled instant: one per (job, instant), whatever else runs.
KEYED_TRIGGERS = frozenset({Trigger.SCHEDULE, Trigger.CATCHUP, Trigger.BACKFILL})

INTERRUPTED_RUNNING = "the daemon stopped while it ran"
INTERRUPTED_QUEUED = "the daemon stopped before it started"
NODE_LOST = "its node was lost"


class NodeState(StrEnum):
    ALIVE = "alive"
    LEFT = "left"  # stopped cleanly
    LOST = "lost"  # its lease ran out (or its process died): its runs were taken back


class Outcome(StrEnum):
    """What a decision-log row says became of a fire (CONTRACT §6)."""

    FIRED = "fired"
    SKIPPED = "skipped"
    NOT_MADE = "not made"
    LATE = "late"
    NOTIFIED = "notified"
    NOTIFY_FAILED = "notify failed"
    NOTIFY_SUPPRESSED = "notify suppressed"  # within the target's cooldown: not sent again


def outcome_of(decision: Decision) -> Outcome:
    if decision.verdict is Verdict.SKIP:
        return Outcome.SKIPPED
    if decision.verdict is Verdict.NOT_MADE:
        return Outcome.NOT_MADE
    return Outcome.FIRED


@dataclass(frozen=True)
class JobSettings:
    """What the store needs of a job to decide about its runs, as a scheduler node loaded it."""

    name: str
    concurrency: Concurrency = field(default_factory=Concurrency)
    breaker: CircuitBreaker | None = None
    enabled: bool = True
    on_node_loss_retry: bool = False
    pool: tuple[str, int] | None = None  # (name, slots) a whole run holds


@dataclass(frozen=True)
class JobState:
    """A job's state in the store: its watermark, circuit breaker and pause."""

    name: str
    watermark: datetime | None = None
    failures: int = 0  # consecutive failed automatic runs
    circuit_opened_at: datetime | None = None
    paused_at: datetime | None = None
    paused_by: str | None = None
    paused_reason: str | None = None

    @property
    def paused(self) -> bool:
        return self.paused_at is not None


@dataclass(frozen=True)
class FireClaim:
    """A scheduler node's claim of a job's fires up to ``until``.

    ``fires``: (instant, jitter) for every fire after the node's watermark up to ``until``,
    ascending. The store drops those at or before the stored watermark (another node, or an
    earlier life of this one, dealt with them), sorts the rest with ``policy.catch_up`` and
    moves the watermark to ``until``. When none is left (nor a removed one), the watermark
    stays where it is: ``until`` is answered, as nothing lies in between.
    """

    job: str
    fires: tuple[tuple[datetime, float], ...]
    until: datetime
    catchup: Catchup
    misfire_grace: float
    started: datetime  # when the claiming node began to fire
    version: Version | None = None
    document: Mapping[str, Any] | None = None
    runs_on: Mapping[str, str] = field(default_factory=empty_mapping)
    hold: bool = True  # the claiming node holds the runs (else any node may take them)
    # fires the calendar removed (instant, reason, rule): recorded as not made
    removed: tuple[tuple[datetime, str, str], ...] = ()


@dataclass(frozen=True)
class Claimed:
    """A fire made into a run by ``claim_fires``: it starts at ``ready_at``."""

    run_id: str
    job: str
    fire_time: datetime
    trigger: Trigger
    ready_at: datetime
    held: bool  # held by the claiming node; otherwise left for any node
    backlog: bool  # a missed fire under `catchup: all`: it queues behind the job's other runs


@dataclass(frozen=True)
class Claims:
    """What ``claim_fires`` did: the runs it made, and up to where each job's fires are
    dealt with (the node's watermark)."""

    runs: list[Claimed]
    watermarks: dict[str, datetime]
    decisions: list[StoredDecision] = field(default_factory=list)  # fires made no run of


@dataclass(frozen=True)
class Started:
    """What ``start_runs`` or ``claim_runs`` made of a run."""

    run: RunRecord  # as it is now (with its document), for the runner to run
    decision: Decision
    replaced: tuple[str, ...] = ()  # active runs asked to stop (`replace`)


@dataclass(frozen=True)
class EventFire:
    """A fire an event made (a file settled, an upstream run ended, a daemon started).

    ``key`` is its identity for the job (``file:PATH:SIZE:MTIME_NS``, ``after:RUN_ID``,
    ``reboot:NODE``): the store records each once, and makes a run of it only then (and not
    for ``record_only``: a file that was there when a watch began). ``event`` is what the run
    gets as ``run.event`` (or, for ``after``, ``run.upstream``).
    """

    job: str
    key: str
    trigger: Trigger
    event: Mapping[str, Any] | None = None
    record_only: bool = False
    hold: bool = True
    version: Version | None = None
    document: Mapping[str, Any] | None = None
    runs_on: Mapping[str, str] = field(default_factory=empty_mapping)


@dataclass(frozen=True)
class PoolState:
    name: str
    slots: int
    used: int
    waiting: int


@dataclass(frozen=True)
class NodeInfo:
    """A node as it registers, and as ``nodes()`` gives it back."""

    id: str
    name: str
    roles: frozenset[str] = frozenset({"scheduler", "runner", "http"})
    labels: Mapping[str, str] = field(default_factory=empty_mapping)
    version: str = ""
    identity: str = ""  # where it runs, for a liveness check on the same machine
    listen: str | None = None
    digest: str | None = None  # of the job definitions it loaded
    max_runs: int | None = None
    started_at: datetime | None = None
    heartbeat_at: datetime | None = None
    expires_at: datetime | None = None
    state: NodeState = NodeState.ALIVE
    active_runs: int = 0


@dataclass(frozen=True)
class StoredDecision:
    """One row of the decision log."""

    job: str
    outcome: Outcome
    decided_at: datetime
    fire_time: datetime | None = None
    node: str | None = None
    reason: str | None = None
    detail: str | None = None
    run_id: str | None = None


@dataclass(frozen=True)
class StopRequest:
    run_id: str
    reason: str
    status: RunStatus  # what the run ends as: cancelled, or interrupted
