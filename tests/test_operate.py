"""What operators ask of the decision log (pipeline.operate), on a real SQLite store."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import operate
from pipeline.store import Outcome, StoredDecision
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
