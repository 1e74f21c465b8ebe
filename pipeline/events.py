"""What happened, as frozen records with past-tense names.

The engine and the scheduler emit these; the store persists them (one transaction per batch),
and the live view, the metrics and the HTTP app read the same records. Times are aware UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipeline.model import RunStatus, StepStatus, Trigger, empty_mapping
from pipeline.runrecords import Version


@dataclass(frozen=True)
class RunQueued:
    """A run exists: claimed for its fire (``fire_time`` set) or triggered by hand.

    The store refuses a second run for the same (job, fire_time): ``Store.record`` returns the
    refused run ids.
    """

    run_id: str
    job: str
    trigger: Trigger
    queued_at: datetime
    fire_time: datetime | None = None
    params: Mapping[str, Any] = field(default_factory=empty_mapping)  # secrets already masked
    version: Version | None = None
    document: Mapping[str, Any] | None = None  # the resolved job, secrets masked
    parent_run_id: str | None = None
    node: str | None = None  # the node that holds it (None: any node may claim it)
    runs_on: Mapping[str, str] = field(default_factory=empty_mapping)  # labels a holder needs
    backlog: bool = False  # a missed fire caught up under `catchup: all`: queues in order
    parallel: int = 1  # a backlog: how many of the job's runs may be active while it starts
    keyed: bool | None = None  # takes its fire's identity (default: by its trigger)
    rerun_of: str | None = None
    reuse: Mapping[str, Mapping[str, str]] = field(default_factory=empty_mapping)


@dataclass(frozen=True)
class RunStarted:
    run_id: str
    started_at: datetime


@dataclass(frozen=True)
class RunFinished:
    run_id: str
    status: RunStatus
    finished_at: datetime
    reason: str | None = None
    attempt: int | None = None  # the attempt that ended: a lost attempt's end is refused
    outputs: Mapping[str, str] = field(default_factory=empty_mapping)  # the job's `outputs:`


@dataclass(frozen=True)
class RunSkipped:
    """A fire that was not run (overlap policy, open circuit, catch-up policy), kept as a run."""

    run_id: str
    job: str
    trigger: Trigger
    fire_time: datetime | None
    at: datetime
    reason: str
    version: Version | None = None


@dataclass(frozen=True)
class StepStarted:
    run_id: str
    step_id: str
    attempt: int
    started_at: datetime
    log: str  # path relative to the state directory
    item: str | None = None  # a for_each instance: its item as JSON, secrets masked


@dataclass(frozen=True)
class StepWaiting:
    """A step (or a for_each item) waits before it starts: for slots of a pool."""

    run_id: str
    step_id: str
    reason: str  # "waiting for pool db"
    at: datetime


@dataclass(frozen=True)
class StepSpawned:
    """The step's process group exists; recorded so a crashed daemon's groups can be reaped."""

    run_id: str
    step_id: str
    pid: int
    pgid: int


@dataclass(frozen=True)
class StepFinished:
    run_id: str
    step_id: str
    status: StepStatus
    finished_at: datetime
    attempt: int = 0
    exit_code: int | None = None
    signal: int | None = None
    error: str | None = None
    outputs: Mapping[str, str] = field(default_factory=empty_mapping)
    started_at: datetime | None = None  # set for steps that never ran (skipped, cancelled)
    no_log: bool = False  # the step wrote nothing: its log file was never made


@dataclass(frozen=True)
class StepRetrying:
    run_id: str
    step_id: str
    attempt: int  # the attempt that failed
    delay: float
    error: str | None = None


@dataclass(frozen=True)
class WatermarkMoved:
    """Every fire of ``job`` up to ``until`` has been dealt with (run, queued or skipped)."""

    job: str
    until: datetime


Event = (RunQueued | RunStarted | RunFinished | RunSkipped | StepStarted | StepWaiting
         | StepSpawned
         | StepFinished | StepRetrying | WatermarkMoved)
