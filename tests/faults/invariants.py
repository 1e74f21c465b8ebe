"""What must hold in a state directory after any crash, kill or restart (issue 6).

``check_invariants`` reads the state database and /proc the way any other process can, and
returns every violation it finds (it does not stop at the first), with a few counts that make
the harnesses' reports:

1. ``PRAGMA integrity_check`` is ``ok``.
2. Every run is finished, unheld (queued for any node), or held by a node that is alive in
   the store and whose process is alive (``nodes.identity_dead``). A run of a dead node must
   have been taken back (``interrupted``, or queued again) by the next start's recovery.
3. No fire has two runs: runs grouped by (job, fire instant), parsed, not only by text.
4. Every step of a finished run is finished (none left ``running`` or ``pending``).
5. Every fire in the window has a run or a recorded decision: for each job, every fire of its
   schedules between its first and its last recorded fire has a run or a row in the decision
   log. Fires missed while the daemon was down are no exception: the catch-up policy runs them
   or records them ``not made``.
6. Every log file a finished step's row references exists. The engine records a step's log path when
   the step starts, opens the file on the first byte of output (``StepLog``), and clears the
   path when the step ends without having written any (``StepFinished.no_log``); recovery does
   the same for a step a crash cut off before it printed. ``stale_interrupted_logs=True``
   tolerates such steps (counted in ``absent_logs``), for state left by older releases.
7. No process of a finished run is alive: no live process carries ``PIPELINE_RUN_ID`` of a
   run that is finished (``process.processes_of_run``, done as one scan of /proc).
8. The next fire is on time after each (re)start: for each daemon life that served, the first
   fire of each ``punctual`` job after it was ready started within ``tolerance`` seconds of its
   instant (if that life lived that long). A skipped run did not start, though its row has a
   ``started_at`` (when the skip was decided). A punctual job must be one whose policies never
   skip that fire: see ``harness.crash_jobs``.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pipeline import jobset, process, triggers
from pipeline.model import Job
from pipeline.nodes import identity_dead
from pipeline.store.records import INTERRUPTED_RUNNING

from .driver import open_db, parse_time, scan_environ

ACTIVE = ("queued", "running")
FINISHED_STEP = ("succeeded", "failed", "timed_out", "cancelled", "skipped")


@dataclass(frozen=True)
class Served:
    """A span during which one daemon served (ready) until it ended (None: still serving)."""

    ready_at: datetime
    ended_at: datetime | None


@dataclass
class Report:
    violations: list[str] = field(default_factory=list)
    runs: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    steps: int = 0
    fires_checked: int = 0
    absent_logs: int = 0  # referenced by a step a crash interrupted, never made
    lateness: list[float] = field(default_factory=list)  # first fire after each start, seconds

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(self.by_status.items()))
        late = f"; first fire after a start: max {max(self.lateness):.3f}s" \
            if self.lateness else ""
        return (f"{self.runs} runs ({statuses}), {self.steps} steps, {self.fires_checked} fires "
                f"checked, {self.absent_logs} interrupted steps without their log file{late}")


def load_jobs(jobs_dir: Path) -> dict[str, Job]:
    return dict(jobset.load_jobs([jobs_dir]).jobs)


def check_invariants(state_dir: Path, jobs: Path | dict[str, Job], *,
                     served: Iterable[Served] = (), punctual: Sequence[str] = (),
                     stale_interrupted_logs: bool = False, tolerance: float = 1.0,
                     settle: float = 2.0) -> Report:
    """Check the invariants of the module docstring; every violation goes in the report.

    ``jobs`` is the jobs directory (or its loaded jobs), for the schedules. ``served`` and
    ``punctual``: the daemon lives and the jobs whose first fire after each must be on time.
    ``settle``: how long a finished run's processes may take to disappear (a SIGKILL is not
    instantaneous).
    """
    loaded = load_jobs(jobs) if isinstance(jobs, Path) else jobs
    report = Report()
    with open_db(state_dir) as conn:
        integrity = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        conn.execute("BEGIN")  # one snapshot for everything below
        runs = [dict(r) for r in conn.execute("SELECT * FROM runs ORDER BY queued_at, id")]
        steps = [dict(r) for r in conn.execute("SELECT * FROM steps ORDER BY seq")]
        nodes = {r["id"]: dict(r) for r in conn.execute("SELECT * FROM nodes")}
        decided = [(r["job"], r["fire_time"]) for r in conn.execute(
            "SELECT job, fire_time FROM decisions WHERE fire_time IS NOT NULL")]
        conn.execute("COMMIT")
    if integrity != ["ok"]:
        report.violations.append(f"integrity_check: {integrity[:5]}")
    report.runs = len(runs)
    report.steps = len(steps)
    report.by_status.update(r["status"] for r in runs)
    by_id = {r["id"]: r for r in runs}

    # 2. Active runs are held by a live node (or by nobody, for any node to take).
    verdicts: dict[str, bool] = {}
    for run in runs:
        if run["status"] in ACTIVE and run["node"] is not None:
            node = run["node"]
            if node not in verdicts:
                row = nodes.get(node)
                verdicts[node] = (row is not None and row["state"] == "alive"
                                  and not identity_dead(row["identity"] or ""))
            if not verdicts[node]:
                report.violations.append(
                    f"run {run['id']} ({run['job']}) is {run['status']} but its node "
                    f"{node} is dead")

    # 3. One run per fire (a scheduled fire's identity is its key; manual runs have none).
    fires: dict[tuple[str, datetime], list[str]] = defaultdict(list)
    for run in runs:
        if run["fire_key"] is not None:
            fires[(run["job"], _time(run["fire_key"]))].append(run["id"])
    for (job, at), ids in fires.items():
        if len(ids) > 1:
            report.violations.append(f"fire {job}@{at.isoformat()} has {len(ids)} runs: {ids}")

    # 4. Finished runs have finished steps.
    for step in steps:
        run = by_id.get(step["run_id"])
        if run is not None and run["status"] not in ACTIVE \
                and step["status"] not in FINISHED_STEP:
            report.violations.append(f"step {step['step_id']} of finished run {run['id']} "
                                     f"({run['status']}) is {step['status']}")

    # 5. Every fire in the window has a run or a decision.
    by_job: dict[str, set[datetime]] = defaultdict(set)
    for job, at in fires:
        by_job[job].add(at)
    made = {job: set(found) for job, found in by_job.items()}
    for job, text in decided:
        by_job[job].add(_time(text))
    for name, recorded in sorted(by_job.items()):
        job = loaded.get(name)
        if job is None or not job.schedules:
            continue
        if not made.get(name):
            continue
        first, last = min(made[name]), max(made[name])
        expected, _ = triggers.fires_between(job.schedules, first - timedelta(microseconds=1),
                                             last, limit=10_000_000)
        report.fires_checked += len(expected)
        missing = [f for f in expected if f not in recorded]
        if missing:
            shown = ", ".join(f.isoformat() for f in missing[:5])
            report.violations.append(f"job {name}: {len(missing)} of {len(expected)} fires "
                                     f"between its first and last have no row: {shown}")

    # 6. Referenced logs exist.
    for step in steps:
        if step["status"] not in FINISHED_STEP:
            continue  # under way: its first output may still be to come
        if not step["log"] or (state_dir / step["log"]).exists():
            continue
        if stale_interrupted_logs and step["error"] == INTERRUPTED_RUNNING:
            report.absent_logs += 1
            continue
        report.violations.append(
            f"step {step['step_id']} ({step['status']}) of run {step['run_id']} references "
            f"{step['log']}, which does not exist")

    # 7. Nothing of a finished run is alive.
    finished = {r["id"] for r in runs if r["status"] not in ACTIVE}
    deadline = time.monotonic() + settle
    while True:
        leftovers = {pid: run_id for pid, run_id in scan_environ("PIPELINE_RUN_ID").items()
                     if run_id in finished}
        if not leftovers or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for run_id in sorted(set(leftovers.values())):
        alive = process.processes_of_run(run_id)
        if alive:
            report.violations.append(
                f"run {run_id} ({by_id[run_id]['job']}, {by_id[run_id]['status']}) still has "
                f"live processes: {alive}")

    # 8. On time after each start.
    for span in served:
        for name in punctual:
            job = loaded.get(name)
            if job is None:
                continue
            nxt = triggers.next_fires(job.schedules, span.ready_at, 1)
            if not nxt:
                continue
            fire = nxt[0]
            limit = fire + timedelta(seconds=tolerance)
            if span.ended_at is not None and span.ended_at < limit:
                continue  # that daemon did not live long enough to be judged
            ids = fires.get((name, fire))
            run = by_id[ids[0]] if ids else None
            # A skipped run has a started_at too: when the skip was decided. It did not start.
            started = _time(run["started_at"]) if run and run["started_at"] \
                and run["status"] != "skipped" else None
            if started is None:
                row = None if run is None else run["status"] + (
                    f": {run['reason']}" if run["reason"] else "")
                report.violations.append(
                    f"job {name}: the first fire after the start at "
                    f"{span.ready_at.isoformat()} ({fire.isoformat()}) did not start "
                    f"(row: {row})")
                continue
            late = (started - fire).total_seconds()
            report.lateness.append(late)
            if late > tolerance:
                report.violations.append(
                    f"job {name}: the first fire after the start at "
                    f"{span.ready_at.isoformat()} started {late:.3f}s late")
    return report


def _time(text: Any) -> datetime:
    value = parse_time(text)
    assert value is not None
    return value


def assert_invariants(state_dir: Path, jobs: Path | dict[str, Job], **kwargs: Any) -> Report:
    """``check_invariants``, raising AssertionError with every violation."""
    report = check_invariants(state_dir, jobs, **kwargs)
    if report.violations:
        raise AssertionError("invariants violated:\n  " + "\n  ".join(report.violations)
                             + f"\n({report.summary()})")
    return report
