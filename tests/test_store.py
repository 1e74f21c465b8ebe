"""The state store on real SQLite files, with real child processes for owners and crashes."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

import pipeline
from pipeline.errors import StateError, StateLocked
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
from pipeline.model import RUN_ID, RunStatus, StepStatus, Trigger, Version
from pipeline.statedir import (
    identity_alive,
    lock_state_dir,
    log_relpath,
    new_run_id,
    process_identity,
)
from pipeline.store import (
    INTERRUPTED_QUEUED,
    INTERRUPTED_RUNNING,
    MIGRATIONS,
    SCHEMA_VERSION,
    RunActive,
    SqliteStore,
    Store,
    migrate,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ROOT = str(Path(pipeline.__file__).resolve().parent.parent)


def rid(n: int) -> str:
    return f"20260301T120000-{n:08x}"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def queued(n: int, job: str = "j", *, fire: datetime | None = None, t: float | None = None,
           trigger: Trigger = Trigger.SCHEDULE, owner: str | None = None) -> RunQueued:
    return RunQueued(rid(n), job, trigger, at(n if t is None else t), fire_time=fire,
                     owner=owner)


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


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore.open(tmp_path / "state")
    yield opened
    opened.close()


# -- events round-trip ---------------------------------------------------------------------------

def test_every_event_lands_in_run_and_step_fields(store: SqliteStore) -> None:
    plus_two = timezone(timedelta(hours=2))
    fire = datetime(2026, 3, 1, 14, 0, 0, 123456, tzinfo=plus_two)  # 12:00:00.123456 UTC
    version = Version("ab" * 32, git_commit="c" * 40, git_blob="b" * 40, git_dirty=True)
    r = rid(1)
    refused = store.record([
        RunQueued(r, "backup", Trigger.CATCHUP, at(0), fire_time=fire,
                  params={"keep": 3, "tags": ["a", "b"], "nested": {"x": None}},
                  version=version, document={"name": "backup", "steps": [{"id": "dump"}]},
                  parent_run_id=rid(99), owner="123:456"),
    ])
    assert refused == frozenset()
    run = store.run(r)
    assert run is not None
    assert (run.status, run.started_at, run.steps) == (RunStatus.QUEUED, None, ())

    store.record([
        RunStarted(r, at(1)),
        StepStarted(r, "dump", 1, at(2), f"logs/backup/{r}/dump.log"),
        StepSpawned(r, "dump", 4242, 4242),
        StepRetrying(r, "dump", 1, 5.0, "exit status 1"),
    ])
    run = store.run(r)
    assert run is not None and run.status is RunStatus.RUNNING and run.started_at == at(1)
    (dump,) = run.steps
    assert (dump.status, dump.attempt, dump.error, dump.pgid, dump.started_at, dump.log) == (
        StepStatus.RUNNING, 2, "exit status 1", 4242, at(2), f"logs/backup/{r}/dump.log")

    store.record([
        StepFinished(r, "dump", StepStatus.SUCCEEDED, at(3), attempt=2, exit_code=0,
                     outputs={"file": "/b/db.sql", "lines": "a\nb"}),
        StepStarted(r, "fan", 1, at(3), ""),  # a for_each parent has no log of its own
        StepStarted(r, "fan.0", 1, at(3), f"logs/backup/{r}/fan.0.log"),
        StepFinished(r, "fan.0", StepStatus.TIMED_OUT, at(4), attempt=1, signal=15,
                     error="timed out after 1s"),
        StepFinished(r, "fan", StepStatus.FAILED, at(4), attempt=1, error="1 of 1 failed"),
        StepFinished(r, "notify", StepStatus.SKIPPED, at(5), error="if: success() is false"),
        RunFinished(r, RunStatus.FAILED, at(6), reason="step fan failed"),
    ])
    run = store.run(r)
    assert run is not None
    assert run.id == r and run.job == "backup" and run.trigger is Trigger.CATCHUP
    assert run.fire_time == fire and run.fire_time.utcoffset() == timedelta(0)
    assert run.fire_time.microsecond == 123456
    assert (run.queued_at, run.started_at, run.finished_at) == (at(0), at(1), at(6))
    assert run.duration_s == 5.0
    assert run.status is RunStatus.FAILED and run.reason == "step fan failed"
    assert run.params == {"keep": 3, "tags": ("a", "b"), "nested": {"x": None}}
    assert run.version == version
    assert run.document == {"name": "backup", "steps": ({"id": "dump"},)}
    assert (run.parent_run_id, run.owner) == (rid(99), "123:456")

    assert [s.id for s in run.steps] == ["dump", "fan", "fan.0", "notify"]
    dump, fan, fan0, notify = run.steps
    assert dump.run_id == r
    assert (dump.status, dump.attempt, dump.exit_code, dump.signal, dump.error) == (
        StepStatus.SUCCEEDED, 2, 0, None, None)
    assert dump.outputs == {"file": "/b/db.sql", "lines": "a\nb"}
    assert (dump.started_at, dump.finished_at, dump.duration_s, dump.pgid) == (
        at(2), at(3), 1.0, 4242)
    assert fan.log is None and fan.status is StepStatus.FAILED and fan.error == "1 of 1 failed"
    assert (fan0.status, fan0.signal, fan0.exit_code, fan0.error) == (
        StepStatus.TIMED_OUT, 15, None, "timed out after 1s")
    assert (notify.status, notify.attempt, notify.started_at, notify.finished_at) == (
        StepStatus.SKIPPED, 0, None, at(5))
    assert notify.duration_s is None and notify.outputs == {}


def test_a_skipped_fire_is_a_run_and_occupies_its_fire(store: SqliteStore) -> None:
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


def test_a_taken_fire_is_refused_and_the_rest_of_the_batch_commits(store: SqliteStore) -> None:
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


def test_step_events_of_an_unknown_run_are_ignored(store: SqliteStore) -> None:
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


def test_a_batch_that_fails_applies_nothing(store: SqliteStore) -> None:
    naive = datetime(2026, 3, 1, 12, 0)
    with pytest.raises(ValueError, match="naive"):
        store.record([queued(1), RunStarted(rid(1), naive)])
    assert store.run(rid(1)) is None
    store.record([queued(1)])  # and the store goes on
    assert store.count_runs() == 1


def test_a_finished_run_is_not_started_again(store: SqliteStore) -> None:
    store.record([queued(1), RunFinished(rid(1), RunStatus.CANCELLED, at(2), "stopped"),
                  RunStarted(rid(1), at(3))])
    run = store.run(rid(1))
    assert run is not None and run.status is RunStatus.CANCELLED and run.started_at is None


# -- schedule state ------------------------------------------------------------------------------

def test_watermark_only_moves_forward(store: SqliteStore) -> None:
    assert store.watermark("j") is None
    assert store.watermarks() == {}
    store.record([WatermarkMoved("j", at(60))])
    store.record([WatermarkMoved("j", at(30))])
    assert store.watermark("j") == at(60)
    store.record([WatermarkMoved("j", at(90)), WatermarkMoved("j", at(75)),
                  WatermarkMoved("k", at(5))])
    assert store.watermarks() == {"j": at(90), "k": at(5)}
    store.reset_circuit("j", at(100))  # the same row; the watermark stays
    assert store.watermark("j") == at(90)


def test_fires_after_lists_claimed_fires_of_one_job(store: SqliteStore) -> None:
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


# -- listing -------------------------------------------------------------------------------------

def test_listing_filters_orders_and_pages(store: SqliteStore) -> None:
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
    assert [r.id for r in store.runs(limit=2, offset=1)] == [rid(5), rid(4)]
    assert [r.id for r in store.runs(job="a", status=RunStatus.FAILED)] == [rid(2)]
    assert store.count_runs() == 6
    assert store.count_runs(job="a", since=at(2)) == 3
    assert store.count_runs(status=RunStatus.CANCELLED) == 0

    last = store.last_runs()
    assert {job: r.id for job, r in last.items()} == {"a": rid(6), "b": rid(5)}
    assert [r.id for r in store.active_runs()] == [rid(4), rid(5)]  # oldest first
    assert [r.id for r in store.active_runs("b")] == [rid(5)]
    assert store.jobs_with_runs() == ["a", "b"]
    assert store.last_success("a") == at(2)
    assert store.last_success("b") == at(4)
    assert store.last_success("nope") is None


def test_latest_run_of_a_job_breaks_ties_by_id(store: SqliteStore) -> None:
    store.record([queued(2, t=0), queued(1, t=0)])
    assert store.last_runs()["j"].id == rid(2)
    assert [r.id for r in store.runs()] == [rid(2), rid(1)]


# -- circuit breaker -----------------------------------------------------------------------------

def test_circuit_counts_scheduled_failures_since_the_last_success_or_reset(
        store: SqliteStore) -> None:
    store.record([*finished_run(1, RunStatus.FAILED), *finished_run(2, RunStatus.SUCCEEDED)])
    assert store.consecutive_failures("j") == 0
    store.record([
        *finished_run(3, RunStatus.FAILED),
        *finished_run(4, RunStatus.FAILED, trigger=Trigger.MANUAL),  # manual: not counted
        *finished_run(5, RunStatus.CANCELLED),  # neither counted nor a reset
        *finished_run(6, RunStatus.INTERRUPTED),
        RunSkipped(rid(7), "j", Trigger.SCHEDULE, at(7), at(7), "forbid"),
        *finished_run(8, RunStatus.FAILED, trigger=Trigger.CATCHUP),
        *finished_run(9, RunStatus.FAILED, "other"),
    ])
    assert store.consecutive_failures("j") == 2
    assert store.circuit_opened_at("j", 3) is None
    assert store.circuit_opened_at("j", 2) == at(9)  # run 8 finished at 8 + 1
    store.record(finished_run(10, RunStatus.FAILED))
    assert store.circuit_opened_at("j", 2) == at(11)  # the trial after a cooldown failed
    assert store.consecutive_failures("j") == 3

    store.reset_circuit("j", at(20))
    assert store.consecutive_failures("j") == 0
    assert store.circuit_opened_at("j", 1) is None
    store.record(finished_run(21, RunStatus.FAILED))
    assert store.consecutive_failures("j") == 1
    store.record(finished_run(23, RunStatus.SUCCEEDED, trigger=Trigger.API))  # any success
    assert store.consecutive_failures("j") == 0
    assert store.consecutive_failures("never-ran") == 0


# -- recovery ------------------------------------------------------------------------------------

def test_recover_interrupts_the_runs_of_dead_owners_only(store: SqliteStore) -> None:
    live = subprocess.Popen(["sleep", "30"])
    dead = subprocess.Popen(["true"])
    try:
        live_owner = process_identity(live.pid)
        dead_owner = process_identity(dead.pid)
        dead.wait()
        store.record([
            queued(1, owner=dead_owner), RunStarted(rid(1), at(1)),
            StepStarted(rid(1), "done", 1, at(1), ""),
            StepFinished(rid(1), "done", StepStatus.SUCCEEDED, at(2), attempt=1),
            StepStarted(rid(1), "busy", 1, at(2), ""), StepSpawned(rid(1), "busy", 777, 777),
            queued(2, owner=dead_owner),  # queued behind run 1
            queued(3, owner=live_owner), RunStarted(rid(3), at(3)),
            queued(4, owner=None), RunStarted(rid(4), at(4)),  # no owner at all
            *finished_run(5, RunStatus.SUCCEEDED),
        ])
        asked: list[str] = []

        def is_alive(owner: str) -> bool:
            asked.append(owner)
            return identity_alive(owner)

        recovered = store.recover(is_alive, at(100))
        assert sorted(asked) == sorted([dead_owner, live_owner])
        assert [r.id for r in recovered] == [rid(1), rid(2), rid(4)]
        one, two, four = recovered
        assert one.status is RunStatus.INTERRUPTED and one.reason == INTERRUPTED_RUNNING
        assert one.finished_at == at(100)
        assert two.reason == INTERRUPTED_QUEUED and two.started_at is None
        assert four.status is RunStatus.INTERRUPTED
        done, busy = one.steps
        assert done.status is StepStatus.SUCCEEDED and done.finished_at == at(2)
        assert (busy.status, busy.pgid, busy.error, busy.finished_at) == (
            StepStatus.CANCELLED, 777, INTERRUPTED_RUNNING, at(100))
        assert store.run(rid(1)) == one

        three = store.run(rid(3))
        assert three is not None and three.status is RunStatus.RUNNING
        assert [r.id for r in store.active_runs()] == [rid(3)]
        assert store.recover(identity_alive, at(200)) == []
    finally:
        live.kill()
        live.wait()


# -- retention -----------------------------------------------------------------------------------

def test_prune_by_count_keeps_the_newest_finished_runs(store: SqliteStore) -> None:
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
    assert store.prune("j", keep_runs=2, keep_days=None, now=at(1000)) == []
    assert store.prune("j", keep_runs=None, keep_days=None, now=at(1000)) == []
    assert [r.id for r in store.prune("j", keep_runs=0, keep_days=None, now=at(1000))] == [
        rid(4), rid(5)]
    assert {r.id for r in store.active_runs()} == {rid(6), rid(7)}


def test_prune_by_age_uses_the_finish_time(store: SqliteStore) -> None:
    day = 86400.0
    store.record([
        *finished_run(1, RunStatus.SUCCEEDED, t=0),
        *finished_run(2, RunStatus.FAILED, t=2 * day),
        *finished_run(3, RunStatus.SUCCEEDED, t=9 * day),
        queued(4, t=0),  # old but active
    ])
    now = at(10 * day)
    gone = store.prune("j", keep_runs=None, keep_days=7.5, now=now)
    assert sorted(r.id for r in gone) == [rid(1), rid(2)]
    assert {r.id for r in store.runs()} == {rid(3), rid(4)}
    # Both limits: a run goes when either says so.
    store.record(finished_run(5, RunStatus.SUCCEEDED, t=9.5 * day))
    gone = store.prune("j", keep_runs=1, keep_days=30, now=now)
    assert [r.id for r in gone] == [rid(3)]


def test_prune_keeps_runs_whose_fire_is_after_the_watermark(store: SqliteStore) -> None:
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


def test_delete_run_refuses_an_active_run(store: SqliteStore) -> None:
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
    with sqlite3.connect(store.path) as raw:  # the steps went with their run
        assert raw.execute("SELECT count(*) FROM steps").fetchone() == (0,)
    assert {r.id for r in store.runs()} == {rid(2), rid(3)}


# -- the database file ---------------------------------------------------------------------------

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


def test_reopening_keeps_everything(tmp_path: Path) -> None:
    first: Store = SqliteStore.open(tmp_path)
    first.record([*finished_run(1, RunStatus.SUCCEEDED), WatermarkMoved("j", at(5))])
    first.close()
    again = SqliteStore.open(tmp_path)
    try:
        assert again.run(rid(1)) is not None and again.watermark("j") == at(5)
    finally:
        again.close()


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
        assert migrate(conn, path, MIGRATIONS) == 0
        conn.execute("INSERT INTO jobs (name, watermark) VALUES ('j', 'w')")
        assert migrate(conn, path, MIGRATIONS) == SCHEMA_VERSION  # idempotent
        # A later release adds a migration: an existing database takes it and keeps its rows.
        later = (*MIGRATIONS, ("ALTER TABLE jobs ADD COLUMN note TEXT",
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


KILLED_WRITER = r"""
import sys
from datetime import UTC, datetime
from pathlib import Path
from pipeline.events import RunFinished, RunQueued, RunStarted, StepFinished, StepStarted
from pipeline.model import RunStatus, StepStatus, Trigger
from pipeline.store import SqliteStore
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


def test_other_connections_read_while_the_store_writes(store: SqliteStore) -> None:
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


def test_many_threads_share_one_store(store: SqliteStore) -> None:
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


def test_a_full_disk_is_a_state_error_and_the_store_recovers(store: SqliteStore) -> None:
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


def test_a_closed_store_raises_state_error(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path)
    store.close()
    with pytest.raises(StateError):
        store.record([queued(1)])
    with pytest.raises(StateError):
        store.runs()


def test_recording_a_100_step_run_in_batches_is_cheap(store: SqliteStore) -> None:
    r = rid(1)
    events: list[Event] = [queued(1), RunStarted(r, at(1))]
    for k in range(100):
        events += [StepStarted(r, f"s{k}", 1, at(2), f"logs/j/{r}/s{k}.log"),
                   StepSpawned(r, f"s{k}", 1000 + k, 1000 + k),
                   StepFinished(r, f"s{k}", StepStatus.SUCCEEDED, at(3), attempt=1,
                                exit_code=0, outputs={"k": "v"})]
    events.append(RunFinished(r, RunStatus.SUCCEEDED, at(4)))
    started = time.perf_counter()
    for i in range(0, len(events), 20):  # what the journal's group commit gives a fan-out
        store.record(events[i:i + 20])
    elapsed = time.perf_counter() - started
    run = store.run(r)
    assert run is not None and len(run.steps) == 100
    assert elapsed < 0.2, f"{elapsed * 1000:.1f} ms"  # ≈ 5 ms here; generous for slow CI


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


def test_only_scheduled_fires_are_keyed_by_their_instant(store: SqliteStore) -> None:
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


def test_a_run_keeps_its_outputs_and_an_instance_its_item(tmp_path: Path) -> None:
    """A database made before outputs existed takes the migration and keeps its runs."""
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, path, MIGRATIONS[:1])
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
