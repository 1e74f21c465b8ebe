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

from pipeline import triggers
from pipeline.errors import NotFound
from pipeline.events import RunQueued
from pipeline.model import Catchup, Job, Trigger, Version
from pipeline.policy import catchup_of
from pipeline.statedir import new_run_id
from pipeline.store import JobState, NodeInfo, Outcome, Store, StoredDecision


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
    spans = [(n.started_at, n.heartbeat_at if n.state.value != "alive" else None)
             for n in nodes if "scheduler" in n.roles and n.started_at is not None]
    if any(s <= at and (e is None or at <= e + timedelta(seconds=30)) for s, e in spans):
        return None
    before = [e for s, e in spans if e is not None and e < at]
    after = [s for s, _ in spans if s > at]
    return (max(before) if before else None, min(after) if after else None)


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
    if not fires:
        return f"will not fire again: {'; '.join(triggers.describe(s) for s in job.schedules)}"
    zone = job.schedules[0].timezone
    text = (f"next {_at(fires[0], zone)}: "
            + "; ".join(f"{triggers.describe(s)}, {s.timezone}" for s in job.schedules))
    if state is not None and state.paused_at is not None:
        text += (f"; but paused since {_at(state.paused_at, zone)} by {state.paused_by}"
                 + (f": {state.paused_reason}" if state.paused_reason else "")
                 + " (it is not made until resumed)")
    if problems:
        text += f"; its file is invalid ({problems[0]}): the last good version fires"
    return text
