"""The store conformance suite: every test typed to the ``Store`` protocol runs against SQLite
(a real file in tmp_path) and PostgreSQL (a real server, a fresh database per test), as
APScheduler 4 runs its datastore tests against every backend. What only one backend has (WAL,
PRAGMA user_version, a kill -9 mid-commit, a full disk; a server restart, URL passwords,
advisory-lock migrations) is tested for that backend alone, at the end.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from loguru import logger
from psycopg import sql

import pipeline
from pipeline.errors import RunActive, StateError, StateLocked
from pipeline.events import (
    Event,
    RunFinished,
    RunQueued,
    RunSkipped,
    RunStarted,
    StepFinished,
    StepRetrying,
    StepSpawned,
    StepStarted,
    WatermarkMoved,
)
from pipeline.model import (
    RUN_ID,
    Catchup,
    CircuitBreaker,
    Concurrency,
    Definition,
    Policy,
    RunStatus,
    StepStatus,
    Trigger,
)
from pipeline.nodes import machine_identity
from pipeline.policy import Reason, Verdict
from pipeline.recovery import recover
from pipeline.runrecords import Version
from pipeline.statedir import (
    identity_alive,
    lock_state_dir,
    log_relpath,
    new_run_id,
    process_identity,
)
from pipeline.store import Store
from pipeline.store import open_store as open_store_at
from pipeline.store import postgres as pg
from pipeline.store.fires import LEAD_ALLOWED
from pipeline.store.migrations import POSTGRES_MIGRATIONS, SCHEMA_VERSION, SQLITE_MIGRATIONS
from pipeline.store.pgurl import mask_url
from pipeline.store.postgres import PostgresStore, Timeouts, to_psycopg
from pipeline.store.records import (
    INTERRUPTED_RUNNING,
    NODE_LOST,
    FireClaim,
    JobSettings,
    NodeInfo,
    NodeState,
    Outcome,
    StopRequest,
    StoredDecision,
)
from pipeline.store.rows import iso
from pipeline.store.sql import SqlStore
from pipeline.store.sqlite import SqliteStore, migrate
from tests.postgres import Postgres, free_port

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ROOT = str(Path(pipeline.__file__).resolve().parent.parent)
SECOND = timedelta(seconds=1)


def rid(n: int) -> str:
    return f"20260301T120000-{n:08x}"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def queued(n: int, job: str = "j", *, fire: datetime | None = None, t: float | None = None,
           trigger: Trigger = Trigger.SCHEDULE, node: str | None = None,
           runs_on: dict[str, str] | None = None) -> RunQueued:
    return RunQueued(rid(n), job, trigger, at(n if t is None else t), fire_time=fire,
                     node=node, runs_on=runs_on or {})


def finished_run(n: int, status: RunStatus, job: str = "j", *, t: float | None = None,
                 trigger: Trigger = Trigger.SCHEDULE, fire: datetime | None = None,
                 ) -> list[Event]:
    t = float(n) if t is None else t
    return [queued(n, job, t=t, trigger=trigger, fire=fire), RunStarted(rid(n), at(t)),
            RunFinished(rid(n), status, at(t + 1))]


def spawn(code: str, *args: str, stdout: int = subprocess.DEVNULL) -> subprocess.Popen[str]:
    """A Python child that imports this checkout's ``pipeline``."""
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=stdout, text=True,
                            env={**os.environ, "PYTHONPATH": ROOT})


def node(name: str, *, labels: dict[str, str] | None = None, identity: str = "",
         roles: frozenset[str] | None = None) -> NodeInfo:
    return NodeInfo(id=name, name=name, labels=labels or {}, identity=identity,
                    version="test", **({"roles": roles} if roles is not None else {}))


def scalar(store: Store, statement: str, **params: Any) -> Any:
    """One value read with the store's own connection (the statements' shared dialect)."""
    assert isinstance(store, SqlStore)
    with store._read() as tx:
        return tx.execute(statement, params).fetchone()[0]


def status(store: Store, run_id: str) -> RunStatus:
    run = store.run(run_id)
    assert run is not None
    return run.status


Opener = Callable[[], Store]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.slow)])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens a store on this test's database; each call another handle (another node)."""
    opened: list[Store] = []
    if request.param == "sqlite":
        def make() -> Store:
            opened.append(SqliteStore.open(tmp_path / "state"))
            return opened[-1]
    else:
        url: str = request.getfixturevalue("postgres_url")

        def make() -> Store:
            opened.append(PostgresStore.open(url))
            return opened[-1]
    yield make
    for each in opened:
        each.close()


@pytest.fixture
def store(open_store: Opener) -> Store:
    return open_store()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore.open(tmp_path / "state")
    yield opened
    opened.close()


# -- events round-trip ---------------------------------------------------------------------------

def test_every_event_lands_in_run_and_step_fields(store: Store) -> None:
    plus_two = timezone(timedelta(hours=2))
    fire = datetime(2026, 3, 1, 14, 0, 0, 123456, tzinfo=plus_two)  # 12:00:00.123456 UTC
    version = Version("ab" * 32, git_commit="c" * 40, git_blob="b" * 40, git_dirty=True)
    r = rid(1)
    refused = store.record([
        RunQueued(r, "backup", Trigger.CATCHUP, at(0), fire_time=fire,
                  params={"keep": 3, "tags": ["a", "b"], "nested": {"x": None}, "pct": "5%"},
                  version=version, document={"name": "backup", "steps": [{"id": "dump"}]},
                  parent_run_id=rid(99), node="n1"),
    ])
    assert refused == frozenset()
    run = store.run(r)
    assert run is not None
    assert (run.status, run.started_at, run.steps, run.node) == (
        RunStatus.QUEUED, None, (), "n1")

    store.record([
        RunStarted(r, at(1)),
        StepStarted(r, "dump", 1, at(2), f"logs/backup/{r}/dump.log"),
        StepSpawned(r, "dump", 4242, 4242),
        StepRetrying(r, "dump", 1, 5.0, "exit status 1"),
    ], node="n1")
    run = store.run(r)
    assert run is not None and run.status is RunStatus.RUNNING and run.started_at == at(1)
    (dump,) = run.steps
    assert (dump.status, dump.attempt, dump.error, dump.pgid, dump.started_at, dump.log) == (
        StepStatus.RUNNING, 2, "exit status 1", 4242, at(2), f"logs/backup/{r}/dump.log")

    store.record([
        StepFinished(r, "dump", StepStatus.SUCCEEDED, at(3), attempt=2, exit_code=0,
                     outputs={"file": "/b/db.sql", "lines": "a\nb"}),
        StepStarted(r, "fan", 1, at(3), ""),  # a for_each parent has no log of its own
        StepStarted(r, "fan.0", 1, at(3), f"logs/backup/{r}/fan.0.log", item='{"n": 1}'),
        StepFinished(r, "fan.0", StepStatus.TIMED_OUT, at(4), attempt=1, signal=15,
                     error="timed out after 1s"),
        StepFinished(r, "fan", StepStatus.FAILED, at(4), attempt=1, error="1 of 1 failed"),
        StepFinished(r, "notify", StepStatus.SKIPPED, at(5), error="if: success() is false"),
        RunFinished(r, RunStatus.FAILED, at(6), reason="step fan failed: 100% 'quoted'",
                    outputs={"size": "12"}),
    ], node="n1")
    run = store.run(r)
    assert run is not None
    assert run.id == r and run.job == "backup" and run.trigger is Trigger.CATCHUP
    assert run.fire_time == fire and run.fire_time.utcoffset() == timedelta(0)
    assert run.fire_time.microsecond == 123456
    assert (run.queued_at, run.started_at, run.finished_at) == (at(0), at(1), at(6))
    assert run.duration_s == 5.0
    assert run.status is RunStatus.FAILED and run.reason == "step fan failed: 100% 'quoted'"
    assert run.params == {"keep": 3, "tags": ("a", "b"), "nested": {"x": None}, "pct": "5%"}
    assert run.version == version and run.outputs == {"size": "12"}
    assert run.document == {"name": "backup", "steps": ({"id": "dump"},)}
    assert (run.parent_run_id, run.node) == (rid(99), "n1")

    assert [s.id for s in run.steps] == ["dump", "fan", "fan.0", "notify"]
    dump, fan, fan0, notify = run.steps
    assert dump.run_id == r
    assert (dump.status, dump.attempt, dump.exit_code, dump.signal, dump.error) == (
        StepStatus.SUCCEEDED, 2, 0, None, None)
    assert dump.outputs == {"file": "/b/db.sql", "lines": "a\nb"}
    assert (dump.started_at, dump.finished_at, dump.duration_s, dump.pgid) == (
        at(2), at(3), 1.0, 4242)
    assert fan.log is None and fan.status is StepStatus.FAILED and fan.error == "1 of 1 failed"
    assert (fan0.status, fan0.signal, fan0.exit_code, fan0.error, fan0.item) == (
        StepStatus.TIMED_OUT, 15, None, "timed out after 1s", '{"n": 1}')
    assert fan.item is None
    assert (notify.status, notify.attempt, notify.started_at, notify.finished_at) == (
        StepStatus.SKIPPED, 0, None, at(5))
    assert notify.duration_s is None and notify.outputs == {}


def test_a_skipped_fire_is_a_run_and_occupies_its_fire(store: Store) -> None:
    version = Version("00" * 32)
    assert store.record([RunSkipped(rid(1), "j", Trigger.SCHEDULE, at(60), at(61),
                                    "circuit open", version)]) == frozenset()
    run = store.run(rid(1))
    assert run is not None
    assert (run.status, run.reason, run.fire_time, run.version) == (
        RunStatus.SKIPPED, "circuit open", at(60), version)
    assert run.queued_at == run.started_at == run.finished_at == at(61)
    assert store.record([queued(2, fire=at(60))]) == {rid(2)}
    assert store.run(rid(2)) is None


def test_a_taken_fire_is_refused_and_the_rest_of_the_batch_commits(store: Store) -> None:
    refused = store.record([
        queued(1, fire=at(60)),
        queued(2, fire=at(60)),  # the same fire
        queued(3, fire=None),
        queued(4, fire=None),  # no fire: never a conflict
        queued(5, "other", fire=at(60)),  # another job's fire at the same instant
        StepStarted(rid(1), "a", 1, at(1), ""),
        RunSkipped(rid(6), "j", Trigger.SCHEDULE, at(60), at(2), "forbid"),  # taken too
        WatermarkMoved("j", at(60)),
    ])
    assert refused == {rid(2), rid(6)}
    assert {r.id for r in store.runs()} == {rid(1), rid(3), rid(4), rid(5)}
    run = store.run(rid(1))
    assert run is not None and [s.id for s in run.steps] == ["a"]
    assert store.watermark("j") == at(60)
    # Later batches too, and a second claim with a run id already taken.
    assert store.record([queued(7, fire=at(60)), queued(1, fire=at(120))]) == {rid(7), rid(1)}
    assert store.fires_after("j", at(0)) == {at(60)}


def test_only_scheduled_fires_are_keyed_by_their_instant(store: Store) -> None:
    """A manual run carries the instant it was asked for, but never takes a fire's slot."""
    assert store.record([
        queued(1, fire=at(60), trigger=Trigger.MANUAL),
        queued(2, fire=at(60), trigger=Trigger.API),
        queued(3, fire=at(60)),  # the scheduled fire at the same instant still runs
        queued(4, fire=at(60), trigger=Trigger.CATCHUP),  # but only once
    ]) == {rid(4)}
    assert store.fires_after("j", at(0)) == {at(60)}
    manual = store.run(rid(1))
    assert manual is not None and manual.fire_time == at(60)


def test_step_events_of_an_unknown_run_are_ignored(store: Store) -> None:
    store.record([
        StepStarted(rid(1), "a", 1, at(0), ""),
        StepSpawned(rid(1), "a", 10, 10),
        StepRetrying(rid(1), "a", 1, 0.0, "x"),
        StepFinished(rid(1), "b", StepStatus.SKIPPED, at(1)),
        RunStarted(rid(1), at(0)),
        RunFinished(rid(1), RunStatus.SUCCEEDED, at(1)),
    ])
    assert store.run(rid(1)) is None
    assert store.count_runs() == 0
    assert scalar(store, "SELECT count(*) FROM steps") == 0


def test_a_batch_that_fails_applies_nothing(store: Store) -> None:
    naive = datetime(2026, 3, 1, 12, 0)
    with pytest.raises(ValueError, match="naive"):
        store.record([queued(1), RunStarted(rid(1), naive)])
    assert store.run(rid(1)) is None
    store.record([queued(1)])  # and the store goes on
    assert store.count_runs() == 1


def test_a_finished_run_is_not_started_again(store: Store) -> None:
    store.record([queued(1), RunFinished(rid(1), RunStatus.CANCELLED, at(2), "stopped"),
                  RunStarted(rid(1), at(3))])
    run = store.run(rid(1))
    assert run is not None and run.status is RunStatus.CANCELLED and run.started_at is None


# -- compare-and-set: a node that lost a run cannot write it ------------------------------------

def test_writes_of_a_node_that_does_not_hold_the_run_change_nothing(store: Store) -> None:
    store.record([queued(1, node="a"), queued(2, node="a")])
    # Another node's start, steps and end of run 1 are dropped.
    store.record([RunStarted(rid(1), at(1)), StepStarted(rid(1), "s", 1, at(1), "x.log"),
                  RunFinished(rid(1), RunStatus.SUCCEEDED, at(2))], node="b")
    run = store.run(rid(1))
    assert run is not None and (run.status, run.steps) == (RunStatus.QUEUED, ())
    # The holder's go through.
    store.record([RunStarted(rid(1), at(1)), StepStarted(rid(1), "s", 1, at(1), "x.log")],
                 node="a")
    store.record([StepSpawned(rid(1), "s", 5, 5), StepRetrying(rid(1), "s", 1, 0, "e"),
                  StepFinished(rid(1), "s", StepStatus.FAILED, at(2), attempt=9)], node="b")
    run = store.run(rid(1))
    assert run is not None and run.status is RunStatus.RUNNING
    (step,) = run.steps
    assert (step.status, step.pgid, step.attempt, step.error) == (
        StepStatus.RUNNING, None, 1, None)


def test_the_end_of_a_stale_attempt_changes_nothing(store: Store) -> None:
    store.record([queued(1, node="a")])
    (started,) = store.start_runs("a", [rid(1)], now=store.now())
    assert started.run.attempt == 1
    store.record([RunFinished(rid(1), RunStatus.FAILED, at(5), attempt=0)], node="a")
    store.record([RunFinished(rid(1), RunStatus.FAILED, at(5), attempt=2)], node="a")
    store.record([RunFinished(rid(1), RunStatus.FAILED, at(5), attempt=1)], node="b")
    assert status(store, rid(1)) is RunStatus.RUNNING
    assert store.job_states().get("j") is None or store.job_states()["j"].failures == 0
    store.record([RunFinished(rid(1), RunStatus.SUCCEEDED, at(5), attempt=1)], node="a")
    assert status(store, rid(1)) is RunStatus.SUCCEEDED
    # An end recorded twice (a retried batch) is refused the second time.
    store.record([RunFinished(rid(1), RunStatus.FAILED, at(6), attempt=1)], node="a")
    assert status(store, rid(1)) is RunStatus.SUCCEEDED


# -- schedule state ------------------------------------------------------------------------------

def watermarks(store: Store) -> dict[str, datetime | None]:
    return {name: state.watermark for name, state in store.job_states().items()}


def test_watermark_only_moves_forward(store: Store) -> None:
    assert store.watermark("j") is None
    assert watermarks(store) == {}
    store.record([WatermarkMoved("j", at(60))])
    store.record([WatermarkMoved("j", at(30))])
    assert store.watermark("j") == at(60)
    store.record([WatermarkMoved("j", at(90)), WatermarkMoved("j", at(75)),
                  WatermarkMoved("k", at(5))])
    store.move_watermark("k", at(4))
    assert watermarks(store) == {"j": at(90), "k": at(5)}
    store.move_watermark("k", at(6))
    store.reset_circuit("j", at(100))  # the same row; the watermark stays
    assert watermarks(store) == {"j": at(90), "k": at(6)}


def test_fires_after_lists_claimed_fires_of_one_job(store: Store) -> None:
    store.record([
        queued(1, fire=at(60)), queued(2, fire=at(120)), queued(3, fire=None),
        RunSkipped(rid(4), "j", Trigger.CATCHUP, at(180), at(200), "catchup: latest"),
        queued(5, "other", fire=at(240)),
        RunFinished(rid(1), RunStatus.SUCCEEDED, at(70)),
    ])
    assert store.fires_after("j", at(0)) == {at(60), at(120), at(180)}
    assert store.fires_after("j", at(60)) == {at(120), at(180)}
    assert store.fires_after("j", at(180)) == set()
    plus_one = timezone(timedelta(hours=1))
    assert store.fires_after("j", at(100).astimezone(plus_one)) == {at(120), at(180)}


def test_jobs_are_published_paused_and_resumed(store: Store) -> None:
    store.publish_jobs([JobSettings("a", Concurrency(Policy.QUEUE, max_queued=3),
                                    CircuitBreaker(2, 60), enabled=False,
                                    on_node_loss_retry=True),
                        JobSettings("b")])
    store.pause(["a", "c"], by="ops", reason="maintenance", at=at(5))
    states = store.job_states()
    assert sorted(states) == ["a", "b", "c"]
    assert states["a"].paused and (states["a"].paused_at, states["a"].paused_by,
                                   states["a"].paused_reason) == (at(5), "ops", "maintenance")
    assert not states["b"].paused
    store.resume(["a", "nope"])
    states = store.job_states()
    assert not states["a"].paused and states["c"].paused
    assert states["a"].paused_by is None and states["a"].paused_reason is None
    store.publish_jobs([JobSettings("a")])  # settings change; the rest of the row stays
    assert store.job_states()["c"].paused_at == at(5)


# -- listing -------------------------------------------------------------------------------------

def test_listing_filters_orders_and_pages(store: Store) -> None:
    store.record([
        *finished_run(1, RunStatus.SUCCEEDED, "a"),
        *finished_run(2, RunStatus.FAILED, "a", trigger=Trigger.MANUAL),
        *finished_run(3, RunStatus.SUCCEEDED, "b", trigger=Trigger.API),
        queued(4, "a"), RunStarted(rid(4), at(4)),
        queued(5, "b"),
        RunSkipped(rid(6), "a", Trigger.SCHEDULE, at(6), at(6), "forbid"),
        StepStarted(rid(4), "s", 1, at(4), ""),
    ])
    listed = store.runs()
    assert [r.id for r in listed] == [rid(n) for n in (6, 5, 4, 3, 2, 1)]
    assert all(r.steps == () and r.document is None for r in listed)
    assert [r.id for r in store.runs(job="a")] == [rid(6), rid(4), rid(2), rid(1)]
    assert [r.id for r in store.runs(status=RunStatus.SUCCEEDED)] == [rid(3), rid(1)]
    assert [r.id for r in store.runs(trigger=Trigger.MANUAL)] == [rid(2)]
    assert [r.id for r in store.runs(since=at(3))] == [rid(6), rid(5), rid(4), rid(3)]
    assert [r.id for r in store.runs(until=at(2))] == [rid(2), rid(1)]
    assert [r.id for r in store.runs(limit=2, offset=1)] == [rid(5), rid(4)]
    assert [r.id for r in store.runs(job="a", status=RunStatus.FAILED)] == [rid(2)]
    assert store.count_runs() == 6
    assert store.count_runs(job="a", since=at(2)) == 3
    assert store.count_runs(status=RunStatus.CANCELLED) == 0
    assert store.count_runs(trigger=Trigger.API, until=at(3)) == 1

    last = store.last_runs()
    assert {job: r.id for job, r in last.items()} == {"a": rid(6), "b": rid(5)}
    assert [r.id for r in store.active_runs()] == [rid(4), rid(5)]  # oldest first
    assert [r.id for r in store.active_runs("b")] == [rid(5)]
    assert store.jobs_with_runs() == ["a", "b"]
    assert store.last_success("a") == at(2)
    assert store.last_success("b") == at(4)
    assert store.last_success("nope") is None


def test_latest_run_of_a_job_breaks_ties_by_id(store: Store) -> None:
    store.record([queued(2, t=0), queued(1, t=0)])
    assert store.last_runs()["j"].id == rid(2)
    assert [r.id for r in store.runs()] == [rid(2), rid(1)]


def test_the_store_clock_is_aware_utc_and_close_to_ours(store: Store) -> None:
    before = datetime.now(UTC)
    now = store.now()
    assert now.tzinfo is not None and now.utcoffset() == timedelta(0)
    assert abs(now - before) < timedelta(seconds=5)


# -- circuit breaker -----------------------------------------------------------------------------

def test_circuit_counts_failed_automatic_runs_on_the_job_row(store: Store) -> None:
    store.publish_jobs([JobSettings("j", breaker=CircuitBreaker(after=2, cooldown=1))])

    def failures() -> tuple[int, datetime | None]:
        state = store.job_states()["j"]
        return state.failures, state.circuit_opened_at

    store.record([*finished_run(1, RunStatus.FAILED), *finished_run(2, RunStatus.SUCCEEDED)])
    assert failures() == (0, None)
    store.record([
        *finished_run(3, RunStatus.FAILED),
        *finished_run(4, RunStatus.FAILED, trigger=Trigger.MANUAL),  # manual: not counted
        *finished_run(5, RunStatus.CANCELLED),  # neither counted nor a reset
        *finished_run(6, RunStatus.INTERRUPTED),
        RunSkipped(rid(7), "j", Trigger.SCHEDULE, at(7), at(7), "forbid"),
        *finished_run(8, RunStatus.FAILED, trigger=Trigger.CATCHUP),
        *finished_run(9, RunStatus.FAILED, "other"),
    ])
    assert failures() == (2, at(9))  # opened when run 8, the second failure, ended
    assert store.job_states()["other"].failures == 1
    store.record(finished_run(10, RunStatus.FAILED))
    assert failures() == (3, at(11))  # the trial after the cooldown failed: open again
    store.record(finished_run(11, RunStatus.FAILED, t=10.5))  # ends at 11.5
    assert failures() == (4, at(11))  # failed within the cooldown: it stays open from then

    store.reset_circuit("j", at(20))
    assert failures() == (0, None)
    store.record(finished_run(21, RunStatus.FAILED))
    assert failures() == (1, None)
    store.record(finished_run(23, RunStatus.SUCCEEDED, trigger=Trigger.API))  # any success
    assert failures() == (0, None)
    assert "never-ran" not in store.job_states()


# -- claiming fires ------------------------------------------------------------------------------

def claim(job: str, fires: list[datetime], until: datetime, *, started: datetime,
          catchup: Catchup = Catchup.LATEST, grace: float = 60.0, hold: bool = True,
          jitter: float = 0.0, runs_on: dict[str, str] | None = None) -> FireClaim:
    return FireClaim(job, tuple((f, jitter) for f in fires), until, catchup, grace, started,
                     version=Version("ab" * 32), document={"name": job}, runs_on=runs_on or {},
                     hold=hold)


def test_claiming_fires_makes_each_once_and_moves_the_watermark(store: Store) -> None:
    store.publish_jobs([JobSettings("j"), JobSettings("k")])
    now = store.now()
    fire = now - timedelta(milliseconds=100)
    until = now
    claims = [claim("j", [fire], until, started=now - timedelta(minutes=5), jitter=2.5),
              claim("k", [fire], until, started=now - timedelta(minutes=5), hold=False,
                    runs_on={"zone": "eu"})]
    made = store.claim_fires(claims, node="n1", now=now)
    assert sorted((c.job, c.fire_time, c.trigger, c.held) for c in made.runs) == [
        ("j", fire, Trigger.SCHEDULE, True), ("k", fire, Trigger.SCHEDULE, False)]
    assert made.watermarks == {"j": until, "k": until}
    by_job = {c.job: c for c in made.runs}
    assert by_job["j"].ready_at == fire + timedelta(seconds=2.5)  # its jitter
    run = store.run(by_job["j"].run_id)
    assert run is not None
    assert (run.status, run.node, run.fire_time, run.trigger) == (
        RunStatus.QUEUED, "n1", fire, Trigger.SCHEDULE)
    assert run.document == {"name": "j"} and run.version == Version("ab" * 32)
    other = store.run(by_job["k"].run_id)
    assert other is not None and other.node is None
    assert store.watermark("j") == until

    # The same claim again (another node, or this one after a crash): nothing more.
    again = store.claim_fires(claims, node="n2", now=now)
    assert again.runs == [] and again.watermarks == {"j": until, "k": until}
    assert store.count_runs() == 2


def test_two_nodes_claiming_the_same_fires_at_once_make_each_once(open_store: Opener) -> None:
    stores = [open_store() for _ in range(4)]
    jobs = [f"job{n}" for n in range(10)]
    stores[0].publish_jobs([JobSettings(name) for name in jobs])
    now = stores[0].now()
    fires = [now - timedelta(seconds=s) for s in (0.5, 0.4, 0.3)]
    claims = [claim(name, fires, now, started=now - timedelta(seconds=1), catchup=Catchup.ALL)
              for name in jobs]
    barrier = threading.Barrier(len(stores))
    made: list[list[tuple[str, datetime]]] = []

    def claimer(each: Store, name: str) -> None:
        barrier.wait()
        result = each.claim_fires(list(reversed(claims)) if name == "n1" else claims,
                                  node=name, now=now)
        made.append([(c.job, c.fire_time) for c in result.runs])

    threads = [threading.Thread(target=claimer, args=(each, f"n{n}"))
               for n, each in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [m for each in made for m in each]
    assert sorted(everything) == sorted((name, f) for name in jobs for f in fires)
    assert stores[0].count_runs() == len(jobs) * len(fires)


def test_catching_up_sorts_missed_fires_by_the_policy(store: Store) -> None:
    store.publish_jobs([JobSettings(name) for name in ("latest", "all", "none")])
    now = store.now()
    started = now - timedelta(seconds=30)  # the node came up 30 s ago
    missed = [now - timedelta(minutes=m) for m in (3, 2, 1)]  # while no node ran
    on_time = now - timedelta(seconds=1)
    made = store.claim_fires([
        claim("latest", missed, now - timedelta(seconds=2), started=started),
        claim("all", missed, now - timedelta(seconds=2), started=started,
              catchup=Catchup.ALL),
        claim("none", [*missed, on_time], now, started=started, catchup=Catchup.NONE),
    ], node="n1", now=now)
    runs = {(c.job, c.fire_time): c for c in made.runs}
    assert sorted(runs) == sorted([("latest", missed[2]), ("all", missed[0]),
                                   ("all", missed[1]), ("all", missed[2]), ("none", on_time)])
    assert runs["latest", missed[2]].trigger is Trigger.CATCHUP
    assert not runs["latest", missed[2]].backlog
    assert all(runs["all", f].backlog and runs["all", f].trigger is Trigger.CATCHUP
               for f in missed)
    assert runs["none", on_time].trigger is Trigger.SCHEDULE
    # A catch-up is ready now; a fire on time at its instant.
    assert runs["latest", missed[2]].ready_at >= now - SECOND
    assert runs["none", on_time].ready_at == on_time

    latest = store.decisions("latest")
    assert [(d.fire_time, d.outcome, d.reason) for d in latest] == [
        (missed[1], Outcome.NOT_MADE, str(Reason.SUPERSEDED)),
        (missed[0], Outcome.NOT_MADE, str(Reason.SUPERSEDED))]
    assert all(d.node == "n1" and d.run_id is None for d in latest)
    assert [(d.fire_time, d.reason) for d in store.decisions("none")] == [
        (f, str(Reason.MISSED_WHILE_DOWN)) for f in reversed(missed)]
    assert store.decisions("all") == []


def test_a_paused_or_disabled_job_makes_decisions_not_runs(store: Store) -> None:
    store.publish_jobs([JobSettings("paused"), JobSettings("off", enabled=False)])
    store.pause(["paused"], by="ops", reason=None, at=T0)
    now = store.now()
    fire = now - timedelta(milliseconds=200)
    made = store.claim_fires([claim(name, [fire], now, started=now - timedelta(minutes=1))
                              for name in ("paused", "off")], node="n1", now=now)
    assert made.runs == [] and made.watermarks == {"paused": now, "off": now}
    assert store.count_runs() == 0
    (paused,) = store.decisions("paused")
    assert (paused.outcome, paused.reason, paused.fire_time, paused.detail) == (
        Outcome.NOT_MADE, str(Reason.PAUSED), fire, "the job is paused (by ops)")
    (off,) = store.decisions("off")
    assert (off.outcome, off.reason) == (Outcome.NOT_MADE, str(Reason.DISABLED))
    # Dealt with: the watermark moved, so a later claim does not decide them again.
    assert store.claim_fires([claim("paused", [fire], now, started=now - timedelta(minutes=1))],
                             node="n1", now=now).runs == []
    assert len(store.decisions("paused")) == 1


def test_fires_not_yet_due_by_a_shared_store_clock_are_left_for_later(store: Store) -> None:
    store.publish_jobs([JobSettings("j")])
    now = store.now()
    soon, later = now + timedelta(milliseconds=300), now + timedelta(seconds=30)
    # A node whose clock runs 40 s ahead claims up to its own now.
    made = store.claim_fires([claim("j", [soon, later], now + timedelta(seconds=40),
                                    started=now - timedelta(minutes=1), catchup=Catchup.ALL)],
                             node="n1", now=now + timedelta(seconds=40))
    fired = sorted(c.fire_time for c in made.runs)
    if store.shared:
        # Judged by the database's clock: only what is due within the lead; the watermark
        # stops where the store stopped, so the later fire is claimed when it is due.
        assert fired == [soon]
        stopped = made.watermarks["j"]
        assert soon <= stopped < later and stopped <= store.now() + LEAD_ALLOWED
        assert store.watermark("j") == stopped
        again = store.claim_fires([claim("j", [later], later,
                                         started=now - timedelta(minutes=1))],
                                  node="n1", now=later)
        assert again.runs == []  # still not due
    else:
        # One node on one machine: its clock is the store's.
        assert fired == [soon, later]
        assert made.watermarks["j"] == now + timedelta(seconds=40)


# -- starting runs -------------------------------------------------------------------------------

def held(store: Store, *runs: tuple[int, str], node_id: str = "n1",
         trigger: Trigger = Trigger.SCHEDULE) -> None:
    """Queue runs (number, job) held by ``node_id``, in that order (queued a second apart)."""
    store.record([queued(n, job, node=node_id, trigger=trigger, fire=at(n)
                         if trigger is Trigger.SCHEDULE else None) for n, job in runs])


def verdicts(started: list[Any]) -> list[tuple[str, Verdict]]:
    return [(s.run.id, s.decision.verdict) for s in started]


def test_start_runs_forbid_skips_over_an_active_run(store: Store) -> None:
    store.publish_jobs([JobSettings("j", Concurrency(Policy.FORBID))])
    held(store, (1, "j"), (2, "j"))
    now = store.now()
    first = store.start_runs("n1", [rid(1)], now=now)
    assert verdicts(first) == [(rid(1), Verdict.START)]
    assert (first[0].run.status, first[0].run.attempt, first[0].run.node) == (
        RunStatus.RUNNING, 1, "n1")
    second = store.start_runs("n1", [rid(2)], now=now)
    assert verdicts(second) == [(rid(2), Verdict.SKIP)]
    assert second[0].decision.reason is Reason.OVERLAP
    run = store.run(rid(2))
    assert run is not None and run.status is RunStatus.SKIPPED and run.reason is not None
    assert "forbid" in run.reason and run.finished_at is not None
    outcomes = {(d.run_id, d.outcome) for d in store.decisions("j")}
    assert outcomes == {(rid(1), Outcome.FIRED), (rid(2), Outcome.SKIPPED)}
    # A run not held by the node, or no longer queued, is left out.
    assert store.start_runs("n1", [rid(1), rid(2)], now=now) == []
    held(store, (3, "j"), node_id="n2")
    assert store.start_runs("n1", [rid(3)], now=now) == []
    assert status(store, rid(3)) is RunStatus.QUEUED


def test_start_runs_queue_waits_then_starts_in_order(store: Store) -> None:
    store.publish_jobs([JobSettings("j", Concurrency(Policy.QUEUE, max_queued=1))])
    held(store, (1, "j"), (2, "j"), (3, "j"))
    now = store.now()
    assert verdicts(store.start_runs("n1", [rid(1)], now=now)) == [(rid(1), Verdict.START)]
    assert verdicts(store.start_runs("n1", [rid(2), rid(3)], now=now)) == [
        (rid(2), Verdict.QUEUE), (rid(3), Verdict.SKIP)]  # the queue holds one
    assert store.waiting_runs("n1") == [rid(2)]
    assert status(store, rid(2)) is RunStatus.QUEUED
    # Its turn comes once the active run has ended.
    assert verdicts(store.start_runs("n1", [rid(2)], now=now)) == [(rid(2), Verdict.QUEUE)]
    store.record([RunFinished(rid(1), RunStatus.SUCCEEDED, at(5), attempt=1)], node="n1")
    later = store.start_runs("n1", store.waiting_runs("n1"), now=now)
    assert verdicts(later) == [(rid(2), Verdict.START)]
    assert later[0].run.status is RunStatus.RUNNING and store.waiting_runs("n1") == []
    # A run kept waiting is in the decision log once, when its turn comes, not at every look.
    assert sorted((d.run_id, d.outcome) for d in store.decisions("j")) == [
        (rid(1), Outcome.FIRED), (rid(2), Outcome.FIRED), (rid(3), Outcome.SKIPPED)]


def test_start_runs_replace_asks_the_active_run_to_stop(store: Store) -> None:
    store.publish_jobs([JobSettings("j", Concurrency(Policy.REPLACE))])
    held(store, (1, "j"))
    held(store, (2, "j"), node_id="n2")
    now = store.now()
    store.start_runs("n1", [rid(1)], now=now)
    (replacing,) = store.start_runs("n2", [rid(2)], now=now)
    assert replacing.decision.verdict is Verdict.REPLACE and replacing.replaced == (rid(1),)
    assert store.stop_requests("n1") == [
        StopRequest(rid(1), f"replaced by run {rid(2)}", RunStatus.CANCELLED)]
    assert store.stop_requests("n2") == []
    assert store.waiting_runs("n2") == [rid(2)]
    store.record([RunFinished(rid(1), RunStatus.CANCELLED, at(3), attempt=1)], node="n1")
    assert verdicts(store.start_runs("n2", [rid(2)], now=now)) == [(rid(2), Verdict.START)]


def test_start_runs_max_active_across_nodes(store: Store) -> None:
    store.publish_jobs([JobSettings("j", Concurrency(Policy.ALLOW, max_active=2))])
    held(store, (1, "j"), node_id="a")
    held(store, (2, "j"), node_id="b")
    held(store, (3, "j"), node_id="c")
    now = store.now()
    assert verdicts(store.start_runs("a", [rid(1)], now=now)) == [(rid(1), Verdict.START)]
    assert verdicts(store.start_runs("b", [rid(2)], now=now)) == [(rid(2), Verdict.START)]
    (third,) = store.start_runs("c", [rid(3)], now=now)
    assert (third.decision.verdict, third.decision.reason) == (Verdict.SKIP, Reason.MAX_ACTIVE)


def test_start_runs_decides_runs_of_many_jobs_at_once_as_one_by_one(store: Store) -> None:
    """Runs of different jobs are decided together (their jobs locked by one statement, their
    runs counted by one): each gets what it would get alone, a job without a row included."""
    store.publish_jobs([JobSettings("forbid", Concurrency(Policy.FORBID)),
                        JobSettings("queue", Concurrency(Policy.QUEUE, max_queued=1)),
                        JobSettings("two", Concurrency(Policy.ALLOW, max_active=2)),
                        JobSettings("one", Concurrency(Policy.ALLOW, max_active=1))])
    held(store, (1, "forbid"), (2, "queue"), (3, "queue"), (4, "two"), (5, "one"))
    now = store.now()
    assert verdicts(store.start_runs("n1", [rid(1), rid(2), rid(4), rid(5)], now=now)) == [
        (rid(1), Verdict.START), (rid(2), Verdict.START), (rid(4), Verdict.START),
        (rid(5), Verdict.START)]
    assert verdicts(store.start_runs("n1", [rid(3)], now=now)) == [(rid(3), Verdict.QUEUE)]
    held(store, (6, "forbid"), (7, "queue"), (8, "two"), (9, "one"), (10, "unpublished"))
    started = store.start_runs("n1", [rid(n) for n in range(6, 11)], now=now)
    assert [(s.run.id, s.decision.verdict, s.decision.reason) for s in started] == [
        (rid(6), Verdict.SKIP, Reason.OVERLAP),  # forbid, and one runs
        (rid(7), Verdict.SKIP, Reason.QUEUE_FULL),  # the queue holds run 3 already
        (rid(8), Verdict.START, None),  # one of two runs
        (rid(9), Verdict.SKIP, Reason.MAX_ACTIVE),
        (rid(10), Verdict.START, None)]  # its row made and locked on the way
    assert store.count_runs(status=RunStatus.RUNNING) == 6
    assert store.waiting_runs("n1") == [rid(3)]


def test_start_runs_skips_automatic_runs_while_the_circuit_is_open(store: Store) -> None:
    store.publish_jobs([JobSettings("j", breaker=CircuitBreaker(after=2, cooldown=3600))])
    now = store.now()
    for n in (1, 2):
        store.record([RunQueued(rid(n), "j", Trigger.SCHEDULE, now, fire_time=at(n),
                                node="n1")])
        store.start_runs("n1", [rid(n)], now=now)
        store.record([RunFinished(rid(n), RunStatus.FAILED, now, attempt=1)], node="n1")
    assert store.job_states()["j"].failures == 2
    held(store, (3, "j"))
    held(store, (4, "j"), trigger=Trigger.MANUAL)
    started = store.start_runs("n1", [rid(3), rid(4)], now=now)
    assert verdicts(started) == [(rid(3), Verdict.SKIP), (rid(4), Verdict.START)]
    assert started[0].decision.reason is Reason.CIRCUIT_OPEN


def test_start_runs_force_and_stopping(store: Store) -> None:
    store.publish_jobs([JobSettings("j", Concurrency(Policy.FORBID))])
    held(store, (1, "j"), (2, "j"), (3, "j"))
    now = store.now()
    store.start_runs("n1", [rid(1)], now=now)
    assert verdicts(store.start_runs("n1", [rid(2)], now=now, force=[rid(2)])) == [
        (rid(2), Verdict.START)]
    (stopping,) = store.start_runs("n1", [rid(3)], now=now, stopping=True)
    assert (stopping.decision.verdict, stopping.decision.reason) == (
        Verdict.SKIP, Reason.SHUTTING_DOWN)
    assert store.count_runs(status=RunStatus.RUNNING) == 2


def test_one_start_per_forbid_job_when_nodes_start_at_once(open_store: Opener) -> None:
    """The policy is decided under the job's lock: of many runs started at once on several
    nodes, one runs (CLUSTER.md rule 6)."""
    stores = [open_store() for _ in range(4)]
    stores[0].publish_jobs([JobSettings("j", Concurrency(Policy.FORBID))])
    for n, each in enumerate(stores):
        held(each, (n + 1, "j"), node_id=f"n{n}")
    barrier = threading.Barrier(len(stores))
    results: list[Verdict] = []

    def starter(n: int, each: Store) -> None:
        barrier.wait()
        results.extend(s.decision.verdict for s in each.start_runs(
            f"n{n}", [rid(n + 1)], now=each.now()))

    threads = [threading.Thread(target=starter, args=(n, each)) for n, each in
               enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == sorted([Verdict.START] + [Verdict.SKIP] * 3)
    assert stores[0].count_runs(status=RunStatus.RUNNING) == 1


def test_the_policy_holds_for_a_job_no_scheduler_has_published(open_store: Opener) -> None:
    """A job without a row yet (its runs came from a trigger before any scheduler loaded it)
    is locked all the same: its row is made first."""
    stores = [open_store() for _ in range(4)]
    for n, each in enumerate(stores):
        held(each, (n + 1, "new"), node_id=f"n{n}", trigger=Trigger.MANUAL)
    barrier = threading.Barrier(len(stores))
    results: list[Verdict] = []

    def starter(n: int, each: Store) -> None:
        barrier.wait()
        results.extend(s.decision.verdict for s in each.start_runs(
            f"n{n}", [rid(n + 1)], now=each.now()))

    threads = [threading.Thread(target=starter, args=(n, each)) for n, each in
               enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == sorted([Verdict.START] + [Verdict.SKIP] * 3)  # forbid, the default


def test_failures_counted_at_once_on_several_nodes_are_all_counted(open_store: Opener) -> None:
    stores = [open_store() for _ in range(4)]
    stores[0].publish_jobs([JobSettings("j", Concurrency(Policy.ALLOW),
                                        CircuitBreaker(after=100, cooldown=60))])
    runs = 40
    for n in range(runs):
        held(stores[0], (n, "j"), node_id=f"n{n % 4}")
        stores[0].start_runs(f"n{n % 4}", [rid(n)], now=stores[0].now())
    barrier = threading.Barrier(len(stores))

    def finisher(k: int, each: Store) -> None:
        barrier.wait()
        for n in range(k, runs, len(stores)):
            each.record([RunFinished(rid(n), RunStatus.FAILED, at(n), attempt=1)],
                        node=f"n{k}")

    threads = [threading.Thread(target=finisher, args=(k, each))
               for k, each in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stores[0].job_states()["j"].failures == runs


# -- claiming runs nobody holds -------------------------------------------------------------------

def test_claim_runs_takes_ready_runs_nobody_holds_oldest_first(store: Store) -> None:
    store.publish_jobs([JobSettings(name, Concurrency(Policy.ALLOW)) for name in "abcde"])
    store.record([queued(4, "d"), queued(2, "b"), queued(1, "a"), queued(3, "c"),
                  queued(5, "e", node="other")])  # held: not for the taking
    future = RunQueued(rid(6), "a", Trigger.MANUAL, store.now() + timedelta(hours=1))
    store.record([future])  # not ready yet
    taken = store.claim_runs(node("n1"), limit=2, now=store.now())
    assert verdicts(taken) == [(rid(1), Verdict.START), (rid(2), Verdict.START)]
    assert all(s.run.node == "n1" and s.run.status is RunStatus.RUNNING for s in taken)
    assert [s.run.id for s in store.claim_runs(node("n2"), limit=10, now=store.now())] == [
        rid(3), rid(4)]
    assert store.claim_runs(node("n3"), limit=10, now=store.now()) == []
    assert store.claim_runs(node("n3"), limit=0, now=store.now()) == []
    assert status(store, rid(6)) is RunStatus.QUEUED


def test_claim_runs_only_on_nodes_with_the_runs_on_labels(store: Store) -> None:
    store.record([queued(1, runs_on={"zone": "eu", "gpu": "yes"}), queued(2)])
    us = node("us", labels={"zone": "us", "gpu": "yes"})
    eu = node("eu", labels={"zone": "eu", "gpu": "yes", "extra": "x"})
    assert [s.run.id for s in store.claim_runs(us, limit=10, now=store.now())] == [rid(2)]
    assert status(store, rid(1)) is RunStatus.QUEUED
    (taken,) = store.claim_runs(eu, limit=10, now=store.now())
    assert taken.run.id == rid(1) and taken.run.node == "eu"


def test_claim_runs_decides_by_policy_and_holds_what_waits(store: Store) -> None:
    store.publish_jobs([JobSettings("q", Concurrency(Policy.QUEUE))])
    store.record([queued(1, "q"), queued(2, "q")])
    taken = store.claim_runs(node("n1"), limit=10, now=store.now())
    assert verdicts(taken) == [(rid(1), Verdict.START), (rid(2), Verdict.QUEUE)]
    assert store.waiting_runs("n1") == [rid(2)]
    run = store.run(rid(2))
    assert run is not None and run.node == "n1"


def test_concurrent_claimers_never_take_the_same_run(open_store: Opener) -> None:
    stores = [open_store() for _ in range(4)]
    jobs = [f"job{n}" for n in range(60)]
    stores[0].publish_jobs([JobSettings(name, Concurrency(Policy.ALLOW)) for name in jobs])
    stores[0].record([queued(n, name) for n, name in enumerate(jobs)])
    barrier = threading.Barrier(len(stores))
    taken: dict[str, list[str]] = {}

    def claimer(name: str, each: Store) -> None:
        mine = taken.setdefault(name, [])
        barrier.wait()
        while batch := each.claim_runs(node(name), limit=3, now=each.now()):
            mine.extend(s.run.id for s in batch)

    threads = [threading.Thread(target=claimer, args=(f"n{n}", each))
               for n, each in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [r for runs in taken.values() for r in runs]
    assert sorted(everything) == sorted(rid(n) for n in range(len(jobs)))  # each once
    assert stores[0].count_runs(status=RunStatus.RUNNING) == len(jobs)
    for name, runs in taken.items():
        assert all(r.node == name for r in map(stores[0].run, runs) if r is not None)


def test_release_lets_any_node_take_queued_runs(store: Store) -> None:
    held(store, (1, "j"), (2, "j"), (3, "k"))
    held(store, (4, "j"), node_id="n2")
    store.start_runs("n1", [rid(3)], now=store.now())
    store.release_runs("n1", [rid(1), rid(3), rid(4)])
    nodes_of = {r.id: r.node for r in store.active_runs()}
    assert nodes_of == {rid(1): None, rid(2): "n1", rid(3): "n1", rid(4): "n2"}
    (taken,) = store.claim_runs(node("n3"), limit=10, now=store.now())
    assert taken.run.id == rid(1)


def test_claim_runs_only_the_runs_named(store: Store) -> None:
    store.publish_jobs([JobSettings(name, Concurrency(Policy.ALLOW)) for name in "abc"])
    store.record([queued(1, "a"), queued(2, "b"), queued(3, "c")])
    assert store.claim_runs(node("n1"), limit=5, now=store.now(), only=[]) == []
    taken = store.claim_runs(node("n1"), limit=5, now=store.now(), only=[rid(3), rid(9)])
    assert [s.run.id for s in taken] == [rid(3)]
    assert {r.id for r in store.active_runs() if r.node is None} == {rid(1), rid(2)}


def test_fired_gives_the_runs_holding_a_jobs_instants(store: Store) -> None:
    store.record([
        queued(1, fire=at(60)), queued(2, fire=at(120)), queued(3, fire=at(180)),
        queued(4, fire=at(120), trigger=Trigger.MANUAL),  # carries the instant, holds none
        queued(5, "other", fire=at(120)),
        RunQueued(rid(6), "j", Trigger.BACKFILL, at(6), fire_time=at(240), parallel=2),
        RunQueued(rid(7), "j", Trigger.MANUAL, at(7), fire_time=at(300), keyed=True),
    ])
    fired = store.fired("j", since=at(120), until=at(300))
    assert {f: r.id for f, r in fired.items()} == {at(120): rid(2), at(180): rid(3),
                                                   at(240): rid(6), at(300): rid(7)}
    assert store.record([queued(8, fire=at(240))]) == {rid(8)}  # a backfill holds its instant


def test_shipped_logs_read_back_from_any_offset(store: Store) -> None:
    store.record([queued(1), StepStarted(rid(1), "s", 1, at(1), "s.log")])
    assert store.shipped_log(rid(1), "s") == (b"", None)
    binary = bytes(range(256))
    store.ship_log(rid(1), "s", 0, b"one\n")
    store.ship_log(rid(1), "s", 4, binary)
    store.ship_log(rid(1), "s", 4 + 256 + 10, b"after a hole")  # not shipped in between
    assert store.shipped_log(rid(1), "s") == (b"one\n" + binary, None)
    assert store.shipped_log(rid(1), "s", 2, limit=10) == ((b"one\n" + binary)[2:12], None)
    # The step ended; its log was rebuilt to 7 bytes: what lay past that goes.
    store.ship_log(rid(1), "s", 4, b"end", final=7)
    assert store.shipped_log(rid(1), "s") == (b"one\nend", 7)
    store.record(finished_run(2, RunStatus.SUCCEEDED))
    store.record([RunFinished(rid(1), RunStatus.SUCCEEDED, at(9))])
    store.prune("j", keep_runs=0, keep_days=None, now=at(99))
    assert store.shipped_log(rid(1), "s") == (b"", None)
    assert scalar(store, "SELECT count(*) FROM log_chunks") == 0


def test_a_shipped_log_is_the_holders_and_a_new_attempt_starts_it_anew(store: Store) -> None:
    """Found by the cluster harness: a node frozen past its lease woke, its shipper shipped
    the final version of its cut-short attempt, and overwrote the whole log that the retried
    attempt had shipped from another node. A shipment carries its node, as every write of a
    run does, and is refused from a node that does not hold the run; the first shipment of an
    attempt replaces what an earlier one shipped."""
    store.publish_jobs([JobSettings("j", on_node_loss_retry=True)])
    store.register_node(node("a"), lease=300)
    store.register_node(node("b"), lease=300)
    held(store, (1, "j"), node_id="a")
    store.start_runs("a", [rid(1)], now=store.now())
    store.record([StepStarted(rid(1), "s", 1, at(1), "s.log")], node="a")
    assert store.ship_log(rid(1), "s", 0, b"attempt 1: one\n", node="a")
    assert store.ship_log(rid(1), "s", 15, b"attempt 1: two, and a long line\n", node="a")
    store.reap(now=at(100), dead=["a"])
    store.claim_runs(node("b"), limit=5, now=store.now())
    assert store.ship_log(rid(1), "s", 0, b"attempt 2\n", node="b")
    assert store.shipped_log(rid(1), "s") == (b"attempt 2\n", None)  # nothing of attempt 1
    assert store.ship_log(rid(1), "s", 0, b"attempt 2\ndone\n", final=15, node="b")
    assert not store.ship_log(rid(1), "s", 0, b"attempt 1: one\n", final=15, node="a")
    assert store.shipped_log(rid(1), "s") == (b"attempt 2\ndone\n", 15)


# -- operators -----------------------------------------------------------------------------------

def test_request_stop_ends_a_queued_run_and_flags_a_running_one(store: Store) -> None:
    held(store, (1, "j"), (2, "k"), (3, "l"))
    store.start_runs("n1", [rid(2)], now=store.now())
    store.record(finished_run(4, RunStatus.SUCCEEDED, "m"))
    stopped = store.request_stop(rid(1), reason="asked by ops", at=at(50))
    assert stopped is not None
    assert (stopped.status, stopped.reason, stopped.finished_at) == (
        RunStatus.CANCELLED, "asked by ops", at(50))
    skipped = store.request_stop(rid(3), reason="superseded", status=RunStatus.SKIPPED,
                                 at=at(51))
    assert skipped is not None and skipped.status is RunStatus.SKIPPED
    flagged = store.request_stop(rid(2), reason="first", at=at(52))
    assert flagged is not None and flagged.status is RunStatus.RUNNING
    store.request_stop(rid(2), reason="second", status=RunStatus.INTERRUPTED, at=at(53))
    assert store.stop_requests("n1") == [StopRequest(rid(2), "first", RunStatus.CANCELLED)]
    assert store.stop_requests("n2") == []
    assert store.request_stop(rid(4), reason="x", at=at(54)) is None  # finished already
    assert store.request_stop(rid(9), reason="x", at=at(54)) is None  # unknown


# -- nodes and leases ----------------------------------------------------------------------------

def test_nodes_register_renew_leave_and_are_listed(store: Store) -> None:
    before = store.now()
    a = NodeInfo(id="a", name="alpha", roles=frozenset({"runner"}), labels={"zone": "eu"},
                 version="1.2", identity="boot/ns/1:2", listen="127.0.0.1:8765",
                 digest="d1", max_runs=4)
    registered = store.register_node(a, lease=30)
    assert before <= registered <= store.now()
    store.register_node(node("b"), lease=30)
    held(store, (1, "j"), node_id="a")
    store.start_runs("a", [rid(1)], now=store.now())
    listed = {n.id: n for n in store.nodes()}
    assert sorted(listed) == ["a", "b"]
    got = listed["a"]
    assert (got.name, got.roles, dict(got.labels), got.version, got.identity, got.listen,
            got.digest, got.max_runs, got.state, got.active_runs) == (
        "alpha", frozenset({"runner"}), {"zone": "eu"}, "1.2", "boot/ns/1:2",
        "127.0.0.1:8765", "d1", 4, NodeState.ALIVE, 1)
    assert got.started_at == got.heartbeat_at == registered
    assert got.expires_at == registered + timedelta(seconds=30)

    renewed = store.renew_lease("a", lease=60, digest="d2")
    assert renewed is not None and renewed >= registered
    got = {n.id: n for n in store.nodes()}["a"]
    assert (got.heartbeat_at, got.expires_at, got.digest) == (
        renewed, renewed + timedelta(seconds=60), "d2")
    store.renew_lease("a", lease=60)  # no digest: the last one stays
    assert {n.id: n for n in store.nodes()}["a"].digest == "d2"
    assert store.alive_identities() == {"a": "boot/ns/1:2", "b": ""}

    store.leave("b")
    assert {n.id: n.state for n in store.nodes()} == {"a": NodeState.ALIVE,
                                                      "b": NodeState.LEFT}
    assert [n.id for n in store.nodes(since=store.now() + SECOND)] == ["a"]  # alive only
    assert store.renew_lease("b", lease=30) is None
    assert store.alive_identities() == {"a": "boot/ns/1:2"}


def test_a_node_that_leaves_is_stamped_with_when_it_left(store: Store) -> None:
    # `why` tells when no daemon ran: a daemon that stopped before its first renewal must
    # not look as if it ran until a lease after its start.
    registered = store.register_node(node("b"), lease=30)
    time.sleep(0.01)
    leaving = store.now()
    store.leave("b")
    [left] = store.nodes()
    assert left.state is NodeState.LEFT and left.started_at == registered
    assert left.heartbeat_at is not None and leaving <= left.heartbeat_at <= store.now()


def test_reap_takes_back_the_runs_of_a_dead_node(store: Store) -> None:
    store.publish_jobs([JobSettings("j", Concurrency(Policy.ALLOW)), JobSettings("k")])
    store.register_node(node("dead"), lease=300)
    store.register_node(node("live"), lease=300)
    held(store, (1, "j"), (2, "j"), node_id="dead")
    held(store, (3, "k"), node_id="live")
    store.start_runs("dead", [rid(1)], now=store.now())
    store.start_runs("live", [rid(3)], now=store.now())
    store.record([StepStarted(rid(1), "done", 1, at(1), "done.log"),
                  StepFinished(rid(1), "done", StepStatus.SUCCEEDED, at(2), attempt=1),
                  StepStarted(rid(1), "busy", 1, at(2), "busy.log"),
                  StepSpawned(rid(1), "busy", 777, 777)], node="dead")
    reaped = store.reap(now=at(100), dead=["dead"])
    assert [r.id for r in reaped] == [rid(1), rid(2)]
    one, two = reaped
    assert (one.status, one.reason, one.finished_at) == (
        RunStatus.INTERRUPTED, INTERRUPTED_RUNNING, at(100))
    done, busy = one.steps
    assert done.status is StepStatus.SUCCEEDED and done.finished_at == at(2)
    assert (busy.status, busy.pgid, busy.error, busy.finished_at) == (
        StepStatus.CANCELLED, 777, INTERRUPTED_RUNNING, at(100))
    assert (two.status, two.node) == (RunStatus.QUEUED, None)  # released to any node
    assert status(store, rid(3)) is RunStatus.RUNNING
    assert {n.id: n.state for n in store.nodes()} == {"dead": NodeState.LOST,
                                                      "live": NodeState.ALIVE}
    assert store.renew_lease("dead", lease=30) is None  # it must fence itself
    assert store.reap(now=at(200), dead=["dead"]) == []  # once
    # Its late writes are refused.
    store.record([RunFinished(rid(1), RunStatus.SUCCEEDED, at(101), attempt=1)], node="dead")
    assert status(store, rid(1)) is RunStatus.INTERRUPTED


def test_reap_of_an_expired_lease_only_in_a_shared_store(store: Store) -> None:
    store.register_node(node("gone"), lease=-1)  # its lease ran out a second ago
    store.register_node(node("fresh"), lease=300)
    held(store, (1, "j"), node_id="gone")
    store.start_runs("gone", [rid(1)], now=store.now())
    reaped = store.reap(now=at(100))
    if store.shared:  # another machine may take its runs over
        assert [(r.id, r.status) for r in reaped] == [(rid(1), RunStatus.INTERRUPTED)]
        assert store.renew_lease("gone", lease=30) is None
    else:  # one machine: only a process seen dead counts
        assert reaped == []
        assert store.renew_lease("gone", lease=30) is not None
    assert store.renew_lease("fresh", lease=30) is not None


def test_runs_of_a_node_nobody_knows_are_taken_back(store: Store) -> None:
    held(store, (1, "j"), node_id="ghost")  # an older pipeline's, say, or a pruned node
    store.start_runs("ghost", [rid(1)], now=store.now())
    (run,) = store.reap(now=at(100))
    assert (run.id, run.status) == (rid(1), RunStatus.INTERRUPTED)


def test_two_reapers_take_a_lost_node_once(open_store: Opener) -> None:
    stores = [open_store() for _ in range(4)]
    first = stores[0]
    first.publish_jobs([JobSettings(f"j{n}", Concurrency(Policy.ALLOW)) for n in range(20)])
    first.register_node(node("lost"), lease=-1)
    held(first, *[(n, f"j{n}") for n in range(20)], node_id="lost")
    first.start_runs("lost", [rid(n) for n in range(10)], now=first.now())
    barrier = threading.Barrier(len(stores))
    reaped: list[str] = []

    def reaper(each: Store) -> None:
        barrier.wait()
        reaped.extend(r.id for r in each.reap(now=at(100), dead=["lost"]))

    threads = [threading.Thread(target=reaper, args=(each,)) for each in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(reaped) == sorted(rid(n) for n in range(20))
    assert first.count_runs(status=RunStatus.INTERRUPTED) == 10


def test_on_node_loss_retry_queues_the_run_again_for_another_node(store: Store) -> None:
    store.publish_jobs([JobSettings("j", on_node_loss_retry=True)])
    store.register_node(node("a"), lease=300)
    held(store, (1, "j"), node_id="a")
    store.start_runs("a", [rid(1)], now=store.now())
    store.record([StepStarted(rid(1), "s", 1, at(1), "s.log")], node="a")
    (reaped,) = store.reap(now=at(100), dead=["a"])
    assert (reaped.status, reaped.node, reaped.attempt, reaped.reason) == (
        RunStatus.QUEUED, None, 1, f"retried: {NODE_LOST}")
    (step,) = reaped.steps
    assert step.status is StepStatus.CANCELLED
    # The lost node's end of its attempt is refused; the run goes on elsewhere.
    store.record([RunFinished(rid(1), RunStatus.FAILED, at(101), attempt=1)], node="a")
    assert status(store, rid(1)) is RunStatus.QUEUED
    (again,) = store.claim_runs(node("b"), limit=5, now=store.now())
    assert (again.decision.verdict, again.run.node, again.run.attempt, again.run.status) == (
        Verdict.START, "b", 2, RunStatus.RUNNING)
    store.record([RunFinished(rid(1), RunStatus.FAILED, at(102), attempt=1)], node="b")
    assert status(store, rid(1)) is RunStatus.RUNNING  # a stale attempt, even from b
    store.record([RunFinished(rid(1), RunStatus.SUCCEEDED, at(103), attempt=2)], node="b")
    assert status(store, rid(1)) is RunStatus.SUCCEEDED


def test_a_lost_node_takes_no_run(store: Store) -> None:
    """Found by the cluster harness: a node woken from a freeze past its lease polled for runs
    nobody held before its lease loop learnt it was lost, and took its own retried run
    again, under the id the others had declared lost (so the run was taken back once more).
    The store refuses a claim from a node that is not alive."""
    store.publish_jobs([JobSettings("j", on_node_loss_retry=True)])
    store.register_node(node("a"), lease=300)
    store.register_node(node("b"), lease=300)
    held(store, (1, "j"), node_id="a")
    store.start_runs("a", [rid(1)], now=store.now())
    store.reap(now=at(100), dead=["a"])
    assert store.claim_runs(node("a"), limit=5, now=store.now()) == []
    (again,) = store.claim_runs(node("b"), limit=5, now=store.now())
    assert (again.run.node, again.run.attempt) == ("b", 2)


def test_recovery_keeps_a_lost_nodes_log_unless_it_is_on_its_own_disk(store: Store,
                                                                      tmp_path: Path) -> None:
    """Found by the cluster harness: the node that took back a lost node's runs dropped the
    log of every step whose file was not in its own state directory, which in a cluster is
    every one of them (the file is on the lost node's disk, its start shipped to the store).
    With SQLite the reaper's directory is the dead daemon's: a file missing there was never
    written, and saying so keeps the record true."""
    gone = subprocess.Popen(["sleep", "30"])
    identity = machine_identity(gone.pid)
    gone.kill()
    gone.wait()
    store.register_node(node("a", identity=identity), lease=300)
    held(store, (1, "j"), node_id="a")
    store.start_runs("a", [rid(1)], now=store.now())
    log = log_relpath("j", rid(1), "s")
    store.record([StepStarted(rid(1), "s", 1, at(1), log)], node="a")
    if store.shared:
        store.ship_log(rid(1), "s", 0, b"half a line")
    elsewhere = tmp_path / "another-node"  # the reaper's own state directory: no such file
    (reaped,) = recover(store, elsewhere, at(10))
    assert reaped.status is RunStatus.INTERRUPTED
    (step,) = store.run(rid(1)).steps  # type: ignore[union-attr]
    if store.shared:
        assert step.log == log  # on the lost node's disk; `pipeline logs` reads the store
        assert store.shipped_log(rid(1), "s")[0] == b"half a line"
    else:
        assert step.log is None  # never written: the record says so


def test_recovery_of_a_retried_run_kills_the_lost_attempt_not_the_new_one(
        store: Store, tmp_path: Path) -> None:
    """Found by the cluster harness: the node that took back a lost node's run killed every
    process carrying the run's id, after the run was already back in the queue; a node on the
    same machine that had claimed it meanwhile lost its new attempt (the run ended failed,
    killed by SIGKILL). For a run queued again only the lost attempt's groups are killed."""
    store.publish_jobs([JobSettings("j", on_node_loss_retry=True)])
    gone = subprocess.Popen(["sleep", "30"])
    identity = machine_identity(gone.pid)
    gone.kill()
    gone.wait()
    store.register_node(node("a", identity=identity), lease=300)
    held(store, (1, "j"), node_id="a")
    store.start_runs("a", [rid(1)], now=store.now())
    env = {**os.environ, "PIPELINE_RUN_ID": rid(1)}
    lost = subprocess.Popen(["sleep", "30"], env=env, start_new_session=True)
    new = subprocess.Popen(["sleep", "30"], env=env, start_new_session=True)
    try:
        store.record([StepStarted(rid(1), "s", 1, at(1), ""),
                      StepSpawned(rid(1), "s", lost.pid, lost.pid)], node="a")
        (reaped,) = recover(store, tmp_path, at(10))
        assert reaped.status is RunStatus.QUEUED
        assert lost.wait(5) == -9  # the lost attempt's group
        assert new.poll() is None  # another attempt's: not the reaper's to kill
    finally:
        for proc in (lost, new):
            proc.kill()
            proc.wait()


def test_a_retried_run_of_an_allow_job_starts_beside_the_jobs_other_runs(store: Store) -> None:
    """Found by the cluster harness: a run queued again after its node was lost waited for
    its job to have no active run at all, which an `allow` job firing every second never has,
    so it never ran again. It was admitted once: only max_active may hold it back (and then it
    waits: tests/test_policy.py)."""
    store.publish_jobs([JobSettings("j", Concurrency(Policy.ALLOW, max_active=2),
                                    on_node_loss_retry=True)])
    store.register_node(node("a"), lease=300)
    store.register_node(node("b"), lease=300)
    held(store, (1, "j"), node_id="a")
    held(store, (2, "j"), node_id="b")
    store.start_runs("a", [rid(1)], now=store.now())
    store.start_runs("b", [rid(2)], now=store.now())
    store.reap(now=at(100), dead=["a"])
    (again,) = store.claim_runs(node("b"), limit=5, now=store.now())
    assert (again.run.id, again.decision.verdict, again.run.attempt) == (
        rid(1), Verdict.START, 2)


# -- the decision log ----------------------------------------------------------------------------

def test_decisions_are_listed_newest_first_by_their_fire(store: Store) -> None:
    store.record_decisions([
        StoredDecision("j", Outcome.FIRED, at(10), at(10), "n1", None, None, rid(1)),
        StoredDecision("j", Outcome.SKIPPED, at(21), at(20), "n1", "overlap", "busy", rid(2)),
        StoredDecision("j", Outcome.NOTIFIED, at(15)),  # no fire: by when it was decided
        StoredDecision("k", Outcome.LATE, at(30), at(30)),
    ])
    store.record_decisions([])
    listed = store.decisions("j")
    assert [(d.outcome, d.fire_time) for d in listed] == [
        (Outcome.SKIPPED, at(20)), (Outcome.NOTIFIED, None), (Outcome.FIRED, at(10))]
    assert listed[0] == StoredDecision("j", Outcome.SKIPPED, at(21), at(20), "n1", "overlap",
                                       "busy", rid(2))
    assert [d.outcome for d in store.decisions("j", since=at(12))] == [
        Outcome.SKIPPED, Outcome.NOTIFIED]
    assert [d.outcome for d in store.decisions("j", until=at(12))] == [Outcome.FIRED]
    assert [d.outcome for d in store.decisions("j", limit=1)] == [Outcome.SKIPPED]
    assert [d.job for d in store.decisions("k")] == ["k"]


# -- job files -----------------------------------------------------------------------------------

def test_definitions_are_remembered_replaced_and_forgotten(store: Store) -> None:
    source = "name: a\nsteps: [{id: x, run: echo 'é 100%'}]\n".encode() + b"\xff\x00"
    one = Definition("a.yaml", "a", "1" * 64, source, at(1))
    two = Definition("sub/b.yaml", "b", "2" * 64, b"name: b\n", at(2))
    store.remember_definitions([one, two], [])
    assert store.definitions() == {"a.yaml": one, "sub/b.yaml": two}
    newer = Definition("a.yaml", "a", "3" * 64, b"name: a\n", at(3))
    store.remember_definitions([newer], ["sub/b.yaml", "never.yaml"])
    assert store.definitions() == {"a.yaml": newer}


# -- retention -----------------------------------------------------------------------------------

def test_prune_by_count_keeps_the_newest_finished_runs(store: Store) -> None:
    store.record([
        *[e for n in range(1, 6) for e in finished_run(n, RunStatus.SUCCEEDED)],
        StepStarted(rid(1), "s", 1, at(1), f"logs/j/{rid(1)}/s.log"),
        queued(6), queued(7), RunStarted(rid(7), at(7)),  # active: kept, not counted
        *finished_run(8, RunStatus.FAILED, "other"),
    ])
    gone = store.prune("j", keep_runs=2, keep_days=None, now=at(1000))
    assert sorted(r.id for r in gone) == [rid(1), rid(2), rid(3)]
    assert [s.log for s in gone[0].steps] == [f"logs/j/{rid(1)}/s.log"]
    assert [r.id for r in store.runs()] == [rid(n) for n in (8, 7, 6, 5, 4)]
    assert scalar(store, "SELECT count(*) FROM steps") == 0  # the steps went with their run
    assert store.prune("j", keep_runs=2, keep_days=None, now=at(1000)) == []
    assert store.prune("j", keep_runs=None, keep_days=None, now=at(1000)) == []
    assert [r.id for r in store.prune("j", keep_runs=0, keep_days=None, now=at(1000))] == [
        rid(4), rid(5)]
    assert {r.id for r in store.active_runs()} == {rid(6), rid(7)}


def test_prune_by_age_uses_the_finish_time(store: Store) -> None:
    day = 86400.0
    store.record([
        *finished_run(1, RunStatus.SUCCEEDED, t=0),
        *finished_run(2, RunStatus.FAILED, t=2 * day),
        *finished_run(3, RunStatus.SUCCEEDED, t=9 * day),
        queued(4, t=0),  # old but active
    ])
    store.record_decisions([StoredDecision("j", Outcome.FIRED, at(0), at(0)),
                            StoredDecision("j", Outcome.FIRED, at(9 * day), at(9 * day))])
    now = at(10 * day)
    gone = store.prune("j", keep_runs=None, keep_days=7.5, now=now)
    assert sorted(r.id for r in gone) == [rid(1), rid(2)]
    assert {r.id for r in store.runs()} == {rid(3), rid(4)}
    assert [d.fire_time for d in store.decisions("j")] == [at(9 * day)]
    # Both limits: a run goes when either says so.
    store.record(finished_run(5, RunStatus.SUCCEEDED, t=9.5 * day))
    gone = store.prune("j", keep_runs=1, keep_days=30, now=now)
    assert [r.id for r in gone] == [rid(3)]


def test_prune_keeps_runs_whose_fire_is_after_the_watermark(store: Store) -> None:
    store.record([
        *finished_run(1, RunStatus.SUCCEEDED, fire=at(60)),
        *finished_run(2, RunStatus.SUCCEEDED, fire=at(120)),
        *finished_run(3, RunStatus.SUCCEEDED),  # a manual one, no fire
    ])
    # No watermark yet: every fired run guards its fire.
    assert [r.id for r in store.prune("j", keep_runs=0, keep_days=None, now=at(999))] == [
        rid(3)]
    store.record([WatermarkMoved("j", at(60))])
    assert [r.id for r in store.prune("j", keep_runs=0, keep_days=None, now=at(999))] == [
        rid(1)]
    assert store.fires_after("j", at(60)) == {at(120)}
    # The kept fire key still stops the fire from being made again.
    assert store.record([queued(9, fire=at(120))]) == {rid(9)}


def test_delete_run_refuses_an_active_run(store: Store) -> None:
    store.record([*finished_run(1, RunStatus.SUCCEEDED), StepStarted(rid(1), "s", 1, at(1), ""),
                  queued(2), queued(3), RunStarted(rid(3), at(3))])
    assert store.delete_run(rid(9)) is None
    for active in (rid(2), rid(3)):
        with pytest.raises(RunActive) as caught:
            store.delete_run(active)
        assert isinstance(caught.value, StateError) and caught.value.run_id == active
    deleted = store.delete_run(rid(1))
    assert deleted is not None and deleted.id == rid(1) and [s.id for s in deleted.steps] == ["s"]
    assert store.run(rid(1)) is None
    assert scalar(store, "SELECT count(*) FROM steps") == 0  # the steps went with their run
    assert {r.id for r in store.runs()} == {rid(2), rid(3)}


# -- both backends, as a whole -------------------------------------------------------------------

def test_many_threads_share_one_store(store: Store) -> None:
    def write(base: int) -> None:
        for n in range(base, base + 50):
            store.record([queued(n), RunStarted(rid(n), at(n))])
            assert store.run(rid(n)) is not None

    threads = [threading.Thread(target=write, args=(base,)) for base in (0, 100, 200, 300)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.count_runs(status=RunStatus.RUNNING) == 200


def test_the_schema_version_is_the_last_migration(store: Store) -> None:
    assert store.schema_version() == SCHEMA_VERSION


def test_reopening_keeps_everything(open_store: Opener) -> None:
    first = open_store()
    first.record([*finished_run(1, RunStatus.SUCCEEDED), WatermarkMoved("j", at(5))])
    first.close()
    again = open_store()
    assert again.run(rid(1)) is not None and again.watermark("j") == at(5)


def test_a_closed_store_raises_state_error(open_store: Opener) -> None:
    store = open_store()
    store.close()
    with pytest.raises(StateError):
        store.record([queued(1)])
    with pytest.raises(StateError):
        store.runs()


def _hundred_step_run(n: int) -> list[Event]:
    r = rid(n)
    events: list[Event] = [queued(n), RunStarted(r, at(1))]
    for k in range(100):
        events += [StepStarted(r, f"s{k}", 1, at(2), f"logs/j/{r}/s{k}.log"),
                   StepSpawned(r, f"s{k}", 1000 + k, 1000 + k),
                   StepFinished(r, f"s{k}", StepStatus.SUCCEEDED, at(3), attempt=1,
                                exit_code=0, outputs={"k": "v"})]
    events.append(RunFinished(r, RunStatus.SUCCEEDED, at(4)))
    return events


def test_recording_a_100_step_run_in_batches_is_cheaper_than_event_by_event(
        store: Store) -> None:
    """What the journal's group commit gives a fan-out: batches of 20 events, one transaction
    each. Timed against the same run recorded an event per transaction in the same test, not
    against a fixed figure, so a busy machine slows both (here, under load: 8 against 130 ms
    on SQLite, 90 against 340 ms on PostgreSQL; absolute figures are bin/bench's)."""
    def batched(n: int) -> float:
        events = _hundred_step_run(n)
        started = time.perf_counter()
        for i in range(0, len(events), 20):
            store.record(events[i:i + 20])
        return time.perf_counter() - started

    best = min(batched(n) for n in (1, 2, 3))  # a pause elsewhere must not decide it
    one_by_one = _hundred_step_run(4)
    started = time.perf_counter()
    for event in one_by_one:
        store.record([event])
    each = time.perf_counter() - started
    for n in (1, 2, 3, 4):
        run = store.run(rid(n))
        assert run is not None and run.status is RunStatus.SUCCEEDED and len(run.steps) == 100
    assert best < each, f"batched {best * 1000:.1f} ms, event by event {each * 1000:.1f} ms"


SHAPE = {
    "sqlite": """SELECT m.name, p.name FROM sqlite_master AS m, pragma_table_info(m.name) AS p
                 WHERE m.type = 'table' ORDER BY m.name, p.cid""",
    "postgres": """SELECT table_name, column_name FROM information_schema.columns
                   WHERE table_schema = 'public' AND table_name <> 'schema_version'
                   ORDER BY table_name, ordinal_position""",
}
INDEXES = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL",
    "postgres": """SELECT indexname FROM pg_indexes WHERE schemaname = 'public'
                   AND indexname NOT LIKE '%pkey' AND indexname NOT LIKE '%key'""",
}


def test_both_schemas_have_the_same_shape(tmp_path: Path, postgres_url: str) -> None:
    """One set of statements serves both: the same tables, columns (in order) and indexes,
    and the same number of migrations."""
    assert len(POSTGRES_MIGRATIONS) == len(SQLITE_MIGRATIONS) == SCHEMA_VERSION
    lite = SqliteStore.open(tmp_path)
    post = PostgresStore.open(postgres_url)
    try:
        shapes = []
        for name, each in (("sqlite", lite), ("postgres", post)):
            with each._read() as tx:
                columns: dict[str, list[str]] = {}
                for table, column in tx.execute(SHAPE[name]).fetchall():
                    columns.setdefault(table, []).append(column)
                indexes = {row[0] for row in tx.execute(INDEXES[name]).fetchall()}
            shapes.append((columns, indexes))
        assert shapes[0] == shapes[1]
        assert sorted(shapes[0][0]) == ["deadlines", "decisions", "definitions", "fired_keys",
                                        "jobs", "log_chunks", "nodes", "notices_sent", "outbox",
                                        "pool_slots", "pools", "runs", "steps"]
    finally:
        lite.close()
        post.close()


# -- notification cooldowns ----------------------------------------------------------------------

def test_what_a_gone_node_left_pending_is_taken_over_once(store: Store) -> None:
    store.register_node(node("alive"), lease=300)
    store.register_node(node("left"), lease=300)
    store.register_node(node("me"), lease=300)
    store.save_outbox("alive", [{"id": "a1"}])
    store.save_outbox("left", [{"id": "l1"}, {"id": "l2"}])
    store.save_outbox("gone", [{"id": "g1"}])  # a name no node row has any more
    store.save_outbox("me", [{"id": "m1"}])
    assert store.adopt_outboxes("me") == [{"id": "g1"}]  # "left" is still alive
    store.leave("left")
    assert store.adopt_outboxes("me") == [{"id": "l1"}, {"id": "l2"}]
    assert [e["id"] for e in store.load_outbox("me")] == ["m1", "g1", "l1", "l2"]
    assert store.load_outbox("left") == [] and store.load_outbox("gone") == []
    assert store.load_outbox("alive") == [{"id": "a1"}]  # a live node keeps its own
    assert store.adopt_outboxes("other") == []  # taken once


def test_a_notice_is_claimed_once_within_its_cooldown(store: Store) -> None:
    claim = functools.partial(store.claim_notice, "j", "notify[0] ping", "failure",
                              cooldown=1800)
    assert claim(at=at(0), delivery="d1") is None
    assert claim(at=at(60), delivery="d2") == at(0)  # within 30m of the one sent
    assert claim(at=at(0), delivery="d1") is None  # the same delivery, tried after a restart
    assert claim(at=at(1800), delivery="d3") is None  # 30m after: sent, and now the last
    assert claim(at=at(1801), delivery="d4") == at(1800)
    # Another event kind, target or job has a cooldown of its own.
    assert store.claim_notice("j", "notify[0] ping", "success", at=at(1801), cooldown=1800,
                              delivery="d5") is None
    assert store.claim_notice("j", "notify[1] webhook", "failure", at=at(1801),
                              cooldown=1800, delivery="d6") is None
    assert store.claim_notice("k", "notify[0] ping", "failure", at=at(1801), cooldown=1800,
                              delivery="d7") is None


def test_nodes_claiming_one_notice_at_once_send_it_once(open_store: Opener) -> None:
    stores = [open_store() for _ in range(6)]
    barrier = threading.Barrier(len(stores))

    def claim(index: int) -> datetime | None:
        barrier.wait()
        return stores[index].claim_notice("j", "notify[0] ping", "failure", at=at(index),
                                          cooldown=3600, delivery=f"d{index}")

    with concurrent.futures.ThreadPoolExecutor(len(stores)) as pool:
        answers = list(pool.map(claim, range(len(stores))))
    assert answers.count(None) == 1


# -- the PostgreSQL dialect ----------------------------------------------------------------------

@pytest.mark.parametrize(("statement", "expected"), [
    ("SELECT :a", "SELECT %(a)s"),
    ("WHERE id = :id AND node = :node_2", "WHERE id = %(id)s AND node = %(node_2)s"),
    ("SELECT x::text, :a::integer", "SELECT x::text, %(a)s::integer"),
    ("SELECT ':not' || ':x', \"col:y\"", "SELECT ':not' || ':x', \"col:y\""),
    ("SELECT 'it''s :x', :y", "SELECT 'it''s :x', %(y)s"),
    ("SELECT '50%', 5 % 2, :p", "SELECT '50%%', 5 %% 2, %(p)s"),
    ("SELECT 1 -- :x 100%\n, :z", "SELECT 1 -- :x 100%%\n, %(z)s"),
    ("SELECT '12:30'", "SELECT '12:30'"),
])
def test_statements_are_rewritten_for_psycopg(statement: str, expected: str) -> None:
    assert to_psycopg(statement) == expected


def test_every_verb_of_every_family_is_retried_on_postgres() -> None:
    """``Store`` is made of one protocol per family of verbs: the verbs PostgreSQL runs again
    after a broken connection are all of theirs, not only those written in ``Store`` itself."""
    verbs = {name for family in Store.__mro__ for name, value in vars(family).items()
             if callable(value) and not name.startswith("_") and name != "close"}
    assert len(verbs) > 50  # every family's, with now and schema_version
    assert set(pg.VERBS) == verbs
    assert [name for name in sorted(verbs)
            if not hasattr(getattr(PostgresStore, name), "__wrapped__")] == []


@pytest.mark.parametrize(("url", "masked"), [
    ("postgresql://node:s3cret@db:5432/pipe", "postgresql://node:***@db:5432/pipe"),
    ("postgresql://node@db/pipe", "postgresql://node@db/pipe"),
    ("postgresql://db/pipe?sslmode=require", "postgresql://db/pipe?sslmode=require"),
    ("postgresql://node:s3cret@[::1/db", "postgresql://node:***@[::1/db"),
    ("postgresql://node:pa/ss@w@rd@db/pipe", "postgresql://node:***@db/pipe"),
    ("postgres://db/pipe?user=a&password=s3cret&x=1", "postgres://db/pipe?user=a&password=***&x=1"),
    ("postgresql://db:5432/pipe?application_name=a@b",  # no password: a port
     "postgresql://db:5432/pipe?application_name=a@b"),
    ("postgresql://u:pw@db:5432/pipe?application_name=a@b",
     "postgresql://u:***@db:5432/pipe?application_name=a@b"),
    ("postgresql://u:a/b?c#d@db:5432/pipe", "postgresql://u:***@db:5432/pipe"),
    ("postgresql://[::1]:5432/pipe?x=a@b", "postgresql://[::1]:5432/pipe?x=a@b"),
    ("postgresql://u:@db/pipe", "postgresql://u:***@db/pipe"),
    ("host=db password=s3#c/r@t user=u", "host=db password=*** user=u"),
    ("host=db password = 's3 cr\\'et' user=u", "host=db password = *** user=u"),
])
def test_url_passwords_are_masked(url: str, masked: str) -> None:
    assert mask_url(url) == masked


# -- SQLite alone: the database file ------------------------------------------------------------

def test_open_creates_a_wal_database_with_full_sync(tmp_path: Path) -> None:
    state = tmp_path / "new" / "state"
    store = SqliteStore.open(state)
    try:
        assert store.path == state / "state.db" and store.path.exists()
        conn = store._conn  # pragmas are per connection: ask the store's own
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    finally:
        store.close()


def test_a_database_from_a_newer_pipeline_is_refused(tmp_path: Path) -> None:
    SqliteStore.open(tmp_path).close()
    with sqlite3.connect(tmp_path / "state.db") as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StateError, match="made by a newer pipeline"):
        SqliteStore.open(tmp_path)


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state.db").write_bytes(b"this is not SQLite\n" * 100)
    with pytest.raises(StateError, match=r"state\.db"):
        SqliteStore.open(tmp_path)


def test_migrations_apply_in_order_and_a_failing_one_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        assert migrate(conn, path, SQLITE_MIGRATIONS) == 0
        conn.execute("INSERT INTO jobs (name, watermark) VALUES ('j', 'w')")
        assert migrate(conn, path, SQLITE_MIGRATIONS) == SCHEMA_VERSION  # idempotent
        # A later release adds a migration: an existing database takes it and keeps its rows.
        later = (*SQLITE_MIGRATIONS, ("ALTER TABLE jobs ADD COLUMN note TEXT",
                                      "UPDATE jobs SET note = 'migrated'"))
        assert migrate(conn, path, later) == SCHEMA_VERSION
        assert conn.execute("SELECT name, watermark, note FROM jobs").fetchall() == [
            ("j", "w", "migrated")]
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)
        broken = (*later, ("CREATE TABLE extra (x)", "NOT SQL AT ALL"))
        with pytest.raises(sqlite3.OperationalError):
            migrate(conn, path, broken)
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'extra'"
                            ).fetchone() == (0,)
        assert not conn.in_transaction
    finally:
        conn.close()


def test_a_run_keeps_its_outputs_and_an_instance_its_item(tmp_path: Path) -> None:
    """A database made before outputs existed takes the migration and keeps its runs."""
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, path, SQLITE_MIGRATIONS[:1])
    conn.execute("INSERT INTO runs (id, job, status, trigger, queued_at) "
                 f"VALUES ('{rid(1)}', 'j', 'succeeded', 'manual', '{at(1).isoformat()}')")
    conn.close()
    store = SqliteStore.open(tmp_path)
    try:
        old = store.run(rid(1))
        assert old is not None and old.outputs == {}
        store.record([queued(2), RunStarted(rid(2), at(2)),
                      StepStarted(rid(2), "fe", 1, at(2), ""),
                      StepStarted(rid(2), "fe.0", 1, at(2), "logs/x", item='{"a": 1}'),
                      StepFinished(rid(2), "fe.0", StepStatus.SUCCEEDED, at(3),
                                   outputs={"n": "1"}),
                      StepFinished(rid(2), "fe", StepStatus.SUCCEEDED, at(3),
                                   outputs={"n": '["1"]'}),
                      RunFinished(rid(2), RunStatus.SUCCEEDED, at(4),
                                  outputs={"total": "1"})])
        run = store.run(rid(2))
        assert run is not None and run.outputs == {"total": "1"}
        assert [(s.id, s.item) for s in run.steps] == [("fe", None), ("fe.0", '{"a": 1}')]
        assert store.runs()[0].outputs == {"total": "1"}
    finally:
        store.close()


KILLED_WRITER = r"""
import sys
from datetime import UTC, datetime
from pathlib import Path
from pipeline.events import RunFinished, RunQueued, RunStarted, StepFinished, StepStarted
from pipeline.model import RunStatus, StepStatus, Trigger
from pipeline.store.sqlite import SqliteStore
from pipeline.statedir import new_run_id

store = SqliteStore.open(Path(sys.argv[1]))
steps = int(sys.argv[2])
while True:
    now = datetime.now(UTC)
    run_id = new_run_id(now)
    events = [RunQueued(run_id, "loop", Trigger.MANUAL, now, document={"pad": "x" * 3000}),
              RunStarted(run_id, now)]
    for k in range(steps):
        events += [StepStarted(run_id, f"s{k}", 1, now, ""),
                   StepFinished(run_id, f"s{k}", StepStatus.SUCCEEDED, now, attempt=1)]
    events.append(RunFinished(run_id, RunStatus.SUCCEEDED, now))
    store.record(events)
"""


def test_kill_9_at_any_moment_leaves_a_sound_database(tmp_path: Path) -> None:
    steps = 20
    # Kills from the child's start: some land while it imports or opens (and migrates), most
    # in the middle of a batch.
    for delay in (0.02, 0.1, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5):
        child = spawn(KILLED_WRITER, str(tmp_path), str(steps))
        time.sleep(delay)
        child.kill()
        child.wait()
        assert child.returncode == -9
    store = SqliteStore.open(tmp_path)
    try:
        conn = store._conn
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        runs = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
        assert runs > 0
        # Each batch is all there or not at all.
        assert conn.execute("SELECT count(*) FROM runs WHERE status != 'succeeded'"
                            ).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM steps WHERE status != 'succeeded'"
                            ).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM steps").fetchone() == (runs * steps,)
        assert conn.execute("SELECT count(*) FROM runs WHERE id NOT IN "
                            "(SELECT run_id FROM steps)").fetchone() == (0,)
        store.record(finished_run(1, RunStatus.SUCCEEDED))  # and it writes on
    finally:
        store.close()


def test_other_connections_read_while_the_store_writes(sqlite_store: SqliteStore) -> None:
    store = sqlite_store
    store.record([queued(1)])
    with sqlite3.connect(store.path, isolation_level=None) as reader:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM runs").fetchone() == (1,)
        store.record([queued(2)])  # an open read transaction does not block the writer (WAL)
        assert reader.execute("SELECT count(*) FROM runs").fetchone() == (1,)  # its snapshot
        reader.execute("COMMIT")
        assert reader.execute("SELECT count(*) FROM runs").fetchone() == (2,)
    reader.close()

    # Another store on the same directory, as `pipeline runs` opens it beside the daemon.
    other = SqliteStore.open(store.path.parent)
    try:
        def write() -> None:
            for n in range(3, 300):
                store.record([queued(n), RunStarted(rid(n), at(n)),
                              StepStarted(rid(n), "s", 1, at(n), "")])

        writer = threading.Thread(target=write)
        writer.start()
        seen = []
        while writer.is_alive():
            seen.append(other.count_runs())
            listed = other.runs(limit=1)
            run = other.run(listed[0].id)
            assert run is not None and len(run.steps) == (0 if run.id == rid(2) else 1)
        writer.join()
        assert seen == sorted(seen)
        assert other.count_runs() == 299
    finally:
        other.close()


def test_a_full_disk_is_a_state_error_and_the_store_recovers(sqlite_store: SqliteStore,
                                                            ) -> None:
    store = sqlite_store
    store.record([queued(0)])
    conn = store._conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # SQLITE_FULL past two more pages
    big = [RunQueued(rid(n), "j", Trigger.API, at(n), document={"pad": "x" * 3000})
           for n in range(1, 6)]
    with pytest.raises(StateError, match="database or disk is full"):
        store.record(big)
    assert store.count_runs() == 1  # none of the failed batch
    with pytest.raises(StateError, match="full"):
        store.record(big)  # still full: still an error, not a wedged connection
    conn.execute("PRAGMA max_page_count = 1000000")  # space is back
    assert store.record(big) == frozenset()
    assert store.count_runs() == 6
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


# -- the state directory -------------------------------------------------------------------------

def test_log_relpath() -> None:
    r = rid(1)
    assert log_relpath("nightly-backup", r, "dump") == f"logs/nightly-backup/{r}/dump.log"
    assert log_relpath("a.b_c", r, "build.12") == f"logs/a.b_c/{r}/build.12.log"


@pytest.mark.parametrize("job, run_id, step", [
    ("../x", rid(1), "s"), ("..", rid(1), "s"), (".", rid(1), "s"), ("a/b", rid(1), "s"),
    ("", rid(1), "s"), ("a\0b", rid(1), "s"), ("a\n", rid(1), "s"), ("/abs", rid(1), "s"),
    ("j", "../x", "s"), ("j", "", "s"), ("j", rid(1) + "\n", "s"), ("j", "a/b", "s"),
    ("j", rid(1), "../x"), ("j", rid(1), "a/b"), ("j", rid(1), ".."), ("j", rid(1), ""),
    ("j", rid(1), "s\0"), ("j", rid(1), "s.x"), ("j", rid(1), "s/.."),
])
def test_log_relpath_refuses_names_that_could_escape(job: str, run_id: str, step: str) -> None:
    with pytest.raises(ValueError):
        log_relpath(job, run_id, step)


def test_new_run_id() -> None:
    plus_five = timezone(timedelta(hours=5, minutes=30))
    now = datetime(2026, 3, 1, 17, 30, 59, 999999, tzinfo=plus_five)
    ids = {new_run_id(now) for _ in range(100)}
    assert len(ids) == 100
    for run_id in ids:
        assert RUN_ID.fullmatch(run_id) and run_id.startswith("20260301T120059-")
    with pytest.raises(ValueError):
        new_run_id(datetime(2026, 3, 1))


HOLD_LOCK = r"""
import sys, time
from pathlib import Path
from pipeline.statedir import lock_state_dir
with lock_state_dir(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_one_daemon_per_state_directory(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with spawn(HOLD_LOCK, str(state), stdout=subprocess.PIPE) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
            message = rf"pid {holder.pid}\b.*{re.escape(str(state))}"
            with pytest.raises(StateLocked, match=message), lock_state_dir(state):
                pass
        finally:
            holder.kill()  # dies without releasing anything: the kernel drops the lock
    with lock_state_dir(state) as path:
        assert path.read_text() == f"{os.getpid()}\n"
        with pytest.raises(StateLocked), lock_state_dir(state):  # not twice in one process
            pass
    with lock_state_dir(state):  # released on leaving the block
        pass


def test_process_identity_follows_a_child_until_it_exits(tmp_path: Path) -> None:
    mine = process_identity()
    assert mine == process_identity(os.getpid()) and identity_alive(mine)
    # A command name with spaces and parentheses must not shift the fields.
    odd = tmp_path / "a) R 1 (b"
    odd.symlink_to("/bin/sleep")
    child = subprocess.Popen([str(odd), "30"])
    try:
        deadline = time.monotonic() + 5
        while Path(f"/proc/{child.pid}/comm").read_text() != "a) R 1 (b\n":  # until exec'd
            assert time.monotonic() < deadline
            time.sleep(0.01)
        identity = process_identity(child.pid)
        pid, start = identity.split(":")
        assert pid == str(child.pid) and start.isdigit()
        assert identity_alive(identity)
        assert not identity_alive(f"{child.pid}:{int(start) + 1}")  # a recycled pid
        child.kill()
        deadline = time.monotonic() + 5
        while identity_alive(identity):  # a zombie, not yet reaped, is dead already
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        child.kill()
        child.wait()
    assert not identity_alive(identity)
    with pytest.raises(ProcessLookupError):
        process_identity(child.pid)


@pytest.mark.parametrize("identity", ["", "abc", "12", ":5", "-1:5", "0:0", "1.5:3", "x:y"])
def test_malformed_identities_are_not_alive(identity: str) -> None:
    assert not identity_alive(identity)


# -- PostgreSQL alone: connections, outages, passwords, migrations --------------------------------

# Test timings (a 3 s lease): a verb gives up after 2 s of outage.
FAST = Timeouts.for_lease(3.0)


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """Every log line, as its message."""
    lines: list[str] = []
    sink = logger.add(lines.append, format="{message}", level="DEBUG")
    yield lines
    logger.remove(sink)


def kill_backends(url: str, pids: list[int]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))  # and wait


def kill_store_connections(admin_url: str, store: PostgresStore) -> None:
    """End every connection the store's pool holds (its pool settled first: one connection
    being made while we look would survive)."""
    store._pool.wait(timeout=10)
    database = store.where.rpartition("/")[2].partition("?")[0]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        pids = [row[0] for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s "
            "AND application_name = 'pipeline'", (database,))]
    assert pids
    kill_backends(admin_url, pids)


def test_sessions_have_the_dead_peer_settings_and_timeouts(postgres_url: str,
                                                           tmp_path: Path) -> None:
    store = open_store_at(tmp_path, postgres_url, lease=3.0)  # a daemon's --lease 3s
    assert isinstance(store, PostgresStore) and store.timeouts == FAST
    try:
        assert scalar(store, "SHOW statement_timeout") == "1s"
        assert scalar(store, "SHOW idle_in_transaction_session_timeout") == "1s"
        assert scalar(store, "SHOW lock_timeout") == "1s"
        with store._read() as tx:
            client = tx.conn.info.get_parameters()
        assert (client["connect_timeout"], client["tcp_user_timeout"], client["keepalives"],
                client["keepalives_idle"], client["keepalives_count"]) == (
            "2", "1000", "1", "1", "3")
    finally:
        store.close()
    default = PostgresStore.open(postgres_url)
    try:
        assert scalar(default, "SHOW statement_timeout") == "10s"
    finally:
        default.close()


def test_a_broken_connection_is_replaced_and_the_verb_runs_again(
        postgres_url: str, logged: list[str]) -> None:
    store = PostgresStore.open(postgres_url, timeouts=FAST, max_size=1)
    try:
        store.record([queued(1, fire=at(60))])
        kill_store_connections(postgres_url, store)  # the pool's connection dies
        # A write that fails before its COMMIT was sent runs again, and lands once.
        assert store.record([queued(2, fire=at(120))]) == frozenset()
        kill_store_connections(postgres_url, store)
        assert {r.id for r in store.runs()} == {rid(1), rid(2)}  # a read runs again too
        assert store.fires_after("j", at(0)) == {at(60), at(120)}
    finally:
        store.close()
    unreachable = [line for line in logged if line.startswith("store unreachable")]
    back = [line for line in logged if "answers again" in line]
    assert len(unreachable) == len(back) == 2, logged


def test_a_write_lost_while_committing_is_not_run_again(postgres_url: str) -> None:
    """Its outcome is unknown: the caller decides (fire keys and compare-and-set make the
    caller's retry safe), never a silent second run of the same write here."""
    store = PostgresStore.open(postgres_url, timeouts=FAST)
    try:
        with pytest.raises(StateError, match="may or may not have landed"), \
                store._write() as tx:
            tx.execute("INSERT INTO jobs (name) VALUES (:job)", {"job": "j"})
            kill_backends(postgres_url, [tx.conn.info.backend_pid])
        assert store.job_states() == {}  # (the server never saw the COMMIT)
    finally:
        store.close()


@pytest.mark.slow
def test_a_restart_between_two_verbs_loses_nothing(postgres: Postgres, postgres_url: str,
                                                   logged: list[str]) -> None:
    store = PostgresStore.open(postgres_url, timeouts=FAST)
    try:
        store.publish_jobs([JobSettings("j")])
        now = store.now()
        made = store.claim_fires([claim("j", [now - SECOND], now,
                                        started=now - timedelta(minutes=1))],
                                 node="n1", now=now)
        (run,) = made.runs
        postgres.restart("fast")
        # The pool's connections are all dead; the next verbs reconnect and find it all.
        (started,) = store.start_runs("n1", [run.run_id], now=store.now())
        assert started.decision.verdict is Verdict.START
        # The test server runs with synchronous_commit=off: a crash may lose what was
        # committed in the last moments, unless it was checkpointed.
        with psycopg.connect(postgres.admin_url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        postgres.restart("immediate")  # a crash of the server this time
        store.record([RunFinished(run.run_id, RunStatus.SUCCEEDED, store.now(), attempt=1)],
                     node="n1")
        assert status(store, run.run_id) is RunStatus.SUCCEEDED
        again = store.claim_fires([claim("j", [now - SECOND], now,
                                         started=now - timedelta(minutes=1))],
                                  node="n2", now=store.now())
        assert again.runs == [] and store.count_runs() == 1  # nothing doubled
    finally:
        store.close()
    assert len([line for line in logged if line.startswith("store unreachable")]) == 2, logged


@pytest.mark.slow
def test_a_crash_of_the_database_forgets_no_start_nor_renewal(postgres: Postgres,
                                                              postgres_url: str) -> None:
    """Found by the cluster harness (pg_ctl restart -m immediate): a start was committed
    without waiting for the WAL (synchronous_commit off for that transaction), and a crash of
    the server just after forgot it, while the node that had started the run went on running
    it: another node started it again, two attempts at once. With SQLite a crash that loses a
    start is the daemon's own, whose runs are all recovered; a database that crashes on its
    own must not forget what it acknowledged. The test server commits asynchronously
    throughout, for speed: this database does not, as a production one would not, and its
    WAL writer waits 10 s, so anything not flushed at commit is lost in the crash."""
    name = postgres_url.rpartition("/")[2]
    with psycopg.connect(postgres.admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} SET synchronous_commit = on")
                     .format(sql.Identifier(name)))
        conn.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
        conn.execute("SELECT pg_reload_conf()")
    store = PostgresStore.open(postgres_url, timeouts=FAST)
    try:
        store.publish_jobs([JobSettings("j")])
        store.register_node(node("a"), lease=300)
        held(store, (1, "j"), node_id="a")
        before = scalar(store, "SELECT expires_at FROM nodes WHERE id = 'a'")
        (started,) = store.start_runs("a", [rid(1)], now=store.now())
        assert started.decision.verdict is Verdict.START
        store.renew_lease("a", lease=600)
        postgres.restart("immediate")
        run = store.run(rid(1))
        assert run is not None and (run.status, run.attempt) == (RunStatus.RUNNING, 1)
        assert scalar(store, "SELECT expires_at FROM nodes WHERE id = 'a'") > before
    finally:
        store.close()
        with psycopg.connect(postgres.admin_url, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM RESET wal_writer_delay")
            conn.execute("SELECT pg_reload_conf()")


@pytest.mark.slow
def test_the_pool_checks_a_connection_idle_for_long(
        postgres: Postgres, postgres_url: str, logged: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg, "CHECK_IDLE", 0.0)  # every connection counts as idle for long
    store = PostgresStore.open(postgres_url, timeouts=Timeouts.for_lease(12.0))
    try:
        store.record([queued(1)])
        postgres.restart("fast")
        # The pool's ping finds the dead connection and makes another (its backoff: about a
        # second); the unit never sees it fail.
        assert store.count_runs() == 1
    finally:
        store.close()
    assert not [line for line in logged if line.startswith("store unreachable")], logged


@pytest.mark.slow
def test_a_verb_during_an_outage_fails_promptly_and_the_store_comes_back(
        postgres: Postgres, postgres_url: str, logged: list[str]) -> None:
    store = PostgresStore.open(postgres_url, timeouts=FAST)
    try:
        store.record([queued(1)])
        postgres.stop()
        try:
            for _ in range(2):
                started = time.monotonic()
                with pytest.raises(StateError, match="cannot reach") as caught:
                    store.runs()
                took = time.monotonic() - started
                assert took < FAST.retry_for + FAST.connect + 1.5, took  # not a hang
                assert "\n" not in str(caught.value)
            with pytest.raises(StateError):
                store.record([queued(2)])
        finally:
            postgres.start()
        assert [r.id for r in store.runs()] == [rid(1)]
        store.record([queued(2)])
        assert store.count_runs() == 2
    finally:
        store.close()
    # Said once when it began and once when it ended, however many verbs failed between.
    unreachable = [line for line in logged if line.startswith("store unreachable")]
    assert len(unreachable) == 1 and "retrying" in unreachable[0], logged
    assert len([line for line in logged if "answers again" in line]) == 1, logged


PASSWORD = "Pw-Zq8#x/y@z%41"


@pytest.fixture
def password_role(postgres: Postgres, postgres_url: str) -> Iterator[str]:
    """A URL of this test's database for a role that must give a password (scram-sha-256)."""
    data = postgres.data_dir
    if data is None:
        pytest.skip("an outside server: its pg_hba.conf is not ours to change")
    role = "pw_" + os.urandom(4).hex()
    hba = data / "pg_hba.conf"
    original = hba.read_text()
    with psycopg.connect(postgres.admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(PASSWORD)))
        conn.execute(f"GRANT ALL ON DATABASE {postgres_url.rpartition('/')[2]} TO {role}")
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"GRANT ALL ON SCHEMA public TO {role}")
    hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + original)
    with psycopg.connect(postgres.admin_url, autocommit=True) as conn:
        conn.execute("SELECT pg_reload_conf()")
    quoted = re.sub(r"[^A-Za-z0-9]", lambda m: f"%{ord(m.group(0)):02X}", PASSWORD)
    try:
        yield postgres_url.replace("postgres@", f"{role}:{quoted}@")
    finally:
        hba.write_text(original)
        with psycopg.connect(postgres.admin_url, autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
            if postgres.running():
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                    (role,))
        postgres.drop(postgres_url)  # before the role: the database holds its grants
        with psycopg.connect(postgres.admin_url, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")


@pytest.mark.slow
def test_the_url_password_never_reaches_an_error_or_a_log_line(
        postgres: Postgres, password_role: str, logged: list[str]) -> None:
    url = password_role
    written = url.split("//")[1].split("@")[0].split(":")[1]
    wrong = url.replace(written, "wrong-" + written)
    errors: list[str] = []
    for bad in (
        wrong,  # password authentication failed
        re.sub(r":\d+/", f":{free_port()}/", url),  # nobody listens there
        url.rpartition("/")[0] + "/no_such_database",
        url.replace(written, PASSWORD),  # not encoded: the URL does not parse
        url.replace("@127.0.0.1", "@[::1"),  # malformed: libpq would quote it whole
        url.replace("postgresql://", "mysql://"),
        url + "?sslmode=bogus",
        f"host=127.0.0.1 user=x password={PASSWORD}",  # libpq's other form: not taken
    ):
        with pytest.raises(StateError) as caught:
            PostgresStore.open(bad, timeouts=FAST)
        errors.append(str(caught.value))
    assert "password authentication failed" in errors[0]
    # The right password works; then an outage, in the log and in errors.
    store = PostgresStore.open(url, timeouts=FAST, max_size=1)
    try:
        store.record([queued(1)])
        assert store.count_runs() == 1
        kill_store_connections(postgres.admin_url, store)
        assert store.count_runs() == 1
        postgres.stop()
        try:
            with pytest.raises(StateError) as caught:
                store.count_runs()
            errors.append(str(caught.value))
        finally:
            postgres.start()
        assert store.count_runs() == 1
    finally:
        store.close()
    assert len(logged) >= 3
    for text in errors + logged:
        assert PASSWORD not in text and written not in text, text
    assert "***" in errors[3] and "percent-encoded" in errors[3]


def test_a_url_with_an_at_sign_in_its_query_is_taken(postgres_url: str) -> None:
    store = PostgresStore.open(postgres_url + "?application_name=ops@b&connect_timeout=7")
    try:
        with store._read() as tx:
            given = tx.conn.info.get_parameters()
        assert (given["application_name"], given["connect_timeout"]) == ("ops@b", "7")
    finally:
        store.close()


def test_two_nodes_opening_a_fresh_database_at_once_both_succeed(postgres_url: str) -> None:
    barrier = threading.Barrier(4)
    opened: list[PostgresStore] = []
    failed: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            opened.append(PostgresStore.open(postgres_url))
        except BaseException as exc:
            failed.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert failed == [] and len(opened) == 4
        with psycopg.connect(postgres_url) as conn:
            assert [row[0] for row in conn.execute(
                "SELECT version FROM schema_version ORDER BY version")] == list(
                range(1, SCHEMA_VERSION + 1))
        opened[0].record([queued(1)])
        assert opened[3].count_runs() == 1
    finally:
        for store in opened:
            store.close()


def test_a_database_from_a_newer_pipeline_is_refused_by_postgres(postgres_url: str) -> None:
    PostgresStore.open(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StateError, match="made by a newer pipeline"):
        PostgresStore.open(postgres_url)


def test_postgres_migrations_apply_in_order_and_a_failing_one_changes_nothing(
        postgres_url: str) -> None:
    store = PostgresStore.open(postgres_url, migrate=False)
    try:
        assert store.migrate() == 0
        assert store.migrate() == SCHEMA_VERSION  # idempotent
    finally:
        store.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO jobs (name, watermark) VALUES ('j', 'w')")
        later = (*POSTGRES_MIGRATIONS, ("ALTER TABLE jobs ADD COLUMN note TEXT",
                                        "UPDATE jobs SET note = 'migrated'"))
        assert pg.migrate(conn, "db", later) == SCHEMA_VERSION
        assert conn.execute("SELECT name, watermark, note FROM jobs").fetchall() == [
            ("j", "w", "migrated")]
        broken = (*later, ("CREATE TABLE extra (x integer)", "NOT SQL AT ALL"))
        with pytest.raises(psycopg.errors.SyntaxError):
            pg.migrate(conn, "db", broken)
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone() == (
            SCHEMA_VERSION + 1,)
        assert conn.execute("SELECT to_regclass('extra')").fetchone() == (None,)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


# Round trips of the firing path's verbs, measured on the wire (each ReadyForQuery ends one):
# a budget that only an optimisation may lower. claim_fires: BEGIN (with the store's clock),
# lock the job, insert the run, move the watermark, COMMIT. start_runs: BEGIN, the runs held,
# their jobs locked, the runs read, the pools, the runs counted, the writes (pipelined), COMMIT.
FIRING_ROUND_TRIPS = {"claim_fires": 5, "start_runs": 8, "RunFinished": 4}


@contextlib.contextmanager
def round_trips(store: PostgresStore, trace: Path) -> Iterator[Callable[[], int]]:
    """A count of the round trips ``store`` (a pool of one connection) has made so far in the
    block, from libpq's trace of its messages."""
    with trace.open("w") as out:

        def traced(on: bool) -> None:
            conn = store._pool.getconn()
            if on:
                conn.pgconn.trace(out.fileno())
                conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
            else:
                conn.pgconn.untrace()  # which flushes what libpq wrote of the answers
            store._pool.putconn(conn)

        def trips() -> int:
            traced(False)
            count = trace.read_text().count("\tReadyForQuery")
            traced(True)
            return count

        traced(True)
        yield trips
        traced(False)


def test_round_trips_on_the_firing_path(postgres_url: str, tmp_path: Path) -> None:
    store = PostgresStore.open(postgres_url, max_size=1)
    try:
        with round_trips(store, tmp_path / "libpq.trace") as trips:
            store.publish_jobs([JobSettings("j", Concurrency(Policy.ALLOW))])
            base = store.now()
            counted: dict[str, set[int]] = {verb: set() for verb in FIRING_ROUND_TRIPS}
            for i in range(10):  # psycopg prepares a statement at its 5th use: count after
                fire = base + timedelta(milliseconds=i)
                now = store.now()
                before = trips()
                made = store.claim_fires([claim("j", [fire], fire, started=base - SECOND,
                                                catchup=Catchup.ALL, grace=3600)],
                                         node="n1", now=now)
                claimed = trips()
                (run,) = made.runs
                store.start_runs("n1", [run.run_id], now=now)
                started = trips()
                store.record([RunFinished(run.run_id, RunStatus.SUCCEEDED, now, attempt=1)],
                             node="n1")
                if i >= 6:
                    counted["claim_fires"].add(claimed - before)
                    counted["start_runs"].add(started - claimed)
                    counted["RunFinished"].add(trips() - started)
    finally:
        store.close()
    assert counted == {verb: {n} for verb, n in FIRING_ROUND_TRIPS.items()}


def test_runs_of_many_jobs_start_in_the_round_trips_of_one(postgres_url: str,
                                                           tmp_path: Path) -> None:
    """A worker starts the fires due at one instant in slices of many runs, each of another
    job: a slice costs the round trips of one run, not a few per run (on a loaded machine a
    round trip is most of a millisecond, and the slices follow each other)."""
    jobs = [f"job-{n:02d}" for n in range(16)]
    store = PostgresStore.open(postgres_url, max_size=1)
    try:
        store.publish_jobs([JobSettings(name, Concurrency(Policy.ALLOW)) for name in jobs])
        with round_trips(store, tmp_path / "libpq.trace") as trips:
            counted = set()
            for i in range(8):  # psycopg prepares a statement at its 5th use: count after
                runs = [(i * 100 + n, name) for n, name in enumerate(jobs)]
                held(store, *runs)
                now = store.now()
                before = trips()
                started = store.start_runs("n1", [rid(n) for n, _ in runs], now=now)
                if i >= 6:
                    counted.add(trips() - before)
                assert [s.decision.verdict for s in started] == [Verdict.START] * len(jobs)
    finally:
        store.close()
    assert counted == {FIRING_ROUND_TRIPS["start_runs"]}


def test_claims_another_node_made_are_answered_without_a_lock(postgres_url: str,
                                                              tmp_path: Path) -> None:
    """Every scheduler node claims every fire; the first makes the runs, and the others'
    claims see them made by the watermarks they read first: no job's row locked or written,
    the same few round trips whatever the jobs."""
    jobs = [f"job-{n:02d}" for n in range(10)]
    first = PostgresStore.open(postgres_url)
    other = PostgresStore.open(postgres_url, max_size=1)
    try:
        first.publish_jobs([JobSettings(name) for name in jobs])
        now = first.now()
        fire, started = now - timedelta(milliseconds=100), now - timedelta(minutes=1)
        made = first.claim_fires([claim(name, [fire], now, started=started) for name in jobs],
                                 node="n1", now=now)
        assert len(made.runs) == len(jobs)
        later = now + timedelta(milliseconds=20)  # the other node's horizon
        with round_trips(other, tmp_path / "libpq.trace") as trips:
            again = other.claim_fires([claim(name, [fire], later, started=started)
                                       for name in jobs], node="n2", now=later)
            assert trips() == 3  # BEGIN with the store's clock, the watermarks, COMMIT
        assert again.runs == [] and again.decisions == []
        assert again.watermarks == {name: later for name in jobs}
        assert {first.watermark(name) for name in jobs} == {now}  # as the first node left it
        assert first.count_runs() == len(jobs)
    finally:
        first.close()
        other.close()


def test_a_claim_that_waited_for_another_reads_the_watermarks_again(postgres_url: str,
                                                                    tmp_path: Path) -> None:
    """Nodes claim at the same moment: the ones that read the watermarks before the first
    node's claim committed wait for its lock on one job, then read them again and find the
    rest made, instead of locking every job in turn."""
    jobs = [f"job-{n:02d}" for n in range(10)]
    other = PostgresStore.open(postgres_url, max_size=1)
    try:
        other.publish_jobs([JobSettings(name) for name in jobs])
        now = other.now()
        fire, started = now - timedelta(milliseconds=100), now - timedelta(minutes=1)
        with psycopg.connect(postgres_url) as claiming, \
                psycopg.connect(postgres_url, autocommit=True) as watching:
            # Another node's claim under way: every job locked, its watermark moved.
            claiming.execute("SELECT name FROM jobs ORDER BY name FOR UPDATE")
            claiming.execute("UPDATE jobs SET watermark = %s", (iso(now),))
            with round_trips(other, tmp_path / "libpq.trace") as trips, \
                    concurrent.futures.ThreadPoolExecutor(1) as pool:
                answer = pool.submit(other.claim_fires, [
                    claim(name, [fire], now, started=started) for name in jobs],
                    node="n2", now=now)
                deadline = time.monotonic() + 30
                while watching.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND datname = current_database()").fetchone() != (1,):
                    assert time.monotonic() < deadline, "the claim never waited for the lock"
                    time.sleep(0.01)
                claiming.commit()
                answered = answer.result(timeout=30)
                # BEGIN, the watermarks, the first job's lock (waited for), the watermarks
                # again, COMMIT.
                assert trips() == 5
        assert answered.runs == [] and answered.watermarks == {name: now for name in jobs}
        assert other.count_runs() == 0
    finally:
        other.close()
