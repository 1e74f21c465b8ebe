"""The validated job, as frozen typed objects, and the states a run and a step move through.

Only ``spec`` builds a ``Job``; everything further in reads these objects and never a raw
mapping from YAML. Durations are float seconds; instants are aware datetimes. A run, as the
store records it, is ``pipeline.runrecords``'s.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# A step id as declared, optionally with the index of a for_each instance: step "build" has
# instances "build.0", "build.1", ...; the dot cannot occur in a declared id, so instance ids
# never collide with real ones.
STEP_INSTANCE_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}(\.[0-9]{1,6})?$")
RUN_ID = re.compile(r"^[0-9]{8}T[0-9]{6}-[0-9a-f]{8}$")

EMPTY: Mapping[str, Any] = MappingProxyType({})


def empty_mapping() -> Mapping[str, Any]:
    # A dataclass field cannot default to an unhashable value; a factory hands out the one
    # shared read-only empty mapping.
    return EMPTY


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    INTERRUPTED = "interrupted"

    @property
    def finished(self) -> bool:
        return self not in (RunStatus.QUEUED, RunStatus.RUNNING)


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    REUSED = "reused"  # taken over from an earlier run by `rerun --from`

    @property
    def finished(self) -> bool:
        return self not in (StepStatus.PENDING, StepStatus.RUNNING)


class Trigger(StrEnum):
    SCHEDULE = "schedule"
    CATCHUP = "catchup"
    MANUAL = "manual"  # `pipeline run`
    API = "api"  # the HTTP API and `pipeline trigger`
    PARENT = "parent"  # started by a `uses: job` step
    BACKFILL = "backfill"  # `pipeline backfill`: a scheduled instant, run again or late
    FILE = "file"  # a file settled under a `file:` schedule's glob
    AFTER = "after"  # a run of the job an `after:` schedule names ended
    REBOOT = "reboot"  # a daemon started (`@reboot`)
    RERUN = "rerun"  # `pipeline rerun`: an earlier run again, from a step or its failures


class Catchup(StrEnum):
    NONE = "none"
    LATEST = "latest"
    ALL = "all"


class Policy(StrEnum):
    ALLOW = "allow"
    FORBID = "forbid"
    REPLACE = "replace"
    QUEUE = "queue"


class Backoff(StrEnum):
    CONSTANT = "constant"
    EXPONENTIAL = "exponential"


class ScheduleKind(StrEnum):
    CRON = "cron"
    EVERY = "every"
    AT = "at"
    # Events (CONTRACT §11): fired by what happens, not by the clock. ``pipeline.triggers``
    # gives them no fire times; the daemon's watchers make their fires.
    FILE = "file"  # a file under a glob settled (pipeline.filewatch)
    AFTER = "after"  # a run of another job ended in one of the listed states
    REBOOT = "reboot"  # a daemon started

    @property
    def timed(self) -> bool:
        """Whether the clock makes this schedule's fires (cron, every, at)."""
        return self in (ScheduleKind.CRON, ScheduleKind.EVERY, ScheduleKind.AT)


class StepKind(StrEnum):
    RUN = "run"
    EXEC = "exec"
    USES = "uses"


class NotifyEvent(StrEnum):
    """What a notification tells (CONTRACT §10)."""

    START = "start"
    SUCCESS = "success"
    FAILURE = "failure"
    RECOVERY = "recovery"  # the first success after one or more failures
    LATE = "late"  # a deadline passed before the fire's run succeeded
    SKIPPED = "skipped"  # a fire recorded as a skipped run
    RETRY = "retry"  # a step failed and will be tried again


class TargetKind(StrEnum):
    WEBHOOK = "webhook"
    SLACK = "slack"
    EMAIL = "email"
    PING = "ping"
    COMMAND = "command"


class ParamType(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"


@dataclass(frozen=True)
class Window:
    """``active: {from, until}``: fires before ``start`` or after ``end`` are not made.

    Both bounds are inclusive and either may be None. A bound without an offset carries the
    schedule's ``ZoneInfo`` and is a wall time there (read as ``at:`` is); ``until`` written
    as a date alone is the last microsecond of that day, so the whole day is in the window.
    """

    start: datetime | None = None
    end: datetime | None = None
    from_text: str = ""  # as written, for display
    until_text: str = ""


@dataclass(frozen=True)
class Exclusion:
    """One ``exclude:`` entry: a fire on ``date`` (a wall date in the schedule's zone), or at a
    wall time ``cron`` matches, is not made. Exactly one of ``date`` and ``cron`` is set."""

    text: str  # as written, for messages and `pipeline why`
    date: date | None = None
    cron: str | None = None  # normalised by cron.parse_cron


@dataclass(frozen=True)
class Schedule:
    """One schedule entry. ``cron`` holds the expression with any ``@alias`` expanded.

    ``active`` and ``exclude`` (the calendar) apply to the timed kinds; ``file``, ``settle``,
    ``existing`` to FILE; ``after`` and ``status`` to AFTER; REBOOT has none of them.
    """

    kind: ScheduleKind
    timezone: ZoneInfo
    cron: str | None = None
    every: float | None = None
    start: datetime | None = None  # alignment origin of `every`; None means the Unix epoch
    at: datetime | None = None
    jitter: float = 0.0
    catchup: Catchup = Catchup.LATEST
    # A fire that came due while this daemon ran but was noticed late (a stalled loop, a
    # suspended machine) still runs as scheduled within this many seconds; fires that came due
    # while no daemon ran are always left to `catchup`.
    misfire_grace: float = 60.0
    text: str = ""  # as the user wrote it, for display
    active: Window | None = None
    exclude: tuple[Exclusion, ...] = ()
    # FILE: the glob, absolute (a relative one is resolved against the job file's folder;
    # `text` keeps it as written), how long a file must stay unchanged before it fires, and
    # whether files already there when the watch first begins fire too
    file: str | None = None
    settle: float = 5.0
    existing: bool = False
    # AFTER: the upstream job, and the end states of its runs that fire this schedule
    after: str | None = None
    status: tuple[RunStatus, ...] = (RunStatus.SUCCEEDED,)

    @property
    def calendar(self) -> bool:
        """Whether ``active`` or ``exclude`` remove some of the plain expression's fires."""
        return self.active is not None or bool(self.exclude)


@dataclass(frozen=True)
class RetryPolicy:
    limit: int = 0
    delay: float = 0.0
    backoff: Backoff = Backoff.CONSTANT
    max_delay: float | None = None

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before ``attempt`` (2 for the first retry)."""
        if attempt <= 1:
            return 0.0
        wait = self.delay
        if self.backoff is Backoff.EXPONENTIAL:
            wait = self.delay * 2.0 ** (attempt - 2)
        if self.max_delay is not None:
            wait = min(wait, self.max_delay)
        return wait


@dataclass(frozen=True)
class Pool:
    """Slots of a pool (settings ``pools:``) that a run or a step holds while it is active."""

    name: str
    slots: int = 1


@dataclass(frozen=True)
class NotifyTarget:
    """One entry of ``notify:``. Its strings are templates (``${{ secrets.HOOK_URL }}``),
    rendered when a notification is delivered, never before: a secret's value is read then.

    ``url`` is the webhook's URL, the Slack webhook URL or the ping URL; ``to`` the email
    recipients; ``command`` the argument vector of a local command.
    """

    kind: TargetKind
    when: frozenset[NotifyEvent]
    index: int = 0  # its place in the job's notify: list, which names it in records
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=empty_mapping)
    to: tuple[str, ...] = ()
    subject: str | None = None
    channel: str | None = None  # slack: the channel to post in (default: the webhook's)
    username: str | None = None  # slack: the name to post as
    command: tuple[str, ...] = ()
    cooldown: float = 0.0  # a repeat (same job, target and event) within this is suppressed
    timeout: float = 10.0  # each try

    @property
    def label(self) -> str:
        """How records name the target: ``notify[0] webhook``."""
        return f"notify[{self.index}] {self.kind}"


@dataclass(frozen=True)
class Step:
    id: str
    kind: StepKind
    line: int = 0  # where the step starts in its file, for messages
    name: str | None = None
    run: str | None = None
    exec: tuple[str, ...] = ()
    uses: str | None = None
    with_: Mapping[str, Any] = field(default_factory=empty_mapping)
    needs: tuple[str, ...] = ()
    if_: str = "success()"
    env: Mapping[str, str] = field(default_factory=empty_mapping)
    cwd: str | None = None
    shell: tuple[str, ...] | None = None  # argv the script is appended to; None: the default
    timeout: float | None = None
    grace: float = 10.0  # SIGTERM to SIGKILL
    retries: RetryPolicy | None = None  # None: the job's policy
    continue_on_error: bool = False
    for_each: tuple[Any, ...] | str | None = None  # a list, or an expression giving one
    max_parallel: int | None = None
    pool: Pool | None = None  # slots the step waits for before it starts

    @property
    def title(self) -> str:
        return self.name or self.id


@dataclass(frozen=True)
class Param:
    name: str
    type: ParamType = ParamType.STRING
    default: Any = None
    has_default: bool = False
    enum: tuple[Any, ...] | None = None
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Secret:
    name: str
    env: str | None = None
    file: str | None = None


@dataclass(frozen=True)
class Concurrency:
    policy: Policy = Policy.FORBID
    max_active: int | None = None  # `allow`: None means unlimited
    max_queued: int = 10


@dataclass(frozen=True)
class CircuitBreaker:
    after: int
    cooldown: float = 3600.0


@dataclass(frozen=True)
class History:
    keep_runs: int | None = None
    keep_days: float | None = None


@dataclass(frozen=True)
class Job:
    name: str
    file: str
    sha256: str
    steps: tuple[Step, ...]
    description: str = ""
    enabled: bool = True
    schedules: tuple[Schedule, ...] = ()
    concurrency: Concurrency = field(default_factory=Concurrency)
    timeout: float | None = None
    retries: RetryPolicy = field(default_factory=RetryPolicy)
    circuit_breaker: CircuitBreaker | None = None
    history: History = field(default_factory=History)
    env: Mapping[str, str] = field(default_factory=empty_mapping)
    params: Mapping[str, Param] = field(default_factory=empty_mapping)
    secrets: Mapping[str, Secret] = field(default_factory=empty_mapping)
    on_success: tuple[Step, ...] = ()
    on_failure: tuple[Step, ...] = ()
    finally_: tuple[Step, ...] = ()
    runs_on: Mapping[str, str] = field(default_factory=empty_mapping)  # labels a node needs
    on_node_loss_retry: bool = False  # `on_node_loss: retry`: a lost run starts again
    # the run's own outputs: name -> a template over steps.<id>.outputs, evaluated when the
    # DAG ends (CONTRACT §2)
    outputs: Mapping[str, str] = field(default_factory=empty_mapping)
    notify: tuple[NotifyTarget, ...] = ()
    deadline: float | None = None  # seconds after the fire time by which a run must succeed
    pool: Pool | None = None  # slots a whole run holds while it is active
    # the validated mapping (the settings file's defaults applied), kept to store with each run
    document: Mapping[str, Any] = field(default_factory=empty_mapping)

    def all_steps(self) -> tuple[Step, ...]:
        return self.steps + self.on_success + self.on_failure + self.finally_


@dataclass(frozen=True)
class Smtp:
    """How email notifications are sent (settings ``smtp:``)."""

    host: str
    sender: str  # `from:`
    port: int = 587
    starttls: bool = True  # refuse to go on (and to log in) if the server cannot STARTTLS
    username: str | None = None
    password: Secret | None = None  # read when an email is sent


@dataclass(frozen=True)
class Defaults:
    """The settings file's ``defaults:``: what a job that does not set a key gets.

    ``spec`` applies them to the job's document before it builds the job (so the document
    stored with each run holds them, and a job rebuilt from that record has them too); the
    typed values here are for showing them.
    """

    timezone: ZoneInfo | None = None
    timeout: float | None = None
    retries: RetryPolicy | None = None
    notify: tuple[NotifyTarget, ...] | None = None
    history: History | None = None
    max_parallel: int | None = None
    document: Mapping[str, Any] = field(default_factory=empty_mapping)  # as written


@dataclass(frozen=True)
class Settings:
    """The settings file (CONTRACT §11): pools, a cap on active runs, defaults, SMTP."""

    file: str = ""
    sha256: str = ""
    pools: Mapping[str, int] = field(default_factory=empty_mapping)  # name -> slots
    max_active_runs: int | None = None
    defaults: Defaults = field(default_factory=Defaults)
    smtp: Smtp | None = None
    # secrets the defaults' notify targets may use (a job's own targets use the job's too)
    secrets: Mapping[str, Secret] = field(default_factory=empty_mapping)


@dataclass(frozen=True)
class Definition:
    """The last good version of a job file, as the state remembers it: it keeps the job
    firing across a restart while the file is broken, and says which file holds the name."""

    file: str  # relative to the jobs directory
    name: str
    sha256: str
    source: bytes
    since: datetime  # when this version was first loaded


def freeze(value: Any) -> Any:
    """Deep-freeze JSON-like data: mappings become read-only views, lists become tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The inverse of ``freeze``: plain dicts and lists, ready for ``json.dumps``."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [thaw(v) for v in value]
    return value


def utc_now() -> datetime:
    """The current instant, in UTC: every clock the engine, the scheduler and the commands
    take defaults to this one."""
    return datetime.now(UTC)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 with offset, as every answer of the CLI and the API shows times."""
    return value.isoformat() if value is not None else None
