"""The firing path's store verbs, PostgreSQL beside SQLite: round trips and latency.

    python -m tests.bench.store_verbs [N] [--url postgresql://...]

Each of N iterations claims one fire of one job (``claim_fires``), starts its run
(``start_runs``) and records its end (``record`` of a ``RunFinished``), as a node does for
every fire. Round trips are counted on the wire (libpq's trace: one ``ReadyForQuery`` ends
each) on one traced connection; latency is timed on a normal store. Without ``--url`` a
throwaway PostgreSQL is started as the tests do (``tests/postgres.py``: fsync off, so these
figures leave the disk out for PostgreSQL, while SQLite's are with
``synchronous=FULL`` in a temporary directory).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import psycopg

from pipeline.events import RunFinished
from pipeline.model import Catchup, Concurrency, Policy, RunStatus
from pipeline.store import Store
from pipeline.store.postgres import PostgresStore
from pipeline.store.records import FireClaim, JobSettings
from pipeline.store.sqlite import SqliteStore
from tests.postgres import start_server, stop_server

VERBS = ("claim_fires", "start_runs", "RunFinished")
WARM_UP = 20  # psycopg prepares a statement at its 5th use


def fire_path(store: Store, n: int, mark: Callable[[], int] = lambda: 0,
              ) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    store.publish_jobs([JobSettings("j", Concurrency(Policy.ALLOW))])
    seconds: dict[str, list[float]] = {verb: [] for verb in VERBS}
    trips: dict[str, list[int]] = {verb: [] for verb in VERBS}
    base = store.now()
    for i in range(n):
        now = store.now()
        fire = base + timedelta(milliseconds=i)  # a new fire each time
        claim = FireClaim("j", ((fire, 0.0),), fire, Catchup.ALL, 3600.0,
                          base - timedelta(hours=1))
        marks, times = [mark()], [time.perf_counter()]
        (run,) = store.claim_fires([claim], node="n1", now=now).runs
        marks.append(mark())
        times.append(time.perf_counter())
        store.start_runs("n1", [run.run_id], now=now)
        marks.append(mark())
        times.append(time.perf_counter())
        store.record([RunFinished(run.run_id, RunStatus.SUCCEEDED, now, attempt=1)], node="n1")
        marks.append(mark())
        times.append(time.perf_counter())
        for k, verb in enumerate(VERBS):
            seconds[verb].append(times[k + 1] - times[k])
            trips[verb].append(marks[k + 1] - marks[k])
    return seconds, trips


def fresh(admin_url: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS bench_store WITH (FORCE)")
        conn.execute("CREATE DATABASE bench_store")
    return admin_url.rpartition("/")[0] + "/bench_store"


def round_trips(admin_url: str) -> dict[str, set[int]]:
    store = PostgresStore.open(fresh(admin_url), max_size=1)
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace"
        with trace.open("w") as out:
            conn = store._pool.getconn()
            conn.pgconn.trace(out.fileno())
            conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
            store._pool.putconn(conn)
            _, trips = fire_path(store, WARM_UP + 20,
                                 lambda: trace.read_text().count("\tReadyForQuery"))
            conn = store._pool.getconn()
            conn.pgconn.untrace()
            store._pool.putconn(conn)
    store.close()
    return {verb: set(counts[WARM_UP:]) for verb, counts in trips.items()}


def line(name: str, seconds: dict[str, list[float]]) -> str:
    parts = []
    for verb in VERBS:
        q = statistics.quantiles(seconds[verb][WARM_UP:], n=100)
        parts.append(f"{verb} p50 {q[49] * 1000:.3f} ms p99 {q[98] * 1000:.3f} ms")
    return f"{name:10s} " + "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=2000)
    parser.add_argument("--url", help="an outside server's admin URL (it may create databases)")
    args = parser.parse_args()
    server = None if args.url else start_server()
    admin = args.url or (server.admin_url if server else "")
    try:
        print("round trips:", {verb: sorted(n) for verb, n in round_trips(admin).items()})
        store = PostgresStore.open(fresh(admin))
        print(line("postgres", fire_path(store, args.n)[0]))
        store.close()
        with tempfile.TemporaryDirectory() as tmp:
            lite = SqliteStore.open(Path(tmp))
            print(line("sqlite", fire_path(lite, args.n)[0]))
            lite.close()
    finally:
        if server is not None:
            stop_server(server)


if __name__ == "__main__":
    main()
