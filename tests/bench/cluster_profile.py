"""Where a fire's time goes with three nodes on PostgreSQL, against one node on SQLite (issue 11).

The scenario is ``bin/bench --only cluster``'s load: 100 jobs every second, each one ``run:``
step that stamps its own clock, the fire time and its run id. For each contender, over a window
of whole seconds after a warm-up:

    cpu       CPU seconds per fire (utime + stime from /proc/PID/stat over the window) of each
              node, of the steps each node reaped (cutime + cstime), of PostgreSQL (the
              postmaster and every process under it, exited backends included), of this
              harness, and of the whole machine (/proc/stat), against the cores there are;
              load averages at the start and the end.
    timeline  per fire, from the store's own records: the claim (its transaction's clock,
              its commit), the start (its transaction's clock, its commit), the step's record
              (its clock, its commit) and the step's own clock. Commit times come from
              ``track_commit_timestamp`` and triggers that note each insert's transaction (a
              side table, ``probe``); SQLite has only the recorded clocks.
    nodes     which node claimed each run, which started it, and how the fires of a second
              spread over the nodes.
    waits     ``pg_stat_statements``: per statement, calls and time inside PostgreSQL per fire
              (lock waits and WAL flushes included); ``pg_stat_wal``'s flushes; and, sampled
              every ``--sample`` seconds, what the active backends waited on
              (``pg_stat_activity.wait_event``). With ``--lock-log``, PostgreSQL logs every lock
              wait longer than 5 ms (``log_lock_waits``, ``deadlock_timeout = 5ms``) and the
              waits are summed.

    .venv/bin/python -m tests.bench.cluster_profile [--seconds 30] [--only sqlite|pg]
        [--nodes 3] [--lock-log] [--sample 0.1] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import re
import shlex
import statistics
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from tests.bench import cluster, serve
from tests.bench.harness import (
    Children,
    Context,
    cpu_seconds,
    percentile,
    say,
    sleep_until_epoch,
)
from tests.postgres import Postgres, start_server, stop_server

TICK = os.sysconf("SC_CLK_TCK")
PROBE = """
CREATE TABLE IF NOT EXISTS probe (kind text, run_id text, node text, xid xid8,
                                  at timestamptz DEFAULT clock_timestamp());
CREATE OR REPLACE FUNCTION probe_claim() RETURNS trigger AS $$
BEGIN INSERT INTO probe (kind, run_id, node, xid) VALUES ('claim', NEW.id, NEW.node,
      pg_current_xact_id()); RETURN NULL; END $$ LANGUAGE plpgsql;
CREATE OR REPLACE FUNCTION probe_start() RETURNS trigger AS $$
BEGIN INSERT INTO probe (kind, run_id, node, xid) VALUES ('start', NEW.id, NEW.node,
      pg_current_xact_id()); RETURN NULL; END $$ LANGUAGE plpgsql;
CREATE OR REPLACE FUNCTION probe_step() RETURNS trigger AS $$
BEGIN INSERT INTO probe (kind, run_id, node, xid) VALUES ('step', NEW.run_id, NULL,
      pg_current_xact_id()); RETURN NULL; END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS probe_claim ON runs;
DROP TRIGGER IF EXISTS probe_start ON runs;
DROP TRIGGER IF EXISTS probe_step ON steps;
CREATE TRIGGER probe_claim AFTER INSERT ON runs FOR EACH ROW EXECUTE FUNCTION probe_claim();
CREATE TRIGGER probe_start AFTER UPDATE OF status ON runs FOR EACH ROW
    WHEN (OLD.status = 'queued' AND NEW.status = 'running') EXECUTE FUNCTION probe_start();
CREATE TRIGGER probe_step AFTER INSERT ON steps FOR EACH ROW EXECUTE FUNCTION probe_step();
"""


def command(marks: Path) -> str:
    return (f'echo "$(date +%s.%N) $PIPELINE_FIRE_TIME $PIPELINE_RUN_ID" >> '
            f'{shlex.quote(str(marks))}')


def write_jobs(directory: Path, n: int, marks: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    run = "'" + command(marks).replace("'", "''") + "'"
    for index in range(n):
        (directory / f"step-{index:04d}.yaml").write_text(
            f"name: step-{index:04d}\ndescription: stamps its own start\nschedule: every 1s\n"
            f"steps:\n  - id: stamp\n    run: {run}\n")


def read_marks(path: Path) -> dict[str, float]:
    found = {}
    for line in path.read_text(errors="replace").splitlines() if path.exists() else ():
        parts = line.split()
        if len(parts) == 3:
            with contextlib.suppress(ValueError):
                found[parts[2]] = float(parts[0])
    return found


# -- CPU -------------------------------------------------------------------------------------

def stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()


def own_and_reaped(pid: int) -> tuple[float, float]:
    f = stat_fields(pid)
    return (int(f[11]) + int(f[12])) / TICK, (int(f[13]) + int(f[14])) / TICK


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(stat_fields(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
    return found


def machine_busy() -> tuple[float, float]:
    """(busy, total) seconds of every CPU since boot (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / TICK, sum(values[:8]) / TICK


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class CpuWatch:
    """CPU seconds of the nodes, their steps, PostgreSQL, this harness and the machine."""

    nodes: dict[str, int]
    postmaster: int | None
    start: dict[str, float] = field(default_factory=dict)
    end: dict[str, float] = field(default_factory=dict)

    def read(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, pid in self.nodes.items():
            own, reaped = own_and_reaped(pid)
            out[f"node {name}"] = own
            out[f"steps of {name}"] = reaped
        if self.postmaster is not None:
            own, reaped = own_and_reaped(self.postmaster)
            live = 0.0
            for child in children_of(self.postmaster):
                with contextlib.suppress(OSError):
                    live += own_and_reaped(child)[0]
            out["postgresql"] = own + reaped + live
        out["harness"] = cpu_seconds(os.getpid())
        busy, total = machine_busy()
        out["machine busy"], out["machine total"] = busy, total
        return out

    def begin(self) -> None:
        self.start = self.read()

    def finish(self) -> None:
        self.end = self.read()

    def per_fire_ms(self, fires: int) -> dict[str, float]:
        return {k: 1000 * (self.end[k] - self.start[k]) / max(fires, 1) for k in self.start}


# -- sampling pg_stat_activity ---------------------------------------------------------------

class Sampler(threading.Thread):
    """What the nodes' active backends wait on, every ``every`` seconds until ``until``."""

    def __init__(self, url: str, every: float, until: float) -> None:
        super().__init__(daemon=True)
        self.url, self.every, self.until = url, every, until
        self.waits: Counter[str] = Counter()
        self.samples = 0

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while time.time() < self.until:
                rows = conn.execute(
                    "SELECT coalesce(wait_event_type || '/' || wait_event, 'CPU'), state, "
                    "left(query, 40) FROM pg_stat_activity WHERE application_name = 'pipeline' "
                    "AND state <> 'idle' AND pid <> pg_backend_pid()").fetchall()
                self.samples += 1
                for wait, state, query in rows:
                    if state == "idle in transaction":
                        wait = "idle in transaction (client's turn)"
                    self.waits[f"{wait} | {' '.join(query.split())}"] += 1
                time.sleep(self.every)


# -- one contender -----------------------------------------------------------------------------

@dataclass
class Result:
    name: str
    fires: int
    started: int
    load_start: str
    load_end: str
    cpu_ms: dict[str, float]
    stages: dict[str, list[float]]  # stage -> ms after the fire, per run
    spans: dict[str, list[float]]  # stage-to-stage, ms
    claimed_by: Counter[str]
    started_by: Counter[str]
    moved: int  # runs started by another node than the one that claimed them
    winners: Counter[int]  # per second of fires: how many nodes started runs of it
    statements: list[tuple[str, float, float, float]] = field(default_factory=list)
    waits: list[tuple[str, float]] = field(default_factory=list)
    wal: dict[str, float] = field(default_factory=dict)
    lock_waits: dict[str, float] = field(default_factory=dict)
    slices: dict[str, list[float]] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)  # per second of fires: the latest mark


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="microseconds")


def ts(text: Any) -> float | None:
    if text is None:
        return None
    if isinstance(text, datetime):
        return text.timestamp()
    return datetime.fromisoformat(str(text)).timestamp()


def contend(ctx: Context, pg: Postgres | None, count: int, jobs: int, seconds: int,
            sample: float) -> Result:
    name = "sqlite-1" if pg is None else f"pg-{count}"
    work = ctx.tmp / name
    marks = work / "marks"
    write_jobs(work / "jobs", jobs, marks)
    url = None if pg is None else cluster.database(pg, "profile")
    with cluster.open_nodes(ctx, work, work / "jobs", url, count, name) as nodes:
        if url is not None:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(PROBE)
        window = serve.Window(math.floor(time.time()) + 5, seconds, seconds)
        postmaster = None if pg is None else pg.pid()
        watch = CpuWatch({n: p.pid for n, p in zip(cluster.NAMES, nodes.procs, strict=False)},
                         postmaster)
        sampler = None
        lock_log_from = 0
        sleep_until_epoch(window.start - 0.5)
        load_start = loadavg()
        if url is not None:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("SELECT pg_stat_statements_reset()")
                conn.execute("SELECT pg_stat_reset_shared('wal')")
            if sample > 0:
                sampler = Sampler(url, sample, window.end - 0.5)
                sampler.start()
            lock_log_from = len(pg.log())
        watch.begin()
        sleep_until_epoch(window.end - 0.5)
        watch.finish()
        load_end = loadavg()
        statements: list[tuple[str, float, float, float]] = []
        wal: dict[str, float] = {}
        if url is not None:
            with psycopg.connect(url, autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT query, calls, total_exec_time, max_exec_time FROM pg_stat_statements "
                    "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = "
                    "current_database()) ORDER BY total_exec_time DESC").fetchall()
                statements = [(" ".join(q.split())[:110], c, t, m) for q, c, t, m in rows
                              if "pg_stat" not in q]
                row = conn.execute("SELECT wal_records, wal_write, wal_sync, wal_write_time, "
                                   "wal_sync_time FROM pg_stat_wal").fetchone()
                assert row is not None
                wal = dict(zip(("records", "writes", "syncs", "write ms", "sync ms"),
                               map(float, row), strict=True))
        time.sleep(3.0)  # late steps
        records = read_records(url, nodes.states[0] / "state.db", window)
    found = read_marks(marks)
    fires = jobs * seconds
    result = timeline(name, records, found, fires)
    result.load_start, result.load_end = load_start, load_end
    result.cpu_ms = watch.per_fire_ms(fires)
    result.statements = [(q, c / fires, t / fires, m) for q, c, t, m in statements]
    result.wal = {k: v / fires for k, v in wal.items()}
    if sampler is not None:
        sampler.join()
        total = max(sampler.samples, 1)
        result.waits = [(k, v / total) for k, v in sampler.waits.most_common(25)]
    if pg is not None:
        result.lock_waits = lock_waits(pg.log()[lock_log_from:], fires)
    return result


def lock_waits(log: str, fires: int) -> dict[str, float]:
    """From ``log_lock_waits``: how many waits past deadlock_timeout, and their total (ms per
    fire), by what was waited for."""
    found: dict[str, float] = defaultdict(float)
    for match in re.finditer(r"acquired (\w+) on (\w+)[^\n]*? after ([\d.]+) ms", log):
        found[f"{match[1]} on {match[2]}: waits"] += 1
        found[f"{match[1]} on {match[2]}: ms per fire"] += float(match[3]) / fires
    for match in re.finditer(r"still waiting for (\w+) on (\w+)", log):
        found[f"{match[1]} on {match[2]}: logged waits"] += 1
    return dict(found)


def read_records(url: str | None, db: Path, window: serve.Window) -> list[dict[str, Any]]:
    lo, hi = iso(window.start), iso(window.end)
    if url is None:
        import sqlite3

        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            rows = conn.execute(
                "SELECT r.id, r.fire_time, r.queued_at, r.started_at, r.node, r.status, "
                "(SELECT min(started_at) FROM steps s WHERE s.run_id = r.id) FROM runs r "
                "WHERE fire_time >= ? AND fire_time < ?", (lo, hi)).fetchall()
        finally:
            conn.close()
        return [dict(id=r[0], fire=ts(r[1]), queued=ts(r[2]), started=ts(r[3]), node=r[4],
                     status=r[5], step=ts(r[6])) for r in rows]
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("""
            SELECT r.id, r.fire_time, r.queued_at, r.started_at, r.node, r.status,
                   (SELECT min(started_at) FROM steps s WHERE s.run_id = r.id),
                   c.node, c.at, pg_xact_commit_timestamp(xid(c.xid)),
                   st.at, pg_xact_commit_timestamp(xid(st.xid)),
                   sp.at, pg_xact_commit_timestamp(xid(sp.xid)), st.xid::text
            FROM runs r
            LEFT JOIN probe c ON c.run_id = r.id AND c.kind = 'claim'
            LEFT JOIN probe st ON st.run_id = r.id AND st.kind = 'start'
            LEFT JOIN probe sp ON sp.run_id = r.id AND sp.kind = 'step'
            WHERE r.fire_time >= %s AND r.fire_time < %s""", (lo, hi)).fetchall()
    return [dict(id=r[0], fire=ts(r[1]), queued=ts(r[2]), started=ts(r[3]), node=r[4],
                 status=r[5], step=ts(r[6]), claimer=r[7], claim_row=ts(r[8]),
                 claim_commit=ts(r[9]), start_row=ts(r[10]), start_commit=ts(r[11]),
                 step_row=ts(r[12]), step_commit=ts(r[13]), start_xid=r[14]) for r in rows]


STAGES = ("queued", "claim_row", "claim_commit", "started", "start_row", "start_commit", "step",
          "step_row", "step_commit", "mark")


def timeline(name: str, records: Sequence[dict[str, Any]], marks: dict[str, float],
             fires: int) -> Result:
    stages: dict[str, list[float]] = defaultdict(list)
    spans: dict[str, list[float]] = defaultdict(list)
    claimed_by: Counter[str] = Counter()
    started_by: Counter[str] = Counter()
    per_second: dict[int, set[str]] = defaultdict(set)
    moved = started = 0
    for rec in records:
        rec["mark"] = marks.get(rec["id"])
        if rec["status"] == "skipped" or rec["started"] is None:
            continue
        started += 1
        fire = rec["fire"]
        present = [s for s in STAGES if rec.get(s) is not None]
        for stage in present:
            stages[stage].append(1000 * (rec[stage] - fire))
        for a, b in itertools.pairwise(present):
            spans[f"{a} → {b}"].append(1000 * (rec[b] - rec[a]))
        if rec.get("claim_commit") is not None and rec.get("started") is not None:
            spans["claim_commit → started (any order)"].append(
                1000 * (rec["started"] - rec["claim_commit"]))
        claimer = rec.get("claimer") or rec["node"] or "-"
        starter = rec["node"] or "-"
        claimed_by[claimer] += 1
        started_by[starter] += 1
        moved += claimer != starter
        per_second[int(fire)].add(starter)
    winners = Counter(len(s) for s in per_second.values())
    result = Result(name, fires, started, "", "", {}, dict(stages), dict(spans), claimed_by,
                    started_by, moved, winners)
    result.slices = slices(records)
    worst: dict[int, float] = defaultdict(float)
    for rec in records:
        if rec.get("mark") is not None:
            second = int(rec["fire"])
            worst[second] = max(worst[second], 1000 * (rec["mark"] - rec["fire"]))
    result.seconds = [worst[k] for k in sorted(worst)]
    return result


def slices(records: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """Per start transaction (a slice of runs), by its place in its second: when it began
    (ms after the fire), how long it took to commit, and the gap since the one before."""
    by_xid: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        if rec.get("start_xid") and rec.get("start_commit") is not None:
            by_xid[rec["start_xid"]].append(rec)
    per_second: dict[int, list[tuple[float, float, int]]] = defaultdict(list)
    for recs in by_xid.values():
        fire = min(r["fire"] for r in recs)
        per_second[int(fire)].append((recs[0]["started"], recs[0]["start_commit"], len(recs)))
    found: dict[str, list[float]] = defaultdict(list)
    for fire, txs in per_second.items():
        txs.sort()
        previous = None
        for k, (begin, commit, n) in enumerate(txs):
            found[f"slice {k} begins"].append(1000 * (begin - fire))
            found[f"slice {k} takes"].append(1000 * (commit - begin))
            found[f"slice {k} runs"].append(n)
            if previous is not None:
                found[f"slice {k} gap"].append(1000 * (begin - previous))
            previous = commit
    return dict(found)


# -- report ----------------------------------------------------------------------------------

def q(values: Sequence[float]) -> str:
    if not values:
        return "—"
    return (f"p50 {percentile(values, 0.5):7.1f}  p90 {percentile(values, 0.9):7.1f}  "
            f"p99 {percentile(values, 0.99):7.1f}  max {max(values):7.1f}  (n {len(values)})")


def report(result: Result) -> str:
    lines = [f"== {result.name}: {result.started} of {result.fires} fires started; "
             f"load {result.load_start} -> {result.load_end}"]
    cpu = result.cpu_ms
    ours = sum(v for k, v in cpu.items() if not k.startswith("machine"))
    cores = (cpu["machine total"]) / 1000 * result.fires
    lines.append("CPU ms per fire (machine total = wall x cores):")
    for key, value in cpu.items():
        lines.append(f"  {key:22s} {value:7.3f}")
    ncpu = os.cpu_count() or 1
    seconds = cores / ncpu if cores else 0
    busy = cpu["machine busy"] / cpu["machine total"] * ncpu
    lines.append(f"  ours (nodes+steps+pg+harness) {ours:7.3f} ms/fire = "
                 f"{ours * result.fires / 1000 / max(seconds, 1e-9):.2f} cores of {ncpu}; "
                 f"machine busy {busy:.2f} cores")
    lines.append("Stages, ms after the fire:")
    for stage in STAGES:
        if stage in result.stages:
            lines.append(f"  {stage:14s} {q(result.stages[stage])}")
    lines.append("Spans, ms:")
    for span, values in result.spans.items():
        lines.append(f"  {span:34s} {q(values)}")
    if result.seconds:
        lines.append("Latest step of each second, ms: "
                     + " ".join(f"{v:.0f}" for v in result.seconds))
    if result.slices:
        lines.append("Start transactions by their place in the second, ms:")
        for key in sorted(result.slices, key=lambda k: (int(k.split()[1]), k)):
            lines.append(f"  {key:18s} {q(result.slices[key])}")
    lines.append(f"claimed by {dict(result.claimed_by)}; started by {dict(result.started_by)}; "
                 f"started elsewhere than claimed {result.moved}; nodes starting one second's "
                 f"fires {dict(result.winners)}")
    if result.statements:
        lines.append("Statements (per fire: calls, ms in PostgreSQL; max ms of one):")
        for query, calls, total, most in result.statements[:22]:
            lines.append(f"  {calls:5.2f} {total:7.3f} ms  max {most:7.1f}  {query}")
        lines.append(f"  all: {sum(s[1] for s in result.statements):.2f} calls, "
                     f"{sum(s[2] for s in result.statements):.2f} ms per fire")
    if result.wal:
        lines.append("WAL per fire: " + ", ".join(f"{k} {v:.3f}" for k, v in result.wal.items()))
    if result.waits:
        lines.append("Active backends, mean number per sample, by wait:")
        for key, value in result.waits:
            lines.append(f"  {value:6.3f}  {key}")
    if result.lock_waits:
        lines.append("Lock waits past 5 ms: " + "; ".join(
            f"{k} {v:.3g}" for k, v in sorted(result.lock_waits.items())))
    return "\n".join(lines)


@contextlib.contextmanager
def profile_server(lock_log: bool) -> Iterator[Postgres]:
    pg = start_server()
    try:
        settings = {**cluster.DURABLE, "track_commit_timestamp": "on",
                    "track_wal_io_timing": "on"}
        if lock_log:
            settings.update(log_lock_waits="on", deadlock_timeout="'5ms'")
        with psycopg.connect(pg.admin_url, autocommit=True) as conn:
            for key, value in settings.items():
                conn.execute(f"ALTER SYSTEM SET {key} = {value}")
        pg.restart("fast")
        yield pg
    finally:
        stop_server(pg)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--only", choices=("sqlite", "pg"))
    parser.add_argument("--lock-log", action="store_true")
    parser.add_argument("--sample", type=float, default=0.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    children = Children()
    results = []
    with tempfile.TemporaryDirectory(prefix="pipeline-profile-") as tmp:
        (Path(tmp) / "logs").mkdir()
        ctx = Context(quick=False, tmp=Path(tmp), children=children)
        try:
            with profile_server(args.lock_log) as pg:
                for round_ in range(args.rounds):
                    for kind in ("sqlite", "pg"):
                        if args.only and kind != args.only:
                            continue
                        sub = cluster.ctx_rep(ctx, kind, round_)
                        say(f"profile: {kind}, round {round_ + 1}")
                        result = contend(sub, pg if kind == "pg" else None,
                                         1 if kind == "sqlite" else args.nodes, args.jobs,
                                         args.seconds, args.sample if kind == "pg" else 0)
                        print(report(result), flush=True)
                        results.append(result)
        finally:
            children.close()
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], default=str))
    if len(results) > 1:
        for r in results:
            mark = r.stages.get("mark", [])
            print(f"{r.name}: mark p50 {statistics.median(mark):.1f} p99 "
                  f"{percentile(mark, 0.99):.1f}" if mark else f"{r.name}: no marks")


if __name__ == "__main__":
    main()
