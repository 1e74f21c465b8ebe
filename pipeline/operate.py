"""What operators do to jobs, through the store: pause, resume, reset a circuit, ask why.

Each verb writes the state and returns; a running daemon (every node of a cluster) acts on it
at its next claim, within a second, so the CLI and the API share these functions and need no
daemon. ``explain`` turns a job's decision log into the lines ``pipeline why`` prints.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from pipeline import schedule_words, triggers
from pipeline.errors import NotFound, PipelineError, did_you_mean
from pipeline.events import RunQueued
from pipeline.model import Catchup, Job, Schedule, ScheduleKind, Trigger
from pipeline.policy import catchup_of, fits
from pipeline.runrecords import RunRecord, Version
from pipeline.statedir import new_run_id
from pipeline.store import Store
from pipeline.store.records import JobState, NodeInfo, NodeState, Outcome, StoredDecision


def operator() -> str:
    """Who is asking, for the record: ``user@host``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname().split('.')[0]}"


def known_jobs(store: Store, loaded: Collection[str], names: Sequence[str]) -> list[str]:
    """``names`` checked against the jobs the files and the store know; raises NotFound."""
    known = set(loaded) | set(store.job_states())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise NotFound(f"unknown job{'s' if len(unknown) > 1 else ''} "
                       f"{', '.join(map(repr, unknown))}")
    return list(dict.fromkeys(names))


def pause(store: Store, names: Sequence[str], *, by: str, reason: str | None,
          now: datetime) -> None:
    store.pause(names, by=by, reason=reason, at=now)


def resume(store: Store, names: Sequence[str], *, jobs: Mapping[str, Job], catchup: bool,
           now: datetime) -> list[str]:
    """Resume ``names``. Fires due while paused stay not made, unless ``catchup``: then the
    job's own catch-up policy applies to them (latest: the newest runs; all: every one; none:
    none), as runs any node takes now. Returns the ids of the runs made."""
    states = store.job_states()
    made: list[str] = []
    if catchup:
        for name in names:
            state, job = states.get(name), jobs.get(name)
            if state is None or state.paused_at is None or job is None:
                continue
            missed = sorted({d.fire_time for d in store.decisions(name, since=state.paused_at,
                                                                  limit=100_000)
                             if d.outcome is Outcome.NOT_MADE and d.reason == "paused"
                             and d.fire_time is not None})
            policy = catchup_of(job)
            chosen = (missed if policy is Catchup.ALL else missed[-1:]
                      if policy is Catchup.LATEST else [])
            events = [RunQueued(new_run_id(now), name, Trigger.CATCHUP, now, fire_time=fire,
                                version=Version(sha256=job.sha256), document=job.document,
                                runs_on=job.runs_on, backlog=policy is Catchup.ALL)
                      for fire in chosen]
            refused = store.record(events)
            made.extend(e.run_id for e in events if e.run_id not in refused)
    store.resume(names)
    return made


# -- why ---------------------------------------------------------------------------------------

TICK = timedelta(microseconds=1)  # the store keeps times to the microsecond


def _when(decision: StoredDecision) -> datetime:
    return decision.fire_time or decision.decided_at


def decisions_near(store: Store, job: str, at: datetime, count: int, *,
                   since: datetime | None = None,
                   until: datetime | None = None) -> list[StoredDecision]:
    """The ``count`` decisions about ``job`` nearest ``at`` (by their fire time, else when
    they were taken) within [``since``, ``until``], nearest first.

    They are among the ``count`` newest at or before ``at`` and the ``count`` oldest after
    it; taking the newest of the whole range instead shows what came a day later.
    """
    before = store.decisions(job, since=since, until=at if until is None else min(at, until),
                             limit=count)
    start = at + TICK if since is None else max(at + TICK, since)
    # As many after as before most likely lie as far after as those lie before.
    span = at - _when(before[-1]) if len(before) == count else None
    after = _oldest(store, job, since=start, until=until, count=count, span=span)
    return sorted([*before, *after], key=lambda d: (abs(_when(d) - at), _when(d)))[:count]


def _oldest(store: Store, job: str, *, since: datetime, until: datetime | None, count: int,
            span: timedelta | None = None) -> list[StoredDecision]:
    """The ``count`` oldest decisions about ``job`` in [``since``, ``until``], oldest first.

    The store gives the newest of a range first (``Store.decisions``), so the range is read
    in windows from its start, the first ``span`` long (default: all of it): a window that
    holds more than are still wanted is halved until it holds no more and taken whole, and
    the next one is twice as long. Each look is one query; a handful when ``span`` guesses
    well, a few dozen at worst.
    """
    if until is None:  # the range ends with the newest decision there is
        newest = store.decisions(job, since=since, limit=1)
        if not newest:
            return []
        until = _when(newest[0])
    found: list[StoredDecision] = []
    start = since
    end = until if span is None else min(until, start + max(span, TICK))
    while len(found) < count and start <= until:
        wanted = count - len(found)
        got = store.decisions(job, since=start, until=end, limit=wanted + 1)
        if len(got) > wanted and end - start > TICK:
            end = start + (end - start) / 2
            continue
        # All of [start, end], oldest first (more than wanted only at one instant).
        found.extend(reversed(got[-wanted:]))
        start, end = end + TICK, min(until, end + 2 * (end - start + TICK))
    return found


def _at(moment: datetime | None, zone: Any) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(zone).isoformat(sep=" ", timespec="seconds")


def explain(name: str, job: Job | None, *, decisions: Sequence[StoredDecision],
            state: JobState | None, nodes: Sequence[NodeInfo], now: datetime,
            at: datetime | None = None, problems: Sequence[str] = ()) -> list[str]:
    """The lines of ``pipeline why``: the decisions (oldest first), what no daemon saw, and
    why the next fire is when it is."""
    zone = job.schedules[0].timezone if job and job.schedules else None
    lines: list[str] = []
    names = {n.id: n.name for n in nodes}
    for d in sorted(decisions, key=lambda d: (d.fire_time or d.decided_at, d.decided_at)):
        when = _at(d.fire_time or d.decided_at, zone)
        what = {Outcome.FIRED: f"fired: run {d.run_id}" if d.run_id else "fired"}.get(
            d.outcome, f"{d.outcome}: {d.detail or d.reason or ''}".rstrip(": "))
        late = ""
        if d.fire_time is not None and d.outcome is Outcome.FIRED:
            delay = (d.decided_at - d.fire_time).total_seconds()
            late = f", {delay:.1f}s after its instant" if delay >= 1.0 else ""
        node = f" (node {names.get(d.node or '', d.node)})" if d.node else ""
        lines.append(f"{when}  {what}{late}{node}")
    if at is not None:
        gap = _daemonless(nodes, at)
        if gap is not None:
            start, end = gap
            lines.append(f"no daemon was running from {_at(start, zone)} to "
                         f"{_at(end, zone) if end else 'now'}: fires due then were left to "
                         "the catch-up policy when one started")
        elif not decisions:
            lines.append(f"no decisions recorded around {_at(at, zone)}")
    elif not decisions:
        lines.append("no decisions recorded yet")
    lines.append(_next(name, job, state, now, problems))
    return lines


def _daemonless(nodes: Sequence[NodeInfo], at: datetime,
                ) -> tuple[datetime | None, datetime | None] | None:
    """When no scheduler node was alive at ``at``: the gap around it (None: one was)."""
    spans = [(n.started_at, _up_until(n))
             for n in nodes if "scheduler" in n.roles and n.started_at is not None]
    if any(s <= at and (e is None or at <= e) for s, e in spans):
        return None
    before = [e for s, e in spans if e is not None and e < at]
    after = [s for s, _ in spans if s > at]
    return (max(before) if before else None, min(after) if after else None)


def _up_until(node: NodeInfo) -> datetime | None:
    """Until when a node that started was up (None: it still is).

    One that left stopped then (``Store.leave`` stamps its heartbeat). One that was lost
    (killed, or its lease ran out) was alive at its last heartbeat and gone by the next
    renewal it missed: a node renews a third of the way through its lease (``nodes.Lease``).
    """
    if node.state is NodeState.ALIVE:
        return None
    end = node.heartbeat_at or node.started_at
    assert end is not None  # only nodes that started are asked
    if node.state is NodeState.LOST and node.heartbeat_at and node.expires_at:
        end += (node.expires_at - node.heartbeat_at) / 3
    return end


def _next(name: str, job: Job | None, state: JobState | None, now: datetime,
          problems: Sequence[str]) -> str:
    if job is None:
        return f"will not fire: no loaded job is named {name!r}" + (
            f" ({problems[0]})" if problems else "")
    if not job.schedules:
        return f"will not fire on its own: {job.file} has no schedule (it runs when triggered)"
    if not job.enabled:
        return f"will not fire: enabled: false in {job.file}"
    after = now if state is None or state.watermark is None else max(now, state.watermark)
    fires = triggers.next_fires(job.schedules, after, 1)
    zone = job.schedules[0].timezone
    # What the time leaves unsaid: events fire it too, or instead; or why there are no more.
    note = schedule_words.next_note(job.schedules, fires[0] if fires else None, after)
    if not fires:
        assert note is not None  # an enabled job with a schedule and no fire time has one
        text = note.words
    else:
        text = (f"next {_at(fires[0], zone)}: "
                + "; ".join(_with_zone(s) for s in job.schedules if s.kind.timed)
                + (f"; {note.words}" if note is not None else ""))
    if state is not None and state.paused_at is not None:
        text += (f"; but paused since {_at(state.paused_at, zone)} by {state.paused_by}"
                 + (f": {state.paused_reason}" if state.paused_reason else "")
                 + " (it is not made until resumed)")
    if problems:
        text += f"; its file is invalid ({problems[0]}): the last good version fires"
    return text


def _with_zone(schedule: Schedule) -> str:
    """``describe``'s words and the schedule's zone, once: a cron's words name it already."""
    words = triggers.describe(schedule)
    return words if schedule.kind is ScheduleKind.CRON else f"{words}, {schedule.timezone}"


# -- backfill and rerun ------------------------------------------------------------------------

MAX_BACKFILL = 10_000


class Refused(PipelineError):
    """A backfill or rerun that cannot be made as asked."""


def backfill_instants(job: Job, start: datetime, end: datetime) -> list[datetime]:
    """The job's scheduled instants in [start, end] (its schedule, exclusions and zone);
    raises ``Refused`` for an empty or an oversized range."""
    if end < start:
        raise Refused(f"--to ({end.isoformat()}) is before --from ({start.isoformat()})")
    if not job.schedules:
        raise Refused(f"job {job.name} has no schedule: it has no instants to backfill")
    instants, more = triggers.fires_between(job.schedules, start - timedelta(microseconds=1),
                                            end, limit=MAX_BACKFILL + 1)
    if more or len(instants) > MAX_BACKFILL:
        raise Refused(f"the range holds more than {MAX_BACKFILL:,} instants of {job.name}; "
                      "backfill it in parts")
    return sorted(instants)


def backfill(store: Store, job: Job, instants: Sequence[datetime], *, rerun: str,
             max_parallel: int, now: datetime, version: Version,
             ) -> tuple[list[str], list[tuple[datetime, RunRecord]]]:
    """One run per instant, trigger ``backfill``, any node takes them, ``max_parallel`` of
    the job's runs at a time, oldest first. An instant that already has a run is left alone
    unless ``rerun`` says ``all`` (or ``failed`` and that run did not succeed): its new run
    does not take the instant's identity, the first one keeps it. An instant without a run
    takes its identity, so when it later comes due (or is backfilled again) it is not fired
    twice. Returns the runs made and the instants left alone with their runs."""
    if not instants:
        return [], []
    have = store.fired(job.name, since=instants[0], until=instants[-1])
    events: list[RunQueued] = []
    left: list[tuple[datetime, RunRecord]] = []
    for instant in instants:
        existing = have.get(instant)
        again = existing is not None and (
            rerun == "all" or (rerun == "failed" and existing.status.finished
                               and existing.status.value != "succeeded"))
        if existing is not None and not again:
            left.append((instant, existing))
            continue
        events.append(RunQueued(new_run_id(now), job.name, Trigger.BACKFILL, now,
                                fire_time=instant, version=version, document=job.document,
                                runs_on=job.runs_on, backlog=True, parallel=max_parallel,
                                keyed=existing is None))
    refused = store.record(events)
    return [e.run_id for e in events if e.run_id not in refused], left


def rerun_reuse(job: Job, record: RunRecord, *, from_step: str | None,
                failed: bool) -> dict[str, dict[str, str]]:
    """What a rerun takes over from ``record``: every step outside the part it runs again,
    with its outputs. ``from_step``: that step and everything downstream of it run again;
    ``failed``: the failed, timed-out and cancelled steps and their downstream. Neither: all
    run again. Raises ``Refused`` for an unknown step or nothing to rerun."""
    steps = {s.id: s for s in job.steps}
    if from_step is not None and from_step not in steps:
        raise Refused(f"job {job.name} has no step {from_step!r}"
                      f"{did_you_mean(from_step, list(steps))}")
    previous = {s.id.split(".", 1)[0]: s for s in record.steps if "." not in s.id}
    if from_step is None and not failed:
        return {}
    if from_step is not None:
        roots = {from_step}
    else:
        roots = {sid for sid, s in previous.items() if sid in steps
                 and s.status.value in ("failed", "timed_out", "cancelled")}
        if not roots:
            raise Refused(f"run {record.id} has no failed step to run again")
    again = set(roots)
    changed = True
    while changed:  # everything downstream of a step that runs again runs again
        changed = False
        for step in job.steps:
            if step.id not in again and any(n in again for n in step.needs):
                again.add(step.id)
                changed = True
    reuse: dict[str, dict[str, str]] = {}
    for sid in steps:
        if sid in again:
            continue
        before = previous.get(sid)
        if before is None or before.status.value not in ("succeeded", "reused", "skipped"):
            raise Refused(f"step {sid} did not succeed in run {record.id} "
                          f"({before.status if before else 'not run'}); rerun from it, or "
                          "with --failed")
        reuse[sid] = dict(before.outputs)
    return reuse


def rerun(store: Store, record: RunRecord, job: Job, *, reuse: Mapping[str, Mapping[str, str]],
          now: datetime, version: Version) -> str:
    """A new run of ``record``'s job with its params and fire time, trigger ``rerun``, for
    any node to take; returns its id."""
    run_id = new_run_id(now)
    store.record([RunQueued(run_id, job.name, Trigger.RERUN, now, fire_time=record.fire_time,
                            params=record.params, version=version, document=job.document,
                            runs_on=job.runs_on, rerun_of=record.id, reuse=reuse)])
    return run_id


def runner_alive(store: Store, job: Job) -> bool:
    """Whether a live node would take ``job``'s runs (else the CLI runs them itself)."""
    return any(n.state.value == "alive" and "runner" in n.roles
               and fits(job.runs_on, n.labels)
               and not n.name.startswith("pipeline-run-")
               for n in store.nodes())
