"""What operators ask of the decision log (pipeline.operate), on a real SQLite store."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import operate
from pipeline.store.records import NodeInfo, NodeState, Outcome, StoredDecision
from pipeline.store.sqlite import SqliteStore

AT = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)
offsets = st.one_of(st.integers(-200_000, 200_000), st.integers(-5, 5))
names = (f"job-{n}" for n in itertools.count())  # one job per example, in one store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteStore]:
    opened = SqliteStore.open(tmp_path_factory.mktemp("state"))
    yield opened
    opened.close()


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seconds=st.lists(offsets, max_size=120), count=st.integers(1, 30),
       since=st.one_of(st.none(), st.integers(-90_000, 3)),
       until=st.one_of(st.none(), st.integers(-3, 90_000)))
def test_decisions_near_are_the_nearest_in_the_range(
        store: SqliteStore, seconds: list[int], count: int, since: int | None,
        until: int | None) -> None:
    fires = [AT + timedelta(seconds=s) for s in seconds]
    low = AT + timedelta(seconds=since) if since is not None else None
    high = AT + timedelta(seconds=until) if until is not None else None
    job = next(names)
    store.record_decisions([StoredDecision(job, Outcome.NOT_MADE, fire, fire, reason="paused")
                            for fire in fires])
    found = operate.decisions_near(store, job, AT, count, since=low, until=high)
    inside = [f for f in fires if (low is None or f >= low) and (high is None or f <= high)]
    nearest = sorted(inside, key=lambda f: (abs(f - AT), f))[:count]
    assert sorted(d.fire_time for d in found if d.fire_time) == sorted(nearest)


def scheduler(name: str, started: int, heartbeat: int, state: NodeState,
              lease: int = 30) -> NodeInfo:
    return NodeInfo(name, name, started_at=AT + timedelta(seconds=started),
                    heartbeat_at=AT + timedelta(seconds=heartbeat),
                    expires_at=AT + timedelta(seconds=heartbeat + lease), state=state)


def gap_at(nodes: list[NodeInfo], second: int) -> str | None:
    lines = operate.explain("j", None, decisions=[], state=None, nodes=nodes, now=AT,
                            at=AT + timedelta(seconds=second))
    return next((line for line in lines if line.startswith("no daemon was running")), None)


def test_no_daemon_was_running_between_a_node_that_left_and_the_next() -> None:
    # A daemon that ran 5 s and stopped cleanly (its heartbeat stamped when it left), and the
    # next one started 7 s later: a lease (30 s) after its start is no longer counted as up.
    nodes = [scheduler("a", 0, 5, NodeState.LEFT), scheduler("b", 12, 40, NodeState.ALIVE)]
    assert gap_at(nodes, 4) is None and gap_at(nodes, 13) is None
    gap = gap_at(nodes, 8)
    assert gap is not None and gap.startswith(
        "no daemon was running from 2026-05-10 12:00:05+00:00 to 2026-05-10 12:00:12+00:00")


def test_a_lost_node_was_up_until_the_renewal_it_missed() -> None:
    # Killed: its last heartbeat at 20 s, renewed every third of its 30 s lease; the next
    # daemon started at 60 s.
    nodes = [scheduler("a", 0, 20, NodeState.LOST), scheduler("b", 60, 90, NodeState.ALIVE)]
    assert gap_at(nodes, 29) is None
    gap = gap_at(nodes, 45)
    assert gap is not None and "from 2026-05-10 12:00:30+00:00 to 2026-05-10 12:01:00" in gap
