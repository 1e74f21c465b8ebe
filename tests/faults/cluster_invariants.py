"""What must hold in a cluster after any fault (issue 11), proven from the store AND from what
the steps really did.

``check_cluster`` reads the store (one snapshot), the side-effect file the steps append to
(``cluster.EFFECT``), each node's log and /proc, and returns every violation it finds:

1. **No fire doubled.** One run per (job, instant) in the store, instants compared parsed. From
   the side effects: every attempt that started belongs to its fire's run (never two run ids for
   one instant, never a run the store does not know or recorded as skipped), and one run's step
   started more than once only as a documented retry after a node loss: the job says
   ``on_node_loss: retry``, the store counts that many attempts, and every attempt but the last
   ran on a node the harness killed, froze or cut off after it started.
2. **No fire missed.** Every instant of every job between its first and its last recorded fire
   has a run or a recorded decision (``decisions``), and each job's newest fire is recent (the
   cluster still fires). Every run that succeeded has its step's side effect, complete.
3. **Never two active attempts of one run**, nor two active runs of a ``forbid`` job: no attempt
   found its run's (or its forbid job's) lock taken, and the attempts' start and end times
   (``/proc/uptime``, the same clock on every node, faked or not) do not overlap.
4. **No run held by a dead node**: every active run is held by nobody or by a node alive in the
   store whose process is alive (given ``settle``: a lost node's runs are taken back within
   lease + 5 s); nor forgotten by a live one: a queued run a node holds (not waiting behind
   its job's others) starts within ``settle`` of its time.
5. **No orphan process**: no live process carries ``PIPELINE_RUN_ID`` of a finished run.
6. **Logs complete**: every finished step that wrote a log has it in the store, whole and equal
   to the file its node wrote, or (its node was lost before shipping the end) in that node's
   state directory; and ``pipeline logs`` on another node prints it.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pipeline import jobset, triggers
from pipeline.model import Job
from pipeline.statedir import log_relpath

from .cluster import Cluster, alive, uptime
from .driver import scan_environ

ACTIVE = ("queued", "running")
RECENT = 4.0  # s: the newest fire of an every-second job is at most this old
SHIP_GRACE = 3.0  # s: a live node ships a log's end within this of its run's end


@dataclass(frozen=True)
class Attempt:
    """One attempt of a step, from the side-effect file."""

    job: str
    run_id: str
    step_attempt: str
    fire: datetime | None
    node: str
    start: float  # uptime
    locks: str
    end: float | None = None
    how: str | None = None  # done, term; None: no end line (SIGKILL)


@dataclass
class ClusterReport:
    violations: list[str] = field(default_factory=list)
    runs: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    attempts: int = 0
    retried: int = 0  # runs whose step ran again after a node loss
    fires_checked: int = 0
    logs_checked: int = 0
    logs_local: int = 0  # read from a lost node's state directory, not the store
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(self.by_status.items()))
        return (f"{self.runs} runs ({statuses}), {self.attempts} step attempts ({self.retried} "
                f"runs retried after a node loss), {self.fires_checked} fires checked, "
                f"{self.logs_checked} logs checked ({self.logs_local} from a lost node's "
                f"disk), in {self.seconds:.1f}s")


def read_effects(path: Path) -> list[Attempt]:
    starts: dict[tuple[str, str, str], Attempt] = {}
    ordered: list[tuple[str, str, str]] = []
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) < 8 or parts[0] not in ("start", "end"):
            continue  # a line cut short by a killed step
        kind, job, run_id, attempt, fire, node, up, extra = parts[:8]
        key = (run_id, attempt, node)
        if kind == "start":
            while key in starts:  # the same run and step attempt again on the same node
                key = (*key[:2], key[2] + "'")
            starts[key] = Attempt(job, run_id, attempt, _parse(fire), node, float(up), extra)
            ordered.append(key)
        else:
            # The end of the latest start of this attempt on this node that has none yet.
            found = [k for k in ordered if k[:2] == key[:2] and k[2].rstrip("'") == node
                     and starts[k].end is None]
            if found:
                k = found[-1]
                old = starts[k]
                starts[k] = Attempt(old.job, old.run_id, old.step_attempt, old.fire, old.node,
                                    old.start, old.locks, float(up), extra)
    return [starts[k] for k in ordered]


def _parse(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def snapshot(url: str) -> dict[str, list[dict[str, Any]]]:
    """Runs, steps, nodes and decisions, as one consistent snapshot."""
    with (psycopg.connect(url, autocommit=True, connect_timeout=10,
                          row_factory=dict_row) as conn, conn.transaction()):
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return {
            "runs": list(conn.execute("SELECT * FROM runs ORDER BY queued_at, id")),
            "steps": list(conn.execute(
                "SELECT run_id, step_id, status, attempt, log, log_size, error, "
                "started_at, finished_at FROM steps ORDER BY seq")),
            "nodes": list(conn.execute("SELECT * FROM nodes")),
            "decisions": list(conn.execute(
                "SELECT job, fire_time, outcome FROM decisions WHERE fire_time IS NOT NULL")),
            "chunks": list(conn.execute(
                "SELECT run_id, step_id, start, data FROM log_chunks ORDER BY start")),
            "now": [conn.execute("SELECT clock_timestamp() AS now").fetchone() or {}],
        }


def shipped_logs(state: dict[str, list[dict[str, Any]]]) -> dict[tuple[str, str], bytes]:
    """Every shipped log of the snapshot, as far as it is contiguous from its start."""
    logs: dict[tuple[str, str], bytearray] = defaultdict(bytearray)
    for chunk in state["chunks"]:
        out = logs[(chunk["run_id"], chunk["step_id"])]
        if chunk["start"] > len(out):
            continue  # after a hole
        out[chunk["start"]:chunk["start"] + len(chunk["data"])] = bytes(chunk["data"])
    return {key: bytes(value) for key, value in logs.items()}


def check_cluster(cluster: Cluster, *, settle: float | None = None,
                  cli_logs: int = 1) -> ClusterReport:
    """Check the invariants of the module docstring; every violation goes in the report.

    ``settle``: how long a lost node's runs and a finished run's processes may take to go
    (default lease + 5 s). ``cli_logs``: how many finished runs' logs to print with
    ``pipeline logs`` from another node's state directory.
    """
    t0 = time.monotonic()
    settle = cluster.lease + 5 if settle is None else settle
    report = ClusterReport()
    jobs: dict[str, Job] = dict(jobset.load_jobs([cluster.jobs]).jobs)

    # 4 first: wait (up to `settle`) for the store to take back what lost nodes held; the
    # rest is judged on the state that follows.
    deadline = time.monotonic() + settle
    while True:
        taken = uptime()  # a step that started before this was claimed in the snapshot
        state = snapshot(cluster.url)
        held = _held_by_dead(cluster, state, settle)
        if not held or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    report.violations += held
    runs = state["runs"]
    by_id = {r["id"]: r for r in runs}
    report.runs = len(runs)
    report.by_status.update(r["status"] for r in runs)
    # Read after the snapshot, so that a run the snapshot says succeeded has its step's end
    # here; but a step may have started since (its run claimed after the snapshot was
    # taken): only those that started before it are held against the store's records.
    attempts = read_effects(cluster.effects)
    report.attempts = len(attempts)

    _fires_once(report, runs, [a for a in attempts if a.start < taken], jobs, by_id, cluster)
    _fires_made(report, state, jobs, attempts, by_id)
    _no_overlap(report, attempts, jobs)
    _no_orphans(report, runs, settle=2.0)
    _logs(report, cluster, state, by_id, attempts, cli_logs)
    cluster.checked += 1
    report.seconds = time.monotonic() - t0
    return report


# -- 1. no fire doubled ------------------------------------------------------------------------

def _fires_once(report: ClusterReport, runs: list[dict[str, Any]], attempts: list[Attempt],
                jobs: dict[str, Job], by_id: dict[str, dict[str, Any]],
                cluster: Cluster) -> None:
    fires: dict[tuple[str, datetime], list[str]] = defaultdict(list)
    for run in runs:
        if run["fire_key"] is not None:
            fires[(run["job"], datetime.fromisoformat(run["fire_key"]))].append(run["id"])
    for (job, at), ids in fires.items():
        if len(ids) > 1:
            report.violations.append(f"fire {job}@{at.isoformat()} has {len(ids)} runs: {ids}")
    seen: dict[tuple[str, datetime], set[str]] = defaultdict(set)
    per_run: dict[str, list[Attempt]] = defaultdict(list)
    for a in attempts:
        per_run[a.run_id].append(a)
        if a.fire is not None:
            seen[(a.job, a.fire)].add(a.run_id)
        run = by_id.get(a.run_id)
        if run is None:
            report.violations.append(f"a step of run {a.run_id} ({a.job}) ran on node {a.node}"
                                     " but the store has no such run")
        elif run["status"] == "skipped" or (run["status"] == "queued" and not run["attempt"]):
            report.violations.append(f"a step of run {a.run_id} ({a.job}) ran on node {a.node}"
                                     f" but the store says it is {run['status']}")
    for (job, at), ids in seen.items():
        if len(ids) > 1:
            report.violations.append(f"the step of fire {job}@{at.isoformat()} ran for "
                                     f"{len(ids)} different runs: {sorted(ids)}")
    lost = _losses(cluster)
    for run_id, found in per_run.items():
        if len(found) < 2:
            continue
        run = by_id.get(run_id)
        job = jobs.get(found[0].job)
        why = _retry_allowed(found, run, job, lost)
        if why:
            report.violations.append(f"the step of run {run_id} ({found[0].job}) started "
                                     f"{len(found)} times ({', '.join(a.node for a in found)}): "
                                     + why)
        else:
            report.retried += 1


def _losses(cluster: Cluster) -> dict[str, list[tuple[float, float]]]:
    """When each node was lost to the others (killed, frozen, cut off, or stalled: past
    two thirds of a lease, it may or may not have been found lost; every node, in a long
    database restart): uptime spans, per node name."""
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for fault in cluster.faults:
        if fault.node is not None and fault.kind in ("kill", "freeze", "stall", "cut"):
            spans[fault.node].append((fault.at, fault.until if fault.until else uptime()))
        elif fault.all_lost:  # a node found lost may learn it a renewal after the restart
            for name in cluster.nodes:
                spans[name].append((fault.at, (fault.until or uptime()) + cluster.lease))
    return spans


def _retry_allowed(found: list[Attempt], run: dict[str, Any] | None, job: Job | None,
                   lost: dict[str, list[tuple[float, float]]]) -> str | None:
    """Why these attempts of one run are not a documented retry after a node loss (None:
    they are)."""
    if job is None or not job.on_node_loss_retry:
        return "its job does not say on_node_loss: retry"
    if run is None or (run["attempt"] or 0) < len(found):
        return (f"the store counts {run['attempt'] if run else 0} attempts")
    for a in sorted(found, key=lambda x: x.start)[:-1]:
        # Lost while that attempt ran: a loss that began before (or as) it ended, and had
        # not ended before it started.
        if not any(start <= (a.end if a.end is not None else math.inf) + 0.5
                   and end >= a.start - 0.5 for start, end in lost.get(a.node, [])):
            return (f"its attempt on node {a.node} ({a.start:.2f}-{a.end or 0:.2f} {a.how}) was"
                    f" not cut short by a loss of that node (lost at "
                    f"{[round(x, 2) for x, _ in lost.get(a.node, [])]})")
    return None


# -- 2. no fire missed -------------------------------------------------------------------------

def _fires_made(report: ClusterReport, state: dict[str, list[dict[str, Any]]],
                jobs: dict[str, Job], attempts: list[Attempt],
                by_id: dict[str, dict[str, Any]]) -> None:
    made: dict[str, set[datetime]] = defaultdict(set)
    for run in state["runs"]:
        if run["fire_key"] is not None:
            made[run["job"]].add(datetime.fromisoformat(run["fire_key"]))
    decided: dict[str, set[datetime]] = defaultdict(set)
    for d in state["decisions"]:
        decided[d["job"]].add(datetime.fromisoformat(d["fire_time"]))
    now = state["now"][0]["now"]
    for name, job in sorted(jobs.items()):
        if not job.schedules:
            continue
        fired = made.get(name)
        if not fired:
            report.violations.append(f"job {name} has no fire at all")
            continue
        first, last = min(fired), max(fired)
        expected, _ = triggers.fires_between(job.schedules, first - timedelta(microseconds=1),
                                             last, limit=10_000_000)
        report.fires_checked += len(expected)
        recorded = fired | decided.get(name, set())
        missing = [f for f in expected if f not in recorded]
        if missing:
            shown = ", ".join(f.isoformat() for f in missing[:5])
            report.violations.append(f"job {name}: {len(missing)} of {len(expected)} fires "
                                     f"between its first and last have no run nor decision: "
                                     f"{shown}")
        if (now - last).total_seconds() > RECENT:
            report.violations.append(f"job {name}: its newest fire is {last.isoformat()}, "
                                     f"{(now - last).total_seconds():.1f}s ago: the cluster "
                                     "stopped firing it")
    complete = {a.run_id for a in attempts if a.how == "done"}
    for run in state["runs"]:
        if run["status"] in ("failed", "cancelled", "timed_out"):
            # The workload's steps always succeed: only a fault can end a run otherwise, and
            # then as interrupted (or retried), never as the step's own failure.
            steps = [f"{s['step_id']} {s['status']} ({s['error']})" for s in state["steps"]
                     if s["run_id"] == run["id"]]
            tried = [f"{a.node} {a.how or 'killed'}" for a in attempts if a.run_id == run["id"]]
            report.violations.append(f"run {run['id']} ({run['job']}) ended {run['status']}: "
                                     f"{run['reason']}; steps: {steps}; attempts: {tried}")
        if run["status"] == "succeeded" and run["id"] not in complete:
            report.violations.append(f"run {run['id']} ({run['job']}) succeeded but its step's "
                                     "side effect never completed")


# -- 3. never two active attempts --------------------------------------------------------------

def _no_overlap(report: ClusterReport, attempts: list[Attempt], jobs: dict[str, Job]) -> None:
    for a in attempts:
        if "busy" in a.locks:
            what = "another attempt of its run" if "run-busy" in a.locks else \
                "another run of its forbid job"
            report.violations.append(f"run {a.run_id} ({a.job}) started on node {a.node} while "
                                     f"{what} was still alive ({a.locks})")
    groups: dict[str, list[Attempt]] = defaultdict(list)
    for a in attempts:
        groups[f"run {a.run_id}"].append(a)
        job = jobs.get(a.job)
        if job is not None and str(job.concurrency.policy) == "forbid":
            groups[f"forbid job {a.job}"].append(a)
    for what, group in groups.items():
        group.sort(key=lambda x: x.start)
        for earlier, later in itertools.pairwise(group):
            if earlier.end is not None and earlier.end > later.start + 0.01:
                report.violations.append(
                    f"{what}: the attempt of {earlier.run_id} on {earlier.node} "
                    f"({earlier.start:.2f}-{earlier.end:.2f}) overlaps that of {later.run_id} "
                    f"on {later.node} (from {later.start:.2f})")


# -- 4. no run held by a dead node -------------------------------------------------------------

def _held_by_dead(cluster: Cluster, state: dict[str, list[dict[str, Any]]],
                  settle: float) -> list[str]:
    nodes = {n["id"]: n for n in state["nodes"]}
    dead_ids = set()
    for node in cluster.nodes.values():
        for life in node.lives:
            gone = life.ended is not None or life.pid is None or not alive(life.pid)
            if gone:
                dead_ids.update(life.ids)
    found = []
    for run in state["runs"]:
        if run["status"] not in ACTIVE or run["node"] is None:
            continue
        row = nodes.get(run["node"])
        if row is None or row["state"] != "alive":
            found.append(f"run {run['id']} ({run['job']}) is {run['status']}, held by node "
                         f"{run['node']}, which is {row['state'] if row else 'unknown'}")
        elif run["node"] in dead_ids:
            found.append(f"run {run['id']} ({run['job']}) is {run['status']}, held by node "
                         f"{row['name']} ({run['node']}), whose process is dead")
    # Held by a live node, and not started: a node that forgot its run (a fence) and kept it
    # from the others.
    now: datetime = state["now"][0]["now"]
    for run in state["runs"]:
        row = nodes.get(run["node"])
        if (run["status"] != "queued" or run["waiting"] or row is None
                or row["state"] != "alive" or run["node"] in dead_ids):
            continue
        due = datetime.fromisoformat(run["ready_at"] or run["fire_time"] or run["queued_at"])
        late = (now - due).total_seconds()
        if late > settle:
            found.append(f"run {run['id']} ({run['job']}) is queued {late:.1f}s past its time, "
                         f"held by node {row['name']} ({run['node']}), which does not start it")
    return found


# -- 5. no orphans -----------------------------------------------------------------------------

def _no_orphans(report: ClusterReport, runs: list[dict[str, Any]], *, settle: float) -> None:
    finished = {r["id"] for r in runs if r["status"] not in ACTIVE}
    deadline = time.monotonic() + settle
    while True:
        leftovers = {pid: run_id for pid, run_id in scan_environ("PIPELINE_RUN_ID").items()
                     if run_id in finished and alive(pid)}
        if not leftovers or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid, run_id in sorted(leftovers.items()):
        report.violations.append(f"process {pid} of finished run {run_id} is still alive")


# -- 6. logs -----------------------------------------------------------------------------------

def _logs(report: ClusterReport, cluster: Cluster, state: dict[str, list[dict[str, Any]]],
          by_id: dict[str, dict[str, Any]], attempts: list[Attempt], cli_logs: int) -> None:
    ran: dict[str, set[str]] = defaultdict(set)
    for a in attempts:
        ran[a.run_id].add(a.node)
    logs = shipped_logs(state)
    names = {n["id"]: n["name"] for n in state["nodes"]}
    holder_alive = {n["id"]: n["state"] == "alive" for n in state["nodes"]}
    printed = 0
    for step in state["steps"]:
        run = by_id.get(step["run_id"])
        if run is None or run["status"] in ACTIVE:
            continue
        if not step["log"]:
            # No log, the record says: then the step wrote none, on any node.
            relpath = log_relpath(run["job"], run["id"], step["step_id"])
            written = [n.name for n in cluster.nodes.values()
                       if (n.state / relpath).is_file() and (n.state / relpath).stat().st_size]
            if written or logs.get((run["id"], step["step_id"])):
                report.violations.append(
                    f"step {step['step_id']} of {run['id']} ({run['status']}) references no log"
                    f", but it wrote one ({'on ' + ', '.join(written) if written else ''}"
                    f"{' in the store' if not written else ''})")
            continue
        if step["finished_at"] is None:
            report.violations.append(f"step {step['step_id']} of finished run {run['id']} is "
                                     f"{step['status']}")
            continue
        node = cluster.nodes.get(names.get(run["node"], ""))
        local = node.state / step["log"] if node is not None else None
        report.logs_checked += 1
        if step["log_size"] is not None:
            data = logs.get((run["id"], step["step_id"]), b"")
            if len(data) != step["log_size"]:
                report.violations.append(f"the shipped log of {run['id']}/{step['step_id']} has "
                                         f"{len(data)} of its {step['log_size']} bytes")
            elif local is not None and local.exists() and local.read_bytes() != data \
                    and run["attempt"] <= 1:
                report.violations.append(f"the shipped log of {run['id']}/{step['step_id']} "
                                         f"differs from {local}")
            elif run["status"] == "succeeded" and b": done" not in data:
                report.violations.append(f"the shipped log of succeeded run {run['id']} lacks "
                                         f"its last line: {data!r}")
            elif printed < cli_logs and run["status"] == "succeeded":
                printed += 1
                _cli_log(report, cluster, run, data, ran.get(run["id"], set()))
        elif holder_alive.get(run["node"]) and _ago(state, run["finished_at"]) > SHIP_GRACE:
            report.violations.append(
                f"the log of {run['id']}/{step['step_id']} ({run['status']}) was never shipped "
                f"whole, though node {names.get(run['node'])} that ran it is alive")
        elif any((n.state / step["log"]).exists() for n in cluster.nodes.values()):
            report.logs_local += 1  # its node was lost before it shipped the end
        else:
            report.violations.append(f"the log of {run['id']}/{step['step_id']} ({run['status']})"
                                     " is neither in the store nor on any node's disk")


def _ago(state: dict[str, list[dict[str, Any]]], stamp: str | None) -> float:
    """Seconds from ``stamp`` to the snapshot (infinity for none)."""
    if stamp is None:
        return float("inf")
    now: datetime = state["now"][0]["now"]
    return (now - datetime.fromisoformat(stamp)).total_seconds()


def _cli_log(report: ClusterReport, cluster: Cluster, run: dict[str, Any], data: bytes,
             ran: set[str]) -> None:
    """``pipeline logs RUN`` from a node that ran no attempt of it: the store's copy, whole."""
    other = next((n for n in cluster.nodes.values() if n.name not in ran), None)
    if other is None:
        return
    done = subprocess.run([sys.executable, "-m", "pipeline", "logs", run["id"], "--store",
                           cluster.url, "--state-dir", str(other.state), "--jobs-dir",
                           str(other.jobs)], capture_output=True, timeout=60)
    if done.returncode != 0 or data not in done.stdout:
        report.violations.append(f"`pipeline logs {run['id']}` on node {other.name} exited "
                                 f"{done.returncode} and printed {done.stdout[-200:]!r} "
                                 f"{done.stderr[-300:]!r}, not the {len(data)} bytes shipped")
