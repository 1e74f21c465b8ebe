"""What to do with a fire: the scheduler's policy as pure functions of plain values.

Three questions, each answered without I/O and without a clock of its own:

``catch_up``
    Of a job's fires due by now, which run on time, which are caught up and which are not
    made, by the job's ``catchup`` policy and ``misfire_grace``. A fire that came due while no
    daemon ran was missed, however recent; one that came due while this daemon ran but was
    noticed late (a stalled loop, a suspended machine) is on time within the grace.

``decide``
    A run that may start (a fire at its instant, a trigger, a waiting run whose turn may have
    come) meets the job's other runs, its circuit breaker and its pause: start it, queue it,
    replace the active runs, skip it (recorded as a skipped run), or make no run at all.

``stretch_starts``
    Of the fires a job's calendar removes (``exclude:``, outside ``active:``), which the
    decision log records as not made: the first of each stretch of removed fires, its detail
    saying until when no fire is made (``stretch_detail``), so a job excluded for a day makes
    one row, not one per fire.

The store calls ``decide`` inside the transaction that starts a run, with the counts it has
just read under lock, so the answer holds across every node of a cluster (rule 6 of
docs/architecture.md).
Both answers say why, as an enum for programs and a sentence for people: they are what the
decision log records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from pipeline import triggers
from pipeline.model import (
    Catchup,
    CircuitBreaker,
    Concurrency,
    Job,
    Policy,
    Schedule,
    Trigger,
)

# Fires a schedule makes by itself. The others come from a person or a program asking (a
# trigger, a parent run, a backfill, a rerun): they pass a pause and an open circuit.
AUTOMATIC = frozenset({Trigger.SCHEDULE, Trigger.CATCHUP, Trigger.FILE, Trigger.AFTER,
                       Trigger.REBOOT})


class Verdict(StrEnum):
    START = "start"  # run now
    QUEUE = "queue"  # wait until the job's active runs have ended
    REPLACE = "replace"  # stop the active runs; start once they are gone
    SKIP = "skip"  # no run: recorded as a skipped run
    NOT_MADE = "not made"  # no run and no skipped run: only the decision is recorded


class Reason(StrEnum):
    OVERLAP = "overlap"
    QUEUE_FULL = "queue full"
    MAX_ACTIVE = "max active"
    CIRCUIT_OPEN = "circuit open"
    PAUSED = "paused"
    DISABLED = "disabled"
    MISSED_WHILE_DOWN = "missed while down"
    MISSED_WHILE_STALLED = "missed while stalled"
    SUPERSEDED = "superseded"
    SHUTTING_DOWN = "shutting down"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: Reason | None = None
    detail: str | None = None  # one line for people, None when the verdict says it all

    @property
    def runs(self) -> bool:
        """Whether a run is (or will be) made of it."""
        return self.verdict in (Verdict.START, Verdict.QUEUE, Verdict.REPLACE)


START = Decision(Verdict.START)
QUEUE = Decision(Verdict.QUEUE)


@dataclass(frozen=True)
class Situation:
    """What the store knows about a job at the moment of deciding."""

    active: int = 0  # runs of the job running now (on any node), not counting the one decided
    waiting: int = 0  # runs of the job waiting in its queue ahead of the one decided
    failures: int = 0  # consecutive failed automatic runs since the last success or reset
    circuit_opened_at: datetime | None = None  # when the failure that opened it ended
    paused: bool = False


def circuit_open(breaker: CircuitBreaker | None, failures: int, opened_at: datetime | None,
                 now: datetime) -> bool:
    """Whether ``breaker`` holds the job's automatic fires back at ``now``."""
    if breaker is None or failures < breaker.after or opened_at is None:
        return False
    return now < opened_at + timedelta(seconds=breaker.cooldown)


def decide(*, trigger: Trigger, concurrency: Concurrency, situation: Situation,
           now: datetime, breaker: CircuitBreaker | None = None, enabled: bool = True,
           waiting: bool = False, backlog: bool = False, stopping: bool = False,
           force: bool = False, parallel: int = 1) -> Decision:
    """What becomes of one run that may start now.

    ``waiting``: the run is already in the job's queue (its verdict was ``queue`` or
    ``replace``, or it was queued again after its node was lost); it starts once nothing of
    the job is active (under ``allow``: once under ``max_active``), and is never skipped for it.
    ``backlog``: a missed fire caught up under ``catchup: all``; it queues behind the job's
    other runs whatever the overlap policy says (the policy is about a new fire meeting a run,
    not about a backlog); ``parallel`` of a backlog may be active at once (a backfill's
    ``--max-parallel``). ``stopping``: the daemon is shutting down. ``force``: an operator
    insists (``pipeline run --force``): it starts beside whatever runs.
    """
    if stopping:
        return Decision(Verdict.SKIP, Reason.SHUTTING_DOWN, "the daemon is shutting down")
    if force:
        return START
    if backlog:  # first in, first out, ``parallel`` at a time
        return START if situation.active + situation.waiting < max(parallel, 1) else QUEUE
    if waiting and concurrency.policy is Policy.ALLOW:
        # Only a run queued again after its node was lost waits under allow. It was admitted
        # once, beside the job's other runs: only max_active holds it back (it is never
        # skipped), or an every-second job, never idle, would never run it again.
        limit = concurrency.max_active
        return START if limit is None or situation.active < limit else QUEUE
    if waiting:  # first in, first out: the runs queued ahead go first
        return START if situation.active == 0 and situation.waiting == 0 else QUEUE
    if trigger in AUTOMATIC:
        if not enabled:
            return Decision(Verdict.NOT_MADE, Reason.DISABLED, "the job is disabled")
        if situation.paused:
            return Decision(Verdict.NOT_MADE, Reason.PAUSED, "the job is paused")
        if circuit_open(breaker, situation.failures, situation.circuit_opened_at, now):
            return Decision(Verdict.SKIP, Reason.CIRCUIT_OPEN, "circuit open")
    busy = situation.active > 0 or situation.waiting > 0
    policy = concurrency.policy
    if not busy:
        return START
    if policy is Policy.QUEUE:
        if situation.waiting >= concurrency.max_queued:
            return Decision(Verdict.SKIP, Reason.QUEUE_FULL,
                            f"queue full ({concurrency.max_queued} waiting)")
        return QUEUE
    if policy is Policy.FORBID:
        return Decision(Verdict.SKIP, Reason.OVERLAP,
                        "a previous run is still active (concurrency: forbid)")
    if policy is Policy.REPLACE:
        return Decision(Verdict.REPLACE) if situation.active else QUEUE
    if concurrency.max_active is not None and situation.active >= concurrency.max_active:
        return Decision(Verdict.SKIP, Reason.MAX_ACTIVE,
                        f"{concurrency.max_active} runs already active (max_active)")
    return START


def fits(runs_on: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether a node carrying ``labels`` may run a job that asks for ``runs_on``: it carries
    each of those labels, with the same value."""
    return all(labels.get(k) == v for k, v in runs_on.items())


# -- catching up ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Missed:
    """A fire that was not made on time, and what the catch-up policy makes of it."""

    fire: datetime
    caught_up: bool  # True: it runs now (trigger catchup); False: not made
    reason: Reason | None = None
    detail: str | None = None


@dataclass(frozen=True)
class CatchUp:
    on_time: tuple[datetime, ...]  # run as scheduled (the last may be a little late)
    missed: tuple[Missed, ...]  # in fire order
    backlog: bool  # `catchup: all` with missed fires: every run of them queues in order


def catch_up(fires: Sequence[datetime], *, now: datetime, started: datetime,
             catchup: Catchup, misfire_grace: float) -> CatchUp:
    """Sort ``fires`` (ascending, all due by ``now`` or coming) into on time and missed.

    ``started``: when this daemon began firing; a fire before it came due while no daemon
    ran. Of several fires due at once while we ran, only the newest can be on time, and only
    within ``misfire_grace`` seconds.
    """
    coming = [f for f in fires if f > now]
    down = [f for f in fires if f < started]
    past = [f for f in fires if started <= f <= now]
    late, on_time = down + past[:-1], past[-1:]
    if on_time and (now - on_time[0]).total_seconds() > misfire_grace:
        late, on_time = late + on_time, []
    missed: list[Missed] = []
    for index, fire in enumerate(late):
        last = index == len(late) - 1
        if catchup is Catchup.ALL or (catchup is Catchup.LATEST and last and not on_time):
            missed.append(Missed(fire, True))
        elif catchup is Catchup.NONE:
            why = "the daemon was down" if fire < started else "the daemon stalled"
            missed.append(Missed(fire, False,
                                 Reason.MISSED_WHILE_DOWN if fire < started
                                 else Reason.MISSED_WHILE_STALLED,
                                 f"missed while {why} (catchup: none)"))
        else:
            missed.append(Missed(fire, False, Reason.SUPERSEDED,
                                 "missed; superseded by a later fire (catchup: latest)"))
    return CatchUp(tuple([*on_time, *coming]), tuple(missed),
                   catchup is Catchup.ALL and bool(late))


def catchup_of(job: Job) -> Catchup:
    # A job with several schedules takes the most generous catch-up among them.
    order = [Catchup.NONE, Catchup.LATEST, Catchup.ALL]
    return max((s.catchup for s in job.schedules), key=order.index, default=Catchup.LATEST)


def misfire_grace_of(job: Job) -> float:
    return max((s.misfire_grace for s in job.schedules), default=60.0)


# -- fires a calendar removes ---------------------------------------------------------------

def has_calendar(schedules: Sequence[Schedule]) -> bool:
    """Whether a calendar (``exclude:``, ``active:``) may remove fires of ``schedules``."""
    return any(s.calendar and s.kind.timed for s in schedules)


def stretch_starts(schedules: Sequence[Schedule], fires: Sequence[datetime], *,
                   after: datetime, in_stretch: bool,
                   horizon: datetime) -> tuple[list[triggers.Removed], bool]:
    """The first removed fire of each stretch that begins in (``after``, ``horizon``], where
    ``fires`` are the fires made, and whether the last fire dealt with is then in a stretch
    (``in_stretch``: one is under way at ``after``). Between two made fires there are only
    removed ones, so a stretch can begin only right after ``after`` (unless one is under way)
    or a made fire."""
    if not has_calendar(schedules):
        return [], False
    found: list[triggers.Removed] = []
    for made in [*fires, None]:
        if not in_stretch:
            first = triggers.removed_after(schedules, after)
            if first is not None and first.fire <= (horizon if made is None else made):
                found.append(first)
                in_stretch = True
        if made is not None:
            after, in_stretch = made, False
    return found, in_stretch


def stretch_detail(schedules: Sequence[Schedule], first: triggers.Removed) -> str:
    """The decision's detail for the first removed fire of a stretch: the calendar's rule,
    and, when more fires follow it unmade, until when (the rest are not recorded)."""
    if triggers.removed_after(schedules, first.fire) is None:
        return first.rule  # alone: the next fire is made
    made = triggers.next_fires(schedules, first.fire, 1)
    if not made:
        return f"{first.rule}; no fire is made after it"
    return (f"{first.rule}; no fire is made after it until "
            f"{made[0].isoformat(sep=' ', timespec='seconds')}")
