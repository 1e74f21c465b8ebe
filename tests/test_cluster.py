"""Cluster mode under faults (issue 11): three real ``pipeline serve`` nodes on the test
PostgreSQL, one of them in its own network namespace, and the failure table of
shared/CLUSTER.md, each fault followed by the invariant check of
``tests/faults/cluster_invariants.py`` (from the store and from what the steps really did).

One cluster serves the module: each test drives one kind of fault on it (13 faults, every row
of the table at least once), then a short random table of 7 quick ones (20 in all), checking
the invariants after each, over everything that happened since the cluster started.
The whole table in a random order, at any size, is ``run_table`` (``bin/bench --only cluster``
runs 200+ faults; here with ``PIPELINE_CLUSTER_FULL=1`` or ``PIPELINE_CLUSTER_<KIND>=N``).
Below them, a test for each bug the harness found, each failing before its fix.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
from loguru import logger

from pipeline.daemon import look_for_lost_nodes
from pipeline.errors import StateError
from pipeline.journal import Journal
from pipeline.model import Catchup
from pipeline.nodes import Lease, this_node
from pipeline.store.postgres import PostgresStore
from pipeline.store.records import FireClaim, JobSettings
from pipeline.worker import Worker
from tests.faults import netns
from tests.faults.cluster import (
    KINDS,
    Cluster,
    Counts,
    Fault,
    cut_link,
    freeze_node,
    kill_node,
    open_cluster,
    overlap,
    restart_database,
    run_table,
    skew_nodes,
    stall_node,
    table_counts,
    workload,
)
from tests.faults.cluster_invariants import check_cluster
from tests.faults.driver import wait_for
from tests.postgres import Postgres, in_ci

pytestmark = pytest.mark.slow

COUNTS = table_counts()
SHORT_COUNTS = Counts(kill=4, freeze=0, stall=2, cut=1, restart=0, skew=0, overlap=0)


def require(reason: str | None) -> None:
    if reason:
        if in_ci():
            pytest.fail(f"{reason} (required under CI=true)", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, postgres: Postgres) -> Iterator[Cluster]:
    """Three nodes serving the workload's jobs, node c in a namespace: one cluster for the
    tests of this module, which drive the table's faults on it one kind after the other
    (each test checks the invariants over everything that happened so far)."""
    if postgres.data_dir is None:
        pytest.skip("an outside server (PIPELINE_TEST_POSTGRES) is not ours to restart")
    require(netns.unavailable())
    with open_cluster(tmp_path_factory.mktemp("cluster"), postgres) as made:
        for node in made.nodes.values():
            node.jobs.mkdir(parents=True, exist_ok=True)
        workload(made)
        made.start()
        yield made


def drive(cluster: Cluster, faults: Sequence[Callable[[], Fault | list[Fault]]]) -> list[Fault]:
    """Cause each fault (or faults at once), then check the invariants (the logs through
    `pipeline logs` once, at the end); fail with every problem and violation found."""
    done: list[Fault] = []
    problems: list[str] = []
    for index, cause in enumerate(faults):
        made = cause()
        for fault in made if isinstance(made, list) else [made]:
            done.append(fault)
            print(fault.describe())
            problems += fault.problems
        report = check_cluster(cluster, cli_logs=int(index == len(faults) - 1))
        problems += report.violations
        if problems:
            break
    print(report.summary())
    assert not problems, "\n".join(problems)
    return done


# The CLUSTER.md rows, each driven here at least once, on a node of this machine and on the
# namespaced one where the row is about a node; repetitions in a random order are the table's
# (`heavy`, below).
@pytest.mark.timeout(90)
def test_kill_9_its_runs_are_taken_back_within_lease_plus_5s(cluster: Cluster) -> None:
    """kill -9 of a node running steps: its runs are interrupted, or retried elsewhere for
    ``on_node_loss: retry``; a node of this machine is seen dead at once, the namespaced one
    (another machine to the others) is judged by its lease."""
    faults = drive(cluster, [lambda name=name, jobs=jobs: kill_node(cluster, name, jobs=jobs)
                             for name, jobs in (("a", ("again",)), ("c", ("again",)),
                                                ("b", ()))])
    remote = [f.takeover for f in faults if f.node == "c"]
    assert all(t is not None and cluster.lease - 1 < t <= cluster.lease + 5 for t in remote), \
        remote
    assert check_cluster(cluster, cli_logs=0).retried >= 1  # a retry ran on another node


@pytest.mark.timeout(90)
def test_sigstop_past_the_lease_its_watchdog_fences_it_and_its_late_writes_are_refused(
        cluster: Cluster) -> None:
    faults = drive(cluster, [lambda name=name: freeze_node(cluster, name, jobs=("again",))
                             for name in ("b", "c")])
    for f in faults:  # its steps were killed before the lease could run out elsewhere
        assert f.fenced is not None and f.expired is not None and f.fenced < f.expired


@pytest.mark.timeout(60)
def test_a_stall_past_two_thirds_of_the_lease_ends_its_runs_interrupted(
        cluster: Cluster) -> None:
    drive(cluster, [lambda: stall_node(cluster, "a")])


@pytest.mark.timeout(90)
def test_a_cut_link_fences_the_node_and_it_rejoins_when_restored(cluster: Cluster) -> None:
    """Twice: the second cut finds the node rejoined under its new id, running steps."""
    before = cluster.nodes["c"].life.count("fencing this node")
    drive(cluster, [lambda jobs=jobs: cut_link(cluster, jobs=jobs) for jobs in (("again",), ())])
    assert cluster.nodes["c"].life.count("fencing this node") - before >= 2


@pytest.mark.timeout(90)
def test_a_database_restart_is_said_once_and_loses_nothing(cluster: Cluster) -> None:
    drive(cluster, [lambda mode=mode: restart_database(cluster, mode=mode)
                    for mode in ("fast", "immediate")])


@pytest.mark.timeout(120)
def test_a_short_table_of_the_quick_faults_in_a_random_order(cluster: Cluster) -> None:
    """Seven more faults, of the kinds that take seconds (kill -9, a stall, a cut link), in
    a random order with an invariant check after each: with the rows above, 20 faults (the
    bench's table, 200). The seed is printed; PIPELINE_CLUSTER_SEED replays an order."""
    chosen = int(os.environ.get("PIPELINE_CLUSTER_SEED", random.randrange(1 << 30)))
    result = run_table(cluster, SHORT_COUNTS, seed=chosen)
    print(result.describe())
    assert len(result.faults) == SHORT_COUNTS.total, result.describe()
    assert result.ok, result.describe() + f"\n(repeat with PIPELINE_CLUSTER_SEED={chosen})"


@pytest.mark.timeout(90)
def test_nodes_30s_off_neither_double_nor_skip_a_fire(cluster: Cluster) -> None:
    """a 30 s ahead and b 30 s behind, restarted under faketime at once: first the two
    alone, racing each other for every fire, then with c. They stay skewed for the test
    after this one (the forbid job on three nodes)."""
    require(None if shutil.which("faketime") else "no faketime (install the faketime package)")
    faults = drive(cluster, [lambda: skew_nodes(cluster, {"a": "+30s", "b": "-30s"},
                                                restore=False)])
    assert [f.node for f in faults] == ["a", "b"]


@pytest.mark.timeout(60)
def test_a_forbid_job_longer_than_its_interval_never_runs_twice_at_once(
        cluster: Cluster) -> None:
    """The forbid job has run on three nodes through every fault so far (the checks after
    each proved it by its lock and its times); here it is watched once more, undisturbed but
    for two of the nodes' clocks, 30 s off."""
    drive(cluster, [lambda: overlap(cluster, seconds=4)])


# The shuffled table takes minutes (bin/bench --only cluster runs 200 faults): asked for by
# PIPELINE_CLUSTER_FULL=1, or by the count of any kind (PIPELINE_CLUSTER_KILL=20).
heavy = pytest.mark.skipif(
    os.environ.get("PIPELINE_CLUSTER_FULL") != "1"
    and not any(os.environ.get(f"PIPELINE_CLUSTER_{kind.upper()}") for kind in KINDS),
    reason="the failure table in a random order runs with PIPELINE_CLUSTER_FULL=1 "
           "(bin/bench --only cluster) or PIPELINE_CLUSTER_<KIND>=N")


@heavy
@pytest.mark.timeout(120 + COUNTS.total * 15)
def test_the_failure_table_in_a_random_order(cluster: Cluster) -> None:
    """The table's faults shuffled, an invariant check after each (``COUNTS``)."""
    chosen = int(os.environ.get("PIPELINE_CLUSTER_SEED", random.randrange(1 << 30)))
    result = run_table(cluster, COUNTS, seed=chosen)
    print(result.describe())
    assert result.ok, result.describe() + f"\n(repeat with PIPELINE_CLUSTER_SEED={chosen})"


# -- what the harness found, pinned down ---------------------------------------------------------

async def inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


async def test_a_node_asleep_past_two_thirds_of_its_lease_claims_nothing_until_renewed(
        postgres_url: str, autojump_clock: trio.abc.Clock) -> None:
    """Found by the harness (SIGSTOP past the lease, then SIGCONT): the woken node's worker
    polled for runs before its lease loop learnt that the others had found it lost, and took
    its own retried run back under its lost id. By its monotonic clock alone the node knows
    it slept past the point where its watchdog killed its steps: it fences itself (its runs
    end interrupted) and claims nothing until a renewal succeeds."""
    store = PostgresStore.open(postgres_url)
    fences: list[str] = []

    async def on_fence(why: str) -> None:
        fences.append(why)

    try:
        lease = Lease(store, this_node(), lease=3.0, offload=inline, on_fence=on_fence)
        await lease.register()
        await trio.sleep(1.9)
        assert not lease.fenced
        await trio.sleep(0.2)  # no renewal ran meanwhile: the loop was frozen
        assert lease.fenced and not fences  # known before asking anyone
        await lease.renew()  # the store still has it: fence (its steps are gone), renew
        assert len(fences) == 1 and "unrenewed for 2.1s" in fences[0]
        assert not lease.fenced
    finally:
        store.close()


LEFT_WITH = """
    CREATE TABLE left_with (node TEXT, active INTEGER);
    CREATE FUNCTION left_with() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
        INSERT INTO left_with SELECT NEW.id, count(*) FROM runs
            WHERE node = NEW.id AND status IN ('queued', 'running');
        RETURN NEW;
    END $$;
    CREATE TRIGGER left_with AFTER UPDATE OF state ON nodes FOR EACH ROW
        WHEN (NEW.state = 'left') EXECUTE FUNCTION left_with();
"""


def test_a_node_that_stops_records_its_runs_ends_before_it_leaves(
        tmp_path: Path, postgres_url: str) -> None:
    """Found by the harness (a node stopped with SIGTERM to restart it under faketime): the
    daemon said it had left the cluster while its runs' ends were still in its journal's
    queue; another node took those runs as a lost node's, retried one elsewhere, and the
    stopped node's record of how they ended was refused. A database trigger notes, as the
    node leaves, how many runs it still holds; a lock held on the run row makes the journal's
    commit of its end wait, as a slow commit would."""
    PostgresStore.open(postgres_url).close()  # the schema
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(LEFT_WITH)
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "long.yaml").write_text("schedule: every 1s\nsteps:\n  - id: s\n    run: sleep 30\n")
    log = (tmp_path / "serve.log").open("wb")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve", "--no-http", "--store", postgres_url,
         "--jobs-dir", str(jobs), "--state-dir", str(tmp_path / "state"), "--grace", "0.5s"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            run = wait_for(lambda: conn.execute("SELECT id FROM runs WHERE status = 'running'")
                           .fetchone(), timeout=30, what="a run to start")[0]
            with conn.transaction():
                conn.execute("SELECT 1 FROM runs WHERE id = %s FOR UPDATE", (run,))
                daemon.send_signal(signal.SIGTERM)
                time.sleep(2)  # the run is stopped; its end waits for this lock
            assert daemon.wait(30) == 0
            left = conn.execute("SELECT active FROM left_with").fetchall()
            status = conn.execute("SELECT status FROM runs WHERE id = %s", (run,)).fetchone()
    finally:
        daemon.kill()
        daemon.wait()
        log.close()
    assert left == [(0,)], (tmp_path / "serve.log").read_text()[-2000:]
    assert status == ("interrupted",)


async def test_a_failed_renewal_is_retried_soon_so_a_short_outage_fences_nothing(
        postgres_url: str, autojump_clock: trio.abc.Clock) -> None:
    """Found by the harness (pg_ctl restart -m immediate): a renewal that failed was tried
    again only a third of a lease later, when the node had gone two thirds of its lease
    without one: a restart of a second, at the wrong moment, had the watchdog kill every
    step of the node (and with the default 30 s lease, an outage of 5 s did). The store here
    is down from 1.05 s to 2.35 s, and a failed renewal takes half a second to give up (as
    the store's retries do): renewals must never be 2 s (lease x 2/3) apart."""
    store = PostgresStore.open(postgres_url)
    down = (1.05, 2.35)
    start = trio.current_time()

    async def offload(fn: Callable[..., Any], *args: Any) -> Any:
        if down[0] <= trio.current_time() - start < down[1]:
            await trio.sleep(0.5)
            raise StateError("the store is restarting")
        return fn(*args)

    try:
        lease = Lease(store, this_node(), lease=3.0, offload=offload)
        await lease.register()
        renewals = [trio.current_time() - start]
        async with trio.open_nursery() as nursery:
            await nursery.start(lease.serve)
            while renewals[-1] < 6:
                await lease.renewed.wait()
                renewals.append(trio.current_time() - start)
            nursery.cancel_scope.cancel()
        gaps = [b - a for a, b in itertools.pairwise(renewals)]
        assert max(gaps) < 2.0, renewals
        assert not lease.fenced
    finally:
        store.close()


async def test_the_clock_offset_is_measured_around_the_call_not_the_wait_for_a_thread(
        postgres_url: str) -> None:
    """Found by the harness (a forbid job's runs overlapping in the store, never in fact): a
    node stamps a run's end by its clock corrected by the offset to the store's, the next
    run's start is stamped by the store. The offset was measured around the offload, so on a
    loaded machine half the wait for a thread went into it, and an end came out later than
    the next start. Here every call waits 0.6 s for its thread (real time): the offset must
    still be this machine's to the store's (the same clock, so nearly zero)."""
    store = PostgresStore.open(postgres_url)

    async def slow_thread(fn: Callable[..., Any], *args: Any) -> Any:
        await trio.sleep(0.6)
        return fn(*args)

    try:
        lease = Lease(store, this_node(), lease=3.0, offload=slow_thread)
        await lease.register()
        assert abs(lease.offset.total_seconds()) < 0.1, lease.offset
        await lease.renew()
        assert abs(lease.offset.total_seconds()) < 0.1, lease.offset
    finally:
        store.close()


async def test_a_fenced_node_lets_go_of_the_runs_it_held_but_had_not_started(
        tmp_path: Path, postgres_url: str) -> None:
    """Found by the harness (SIGSTOP for 0.8 of the lease, the node not found lost): the
    fence made the worker forget the runs its scheduler had claimed ahead for it, but the
    store still had them held by this node, alive, so no other node took them: they ran 24 s
    late, when the node was restarted. Once the fence lifts, the next look lets them go."""
    store = PostgresStore.open(postgres_url)
    try:
        store.publish_jobs([JobSettings("j")])
        lease = Lease(store, this_node(), lease=3.0, offload=inline)
        await lease.register()
        journal = Journal(store, node=lambda: lease.node_id, offload=inline)
        worker = Worker(store=store, journal=journal, lease=lease, state_dir=tmp_path,
                        runners={}, jobs=lambda name: None, offload=inline, claims=False)
        now = store.now()
        made = store.claim_fires([FireClaim("j", ((now + timedelta(seconds=1), 0.0),),
                                            now + timedelta(seconds=1), Catchup.LATEST, 60.0,
                                            now - timedelta(minutes=1))],
                                 node=lease.node_id, now=now)
        (held,) = made.runs
        worker.reserve([held])
        assert store.run(held.run_id).node == lease.node_id  # type: ignore[union-attr]
        await worker.fence("asleep past two thirds of its lease")
        await worker.look()  # renewed meanwhile: it was not found lost
        run = store.run(held.run_id)
        assert run is not None and run.node is None and str(run.status) == "queued"
    finally:
        store.close()


async def test_a_node_fences_itself_before_its_watchdog_even_while_a_renewal_hangs(
        postgres_url: str, autojump_clock: trio.abc.Clock) -> None:
    """Found by the harness (a durable PostgreSQL's restart of a second and more): the node
    fenced itself only when a renewal returned, while its watchdog, a process of its own,
    killed its steps at two thirds of the lease: the steps' SIGTERM ended their runs
    `failed` (hooks, notifications and the circuit breaker with them), not `interrupted`.
    Here the store stops answering at 0.5 s and each call then hangs 5 s: the fence must
    come before 2 s (lease 3 s), with no renewal back."""
    store = PostgresStore.open(postgres_url)
    start = trio.current_time()
    fenced_at: list[float] = []

    async def on_fence(why: str) -> None:
        fenced_at.append(trio.current_time() - start)

    async def hangs(fn: Callable[..., Any], *args: Any) -> Any:
        if trio.current_time() - start > 0.5:
            await trio.sleep(5)
            raise StateError("no answer")
        return fn(*args)

    try:
        lease = Lease(store, this_node(), lease=3.0, offload=hangs, on_fence=on_fence)
        await lease.register()
        async with trio.open_nursery() as nursery:
            await nursery.start(lease.serve)
            await trio.sleep(4)
            nursery.cancel_scope.cancel()
        assert fenced_at and 1.8 < fenced_at[0] < 2.0, fenced_at
    finally:
        store.close()


async def test_a_node_says_once_that_it_cannot_look_for_lost_nodes(
        autojump_clock: trio.abc.Clock) -> None:
    """Found by the harness (a durable PostgreSQL's restart of 4.7 s): every node said it
    could not look for lost nodes at every look, though the store said once that it was lost
    and once that it answered again. Three failed looks, one that works, two failed: two
    lines."""
    answers = iter([StateError("down"), StateError("down"), StateError("starting up"), None,
                    StateError("down again"), StateError("down again")])
    said: list[str] = []

    async def look() -> None:
        answer = next(answers, None)
        if answer is not None:
            raise answer

    sink = logger.add(lambda m: said.append(m.record["message"]), level="WARNING")
    try:
        with trio.move_on_after(6.5):
            await look_for_lost_nodes(look, every=1.0)
    finally:
        logger.remove(sink)
    assert said == ["cannot look for lost nodes: down",
                    "cannot look for lost nodes: down again"]
