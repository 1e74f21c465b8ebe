"""Cluster mode (issue 11): the failure table at full size, and three nodes under load.

    faults      ``tests.faults.cluster.run_table`` with the full counts (200 faults: kill -9,
                SIGSTOP past the lease, a stall past two thirds of it, a cut link, pg_ctl
                restart, faketime +-30 s, a forbid job on three nodes), each followed by the
                invariant check; the counts, the violations, and the takeover times (p50, p99,
                max) after a kill -9 (a node of this machine, seen dead; the namespaced node, by
                its lease), a SIGSTOP and a cut link. Lease 3 s: the limit is lease + 5 s.
    load        100 jobs every second, each one real ``run:`` step (the command of
                ``steps.py``, which stamps its own start), on one node with SQLite (the
                baseline, measured in the same invocation) and on three nodes sharing
                PostgreSQL: the step start's p50 and p99 per slice of the window (target: p99
                within 1.5x the single node's).
    statements  during the three nodes' window, ``pg_stat_statements``: statements per fire,
                everything the nodes did and the firing path alone (claim, start, the step's and
                the run's records), and round trips per fire (the clock read rides with BEGIN).
    ceiling     2,000 jobs due at one instant, each one step that starts no process: fires per
                second from the instant to the last run's end, on one node (SQLite, then
                PostgreSQL) and on three nodes (PostgreSQL).

The PostgreSQL is a throwaway server (``tests/postgres.py``) with ``pg_stat_statements``
loaded and, unlike the tests' server, durable settings (fsync, full_page_writes and
synchronous_commit on), as SQLite's figures are with synchronous=FULL on the same disk.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from tests.bench import serve, steps
from tests.bench.harness import (
    PIPELINE,
    BenchError,
    Context,
    Row,
    Stats,
    percentile,
    say,
    sleep_until_epoch,
    wait_until,
)
from tests.faults import netns
from tests.faults.cluster import (
    CI_COUNTS,
    FULL_COUNTS,
    KINDS,
    TableResult,
    open_cluster,
    run_table,
    workload,
)
from tests.postgres import Postgres, Unavailable, start_server, stop_server

LOAD_FACTOR = 1.5  # three nodes' step start p99 within this × one node's (SQLite)
STATEMENTS_AIM = 3.0  # statements per fire on the firing path (issue 11's aim)
CEILING_JOBS = 2000
NAMES = ("n1", "n2", "n3")
# pg_stat_statements counts BEGIN and COMMIT too (track_utility is on by default; it cannot
# be set before the library is loaded).
DURABLE = {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on",
           "shared_preload_libraries": "'pg_stat_statements'"}

# Statements the nodes run whatever fires: leases, looking for lost nodes and for runs nobody
# holds, stop requests, shipped logs. The rest is the firing path.
BACKGROUND = ("UPDATE nodes SET heartbeat_at", "SELECT id, identity FROM nodes",
              "FROM nodes WHERE state = 'alive' AND expires_at", "SELECT DISTINCT node FROM runs",
              "stop_reason, stop_status FROM runs WHERE node", "log_chunks", "log_size",
              "SELECT 1 FROM runs WHERE status = 'queued' AND node IS NULL",
              "SELECT 1 FROM runs WHERE id = $1 AND node = $2", "FROM pool_slots",
              "SELECT name, watermark, failures", "FROM definitions")


class NoServer(BenchError):
    """PostgreSQL cannot be started here."""


@contextlib.contextmanager
def server() -> Iterator[Postgres]:
    """A throwaway PostgreSQL with durable settings and pg_stat_statements."""
    try:
        pg = start_server()
    except Unavailable as exc:
        raise NoServer(f"no PostgreSQL for the cluster benchmarks: {exc}") from None
    try:
        with psycopg.connect(pg.admin_url, autocommit=True) as conn:
            for key, value in DURABLE.items():
                conn.execute(f"ALTER SYSTEM SET {key} = {value}")
        pg.restart("fast")
        yield pg
    finally:
        stop_server(pg)


def database(pg: Postgres, prefix: str) -> str:
    url = pg.database(prefix)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    return url


# -- nodes -------------------------------------------------------------------------------------

@dataclass
class Nodes:
    """``pipeline serve`` nodes sharing one database (or one node on SQLite: ``url`` None)."""

    procs: list[subprocess.Popen[bytes]]
    states: list[Path]


@contextlib.contextmanager
def open_nodes(ctx: Context, work: Path, jobs: Path, url: str | None, count: int,
               name: str) -> Iterator[Nodes]:
    """``count`` nodes, each with its own state directory and copy of ``jobs``, up (their
    daemon.json written) for the block, then stopped with SIGTERM."""
    procs, states = [], []
    try:
        for index in range(count):
            node = work / NAMES[index]
            own_jobs = node / "jobs"
            shutil.rmtree(own_jobs, ignore_errors=True)
            shutil.copytree(jobs, own_jobs)
            state = node / "state"
            argv: list[str | Path] = [PIPELINE, "serve", "--no-http", "--jobs-dir", own_jobs,
                                      "--state-dir", state]
            if url is not None:
                argv += ["--node-name", NAMES[index]]
            env = None
            if url is not None:
                env = {**os.environ, "PIPELINE_STORE": url}
                env.pop("PYTHONDONTWRITEBYTECODE", None)
            ctx.command(ctx.show(argv, {"PIPELINE_STORE": "postgresql://..."} if url else None)
                        + " 2> node.log &")
            log = ctx.log(f"{name}-{NAMES[index]}")
            with log.open("wb") as out:
                procs.append(ctx.children.start(argv, stdout=subprocess.DEVNULL, stderr=out,
                                                env=env))
            states.append(state)
        for proc, state in zip(procs, states, strict=True):
            wait_until(lambda state=state: (state / "daemon.json").exists(), timeout=120,
                       what=f"{name}: a node up", proc=proc)
        yield Nodes(procs, states)
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        for proc in procs:
            ctx.children.end(proc, grace=serve.STOP_GRACE)


# -- load: 100 real steps a second -------------------------------------------------------------

@dataclass(frozen=True)
class Statements:
    fires: int
    total: int  # every statement the nodes ran in the window
    firing: int  # ... on the firing path
    trips: int  # round trips: the clock read rides with BEGIN
    transactions: int
    top: tuple[tuple[str, float, bool], ...]  # (statement, calls per fire, on the firing path)


def steady_three(ctx: Context, pg: Postgres, jobs: int) -> tuple[steps.Steady, Statements]:
    work = ctx.tmp / f"cluster-steady-{jobs}"
    marks = work / "marks"
    steps.write_step_jobs(work / "jobs", jobs, "every 1s", marks)
    url = database(pg, "steady")
    with open_nodes(ctx, work, work / "jobs", url, 3, f"cluster-steady-{jobs}"):
        window = steps.steady_window(ctx)
        sleep_until_epoch(window.start - 0.5)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")
            xacts = _xacts(conn)
        sleep_until_epoch(window.end - 0.5)
        with psycopg.connect(url, autocommit=True) as conn:
            counted = conn.execute(
                "SELECT query, calls FROM pg_stat_statements WHERE dbid = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())").fetchall()
            xacts = _xacts(conn) - xacts
        sleep_until_epoch(window.end + steps.LATE_GRACE)
        with psycopg.connect(url, autocommit=True) as conn:
            fires = conn.execute("SELECT count(*) FROM runs WHERE fire_time >= %s AND "
                                 "fire_time < %s", (_iso(window.start), _iso(window.end))
                                 ).fetchone()
    p50, p99, lateness = steps.by_slice(steps.read_marks(marks), window)
    expected = jobs * window.seconds
    steady = steps.Steady("three nodes, PostgreSQL", p50, p99, lateness, (), expected,
                          expected - len(lateness))
    return steady, _statements(counted, fires[0] if fires else 0, xacts)


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="microseconds")


def _xacts(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                       "WHERE datname = current_database()").fetchone()
    return int(row[0]) if row else 0


def _statements(counted: Sequence[tuple[str, int]], fires: int, xacts: int) -> Statements:
    fires = max(fires, 1)
    total = firing = rides = 0
    top = []
    for query, calls in counted:
        text = " ".join(query.split())
        if "pg_stat_statements" in text or "pg_stat_database" in text:
            continue  # the benchmark's own
        background = any(mark in text for mark in BACKGROUND)
        total += calls
        if not background:
            firing += calls
        if text.startswith(("BEGIN", "SET LOCAL")):
            rides += calls  # sent with the clock read that follows, in one round trip
        top.append((text[:90], calls / fires, not background))
    top.sort(key=lambda t: -t[1])
    return Statements(fires, total, firing, total - rides, xacts, tuple(top[:25]))


def load(ctx: Context, pg: Postgres, jobs: int = 100) -> list[Row]:
    seconds = steps.steady_window(ctx).seconds
    say(f"bench: cluster load, {jobs:,} real steps every second: one node (SQLite), then three "
        f"nodes (PostgreSQL), {seconds} s each")
    one = ctx.once(f"steady-{jobs}-pipeline", lambda: steps.steady_pipeline(ctx, jobs))
    three, counted = steady_three(ctx, pg, jobs)
    label = f"real steps, {jobs:,} jobs/s, step start"
    rows = []
    for name, pick in (("p50", lambda s: s.p50), ("p99", lambda s: s.p99)):
        base = Stats(pick(one))
        rows.append(Row(f"{label} {name}: one node, SQLite", "ms", base, target="baseline"))
        mine = Stats(pick(three))
        if name == "p99":
            rows.append(Row(f"{label} p99: three nodes, PostgreSQL", "ms", mine,
                            "one node, SQLite", base, f"≤ {LOAD_FACTOR:g}× one node",
                            mine.median <= LOAD_FACTOR * base.median and not three.missing,
                            _missing(three)))
        else:
            rows.append(Row(f"{label} p50: three nodes, PostgreSQL", "ms", mine,
                            "one node, SQLite", base, "(reference)"))
    per = counted.fires
    rows.append(Row("statements per fire, firing path (claim, start, step and run records)",
                    "stmts", Stats((counted.firing / per,)), target=f"(aim ≤ {STATEMENTS_AIM:g})",
                    met=counted.firing / per <= STATEMENTS_AIM))
    rows.append(Row("statements per fire, all three nodes did (leases, polls, logs too)",
                    "stmts", Stats((counted.total / per,)), target="(reference)"))
    rows.append(Row("round trips per fire, all three nodes did", "trips",
                    Stats((counted.trips / per,)), target="(reference)"))
    rows.append(Row("transactions per fire, all three nodes did", "xacts",
                    Stats((counted.transactions / per,)), target="(reference)"))
    for steady in (one, three):
        ctx.details.append(f"**Cluster load, {jobs:,} real steps/s, {steady.tool}** — whole "
                           f"window: {steady.line()}.")
    shown = "; ".join(f"`{q}` {n:.2f}{'' if f else ' (background)'}"
                      for q, n, f in counted.top[:14])
    ctx.details.append(
        f"**Cluster load, statements per fire** — pg_stat_statements over the window, "
        f"{counted.fires:,} fires on three nodes: {counted.total / per:.1f} statements "
        f"({counted.firing / per:.1f} on the firing path), {counted.trips / per:.1f} round "
        f"trips and {counted.transactions / per:.1f} transactions per fire. Busiest, per fire: "
        f"{shown}.")
    return rows


def _missing(result: steps.Steady) -> str:
    return (f"{result.missing:,} of {result.expected:,} fires never started"
            if result.missing else "")


# -- ceiling: fires per second -----------------------------------------------------------------

NAP_JOB = """\
name: nap-{index:04d}
description: due at one instant; its one step starts no process
schedule: {{at: '{instant}'}}
steps:
  - id: nap
    uses: sleep
    with: {{duration: 0s}}
"""


def burst_rate(ctx: Context, pg: Postgres | None, count: int, jobs: int) -> float:
    """Fires per second: ``jobs`` due at one instant, from the instant to the last run's
    end, on ``count`` nodes (SQLite when ``pg`` is None)."""
    tag = f"ceiling-{'sqlite' if pg is None else 'pg'}-{count}"
    work = ctx.tmp / tag
    at = math.ceil(time.time() + 15 + 5 * count)
    instant = datetime.fromtimestamp(at, UTC).isoformat()
    (work / "jobs").mkdir(parents=True)
    for index in range(jobs):
        (work / "jobs" / f"nap-{index:04d}.yaml").write_text(
            NAP_JOB.format(index=index, instant=instant))
    url = None if pg is None else database(pg, "ceiling")
    with open_nodes(ctx, work, work / "jobs", url, count, tag) as nodes:
        if time.time() > at - 1:
            raise BenchError(f"{tag}: the nodes took too long to start for the instant")
        wait_until(lambda: _finished(url, nodes) >= jobs, timeout=at - time.time() + 120,
                   what=f"{tag}: {jobs:,} runs finished")
        last = _last_end(url, nodes)
    return jobs / max(last - at, 1e-3)


def _finished(url: str | None, nodes: Nodes) -> int:
    if url is None:
        return steps.finished_runs(nodes.states[0] / "state.db")
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM runs WHERE finished_at IS NOT NULL").fetchone()
    return int(row[0]) if row else 0


def _last_end(url: str | None, nodes: Nodes) -> float:
    if url is None:
        import sqlite3

        conn = sqlite3.connect(f"file:{nodes.states[0] / 'state.db'}?mode=ro", uri=True)
        try:
            text = conn.execute("SELECT max(finished_at) FROM runs").fetchone()[0]
        finally:
            conn.close()
    else:
        with psycopg.connect(url, autocommit=True) as conn:
            text = conn.execute("SELECT max(finished_at) FROM runs").fetchone()[0]  # type: ignore[index]
    return datetime.fromisoformat(text).timestamp()


def ceiling(ctx: Context, pg: Postgres, jobs: int = CEILING_JOBS) -> list[Row]:
    reps = ctx.reps(2, 1)
    say(f"bench: cluster ceiling, {jobs:,} no-process fires at one instant: one node (SQLite, "
        f"PostgreSQL), three nodes (PostgreSQL), {reps} each")
    rates = {key: Stats(tuple(burst_rate(ctx_rep(ctx, key, rep), db, count, jobs)
                              for rep in range(reps)))
             for key, db, count in (("one node, SQLite", None, 1),
                                    ("one node, PostgreSQL", pg, 1),
                                    ("three nodes, PostgreSQL", pg, 3))}
    base = rates["one node, SQLite"]
    return [Row(f"throughput ceiling, {jobs:,} fires at once: {key}", "fires/s", stats,
                "" if key == "one node, SQLite" else "one node, SQLite",
                None if key == "one node, SQLite" else base, "(reference)")
            for key, stats in rates.items()]


def ctx_rep(ctx: Context, key: str, rep: int) -> Context:
    """``ctx`` with a scratch directory of its own for one repetition."""
    sub = ctx.tmp / f"rep-{key.replace(' ', '').replace(',', '-')}-{rep}"
    sub.mkdir(parents=True, exist_ok=True)
    (sub / "logs").mkdir(exist_ok=True)
    return Context(ctx.quick, sub, ctx.children, ctx.peers, ctx.commands, ctx.details,
                   ctx.memo)


# -- the failure table -------------------------------------------------------------------------

def faults(ctx: Context, pg: Postgres) -> list[Row]:
    why = netns.unavailable() or (None if shutil.which("faketime") else "no faketime")
    if why is not None:
        ctx.details.append(f"**Cluster faults** — not measured: {why}.")
        return []
    counts = CI_COUNTS if ctx.quick else FULL_COUNTS
    say(f"bench: cluster faults, {counts.total} in a random order on three nodes (lease 3 s), "
        "an invariant check after each")
    from tests.faults.cluster_invariants import check_cluster

    ctx.command("python -m tests.bench.cluster faults  # tests/faults/cluster.py run_table")
    with open_cluster(ctx.tmp / "cluster-faults", pg) as cluster:
        for node in cluster.nodes.values():
            node.jobs.mkdir(parents=True, exist_ok=True)
        workload(cluster)
        cluster.start()
        result = run_table(cluster, counts, check=lambda c: check_cluster(
            c, cli_logs=1 if c.checked % 10 == 0 else 0))
    if result.violations:  # the report has them too; a run without --out shows only this
        say("bench: cluster faults: " + result.describe())
    return fault_rows(ctx, result, cluster.lease)


def fault_rows(ctx: Context, result: TableResult, lease: float) -> list[Row]:
    kinds = {kind: sum(f.kind == kind for f in result.faults) for kind in KINDS}
    shown = ", ".join(f"{n} {kind}" for kind, n in kinds.items() if n)
    limit = lease + 5
    rows = [Row(f"cluster fault table: {len(result.faults)} faults ({shown})", "s",
                Stats((result.seconds,)), target="every invariant holds",
                met=result.ok and len(result.faults) >= 200 * (not ctx.quick),
                note=f"{len(result.violations)} violations" if result.violations else "")]
    for label, values in (
            ("kill -9, a node of this machine (seen dead)", result.takeovers("kill", remote=False)),
            ("kill -9, the namespaced node (by its lease)", result.takeovers("kill", remote=True)),
            ("SIGSTOP past the lease", result.takeovers("freeze")),
            ("link cut past the lease", result.takeovers("cut"))):
        if not values:
            continue
        rows.append(Row(f"takeover after {label}", "s", Stats(tuple(values)),
                        target=f"max ≤ lease + 5 s ({limit:g} s)", met=max(values) <= limit,
                        note=f"p99 {percentile(values, 0.99):.2f} s"))
        ctx.details.append(f"**Cluster takeover after {label}** — {len(values)} faults: p50 "
                           f"{percentile(values, 0.5):.2f} s, p99 {percentile(values, 0.99):.2f} s,"
                           f" max {max(values):.2f} s (lease {lease:g} s).")
    ctx.details.append(f"**Cluster fault table** — seed {result.seed}, {result.checks} "
                       f"invariant checks, {len(result.violations)} violations; last check: "
                       f"{result.summary}" + "".join(f"; {v}" for v in result.violations[:10]))
    return rows


def run(ctx: Context) -> list[Row]:
    """Every part on one throwaway server; none, and why, when PostgreSQL cannot be had (a
    full ``bin/bench`` run on a machine without it measures the rest)."""
    try:
        with server() as pg:
            rows = load(ctx, pg)
            rows += ceiling(ctx, pg)
            rows += faults(ctx, pg)
    except NoServer as exc:
        say(f"bench: cluster: not measured: {exc}")
        ctx.details.append(f"**Cluster mode** — not measured: {exc}.")
        return []
    return rows


if __name__ == "__main__":
    import sys
    import tempfile

    from tests.bench.harness import Children, text_table

    with tempfile.TemporaryDirectory(prefix="pipeline-bench-") as tmp:
        (Path(tmp) / "logs").mkdir()
        children = Children()
        context = Context(quick="--quick" in sys.argv, tmp=Path(tmp), children=children)
        try:
            what = [a for a in sys.argv[1:] if not a.startswith("--")]
            with server() as pg:
                found: list[Row] = []
                if not what or "load" in what:
                    found += load(context, pg)
                if not what or "ceiling" in what:
                    found += ceiling(context, pg)
                if not what or "faults" in what:
                    found += faults(context, pg)
        finally:
            children.close()
        print(text_table(found))
        print("\n".join(f"- {line}" for line in context.details))
