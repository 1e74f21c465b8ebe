"""Keeps bin/bench from rotting: its smallest pieces, once, with no timing asserted."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bench import dags, filewatch, steps
from tests.bench.cron import Burst, crontab
from tests.bench.harness import (
    Children,
    Context,
    Row,
    Stats,
    markdown_table,
    run_timed,
    text_table,
)

PIPELINE = Path(sys.executable).with_name("pipeline")


@pytest.mark.slow
def test_bare_runner_and_pipeline_run_the_same_dag(tmp_path: Path) -> None:
    job, _ = dags.write_dag(tmp_path, "fanout", 5)
    children = Children()
    try:
        bare = run_timed(children, dags.bare_argv(job), log=tmp_path / "bare.log")
        ours = run_timed(children, [PIPELINE, "run", job, "--state-dir", tmp_path / "state"],
                         log=tmp_path / "pipeline.log")
    finally:
        children.close()
    assert bare.status == ours.status == 0
    assert (tmp_path / "state" / "state.db").exists()


def test_the_table_shows_ratios_and_targets() -> None:
    base = Stats((0.2, 0.3, 0.25))
    rows = [Row("bare", "s", base, target="baseline"),
            Row("ours", "s", Stats((0.5, 0.6, 0.55)), "bare", base, "≤ 1.25× bare", False)]
    assert "2.20×" in text_table(rows)
    assert "| ours | 0.550 s | 0.500 s – 0.600 s | 3 | bare |" in markdown_table(rows)
    assert "**NO**" in markdown_table(rows)


@pytest.mark.slow
def test_dropped_files_each_fire_once(tmp_path: Path) -> None:
    dropped = filewatch.drop_and_watch(tmp_path / "drop", 300, settle=0.2, timeout=60)
    assert (dropped.fired, dropped.handed) == (300, 300)
    assert dropped.batches >= 1 and dropped.seconds >= 0.2


def test_a_burst_counts_a_step_that_never_started_as_infinitely_late() -> None:
    found = steps.burst_figures("x", [[100.0, 200.0]], jobs=3)
    assert found.missing == 1
    assert found.p50 == (0.2,)
    assert math.isinf(found.last[0])


def test_the_crontab_fires_each_command_once_on_its_minute(tmp_path: Path) -> None:
    minute = 1796591040  # 2026-12-06T21:04:00Z
    text = crontab(Burst(minute, 2, steps.command(tmp_path / "marks"), tmp_path / "marks"))
    lines = text.splitlines()
    assert "PIPELINE_FIRE_TIME=2026-12-06T21:04:00+00:00" in lines
    jobs = [line for line in lines if " root " in line]
    assert len(jobs) == 2
    assert "date +\\%s.\\%N" in jobs[0]  # % ends a crontab command unless escaped


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[Context]:
    (tmp_path / "logs").mkdir()
    context = Context(quick=True, tmp=tmp_path, children=Children(), peers=False)
    try:
        yield context
    finally:
        context.children.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_real_steps_at_a_few_jobs(ctx: Context) -> None:
    rows = steps.real(ctx, jobs=3, seconds=2, aps=False, cron=False)
    by_name = {row.benchmark: row for row in rows}
    ours = by_name["real steps, 3 jobs/s, step start p99: pipeline serve"]
    bare = by_name["real steps, 3 jobs/s, step start p99: bare trio loop"]
    # Every fire in the window started, and a step cannot start before its fire.
    assert ours.met is not None and ours.note == ""
    assert 0 < bare.stats.median < math.inf and 0 < ours.stats.median < math.inf


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_burst_of_a_few_jobs(ctx: Context) -> None:
    rows = steps.burst(ctx, jobs=5, reps=1, cron=False, margin=8)
    last = {row.benchmark: row for row in rows}
    ours = last["burst, 5 jobs at one instant, last step start: pipeline serve"]
    assert ours.note == ""  # every step started
    assert 0 < ours.stats.median < 10
    cpu = ctx.memo["burst-5-pipeline"].cpu_ms
    assert len(cpu) == 1 and cpu[0] > 0


def test_the_pages_benchmark_seeds_through_the_store(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from pipeline.store.sqlite import SqliteStore
    from tests.bench import pages

    now = datetime.now(UTC)
    assert pages.seed(tmp_path, now, jobs=3, per_job=20) == 60
    run_id = pages.sample_run(tmp_path, now)
    store = SqliteStore.open(tmp_path)
    try:
        assert store.count_runs() == 61 and len(store.last_runs()) == 3 + 1  # + job-00500
        record = store.run(run_id)
    finally:
        store.close()
    assert record is not None and [(s.id, s.attempt) for s in record.steps] == [
        ("prepare", 1), ("work_0", 3), ("work_1", 1)]
    assert all((tmp_path / s.log).stat().st_size > 30_000 for s in record.steps if s.log)
